//! Initial vCPU state: GDT, identity page tables (2 MiB pages), segment and control
//! registers, general registers, FPU and MSRs, for the two entry modes husk uses.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::arch::layout::{GDT_ADDR, IDENTITY_MAP_GIB, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR};

/// Errors from setting up the initial vCPU state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT or page tables into guest memory failed.
    #[error("writing {what} into guest memory: {source}")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// The underlying error.
        source: vm_memory::GuestMemoryError,
    },
    /// A vCPU register ioctl failed.
    #[error("{ioctl} failed: {source}")]
    Ioctl {
        /// Which ioctl.
        ioctl: &'static str,
        /// The underlying error.
        source: kvm_ioctls::Error,
    },
    /// Building the MSR list failed.
    #[error("building the MSR list: {0}")]
    MsrList(vmm_sys_util::fam::Error),
}

/// How the vCPU enters the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode with the VMM's identity page tables (Linux 64-bit boot
    /// protocol, ELF vmlinux without PVH note, raw test guests). `rsi` carries the zero
    /// page address for Linux.
    Long64 {
        /// Entry point.
        rip: u64,
        /// Value of `rsi` (zero page for Linux, 0 for raw guests).
        rsi: u64,
        /// Initial stack pointer.
        rsp: u64,
    },
    /// 32-bit protected mode without paging, `ebx` pointing at `hvm_start_info` (PVH).
    Pvh32 {
        /// PVH entry point from the ELF note.
        rip: u64,
        /// Guest-physical address of `hvm_start_info`.
        start_info: u64,
    },
}

const GDT_NULL: usize = 0;
const GDT_CODE: usize = 1;
const GDT_DATA: usize = 2;
const GDT_TSS: usize = 3;

/// Segment flags (access byte in bits 0-7, G/DB/L/AVL in bits 12-15).
const CODE64_FLAGS: u16 = 0xa09b;
const CODE32_FLAGS: u16 = 0xc09b;
const DATA_FLAGS: u16 = 0xc093;
const TSS_FLAGS: u16 = 0x808b;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Encodes one GDT descriptor.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM view of the GDT descriptor `entry` at table index `index`.
pub fn segment_from_gdt(entry: u64, index: usize) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit: limit as u32,
        selector: (index * 8) as u16,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The GDT for `mode`: null, code (64- or 32-bit), flat data, TSS.
pub fn gdt_for(mode: &EntryMode) -> [u64; 4] {
    let code = match mode {
        EntryMode::Long64 { .. } => CODE64_FLAGS,
        EntryMode::Pvh32 { .. } => CODE32_FLAGS,
    };
    let mut gdt = [0u64; 4];
    gdt[GDT_NULL] = gdt_entry(0, 0, 0);
    gdt[GDT_CODE] = gdt_entry(code, 0, 0xfffff);
    gdt[GDT_DATA] = gdt_entry(DATA_FLAGS, 0, 0xfffff);
    gdt[GDT_TSS] = gdt_entry(TSS_FLAGS, 0, 0xfffff);
    gdt
}

/// Writes the identity page tables: one PML4 entry, `IDENTITY_MAP_GIB` PDPT entries and
/// as many page directories of 2 MiB pages (PVM hosts reject 1 GiB pages).
pub fn setup_page_tables<M: GuestMemory>(mem: &M) -> Result<(), RegsError> {
    let wr = |addr: u64, val: u64, what: &'static str| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|source| RegsError::GuestMemory { what, source })
    };
    wr(PML4_ADDR, PDPT_ADDR | 0x03, "PML4")?;
    for gib in 0..IDENTITY_MAP_GIB {
        let pd = PD_ADDR + gib * 0x1000;
        wr(PDPT_ADDR + gib * 8, pd | 0x03, "PDPT")?;
        for i in 0..512u64 {
            let page = ((gib << 30) | (i << 21)) | 0x83; // present, writable, 2 MiB
            wr(pd + i * 8, page, "page directory")?;
        }
    }
    Ok(())
}

/// Writes the GDT and an empty IDT into guest memory.
pub fn write_gdt<M: GuestMemory>(mem: &M, gdt: &[u64]) -> Result<(), RegsError> {
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + (i as u64) * 8))
            .map_err(|source| RegsError::GuestMemory {
                what: "GDT",
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|source| RegsError::GuestMemory {
            what: "IDT",
            source,
        })
}

/// Fills segment and control registers in `sregs` for `mode` (pure; unit-tested).
pub fn fill_sregs(sregs: &mut kvm_sregs, mode: &EntryMode) {
    let gdt = gdt_for(mode);
    let code = segment_from_gdt(gdt[GDT_CODE], GDT_CODE);
    let data = segment_from_gdt(gdt[GDT_DATA], GDT_DATA);
    let tss = segment_from_gdt(gdt[GDT_TSS], GDT_TSS);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match mode {
        EntryMode::Long64 { .. } => {
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh32 { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
}

/// General registers for `mode` (pure; unit-tested).
pub fn initial_regs(mode: &EntryMode) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match *mode {
        EntryMode::Long64 { rip, rsi, rsp } => {
            regs.rip = rip;
            regs.rsi = rsi;
            regs.rsp = rsp;
            regs.rbp = rsp;
        }
        EntryMode::Pvh32 { rip, start_info } => {
            regs.rip = rip;
            regs.rbx = start_info;
        }
    }
    regs
}

/// MSR values every vCPU starts with (sysenter/syscall zeroed, fast strings, MTRRs on
/// with write-back default).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, 1), // fast string operations
        entry(MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs enabled, default write-back
    ]
}

/// Loads `mode`'s registers, FPU and MSRs into `vcpu`. Returns how many MSRs KVM took
/// (a PVM host may refuse some; the caller logs it).
pub fn configure_vcpu(vcpu: &VcpuFd, mode: &EntryMode) -> Result<usize, RegsError> {
    let ioctl = |ioctl| move |source| RegsError::Ioctl { ioctl, source };
    let mut sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    fill_sregs(&mut sregs, mode);
    vcpu.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(&initial_regs(mode))
        .map_err(ioctl("KVM_SET_REGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(ioctl("KVM_SET_FPU"))?;
    let msrs = Msrs::from_entries(&boot_msrs()).map_err(RegsError::MsrList)?;
    vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))
}

/// Points LINT0 at ExtINT and LINT1 at NMI so the legacy PIC reaches the BSP (needs the
/// in-kernel irqchip).
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_EXTINT: u32 = 0x7;
    const APIC_MODE_NMI: u32 = 0x4;
    let ioctl = |ioctl| move |source| RegsError::Ioctl { ioctl, source };
    let mut lapic = vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let mut bytes = [0u8; 4];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = lapic.regs[reg + i] as u8;
        }
        let val = u32::from_le_bytes(bytes);
        let val = (val & !0x700) | (mode << 8);
        for (i, b) in val.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn gdt_entry_round_trips_through_kvm_segment() {
        let e = gdt_entry(CODE64_FLAGS, 0, 0xfffff);
        assert_eq!(e, 0x00af_9b00_0000_ffff);
        let seg = segment_from_gdt(e, 1);
        assert_eq!(seg.selector, 8);
        assert_eq!(seg.l, 1);
        assert_eq!(seg.db, 0);
        assert_eq!(seg.g, 1);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.present, 1);
        assert_eq!(seg.s, 1);
        let data = segment_from_gdt(gdt_entry(DATA_FLAGS, 0, 0xfffff), 2);
        assert_eq!((data.selector, data.db, data.type_), (16, 1, 3));
        let tss = segment_from_gdt(gdt_entry(TSS_FLAGS, 0, 0xfffff), 3);
        assert_eq!((tss.s, tss.type_, tss.present), (0, 0xb, 1));
    }

    #[test]
    fn page_tables_identity_map_4gib_with_2mib_pages() {
        let m = mem();
        setup_page_tables(&m).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        for gib in 0..IDENTITY_MAP_GIB {
            let pdpte: u64 = m.read_obj(GuestAddress(PDPT_ADDR + gib * 8)).unwrap();
            assert_eq!(pdpte, (PD_ADDR + gib * 0x1000) | 3);
            // No 1 GiB pages: the PS bit (7) must be clear in the PDPT.
            assert_eq!(pdpte & 0x80, 0);
        }
        let first: u64 = m.read_obj(GuestAddress(PD_ADDR)).unwrap();
        assert_eq!(first, 0x83);
        let second: u64 = m.read_obj(GuestAddress(PD_ADDR + 8)).unwrap();
        assert_eq!(second, 0x20_0083);
        // 0xd000_0000 (MMIO gap) is mapped by PD 3, entry 0x80.
        let mmio: u64 = m
            .read_obj(GuestAddress(PD_ADDR + 3 * 0x1000 + 0x80 * 8))
            .unwrap();
        assert_eq!(mmio, 0xd000_0083);
    }

    #[test]
    fn long_mode_sregs() {
        let mut s = kvm_sregs::default();
        let mode = EntryMode::Long64 {
            rip: 0x10_0000,
            rsi: 0x7000,
            rsp: 0x8ff0,
        };
        fill_sregs(&mut s, &mode);
        assert_eq!(s.cr3, PML4_ADDR);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.gdt.base, GDT_ADDR);
        assert_eq!(s.gdt.limit, 31);
        let regs = initial_regs(&mode);
        assert_eq!(
            (regs.rip, regs.rsi, regs.rsp, regs.rflags),
            (0x10_0000, 0x7000, 0x8ff0, 2)
        );
    }

    #[test]
    fn pvh_sregs_are_flat_32bit_without_paging() {
        let mut s = kvm_sregs {
            cr0: 0x8000_0011,
            efer: 0x500,
            ..Default::default()
        };
        let mode = EntryMode::Pvh32 {
            rip: 0x100_0000,
            start_info: 0x6000,
        };
        fill_sregs(&mut s, &mode);
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((s.cr4, s.efer), (0, 0));
        assert_eq!((s.cs.l, s.cs.db), (0, 1));
        let regs = initial_regs(&mode);
        assert_eq!((regs.rip, regs.rbx), (0x100_0000, 0x6000));
    }

    #[test]
    fn gdt_written_to_guest_memory() {
        let m = mem();
        let mode = EntryMode::Long64 {
            rip: 0,
            rsi: 0,
            rsp: 0,
        };
        write_gdt(&m, &gdt_for(&mode)).unwrap();
        let code: u64 = m.read_obj(GuestAddress(GDT_ADDR + 8)).unwrap();
        assert_eq!(code, gdt_entry(CODE64_FLAGS, 0, 0xfffff));
    }

    #[test]
    fn msr_list_has_mtrr_default_write_back() {
        let msrs = boot_msrs();
        let mtrr = msrs.iter().find(|m| m.index == 0x2ff).unwrap();
        assert_eq!(mtrr.data, 0x806);
    }
}

//! Helpers for KVM-layer tests: a tiny x86-64 assembler for purpose-built test guests,
//! and a check that /dev/kvm is there (the tests fail loudly without it).

#![allow(dead_code)]

/// Emits x86-64 machine code for the few instructions test guests need.
#[derive(Default)]
pub struct Asm(pub Vec<u8>);

impl Asm {
    /// `mov dx, port; mov al, val; out dx, al`.
    pub fn out8(mut self, port: u16, val: u8) -> Self {
        self.0.extend([0x66, 0xba]);
        self.0.extend(port.to_le_bytes());
        self.0.extend([0xb0, val, 0xee]);
        self
    }

    /// Writes `s` to the serial port 0x3f8, one `out` per byte.
    pub fn serial(mut self, s: &str) -> Self {
        for b in s.bytes() {
            self = self.out8(0x3f8, b);
        }
        self
    }

    /// `movabs rax, addr; mov dword [rax], val`.
    pub fn store32(mut self, addr: u64, val: u32) -> Self {
        self.0.extend([0x48, 0xb8]);
        self.0.extend(addr.to_le_bytes());
        self.0.extend([0xc7, 0x00]);
        self.0.extend(val.to_le_bytes());
        self
    }

    /// `movabs rax, addr; mov eax, dword [rax]` (result in eax / al).
    pub fn load32(mut self, addr: u64) -> Self {
        self.0.extend([0x48, 0xb8]);
        self.0.extend(addr.to_le_bytes());
        self.0.extend([0x8b, 0x00]);
        self
    }

    /// `mov dx, port; out dx, al` (writes whatever al holds).
    pub fn out_al(mut self, port: u16) -> Self {
        self.0.extend([0x66, 0xba]);
        self.0.extend(port.to_le_bytes());
        self.0.push(0xee);
        self
    }

    /// `mov dx, port; in al, dx`.
    pub fn in_al(mut self, port: u16) -> Self {
        self.0.extend([0x66, 0xba]);
        self.0.extend(port.to_le_bytes());
        self.0.push(0xec);
        self
    }

    /// `hlt; jmp -3` (halt forever).
    pub fn hlt(mut self) -> Self {
        self.0.extend([0xf4, 0xeb, 0xfd]);
        self
    }

    /// `cli; hlt` without a loop.
    pub fn cli_hlt(mut self) -> Self {
        self.0.extend([0xfa, 0xf4]);
        self
    }

    /// The code.
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Panics (never skips) when /dev/kvm is unusable: these tests must run on KVM.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("KVM tests need a usable /dev/kvm: {e}");
    }
}

/// Reads the console log, for failure messages.
pub fn console_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<no console log: {e}>"))
}

impl Asm {
    /// `movabs rax, addr; mov word [rax], val`.
    pub fn store16(mut self, addr: u64, val: u16) -> Self {
        self.0.extend([0x48, 0xb8]);
        self.0.extend(addr.to_le_bytes());
        self.0.extend([0x66, 0xc7, 0x00]);
        self.0.extend(val.to_le_bytes());
        self
    }

    /// Spins until the u16 at `addr` is at least `n` (< 128):
    /// `movabs rax, addr; 1: pause; movzx ecx, word [rax]; cmp ecx, n; jb 1b`.
    pub fn wait_u16_at_least(mut self, addr: u64, n: u8) -> Self {
        assert!(n < 128);
        self.0.extend([0x48, 0xb8]);
        self.0.extend(addr.to_le_bytes());
        self.0
            .extend([0xf3, 0x90, 0x0f, 0xb7, 0x08, 0x83, 0xf9, n, 0x72, 0xf6]);
        self
    }
}

/// A split virtqueue of `size` entries laid out by a test in guest memory: descriptor
/// table at `base`, available ring at `base + 0x1000`, used ring at `base + 0x2000`.
#[derive(Clone, Copy)]
pub struct GuestRing {
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
    /// Entries.
    pub size: u16,
}

impl GuestRing {
    /// A ring at `base`.
    pub fn at(base: u64, size: u16) -> Self {
        GuestRing {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            size,
        }
    }

    /// Writes descriptor `idx`.
    pub fn desc<M: vm_memory::Bytes<vm_memory::GuestAddress>>(
        &self,
        mem: &M,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) where
        M::E: std::fmt::Debug,
    {
        use vm_memory::GuestAddress;
        let d = self.desc + 16 * u64::from(idx);
        mem.write_obj(addr, GuestAddress(d)).unwrap();
        mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
        mem.write_obj(next, GuestAddress(d + 14)).unwrap();
    }

    /// Puts chain `head` in available-ring slot `slot` (the index is published later).
    pub fn offer<M: vm_memory::Bytes<vm_memory::GuestAddress>>(&self, mem: &M, slot: u16, head: u16)
    where
        M::E: std::fmt::Debug,
    {
        let a = vm_memory::GuestAddress(self.avail + 4 + 2 * u64::from(slot));
        mem.write_obj(head, a).unwrap();
    }

    /// Address of the available ring's index (the driver publishes by writing it).
    pub fn avail_idx_addr(&self) -> u64 {
        self.avail + 2
    }

    /// Address of the used ring's index (the device publishes by writing it).
    pub fn used_idx_addr(&self) -> u64 {
        self.used + 2
    }
}

/// A minimal ELF64 "vmlinux": one PT_LOAD of `code` at 1 MiB (entry = 1 MiB) and, with
/// `pvh_entry_offset`, a PT_NOTE carrying XEN_ELFNOTE_PHYS32_ENTRY = 1 MiB + offset.
pub fn elf_kernel(code: &[u8], pvh_entry_offset: Option<u32>) -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    const NOTE_OFF: u64 = 0x200;
    const CODE_OFF: u64 = 0x1000;
    let mut f = vec![0u8; CODE_OFF as usize];
    let phnum: u16 = if pvh_entry_offset.is_some() { 2 } else { 1 };
    let mut eh = Vec::new();
    eh.extend(b"\x7fELF\x02\x01\x01\x00");
    eh.extend([0u8; 8]);
    eh.extend(2u16.to_le_bytes()); // ET_EXEC
    eh.extend(0x3eu16.to_le_bytes()); // x86-64
    eh.extend(1u32.to_le_bytes());
    eh.extend(LOAD.to_le_bytes()); // e_entry
    eh.extend(64u64.to_le_bytes()); // e_phoff
    eh.extend(0u64.to_le_bytes()); // e_shoff
    eh.extend(0u32.to_le_bytes()); // e_flags
    eh.extend(64u16.to_le_bytes()); // e_ehsize
    eh.extend(56u16.to_le_bytes()); // e_phentsize
    eh.extend(phnum.to_le_bytes());
    eh.extend([0u8; 6]); // e_shentsize, e_shnum, e_shstrndx
    f[..64].copy_from_slice(&eh);
    let phdr = |kind: u32, flags: u32, off: u64, addr: u64, size: u64, align: u64| {
        let mut p = Vec::new();
        p.extend(kind.to_le_bytes());
        p.extend(flags.to_le_bytes());
        p.extend(off.to_le_bytes());
        p.extend(addr.to_le_bytes());
        p.extend(addr.to_le_bytes());
        p.extend(size.to_le_bytes());
        p.extend(size.to_le_bytes());
        p.extend(align.to_le_bytes());
        p
    };
    let load = phdr(1, 5, CODE_OFF, LOAD, code.len() as u64, 0x1000);
    f[64..120].copy_from_slice(&load);
    if let Some(off) = pvh_entry_offset {
        let mut note = Vec::new();
        note.extend(4u32.to_le_bytes()); // namesz
        note.extend(4u32.to_le_bytes()); // descsz
        note.extend(18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        note.extend(b"Xen\0");
        note.extend((LOAD as u32 + off).to_le_bytes());
        let n = phdr(4, 4, NOTE_OFF, 0, note.len() as u64, 4);
        f[120..176].copy_from_slice(&n);
        f[NOTE_OFF as usize..NOTE_OFF as usize + note.len()].copy_from_slice(&note);
    }
    f.extend(code);
    f
}

/// A minimal bzImage: one setup sector with a boot-protocol 2.15 header, then a
/// "protected-mode kernel" whose 64-bit entry (offset 0x200) is `code64`.
pub fn bzimage(code64: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 1024];
    f[0x1f1] = 1; // setup_sects
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    f[0x211] = 1; // LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    f[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    f[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    let mut kernel = vec![0x90u8; 0x200]; // 32-bit entry: unused here
    kernel.extend(code64);
    f.extend(kernel);
    f
}

//! The Intel MultiProcessor table (spec 1.4), so a Linux guest without ACPI finds every
//! vCPU, the IOAPIC and the ISA interrupt routing. Written at the start of the EBDA
//! (639 KiB), which Linux scans for the `_MP_` floating pointer.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::arch::layout::EBDA_START;

/// Where the floating pointer goes; the configuration table follows it.
pub const MPTABLE_START: u64 = EBDA_START;
/// Space available (to 640 KiB).
pub const MPTABLE_MAX_SIZE: usize = 0x400;
/// Local APIC base address.
pub const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
/// IOAPIC base address.
pub const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
/// Highest GSI routed through the IOAPIC (24 pins).
pub const IRQ_MAX: u8 = 23;

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6 CPU signature; FPU and APIC feature flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Errors from writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for the EBDA.
    #[error("MP table for {0} vCPUs does not fit in 1 KiB")]
    TooLarge(u8),
    /// Writing into guest memory failed.
    #[error("writing the MP table: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The floating pointer followed by the configuration table for `vcpus` vCPUs, to be
/// placed at `base` (pure; unit-tested).
pub fn mptable_bytes(vcpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    let table_addr = base + 16;
    let ioapic_id = vcpus; // LAPIC ids are 0..vcpus
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let mut flags = CPU_ENABLED;
        if id == 0 {
            flags |= CPU_BOOTPROCESSOR;
        }
        entries.extend([MP_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([MP_BUS, 0]);
    entries.extend(*b"ISA   ");
    count += 1;
    entries.extend([MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend(IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX {
        // type, irq type, flags (conforming), source bus, source irq, IOAPIC, pin
        entries.extend([MP_INTSRC, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 = ExtINT (legacy PIC), LINT1 = NMI on every LAPIC.
    entries.extend([MP_LINTSRC, MP_IRQ_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend([MP_LINTSRC, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut header = Vec::with_capacity(44);
    header.extend(*b"PCMP");
    header.extend(((44 + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend(*b"HUSK    ");
    header.extend(*b"MICROVM     ");
    header.extend(0u32.to_le_bytes()); // OEM table
    header.extend(0u16.to_le_bytes());
    header.extend(count.to_le_bytes());
    header.extend(APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    header.extend([0u8; 4]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend(entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend(*b"_MP_");
    fp.extend((table_addr as u32).to_le_bytes());
    fp.extend([1, 4, 0, 0, 0, 0, 0, 0]); // length 1 (x16), rev 1.4, checksum, features
    fp[10] = checksum(&fp);

    let mut all = fp;
    all.extend(table);
    if all.len() > MPTABLE_MAX_SIZE {
        return Err(MptableError::TooLarge(vcpus));
    }
    Ok(all)
}

/// Writes the MP table for `vcpus` vCPUs at [`MPTABLE_START`].
pub fn setup_mptable<M: GuestMemory>(mem: &M, vcpus: u8) -> Result<(), MptableError> {
    let bytes = mptable_bytes(vcpus, MPTABLE_START)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn floating_pointer_and_table_checksum_to_zero() {
        let b = mptable_bytes(4, MPTABLE_START).unwrap();
        assert_eq!(&b[0..4], b"_MP_");
        assert_eq!(sum(&b[0..16]), 0);
        let ptr = u32::from_le_bytes(b[4..8].try_into().unwrap()) as u64;
        assert_eq!(ptr, MPTABLE_START + 16);
        let table = &b[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
        // 4 CPUs + bus + IOAPIC + 24 interrupt sources + 2 local sources.
        assert_eq!(
            u16::from_le_bytes([table[34], table[35]]),
            4 + 1 + 1 + 24 + 2
        );
    }

    #[test]
    fn processors_bsp_and_ioapic() {
        let b = mptable_bytes(2, MPTABLE_START).unwrap();
        let e = &b[16 + 44..];
        assert_eq!(
            (e[0], e[1], e[3]),
            (MP_PROCESSOR, 0, CPU_ENABLED | CPU_BOOTPROCESSOR)
        );
        assert_eq!((e[20], e[21], e[23]), (MP_PROCESSOR, 1, CPU_ENABLED));
        assert_eq!(e[40], MP_BUS);
        assert_eq!(&e[42..48], b"ISA   ");
        assert_eq!((e[48], e[49]), (MP_IOAPIC, 2));
        assert_eq!(
            u32::from_le_bytes(e[52..56].try_into().unwrap()),
            IO_APIC_DEFAULT_PHYS_BASE
        );
        // GSI 5 (first virtio device) routed to IOAPIC pin 5.
        let irq5 = &e[56 + 5 * 8..56 + 6 * 8];
        assert_eq!(irq5, &[MP_INTSRC, MP_IRQ_INT, 0, 0, 0, 5, 2, 5]);
    }

    #[test]
    fn max_vcpus_fit_and_land_in_guest_memory() {
        assert!(mptable_bytes(crate::config::machine::MAX_VCPUS, MPTABLE_START).is_ok());
        assert!(matches!(
            mptable_bytes(60, MPTABLE_START),
            Err(MptableError::TooLarge(60))
        ));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup_mptable(&mem, 1).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}

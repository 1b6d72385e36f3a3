//! The guest's RAM map, shared by the Linux zero page (e820) and the PVH memory map.

use crate::arch::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved space.
pub const E820_RESERVED: u32 = 2;

/// One entry of the guest memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest-physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_RAM` or `E820_RESERVED`.
    pub kind: u32,
}

/// The RAM regions (start, length) backing `mem_size` bytes of guest memory: low RAM up
/// to the MMIO gap, the rest above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// The e820 map for `mem_size` bytes of guest memory: RAM below the EBDA, the legacy
/// hole reserved, RAM from 1 MiB to the MMIO gap, and RAM above 4 GiB if any.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ram_regions(mem_size) {
        let end = start + len;
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_has_low_ram_hole_and_high_ram() {
        let map = e820_map(128 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(
            map[2],
            E820Entry {
                addr: HIMEM_START,
                size: (128 << 20) - HIMEM_START,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn large_memory_splits_around_mmio_gap() {
        let size = 4u64 << 30;
        let regions = ram_regions(size);
        assert_eq!(
            regions,
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]
        );
        let map = e820_map(size);
        assert_eq!(map.len(), 4);
        assert_eq!(map[3].addr, MMIO_GAP_END);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // Everything but the legacy hole is RAM.
        assert_eq!(ram, size - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn memory_at_gap_boundary_has_no_high_region() {
        assert_eq!(ram_regions(MMIO_GAP_START).len(), 1);
    }
}

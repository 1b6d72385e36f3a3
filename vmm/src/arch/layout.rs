//! Guest-physical memory layout of a husk microVM (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)            0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH hvm_start_info         0x0000_6400  PVH e820 table
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_8ff0  initial stack pointer (raw guests)
//! 0x0000_9000  PML4   0x0000_a000  PDPT   0x0000_b000..0x0000_f000  4 PDs (2 MiB pages, 4 GiB)
//! 0x0002_0000  kernel command line (up to CMDLINE_MAX_SIZE)
//! 0x0009_fc00  EBDA .. 1 MiB: reserved (not RAM in the e820 map)
//! 0x0010_0000  kernel (bzImage / vmlinux default) or raw guest code
//! ...          initramfs: page-aligned at the top of low RAM
//! 0xd000_0000  MMIO gap (virtio-mmio devices, 4 KiB each, from here up) .. 4 GiB
//! 4 GiB ..     RAM above the gap when memory exceeds 0xd000_0000
//! ```

/// Start of the GDT.
pub const GDT_ADDR: u64 = 0x500;
/// Start of the (empty) IDT.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const PVH_MODLIST_ADDR: u64 = 0x6100;
/// PVH memory map table (follows the start info).
pub const PVH_MEMMAP_ADDR: u64 = 0x6400;
/// Linux boot protocol zero page.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for raw 64-bit test guests.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4.
pub const PML4_ADDR: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of the page directories (one per GiB identity-mapped).
pub const PD_ADDR: u64 = 0xb000;
/// GiB of guest-physical space identity-mapped with 2 MiB pages.
pub const IDENTITY_MAP_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Largest command line accepted (including NUL).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Extended BIOS data area: RAM below it is usable.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of high memory: kernels and raw guests load here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
/// Size of each virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First GSI handed to virtio-mmio devices (5, 6, ...; 4 is the serial port).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// TSS for KVM_SET_TSS_ADDR (three pages just below the identity map page).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// Identity map page for KVM_SET_IDENTITY_MAP_ADDR.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// Smallest guest memory accepted for a Linux guest.
pub const MIN_LINUX_MEMORY_MIB: u32 = 32;
/// Smallest guest memory accepted at all (the layout above needs the first 2 MiB).
pub const MIN_MEMORY_MIB: u32 = 2;

// husk-vmm-config validates against its own copies of these (it has no KVM crates to
// take them from); a layout change that forgets them fails to compile here.
const _: () = {
    use husk_vmm_config::machine as config;
    assert!(CMDLINE_MAX_SIZE == config::CMDLINE_MAX_SIZE);
    assert!(MIN_LINUX_MEMORY_MIB == config::MIN_LINUX_MEMORY_MIB);
    assert!(MIN_MEMORY_MIB == config::MIN_MEMORY_MIB);
};

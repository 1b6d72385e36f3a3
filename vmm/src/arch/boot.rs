//! Loading the guest payload and writing the boot-protocol structures: PVH
//! (`hvm_start_info` + memory map) for ELF vmlinux images with a PVH note, the Linux boot
//! protocol zero page (`boot_params`) for bzImage and ELF images without one, and raw
//! 64-bit code for test guests.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use crate::arch::e820::E820Entry;
use crate::arch::layout::{
    BOOT_STACK_POINTER, CMDLINE_ADDR, CMDLINE_MAX_SIZE, HIMEM_START, MMIO_GAP_START, PVH_INFO_ADDR,
    PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR, ZERO_PAGE_ADDR,
};
use crate::arch::regs::EntryMode;

/// Errors from loading the kernel, initramfs and command line.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened or read.
    #[error("kernel {path}: {source}")]
    KernelFile {
        /// Path given.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The kernel file is neither an ELF vmlinux nor a bzImage.
    #[error("kernel {0}: not a kernel (neither an ELF vmlinux nor a bzImage)")]
    NotAKernel(String),
    /// linux-loader refused the image.
    #[error("loading kernel {path}: {source}")]
    Load {
        /// Path given.
        path: String,
        /// The underlying error.
        source: linux_loader::loader::Error,
    },
    /// The initramfs could not be read.
    #[error("initramfs {path}: {source}")]
    InitramfsFile {
        /// Path given.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The initramfs does not fit between the kernel and the end of low memory.
    #[error("initramfs of {size} bytes does not fit in guest memory above the kernel (ends at {kernel_end:#x}, low RAM ends at {lowmem_end:#x}): give the VM more memory")]
    InitramfsTooLarge {
        /// Initramfs size.
        size: u64,
        /// End of the kernel image.
        kernel_end: u64,
        /// End of low RAM.
        lowmem_end: u64,
    },
    /// The command line is invalid or too long.
    #[error("kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    /// The raw payload does not fit.
    #[error("raw guest code of {0} bytes does not fit in guest memory")]
    RawTooLarge(usize),
    /// Writing a boot structure into guest memory failed.
    #[error("writing {what} into guest memory: {source}")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// The underlying error.
        source: vm_memory::GuestMemoryError,
    },
    /// linux-loader's configurator refused the boot parameters.
    #[error("writing boot parameters: {0}")]
    Configurator(#[from] linux_loader::configurator::Error),
}

/// The kernel image formats husk loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// Uncompressed ELF vmlinux.
    Elf,
    /// bzImage (Linux boot protocol).
    BzImage,
}

/// Magic of the PVH start info.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// "HdrS": Linux boot protocol header signature at offset 0x202.
const LINUX_HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot loader id "undefined" (we are not a registered loader).
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Offset of the 64-bit entry point in a loaded bzImage.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Default `initrd_addr_max` of old boot protocols.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Tells an ELF vmlinux from a bzImage by its magic numbers.
pub fn detect_format<R: Read + Seek>(image: &mut R) -> std::io::Result<Option<KernelFormat>> {
    let mut head = [0u8; 0x206];
    image.seek(SeekFrom::Start(0))?;
    let n = read_up_to(image, &mut head)?;
    image.seek(SeekFrom::Start(0))?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(Some(KernelFormat::Elf));
    }
    if n >= 0x206 {
        let magic = u32::from_le_bytes([head[0x202], head[0x203], head[0x204], head[0x205]]);
        if magic == LINUX_HDRS_MAGIC {
            return Ok(Some(KernelFormat::BzImage));
        }
    }
    Ok(None)
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// What the kernel loader found, needed to write the boot structures.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Format of the image.
    pub format: KernelFormat,
    /// 64-bit entry point (Linux boot protocol).
    pub entry64: u64,
    /// PVH entry point, when the ELF note has one.
    pub pvh_entry: Option<u64>,
    /// First byte past the loaded image.
    pub kernel_end: u64,
    /// bzImage setup header, to copy into the zero page.
    pub setup_header: Option<setup_header>,
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::KernelFile {
        path: shown.clone(),
        source,
    })?;
    let format = detect_format(&mut file)
        .map_err(|source| BootError::KernelFile {
            path: shown.clone(),
            source,
        })?
        .ok_or_else(|| BootError::NotAKernel(shown.clone()))?;
    let himem = Some(GuestAddress(HIMEM_START));
    let load_err = |source| BootError::Load {
        path: shown.clone(),
        source,
    };
    match format {
        KernelFormat::Elf => {
            let res = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
            let pvh_entry = match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => Some(addr.raw_value()),
                _ => None,
            };
            Ok(LoadedKernel {
                format,
                entry64: res.kernel_load.raw_value(),
                pvh_entry,
                kernel_end: res.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            let res = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok(LoadedKernel {
                format,
                entry64: res.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
                pvh_entry: None,
                kernel_end: res.kernel_end,
                setup_header: res.setup_header,
            })
        }
    }
}

/// End of low RAM (below the MMIO gap) for `mem_size` bytes of memory.
pub fn lowmem_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// Where an initramfs of `size` bytes goes: page-aligned, as high as possible in low
/// RAM (and below `addr_max`), but above the kernel.
pub fn initramfs_addr(
    size: u64,
    kernel_end: u64,
    lowmem_end: u64,
    addr_max: u64,
) -> Result<u64, BootError> {
    let too_large = BootError::InitramfsTooLarge {
        size,
        kernel_end,
        lowmem_end,
    };
    let top = lowmem_end.min(addr_max.saturating_add(1));
    let start = top.checked_sub(size).ok_or(too_large)? & !0xfff;
    if start < kernel_end {
        return Err(BootError::InitramfsTooLarge {
            size,
            kernel_end,
            lowmem_end,
        });
    }
    Ok(start)
}

/// Loads the initramfs at `path`; returns (address, size).
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    mem_size: u64,
    addr_max: u64,
) -> Result<(u64, u64), BootError> {
    let file_err = |source| BootError::InitramfsFile {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(file_err)?;
    let size = file.metadata().map_err(file_err)?.len();
    let addr = initramfs_addr(size, kernel_end, lowmem_end(mem_size), addr_max)?;
    // Straight from the file into guest memory: no intermediate buffer to fault in
    // and copy (measured: 8.6 MiB took 35-50 ms more than none through a Vec).
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BootError::GuestMemory {
            what: "initramfs",
            source,
        })?;
    Ok((addr, size))
}

/// Writes `cmdline` (NUL-terminated) at `CMDLINE_ADDR`; returns its length without NUL.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<usize, BootError> {
    let cstr = cmdline.as_cstring()?;
    let len = cstr.as_bytes().len();
    if len + 1 > CMDLINE_MAX_SIZE {
        return Err(BootError::Cmdline(linux_loader::cmdline::Error::TooLarge));
    }
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline).map_err(
        |source| BootError::Load {
            path: "command line".into(),
            source,
        },
    )?;
    Ok(len)
}

/// The Linux zero page for `kernel`, with command line, initramfs and e820 map.
pub fn build_zero_page(
    header: Option<setup_header>,
    cmdline_len: usize,
    initramfs: Option<(u64, u64)>,
    e820: &[E820Entry],
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    } else {
        params.hdr.boot_flag = 0xaa55;
        params.hdr.header = LINUX_HDRS_MAGIC;
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
        };
    }
    params.e820_entries = e820.len().min(params.e820_table.len()) as u8;
    params
}

/// The PVH start info and its memory map and module list.
pub fn build_pvh_info(
    initramfs: Option<(u64, u64)>,
    e820: &[E820Entry],
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Vec<hvm_modlist_entry>,
) {
    let memmap: Vec<_> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let modules: Vec<_> = initramfs
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        })
        .into_iter()
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            PVH_MODLIST_ADDR
        },
        ..Default::default()
    };
    (info, memmap, modules)
}

/// Loads kernel, initramfs and command line, writes the boot structures for the
/// protocol the image supports (PVH preferred), and returns how the BSP enters.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &Path,
    initramfs: Option<&Path>,
    cmdline: &Cmdline,
    e820: &[E820Entry],
) -> Result<EntryMode, BootError> {
    let loaded = load_kernel(mem, kernel)?;
    let addr_max = loaded
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|m| *m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let initrd = initramfs
        .map(|p| load_initramfs(mem, p, loaded.kernel_end, mem_size, addr_max))
        .transpose()?;
    let cmdline_len = write_cmdline(mem, cmdline)?;
    if let Some(pvh_entry) = loaded.pvh_entry {
        let (info, memmap, modules) = build_pvh_info(initrd, e820);
        let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
        params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
        if !modules.is_empty() {
            params.set_modules(&modules, GuestAddress(PVH_MODLIST_ADDR));
        }
        PvhBootConfigurator::write_bootparams(&params, mem)?;
        Ok(EntryMode::Pvh32 {
            rip: pvh_entry,
            start_info: PVH_INFO_ADDR,
        })
    } else {
        let zero_page = build_zero_page(loaded.setup_header, cmdline_len, initrd, e820);
        mem.write_obj(zero_page, GuestAddress(ZERO_PAGE_ADDR))
            .map_err(|source| BootError::GuestMemory {
                what: "zero page",
                source,
            })?;
        Ok(EntryMode::Long64 {
            rip: loaded.entry64,
            rsi: ZERO_PAGE_ADDR,
            rsp: BOOT_STACK_POINTER,
        })
    }
}

/// Copies raw 64-bit guest code to `HIMEM_START`; the BSP starts there in long mode.
pub fn load_raw64(mem: &GuestMemoryMmap, code: &[u8]) -> Result<EntryMode, BootError> {
    let end = HIMEM_START + code.len() as u64;
    if mem.last_addr().raw_value() < end {
        return Err(BootError::RawTooLarge(code.len()));
    }
    mem.write_slice(code, GuestAddress(HIMEM_START))
        .map_err(|source| BootError::GuestMemory {
            what: "raw guest code",
            source,
        })?;
    Ok(EntryMode::Long64 {
        rip: HIMEM_START,
        rsi: 0,
        rsp: BOOT_STACK_POINTER,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::e820::e820_map;
    use std::io::Cursor;

    fn mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn detects_elf_bzimage_and_garbage() {
        let mut elf = Cursor::new(b"\x7fELF\x02\x01\x01".to_vec());
        assert_eq!(detect_format(&mut elf).unwrap(), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(
            detect_format(&mut Cursor::new(bz)).unwrap(),
            Some(KernelFormat::BzImage)
        );
        assert_eq!(
            detect_format(&mut Cursor::new(vec![0u8; 0x1000])).unwrap(),
            None
        );
        assert_eq!(
            detect_format(&mut Cursor::new(b"hi".to_vec())).unwrap(),
            None
        );
    }

    #[test]
    fn not_a_kernel_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notakernel");
        std::fs::write(&p, vec![0x90u8; 4096]).unwrap();
        let err = load_kernel(&mem(4 << 20), &p).unwrap_err();
        assert!(matches!(err, BootError::NotAKernel(_)), "{err}");
        assert!(err.to_string().contains("not a kernel"));
        let err = load_kernel(&mem(4 << 20), &dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, BootError::KernelFile { .. }), "{err}");
    }

    #[test]
    fn initramfs_goes_high_and_page_aligned() {
        let addr = initramfs_addr(0x1234, 0x20_0000, 64 << 20, DEFAULT_INITRD_ADDR_MAX).unwrap();
        assert_eq!(addr & 0xfff, 0);
        assert!(addr + 0x1234 <= 64 << 20);
        assert!(addr >= (64 << 20) - 0x2234);
        // Capped by initrd_addr_max.
        let addr = initramfs_addr(0x1000, 0x20_0000, 2 << 30, 0x37ff_ffff).unwrap();
        assert_eq!(addr, 0x3800_0000 - 0x1000);
        // Too big.
        let err = initramfs_addr(63 << 20, 2 << 20, 64 << 20, DEFAULT_INITRD_ADDR_MAX);
        assert!(matches!(err, Err(BootError::InitramfsTooLarge { .. })));
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let e820 = e820_map(128 << 20);
        let zp = build_zero_page(None, 42, Some((0x700_0000, 0x1000)), &e820);
        assert_eq!({ zp.hdr.boot_flag }, 0xaa55);
        assert_eq!({ zp.hdr.header }, LINUX_HDRS_MAGIC);
        assert_eq!({ zp.hdr.type_of_loader }, 0xff);
        assert_eq!({ zp.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ zp.hdr.cmdline_size }, 42);
        assert_eq!({ zp.hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ zp.hdr.ramdisk_size }, 0x1000);
        assert_eq!(zp.e820_entries as usize, e820.len());
        assert_eq!({ zp.e820_table[2].addr }, HIMEM_START);
    }

    #[test]
    fn pvh_info_has_magic_memmap_and_module() {
        let e820 = e820_map(64 << 20);
        let (info, memmap, mods) = build_pvh_info(Some((0x300_0000, 0x2000)), &e820);
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.memmap_entries as usize, e820.len());
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, PVH_MODLIST_ADDR);
        assert_eq!(memmap[0].size, e820[0].size);
        assert_eq!(mods[0].paddr, 0x300_0000);
        let (info, _, mods) = build_pvh_info(None, &e820);
        assert_eq!((info.nr_modules, info.modlist_paddr, mods.len()), (0, 0, 0));
    }

    #[test]
    fn cmdline_is_written_nul_terminated() {
        let m = mem(1 << 20);
        let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).unwrap();
        cl.insert_str("console=ttyS0").unwrap();
        cl.add_virtio_mmio_device(0x1000, GuestAddress(0xd000_0000), 5, None)
            .unwrap();
        let len = write_cmdline(&m, &cl).unwrap();
        let mut buf = vec![0u8; len + 1];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&buf, b"console=ttyS0 virtio_mmio.device=4K@0xd0000000:5\0");
    }

    #[test]
    fn raw_code_lands_at_himem() {
        let m = mem(4 << 20);
        let mode = load_raw64(&m, &[0xf4]).unwrap();
        assert_eq!(
            mode,
            EntryMode::Long64 {
                rip: HIMEM_START,
                rsi: 0,
                rsp: BOOT_STACK_POINTER
            }
        );
        let b: u8 = m.read_obj(GuestAddress(HIMEM_START)).unwrap();
        assert_eq!(b, 0xf4);
        assert!(matches!(
            load_raw64(&mem(1 << 20), &[0xf4]),
            Err(BootError::RawTooLarge(1))
        ));
    }
}

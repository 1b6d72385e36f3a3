//! The virtio-blk device (id 2): one request queue; each chain is a 16-byte header
//! (type, reserved, sector), data buffers, and a 1-byte status the device writes.
//! Supported: IN (read), OUT (write; IOERR on a read-only disk), FLUSH, GET_ID.
//! Features: VERSION_1, FLUSH, and RO for a read-only disk. Requests past the end of
//! the disk get IOERR; unknown types UNSUPP.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::BlockError;
use crate::config::BlockDisk;
use crate::seccomp::{SeccompLevel, ThreadRole};
use crate::virtio::worker::{Activation, QueueThread};
use crate::virtio::{ActivateContext, VirtioDevice, VirtioError, INT_VRING, VIRTIO_F_VERSION_1};

/// Virtio device id of block devices.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Feature: the device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: FLUSH requests.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Request types.
pub mod req {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Device id string (20 bytes).
    pub const GET_ID: u32 = 8;
}

/// Status values.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Failed.
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
}

/// Length of the GET_ID answer.
pub const ID_LEN: usize = 20;

/// A file-backed disk. Its thread starts with the device.
pub struct BlockDevice {
    capacity: u64,
    read_only: bool,
    worker: QueueThread,
}

impl BlockDevice {
    /// Opens `disk.path` (read-only if asked) and starts the device thread.
    pub fn new(disk: &BlockDisk, level: SeccompLevel) -> Result<Self, BlockError> {
        let open = |source| BlockError::Open {
            path: disk.path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!disk.read_only)
            .open(&disk.path)
            .map_err(open)?;
        let len = file.metadata().map_err(open)?.len();
        let disk_state = Arc::new(Disk {
            file,
            len,
            read_only: disk.read_only,
            id: disk_id(disk),
        });
        let worker = QueueThread::spawn("virtio-blk", ThreadRole::BlockWorker, level, || {}, {
            let disk = disk_state.clone();
            move |act: &mut Activation, q: usize| process_queue(&disk, act, q)
        })
        .map_err(BlockError::Worker)?;
        Ok(BlockDevice {
            capacity: len / SECTOR_SIZE,
            read_only: disk.read_only,
            worker,
        })
    }
}

/// The GET_ID string: the file name, cut to 20 bytes.
fn disk_id(disk: &BlockDisk) -> [u8; ID_LEN] {
    let mut id = [0u8; ID_LEN];
    let name = disk
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = name.len().min(ID_LEN);
    id[..n].copy_from_slice(&name.as_bytes()[..n]);
    id
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Only `capacity` (le64 at 0) is meaningful with the features offered.
        let cfg = self.capacity.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = cfg.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        self.worker.activate(ctx)
    }

    fn reset(&mut self) {
        self.worker.reset();
    }
}

/// The backing file and what the device says about it.
pub struct Disk {
    file: File,
    len: u64,
    read_only: bool,
    id: [u8; ID_LEN],
}

/// Handles every available chain of the request queue, then interrupts once.
pub fn process_queue(disk: &Disk, act: &mut Activation, q: usize) {
    let mut used = false;
    while let Some(chain) = act.queues[q].pop_descriptor_chain(&act.mem) {
        let head = chain.head_index();
        let len = handle_chain(disk, &act.mem, chain);
        if let Err(e) = act.queues[q].add_used(&act.mem, head, len) {
            tracing::warn!("virtio-blk add_used: {e}");
        }
        used = true;
    }
    if used {
        act.interrupt.trigger(INT_VRING);
    }
}

/// Serves one request; returns the bytes written into the chain (data + status).
fn handle_chain(
    disk: &Disk,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let descs: Vec<_> = chain.collect();
    // header (readable, 16 bytes) ... status (writable, last).
    let (Some(first), Some(last)) = (descs.first(), descs.last()) else {
        return 0;
    };
    if descs.len() < 2 || first.is_write_only() || first.len() < 16 || !last.is_write_only() {
        tracing::debug!("virtio-blk: malformed request chain");
        return 0;
    }
    let header = (
        mem.read_obj::<u32>(first.addr()),
        mem.read_obj::<u64>(first.addr().unchecked_add(8)),
    );
    let (Ok(kind), Ok(sector)) = header else {
        return 0;
    };
    let data = &descs[1..descs.len() - 1];
    let (st, written) = match kind {
        req::IN => transfer(disk, mem, sector, data, true),
        req::OUT if disk.read_only => (status::IOERR, 0),
        req::OUT => transfer(disk, mem, sector, data, false),
        req::FLUSH if disk.read_only => (status::OK, 0),
        req::FLUSH => match disk.file.sync_data() {
            Ok(()) => (status::OK, 0),
            Err(_) => (status::IOERR, 0),
        },
        req::GET_ID => match data.first() {
            Some(d) if d.is_write_only() => {
                let n = (d.len() as usize).min(ID_LEN);
                match mem.write_slice(&disk.id[..n], d.addr()) {
                    Ok(()) => (status::OK, n as u32),
                    Err(_) => (status::IOERR, 0),
                }
            }
            _ => (status::IOERR, 0),
        },
        _ => (status::UNSUPP, 0),
    };
    match mem.write_obj(st, last.addr()) {
        Ok(()) => written + 1,
        Err(_) => written,
    }
}

/// Reads (`to_guest`) or writes the data buffers at `sector`; returns the status and
/// the bytes written into guest memory.
fn transfer(
    disk: &Disk,
    mem: &GuestMemoryMmap,
    sector: u64,
    data: &[virtio_queue::desc::split::Descriptor],
    to_guest: bool,
) -> (u8, u32) {
    let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
    let Some(start) = sector.checked_mul(SECTOR_SIZE) else {
        return (status::IOERR, 0);
    };
    if start.checked_add(total).is_none_or(|end| end > disk.len) {
        return (status::IOERR, 0);
    }
    let mut off = start;
    let mut written = 0u32;
    for d in data {
        // Reads fill device-writable buffers; writes take device-readable ones.
        if d.is_write_only() != to_guest {
            return (status::IOERR, written);
        }
        let mut buf = vec![0u8; d.len() as usize];
        let ok = if to_guest {
            disk.file.read_exact_at(&mut buf, off).is_ok()
                && mem.write_slice(&buf, d.addr()).is_ok()
        } else {
            mem.read_slice(&mut buf, d.addr()).is_ok() && disk.file.write_all_at(&buf, off).is_ok()
        };
        if !ok {
            return (status::IOERR, written);
        }
        if to_guest {
            written += d.len();
        }
        off += u64::from(d.len());
    }
    (status::OK, written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp;
    use crate::virtio::test_utils::TestQueue;
    use crate::virtio::Interrupt;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const SECTORS: u64 = 8;

    /// A disk image whose byte i is i % 251, and a device over it.
    fn image(read_only: bool) -> (tempfile::TempDir, BlockDisk, Disk) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let bytes: Vec<u8> = (0..SECTORS * SECTOR_SIZE)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, bytes).unwrap();
        let disk = BlockDisk { path, read_only };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&disk.path)
            .unwrap();
        let state = Disk {
            file,
            len: SECTORS * SECTOR_SIZE,
            read_only,
            id: disk_id(&disk),
        };
        (dir, disk, state)
    }

    /// The driver side: one request queue over mmap'd guest memory.
    struct Driver {
        act: Activation,
        q: TestQueue<'static>,
        irq: EventFd,
    }

    impl Driver {
        fn new() -> Self {
            let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap(),
            ));
            let q = TestQueue::new(mem, 0x10_0000, 16);
            let irq = EventFd::new(EFD_NONBLOCK).unwrap();
            let act = Activation {
                mem: mem.clone(),
                queues: vec![q.queue()],
                interrupt: Arc::new(Interrupt::new(irq.try_clone().unwrap())),
            };
            Driver { act, q, irq }
        }

        /// Sends (header, data buffers, status); returns (status, used length, the
        /// data buffers' addresses).
        fn request(
            &mut self,
            disk: &Disk,
            kind: u32,
            sector: u64,
            data: &[(&[u8], u32, bool)],
        ) -> (u8, u32, Vec<u64>) {
            let mut hdr = kind.to_le_bytes().to_vec();
            hdr.extend(0u32.to_le_bytes());
            hdr.extend(sector.to_le_bytes());
            let h = self.q.buffer(&hdr, 16);
            let mut chain = vec![(h, 16, false)];
            let mut addrs = Vec::new();
            for (bytes, len, writable) in data {
                let a = self.q.buffer(bytes, *len);
                addrs.push(a);
                chain.push((a, *len, *writable));
            }
            let s = self.q.buffer(&[0xff], 1);
            chain.push((s, 1, true));
            let before = self.q.used_idx();
            self.q.add_chain(&chain);
            process_queue(disk, &mut self.act, 0);
            assert_eq!(self.q.used_idx(), before.wrapping_add(1));
            assert_eq!(self.irq.read().unwrap(), 1, "used-buffer interrupt");
            let status: u8 = self.act.mem.read_obj(GuestAddress(s)).unwrap();
            (status, self.q.used(before).1, addrs)
        }

        fn read(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.act.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        }
    }

    fn pattern(from: u64, len: u64) -> Vec<u8> {
        (from..from + len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn config_and_features() {
        let (_d, disk, _) = image(true);
        let dev = BlockDevice::new(&disk, SeccompLevel::Off).unwrap();
        assert_eq!(dev.device_type(), 2);
        let mut cap = [0u8; 8];
        dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), SECTORS);
        assert_ne!(dev.features() & VIRTIO_BLK_F_RO, 0);
        let (_d, disk, _) = image(false);
        let dev = BlockDevice::new(&disk, SeccompLevel::Off).unwrap();
        assert_eq!(dev.features() & VIRTIO_BLK_F_RO, 0);
        let missing = BlockDisk {
            path: "/nonexistent/disk.img".into(),
            read_only: true,
        };
        let err = BlockDevice::new(&missing, SeccompLevel::Off).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");
    }

    /// Reads, writes, flush, id and errors, on a thread with the virtio-blk seccomp
    /// filter enforced (a missing syscall ends the test binary with status 159).
    #[test]
    fn requests_under_the_enforced_filter() {
        let (_d, disk, state) = image(false);
        let mut drv = Driver::new();
        let path = disk.path.clone();
        std::thread::spawn(move || {
            seccomp::apply(ThreadRole::BlockWorker, SeccompLevel::Enforce).unwrap();
            // Read sectors 1-2 into two buffers.
            let (st, len, a) =
                drv.request(&state, req::IN, 1, &[(&[], 512, true), (&[], 512, true)]);
            assert_eq!((st, len), (status::OK, 1025));
            assert_eq!(drv.read(a[0], 512), pattern(512, 512));
            assert_eq!(drv.read(a[1], 512), pattern(1024, 512));
            // Write sector 3, then flush.
            let (st, len, _) = drv.request(&state, req::OUT, 3, &[(&[0xab; 512], 512, false)]);
            assert_eq!((st, len), (status::OK, 1));
            assert_eq!(drv.request(&state, req::FLUSH, 0, &[]).0, status::OK);
            // Past the end, a buffer of the wrong direction, an unknown type.
            let past = drv.request(&state, req::IN, SECTORS - 1, &[(&[], 1024, true)]);
            assert_eq!(past.0, status::IOERR);
            let wrong = drv.request(&state, req::IN, 0, &[(&[], 512, false)]);
            assert_eq!(wrong.0, status::IOERR);
            assert_eq!(drv.request(&state, 99, 0, &[]).0, status::UNSUPP);
            let (st, len, a) = drv.request(&state, req::GET_ID, 0, &[(&[], 20, true)]);
            assert_eq!((st, len), (status::OK, 21));
            assert_eq!(&drv.read(a[0], 8), b"disk.img");
        })
        .join()
        .expect("request thread");
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[3 * 512..4 * 512], &[0xab; 512][..]);
        assert_eq!(&bytes[4 * 512..5 * 512], &pattern(4 * 512, 512)[..]);
    }

    #[test]
    fn a_read_only_disk_refuses_writes() {
        let (_d, disk, state) = image(true);
        let mut drv = Driver::new();
        let (st, len, _) = drv.request(&state, req::OUT, 0, &[(&[0; 512], 512, false)]);
        assert_eq!((st, len), (status::IOERR, 1));
        assert_eq!(drv.request(&state, req::FLUSH, 0, &[]).0, status::OK);
        let (st, _, a) = drv.request(&state, req::IN, 0, &[(&[], 512, true)]);
        assert_eq!(st, status::OK);
        assert_eq!(drv.read(a[0], 512), pattern(0, 512));
        assert_eq!(
            std::fs::read(&disk.path).unwrap()[..512],
            pattern(0, 512)[..]
        );
    }
}

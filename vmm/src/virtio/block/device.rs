//! The virtio-blk device (id 2): one request queue; each chain is a 16-byte header
//! (type, reserved, sector), data buffers, and a 1-byte status the device writes.
//! Supported: IN (read), OUT (write; IOERR on a read-only disk), FLUSH, GET_ID.
//! Features: VERSION_1, FLUSH, and RO for a read-only disk. Requests past the end of
//! the disk get IOERR; unknown types UNSUPP. Every guest-given number (sector, buffer
//! lengths and addresses) is used with checked arithmetic: a request whose offsets
//! would wrap gets IOERR, and data moves through a bounded bounce buffer, whatever
//! lengths the guest claims.

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
/// Bytes of the request header: type (le32), reserved (le32), sector (le64).
const HEADER_LEN: u32 = 16;
/// Bytes moved between the disk and guest memory per positioned read or write.
const BOUNCE_LEN: usize = 64 * 1024;

/// A file-backed disk. Its thread starts with the device.
pub struct BlockDevice {
    capacity: u64,
    read_only: bool,
    worker: QueueThread,
}

impl BlockDevice {
    /// Opens `disk.path` (read-only if asked) and starts the device thread.
    pub fn new(disk: &BlockDisk, level: SeccompLevel) -> Result<Self, BlockError> {
        let disk_state = Arc::new(Disk::open(disk)?);
        let len = disk_state.len;
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

impl Disk {
    /// Opens `disk.path` (read-only if asked) and measures it.
    pub fn open(disk: &BlockDisk) -> Result<Self, BlockError> {
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
        Ok(Disk {
            file,
            len,
            read_only: disk.read_only,
            id: disk_id(disk),
        })
    }
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
    if descs.len() < 2
        || first.is_write_only()
        || first.len() < HEADER_LEN
        || !last.is_write_only()
        || last.len() < 1
    {
        tracing::debug!("virtio-blk: malformed request chain");
        return 0;
    }
    let mut header = [0u8; HEADER_LEN as usize];
    if mem.read_slice(&mut header, first.addr()).is_err() {
        return 0;
    }
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&header[8..]);
    let sector = u64::from_le_bytes(sector);
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
        Ok(()) => written.saturating_add(1),
        Err(_) => written,
    }
}

/// Reads (`to_guest`) or writes the data buffers at `sector`; returns the status and
/// the bytes written into guest memory. The whole request must lie within the disk
/// (checked before any I/O, without wrapping); data moves in [`BOUNCE_LEN`] pieces.
fn transfer(
    disk: &Disk,
    mem: &GuestMemoryMmap,
    sector: u64,
    data: &[virtio_queue::desc::split::Descriptor],
    to_guest: bool,
) -> (u8, u32) {
    let total = data
        .iter()
        .try_fold(0u64, |sum, d| sum.checked_add(u64::from(d.len())));
    let end = sector
        .checked_mul(SECTOR_SIZE)
        .and_then(|start| Some((start, start.checked_add(total?)?)));
    let Some((start, end)) = end.filter(|(_, end)| *end <= disk.len) else {
        return (status::IOERR, 0);
    };
    // The used length is a u32: a read larger than that cannot be reported.
    if to_guest && end - start > u64::from(u32::MAX - 1) {
        return (status::IOERR, 0);
    }
    let mut bounce = vec![0u8; BOUNCE_LEN.min((end - start) as usize)];
    let mut off = start;
    let mut written = 0u32;
    for d in data {
        // Reads fill device-writable buffers; writes take device-readable ones.
        if d.is_write_only() != to_guest {
            return (status::IOERR, written);
        }
        let mut done = 0u32;
        while done < d.len() {
            let n = (d.len() - done).min(BOUNCE_LEN as u32);
            let buf = &mut bounce[..n as usize];
            let ok = d.addr().checked_add(u64::from(done)).is_some_and(|addr| {
                if to_guest {
                    disk.file.read_exact_at(buf, off).is_ok() && mem.write_slice(buf, addr).is_ok()
                } else {
                    mem.read_slice(buf, addr).is_ok() && disk.file.write_all_at(buf, off).is_ok()
                }
            });
            if !ok {
                return (status::IOERR, written);
            }
            done += n;
            // Within the disk: `end` was checked above.
            off += u64::from(n);
            if to_guest {
                written += n;
            }
        }
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

    /// Sectors and lengths chosen to overflow: IOERR, never a panic or a wrapped
    /// offset landing inside the disk, and the disk is unchanged.
    #[test]
    fn out_of_range_requests_get_ioerr() {
        let (_d, disk, state) = image(false);
        let mut drv = Driver::new();
        let last_sector = u64::MAX / SECTOR_SIZE;
        for (kind, sector, len) in [
            (req::IN, u64::MAX, 512),
            (req::OUT, u64::MAX, 512),
            (req::IN, last_sector, 512),
            (req::OUT, last_sector, 1024),
            (req::IN, last_sector + 1, 0),
            (req::OUT, u64::MAX - 1, 0),
            (req::IN, SECTORS, 512),
            (req::OUT, SECTORS - 1, 513),
            (req::IN, 1 << 55, 512),
        ] {
            let writable = kind == req::IN;
            let (st, used, _) = drv.request(&state, kind, sector, &[(&[0xee; 4], len, writable)]);
            assert_eq!(
                (st, used),
                (status::IOERR, 1),
                "{kind} at {sector:#x}, {len}"
            );
        }
        // Buffers claiming gigabytes beyond guest memory (4 MiB): IOERR before any
        // access.
        let mut hdr = req::OUT.to_le_bytes().to_vec();
        hdr.extend([0; 4]);
        hdr.extend(0u64.to_le_bytes());
        let h = drv.q.buffer(&hdr, 16);
        let st = drv.q.buffer(&[0xff], 1);
        drv.q.add_chain(&[
            (h, 16, false),
            (0x20_0000, 0x7fff_0000, false),
            (0x20_0000, 0x7fff_0000, false),
            (st, 1, true),
        ]);
        process_queue(&state, &mut drv.act, 0);
        assert_eq!(
            drv.act.mem.read_obj::<u8>(GuestAddress(st)).unwrap(),
            status::IOERR
        );
        // A header or status descriptor outside guest memory, a status buffer of
        // length 0, or buffers whose lengths sum past u32::MAX (virtio-queue ends
        // such a chain early): the chain is consumed with nothing written.
        drv.act.mem.write_obj(0xffu8, GuestAddress(st)).unwrap();
        for chain in [
            [
                (h, 16, false),
                (0x20_0000, u32::MAX, false),
                (0x20_0000, u32::MAX, false),
                (st, 1, true),
            ]
            .as_slice(),
            &[(u64::MAX - 7, 16, false), (st, 1, true)],
            &[(h, 16, false), (u64::MAX, 1, true)],
            &[(h, 16, false), (st, 0, true)],
        ] {
            let before = drv.q.used_idx();
            drv.q.add_chain(chain);
            process_queue(&state, &mut drv.act, 0);
            assert_eq!(drv.q.used_idx(), before.wrapping_add(1));
            assert_eq!(drv.q.used(before).1, 0, "nothing written");
        }
        assert_eq!(drv.act.mem.read_obj::<u8>(GuestAddress(st)).unwrap(), 0xff);
        assert_eq!(
            std::fs::read(&disk.path).unwrap(),
            pattern(0, SECTORS * SECTOR_SIZE)
        );
    }

    /// A read larger than the bounce buffer, into one guest buffer, arrives whole.
    #[test]
    fn large_requests_move_in_pieces() {
        const BIG: u64 = 3 * BOUNCE_LEN as u64 / SECTOR_SIZE + 1;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.img");
        std::fs::write(&path, pattern(0, BIG * SECTOR_SIZE)).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let state = Disk {
            file,
            len: BIG * SECTOR_SIZE,
            read_only: false,
            id: [0; ID_LEN],
        };
        let mut drv = Driver::new();
        let len = (BIG * SECTOR_SIZE) as u32;
        let (st, used, a) = drv.request(&state, req::IN, 0, &[(&[], len, true)]);
        assert_eq!((st, used), (status::OK, len + 1));
        assert_eq!(drv.read(a[0], len as usize), pattern(0, u64::from(len)));
        let nines = vec![9u8; len as usize - 512];
        let (st, _, _) = drv.request(&state, req::OUT, 1, &[(&nines[..], len - 512, false)]);
        assert_eq!(st, status::OK);
        assert_eq!(std::fs::read(&path).unwrap()[512..], nines[..]);
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

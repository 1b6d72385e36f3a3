//! What the husk-vmm fuzz targets share: a cursor over the fuzz input, and a guest
//! driver that lays out split virtqueues in plain mmap'd guest memory and publishes
//! descriptor chains the input describes — well-formed ones, and raw descriptors
//! with any address, length, flags and next index (loops, indirect tables, buffers
//! outside guest memory), as a hostile driver would write them.

use std::sync::Arc;

use husk_vmm::virtio::worker::Activation;
use husk_vmm::virtio::Interrupt;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest RAM of every target.
pub const GUEST_RAM: u64 = 0x20_0000;
/// Where queue `i` starts (descriptor table, then avail and used rings).
const QUEUE_BASE: u64 = 0x1_0000;
const QUEUE_STRIDE: u64 = 0x1_0000;
/// Buffers are allocated round-robin in `[DATA_BASE, GUEST_RAM)`.
const DATA_BASE: u64 = 0x10_0000;
/// Descriptor flags.
pub const DESC_F_NEXT: u16 = 1;
/// Device-writable buffer.
pub const DESC_F_WRITE: u16 = 2;
/// Longest buffer a structured descriptor gets.
pub const MAX_BUFFER: u32 = 0x1_0000;

/// Reads the fuzz input front to back; past its end every read gives zeros.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let src = self.bytes(2);
        b[..src.len()].copy_from_slice(src);
        u16::from_le_bytes(b)
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let src = self.bytes(4);
        b[..src.len()].copy_from_slice(src);
        u32::from_le_bytes(b)
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let src = self.bytes(8);
        b[..src.len()].copy_from_slice(src);
        u64::from_le_bytes(b)
    }
}

/// One buffer of a chain the target wants published.
pub struct Buffer<'a> {
    /// Contents (device-readable buffers; zero-padded to `len`).
    pub data: &'a [u8],
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// One split virtqueue as the driver sees it.
struct DriverQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
}

/// Guest memory, the driver's queues and the device's interrupt line.
pub struct GuestDriver {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    queues: Vec<DriverQueue>,
    next_buf: u64,
    /// The device's interrupt line.
    pub interrupt: Arc<Interrupt>,
}

impl GuestDriver {
    /// Guest memory with one queue of each size in `sizes` (powers of two ≤ 1024).
    pub fn new(sizes: &[u16]) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_RAM as usize)])
            .expect("guest memory");
        let queues = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let desc = QUEUE_BASE + QUEUE_STRIDE * i as u64;
                let avail = desc + 16 * u64::from(size);
                let used = (avail + 6 + 2 * u64::from(size) + 0xfff) & !0xfff;
                DriverQueue {
                    size,
                    desc,
                    avail,
                    used,
                    next_desc: 0,
                    avail_idx: 0,
                }
            })
            .collect();
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        GuestDriver {
            mem,
            queues,
            next_buf: DATA_BASE,
            interrupt: Arc::new(Interrupt::new(irq)),
        }
    }

    /// The device's view of queue `i`, ready.
    pub fn queue(&self, i: usize) -> Queue {
        let q = &self.queues[i];
        let mut dq = Queue::new(q.size).expect("queue size");
        dq.set_size(q.size);
        dq.set_desc_table_address(Some(q.desc as u32), Some((q.desc >> 32) as u32));
        dq.set_avail_ring_address(Some(q.avail as u32), Some((q.avail >> 32) as u32));
        dq.set_used_ring_address(Some(q.used as u32), Some((q.used >> 32) as u32));
        dq.set_ready(true);
        dq
    }

    /// An activation over every queue, as the worker thread gets it.
    pub fn activation(&self) -> Activation {
        Activation {
            mem: self.mem.clone(),
            queues: (0..self.queues.len()).map(|i| self.queue(i)).collect(),
            interrupt: self.interrupt.clone(),
        }
    }

    /// Copies `data` (zero-padded to `len`) into a fresh guest buffer.
    pub fn buffer(&mut self, data: &[u8], len: u32) -> u64 {
        let len = u64::from(len.min(MAX_BUFFER));
        if self.next_buf + len > GUEST_RAM {
            self.next_buf = DATA_BASE;
        }
        let addr = self.next_buf;
        self.next_buf = (addr + len + 0xf) & !0xf;
        let n = data.len().min(len as usize);
        let _ = self.mem.write_slice(&data[..n], GuestAddress(addr));
        let _ = self
            .mem
            .write_slice(&vec![0u8; len as usize - n], GuestAddress(addr + n as u64));
        addr
    }

    /// Publishes a well-formed chain of `bufs` on queue `q`; returns the buffers'
    /// guest addresses.
    pub fn add_chain(&mut self, q: usize, bufs: &[Buffer<'_>]) -> Vec<u64> {
        let placed: Vec<(u64, u32, u16)> = bufs
            .iter()
            .map(|b| {
                let len = b.len.min(MAX_BUFFER);
                let flags = if b.writable { DESC_F_WRITE } else { 0 };
                (self.buffer(b.data, len), len, flags)
            })
            .collect();
        let size = self.queues[q].size;
        let head = self.queues[q].next_desc;
        let count = placed.len();
        let addrs = placed.iter().map(|p| p.0).collect();
        let raw: Vec<(u64, u32, u16, u16)> = placed
            .into_iter()
            .enumerate()
            .map(|(i, (addr, len, flags))| {
                let next = (head + i as u16 + 1) % size;
                let more = if i + 1 < count { DESC_F_NEXT } else { 0 };
                (addr, len, flags | more, next)
            })
            .collect();
        self.add_raw_chain(q, &raw);
        addrs
    }

    /// Writes descriptors (address, length, flags, next) as given into the next
    /// table slots of queue `q` and makes the first one available; returns its index.
    pub fn add_raw_chain(&mut self, q: usize, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let dq = &mut self.queues[q];
        let head = dq.next_desc;
        for (addr, len, flags, next) in descs {
            let d = dq.desc + 16 * u64::from(dq.next_desc);
            dq.next_desc = (dq.next_desc + 1) % dq.size;
            let _ = self.mem.write_obj(*addr, GuestAddress(d));
            let _ = self.mem.write_obj(*len, GuestAddress(d + 8));
            let _ = self.mem.write_obj(*flags, GuestAddress(d + 12));
            let _ = self.mem.write_obj(*next, GuestAddress(d + 14));
        }
        let slot = dq.avail + 4 + 2 * u64::from(dq.avail_idx % dq.size);
        let _ = self.mem.write_obj(head, GuestAddress(slot));
        dq.avail_idx = dq.avail_idx.wrapping_add(1);
        let _ = self.mem.write_obj(dq.avail_idx, GuestAddress(dq.avail + 2));
        head
    }

    /// Sets queue `q`'s avail index to anything (a driver lying about its ring).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        let dq = &mut self.queues[q];
        dq.avail_idx = idx;
        let _ = self.mem.write_obj(idx, GuestAddress(dq.avail + 2));
    }

    /// Publishes a chain on queue `q` described by the input: `count` descriptors,
    /// each structured (readable with data from the input, or writable of an input
    /// length) or raw (address, length, flags, next all from the input).
    pub fn add_chain_from(&mut self, q: usize, input: &mut Input<'_>, count: usize) {
        let size = self.queues[q].size;
        let head = self.queues[q].next_desc;
        let mut descs = Vec::with_capacity(count);
        for i in 0..count {
            let mode = input.u8();
            let chained = i + 1 < count;
            let next = (head + i as u16 + 1) % size;
            if mode & 0x80 != 0 {
                descs.push((input.u64(), input.u32(), input.u16(), input.u16()));
                continue;
            }
            let writable = mode & 1 != 0;
            let len = u32::from(input.u16()) % (MAX_BUFFER + 1);
            let data = if writable {
                &[][..]
            } else {
                input.bytes(len as usize)
            };
            let addr = self.buffer(data, len);
            let mut flags = if writable { DESC_F_WRITE } else { 0 };
            if chained {
                flags |= DESC_F_NEXT;
            }
            descs.push((addr, len, flags, next));
        }
        if !descs.is_empty() {
            self.add_raw_chain(q, &descs);
        }
    }

    /// Queue `q`'s used index.
    pub fn used_idx(&self, q: usize) -> u16 {
        let used = self.queues[q].used;
        self.mem.read_obj(GuestAddress(used + 2)).unwrap_or(0)
    }

    /// Used element `i` of queue `q`: (descriptor head, bytes written).
    pub fn used(&self, q: usize, i: u16) -> (u32, u32) {
        let dq = &self.queues[q];
        let e = dq.used + 4 + 8 * u64::from(i % dq.size);
        (
            self.mem.read_obj(GuestAddress(e)).unwrap_or(0),
            self.mem.read_obj(GuestAddress(e + 4)).unwrap_or(0),
        )
    }
}

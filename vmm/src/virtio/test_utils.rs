//! A test virtqueue: writes descriptor tables and the available ring into plain
//! mmap'd guest memory the way a driver would, and reads back the used ring.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// Descriptor flag: the chain continues.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;

/// A split virtqueue laid out at `base`: descriptors, then avail, then used (4 KiB
/// aligned), with buffers allocated from `base + 0x4000` up.
pub struct TestQueue<'a> {
    mem: &'a GuestMemoryMmap,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    next_buf: u64,
}

impl<'a> TestQueue<'a> {
    /// A queue of `size` entries at `base`.
    pub fn new(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 0xfff) & !0xfff;
        TestQueue {
            mem,
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            next_buf: base + 0x4000,
        }
    }

    /// A ready `Queue` pointing at this layout.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Allocates a guest buffer of `len` bytes holding `data` (zero-padded).
    pub fn buffer(&mut self, data: &[u8], len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf = (addr + u64::from(len) + 0xf) & !0xf;
        let mut bytes = data.to_vec();
        bytes.resize(len as usize, 0);
        self.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
        addr
    }

    /// Publishes a chain of (address, length, device-writable) buffers; returns the head.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, (addr, len, writable)) in bufs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let mut flags = if *writable { VIRTQ_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            let d = self.desc + 16 * u64::from(idx);
            self.mem.write_obj(*addr, GuestAddress(d)).unwrap();
            self.mem.write_obj(*len, GuestAddress(d + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
            self.mem
                .write_obj(self.next_desc, GuestAddress(d + 14))
                .unwrap();
        }
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// The used ring index.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used element `i`: (descriptor head, bytes written).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let e = GuestAddress(self.used + 4 + 8 * u64::from(i % self.size));
        (
            self.mem.read_obj(e).unwrap(),
            self.mem.read_obj(e.unchecked_add(4)).unwrap(),
        )
    }
}

//! Virtio devices over the virtio-mmio transport (virtio 1.x): the device trait, the
//! interrupt line, the transport, and the devices (vsock, fs, block, net).

pub mod block;
pub mod fs;
pub mod guest_log;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;
pub mod worker;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Device status: driver acknowledged the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status: driver knows how to drive it.
pub const STATUS_DRIVER: u32 = 2;
/// Device status: driver is ready.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status: feature negotiation done.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status: device hit an error and needs a reset.
pub const STATUS_NEEDS_RESET: u32 = 64;
/// Device status: driver gave up.
pub const STATUS_FAILED: u32 = 128;
/// Feature bit: virtio 1.x (non-legacy) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Interrupt status bit: a used ring was updated.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// Errors from virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The driver configured a queue that does not fit guest memory.
    #[error("queue {0} is not valid for guest memory")]
    InvalidQueue(usize),
    /// The device could not start its worker.
    #[error("activating the device: {0}")]
    Activate(String),
    /// An eventfd could not be created or cloned.
    #[error("virtio eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// The interrupt line of one virtio-mmio device: the InterruptStatus register plus the
/// irqfd that injects the GSI.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    /// An interrupt line raising `evt` (an irqfd eventfd).
    pub fn new(evt: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            evt,
        }
    }

    /// Sets `bits` in InterruptStatus and injects the interrupt.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::warn!("virtio interrupt: {e}");
        }
    }

    /// InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irqfd eventfd (tests read it).
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them.
    pub queues: Vec<Queue>,
    /// One eventfd per queue, written on QueueNotify (ioeventfd in a VM).
    pub queue_evts: Vec<EventFd>,
    /// The device's interrupt line.
    pub interrupt: std::sync::Arc<Interrupt>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// Virtio device id (19 for vsock).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the queue count.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Features offered (must include [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError>;
    /// Stops the device after a driver reset.
    fn reset(&mut self) {}
}

/// A copy of `q`'s driver-visible configuration (virtio-queue's `Queue` is not Clone).
pub fn copy_queue(q: &Queue) -> Queue {
    // Queue::new only fails for a max size that is not a power of two, which `q` has.
    let mut n = Queue::new(q.max_size()).unwrap_or_default();
    n.set_size(q.size());
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(q.desc_table());
    n.set_desc_table_address(lo, hi);
    let (lo, hi) = split(q.avail_ring());
    n.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(q.used_ring());
    n.set_used_ring_address(lo, hi);
    n.set_event_idx(q.event_idx_enabled());
    n.set_ready(q.ready());
    n
}

#[cfg(test)]
mod tests {
    use super::test_utils::TestQueue;
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn virtqueue_chains_written_by_the_helper_pop_and_complete() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut tq = TestQueue::new(&mem, 0x1_0000, 16);
        let out = tq.buffer(b"request", 7);
        let inb = tq.buffer(&[], 64);
        let head = tq.add_chain(&[(out, 7, false), (inb, 64, true)]);
        // The transport hands devices a copy of the driver's queue.
        let mut q = copy_queue(&tq.queue());
        assert!(q.is_valid(&mem));
        let chain = q.pop_descriptor_chain(&mem).expect("one chain");
        assert_eq!(chain.head_index(), head);
        let descs: Vec<_> = chain.collect();
        assert_eq!(descs.len(), 2);
        assert!(!descs[0].is_write_only() && descs[1].is_write_only());
        let mut req = [0u8; 7];
        mem.read_slice(&mut req, descs[0].addr()).unwrap();
        assert_eq!(&req, b"request");
        mem.write_slice(b"reply", descs[1].addr()).unwrap();
        q.add_used(&mem, head, 5).unwrap();
        assert_eq!(tq.used_idx(), 1);
        assert_eq!(tq.used(0), (u32::from(head), 5));
        assert!(q.pop_descriptor_chain(&mem).is_none());
    }
}

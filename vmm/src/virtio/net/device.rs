//! The virtio-net device (id 1): queue 0 receives (host → guest), queue 1 transmits.
//! Every buffer starts with a 12-byte `virtio_net_hdr_v1`, which the tap speaks too
//! (IFF_VNET_HDR, header size 12). No offloads are negotiated, so the only header
//! either side may see is "no checksum, no GSO": a TX frame goes to the tap behind a
//! header of zeros whatever the guest wrote there (the host kernel's GSO and
//! checksum parsing never sees guest-chosen values), and an RX frame reaches the
//! guest behind zeros with `num_buffers` = 1.
//!
//! Features: VERSION_1, MAC (config space holds it) and STATUS (link always up). The
//! device thread reads the tap only while the guest has RX buffers posted: a frame
//! that finds none waits in the device until the guest's next RX notify, and until
//! then the tap (edge-triggered in epoll) queues the rest in the host kernel.

use std::io::ErrorKind;

use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::tap::{Tap, VNET_HDR_LEN};
use super::{MacAddr, NetError};
use crate::seccomp::{SeccompLevel, ThreadRole};
use crate::virtio::worker::{Activation, QueueThread};
use crate::virtio::{ActivateContext, VirtioDevice, VirtioError, INT_VRING, VIRTIO_F_VERSION_1};

/// Virtio device id of network devices.
pub const VIRTIO_ID_NET: u32 = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue.
pub const RX_QUEUE: usize = 0;
/// The transmit queue.
pub const TX_QUEUE: usize = 1;
/// The worker's event source for "the tap is readable".
pub const TAP_EVENT: usize = 2;
/// Feature: config space holds the MAC.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Feature: config space holds the link status.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// Link status bit: up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// Largest frame handled, vnet header included (64 KiB IP packet + Ethernet + VLAN).
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65_550;

/// The vnet header of every frame written to the tap: no checksum to finish
/// (flags 0), no segmentation (gso_type NONE), nothing else.
const TX_VNET_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
/// The vnet header of every frame given to the guest: zeros but `num_buffers` = 1
/// (bytes 10-11, le16; one buffer per frame without VIRTIO_NET_F_MRG_RXBUF). Without
/// GUEST_CSUM the guest may not be told "checksum valid" or "partial".
const RX_VNET_HDR: [u8; VNET_HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// A virtio-net device over a tap. Its thread starts with the device and owns the tap.
pub struct NetDevice {
    mac: MacAddr,
    worker: QueueThread,
}

impl NetDevice {
    /// A device for `tap` with `mac`; its thread confines itself with `level`.
    pub fn new(tap: Tap, mac: MacAddr, level: SeccompLevel) -> Result<Self, NetError> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&tap);
        let mut queues = NetQueues::new(tap);
        let worker = QueueThread::spawn_with_fds(
            "virtio-net",
            ThreadRole::NetWorker,
            level,
            vec![fd],
            || {},
            move |act: &mut Activation, source: usize| queues.handle(act, source),
        )
        .map_err(NetError::Worker)?;
        Ok(NetDevice { mac, worker })
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], status (le16); max_virtqueue_pairs and mtu are not offered.
        let mut cfg = [0u8; 8];
        cfg[..6].copy_from_slice(&self.mac);
        cfg[6..].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
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

/// The device thread's state: the tap and a frame read from it that has not found a
/// guest buffer yet.
pub struct NetQueues {
    tap: Tap,
    frame: Vec<u8>,
    pending: usize,
    tx: Vec<u8>,
}

impl NetQueues {
    /// State over `tap`.
    pub fn new(tap: Tap) -> Self {
        NetQueues {
            tap,
            frame: vec![0; MAX_FRAME],
            pending: 0,
            tx: Vec::with_capacity(MAX_FRAME),
        }
    }

    /// Reacts to a notify of queue `source`, or to the tap becoming readable.
    pub fn handle(&mut self, act: &mut Activation, source: usize) {
        match source {
            TX_QUEUE => self.process_tx(act),
            RX_QUEUE | TAP_EVENT => self.process_rx(act),
            _ => {}
        }
    }

    /// Sends every available TX chain to the tap, then interrupts once. A chain that
    /// is malformed or that the tap refuses is dropped, as a wire would.
    pub fn process_tx(&mut self, act: &mut Activation) {
        let mut used = false;
        while let Some(chain) = act.queues[TX_QUEUE].pop_descriptor_chain(&act.mem) {
            let head = chain.head_index();
            if gather(&act.mem, chain, &mut self.tx) && self.tx.len() > VNET_HDR_LEN {
                // Nothing negotiated lets the guest ask for offloads.
                self.tx[..VNET_HDR_LEN].copy_from_slice(&TX_VNET_HDR);
                if let Err(e) = self.tap.write_frame(&self.tx) {
                    tracing::debug!(tap = self.tap.name(), "virtio-net tx dropped: {e}");
                }
            } else {
                tracing::debug!("virtio-net: malformed tx chain dropped");
            }
            if let Err(e) = act.queues[TX_QUEUE].add_used(&act.mem, head, 0) {
                tracing::warn!("virtio-net tx add_used: {e}");
            }
            used = true;
        }
        if used {
            act.interrupt.trigger(INT_VRING);
        }
    }

    /// Moves frames from the tap into RX chains until the tap is empty or the guest
    /// has no buffer left, then interrupts once.
    pub fn process_rx(&mut self, act: &mut Activation) {
        let mut used = false;
        loop {
            if self.pending == 0 {
                match self.tap.read_frame(&mut self.frame) {
                    Ok(n) if n > VNET_HDR_LEN => self.pending = n,
                    // Not a tap (a closed test socket): nothing more will come.
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!(tap = self.tap.name(), "virtio-net rx: {e}");
                        break;
                    }
                }
            }
            // No buffer: keep the frame until the guest posts more (RX notify).
            let Some(chain) = act.queues[RX_QUEUE].pop_descriptor_chain(&act.mem) else {
                break;
            };
            let head = chain.head_index();
            let frame = &mut self.frame[..self.pending];
            frame[..VNET_HDR_LEN].copy_from_slice(&RX_VNET_HDR);
            let len = scatter(&act.mem, chain, frame).unwrap_or_else(|| {
                tracing::debug!("virtio-net: rx frame of {} bytes dropped", frame.len());
                0
            });
            self.pending = 0;
            if let Err(e) = act.queues[RX_QUEUE].add_used(&act.mem, head, len) {
                tracing::warn!("virtio-net rx add_used: {e}");
            }
            used = true;
        }
        if used {
            act.interrupt.trigger(INT_VRING);
        }
    }
}

/// Concatenates a TX chain's device-readable buffers into `out`; false for a chain
/// with a device-writable buffer, an unreadable one or more than [`MAX_FRAME`] bytes.
fn gather(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    for d in chain {
        let len = d.len() as usize;
        if d.is_write_only() || out.len() + len > MAX_FRAME {
            return false;
        }
        let start = out.len();
        out.resize(start + len, 0);
        if mem.read_slice(&mut out[start..], d.addr()).is_err() {
            return false;
        }
    }
    true
}

/// Writes `frame` across an RX chain's device-writable buffers; the byte count, or
/// `None` when the chain is malformed or too small (the frame is then dropped).
fn scatter(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    frame: &[u8],
) -> Option<u32> {
    let mut rest = frame;
    for d in chain {
        if rest.is_empty() {
            break;
        }
        if !d.is_write_only() {
            return None;
        }
        let n = rest.len().min(d.len() as usize);
        mem.write_slice(&rest[..n], d.addr()).ok()?;
        rest = &rest[n..];
    }
    rest.is_empty().then_some(frame.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::TestQueue;
    use crate::virtio::{copy_queue, Interrupt};
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const MAC: MacAddr = [0x02, 0, 0, 0, 0, 0x42];

    /// A tap stand-in: a non-blocking SOCK_SEQPACKET pair keeps frame boundaries as a
    /// tap does. Returns (the device's end, the host's end).
    fn tap_pair() -> (Tap, File) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the array on success.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: both fds were just created and are owned by nobody else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        (Tap::from_file(File::from(a), "test0"), File::from(b))
    }

    /// A frame as the tap carries it: a zero vnet header, then Ethernet.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend([0xff; 6]); // dst: broadcast
        f.extend(MAC); // src
        f.extend([0x88, 0xb5]); // local experimental ethertype
        f.extend(payload);
        f
    }

    /// The driver side: RX at 0x10_0000, TX at 0x20_0000 over mmap'd guest memory.
    struct Driver {
        mem: &'static GuestMemoryMmap,
        rx: TestQueue<'static>,
        tx: TestQueue<'static>,
        irq: EventFd,
    }

    impl Driver {
        fn new() -> Self {
            let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap(),
            ));
            Driver {
                mem,
                rx: TestQueue::new(mem, 0x10_0000, 16),
                tx: TestQueue::new(mem, 0x20_0000, 16),
                irq: EventFd::new(EFD_NONBLOCK).unwrap(),
            }
        }

        fn activation(&self) -> Activation {
            Activation {
                mem: self.mem.clone(),
                queues: vec![self.rx.queue(), self.tx.queue()],
                interrupt: Arc::new(Interrupt::new(self.irq.try_clone().unwrap())),
            }
        }

        fn read(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        }
    }

    #[test]
    fn config_space_and_features() {
        let (tap, _host) = tap_pair();
        let dev = NetDevice::new(tap, MAC, SeccompLevel::Off).unwrap();
        assert_eq!(dev.device_type(), VIRTIO_ID_NET);
        assert_eq!(dev.queue_max_sizes(), vec![256, 256]);
        let f = dev.features();
        assert_eq!(
            f,
            VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
        );
        let mut cfg = [0u8; 8];
        dev.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], &MAC);
        assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), VIRTIO_NET_S_LINK_UP);
        let mut tail = [0xaa; 4];
        dev.read_config(4, &mut tail);
        assert_eq!(tail, [0, 0x42, 1, 0]);
    }

    #[test]
    fn a_tx_chain_reaches_the_tap_as_one_frame() {
        let (tap, host) = tap_pair();
        let mut net = NetQueues::new(tap);
        let mut drv = Driver::new();
        let mut act = drv.activation();
        let f = frame(b"hello from the guest");
        // Header and frame in separate buffers, as Linux's driver sends them.
        let h = drv.tx.buffer(&f[..VNET_HDR_LEN], VNET_HDR_LEN as u32);
        let rest = &f[VNET_HDR_LEN..];
        let b = drv.tx.buffer(rest, rest.len() as u32);
        drv.tx.add_chain(&[
            (h, VNET_HDR_LEN as u32, false),
            (b, rest.len() as u32, false),
        ]);
        // A malformed chain (device-writable buffer) is consumed and dropped.
        let w = drv.tx.buffer(&[], 64);
        drv.tx.add_chain(&[(w, 64, true)]);
        net.handle(&mut act, TX_QUEUE);
        assert_eq!(drv.tx.used_idx(), 2);
        assert_eq!(drv.tx.used(0).1, 0);
        assert_eq!(drv.irq.read().unwrap(), 1, "one interrupt for the batch");
        let mut got = vec![0u8; MAX_FRAME];
        let n = (&host).read(&mut got).unwrap();
        assert_eq!(&got[..n], &f[..]);
        assert_eq!(
            (&host).read(&mut got).unwrap_err().kind(),
            ErrorKind::WouldBlock,
            "nothing else was sent"
        );
    }

    /// Whatever the guest puts in the vnet header (NEEDS_CSUM with offsets beyond
    /// the frame, GSO TCPv4 with a tiny gso_size, ECN), the tap gets zeros; and the
    /// host's header bits (DATA_VALID) do not reach the guest.
    #[test]
    fn vnet_headers_are_zeroed_both_ways() {
        let (tap, host) = tap_pair();
        let mut net = NetQueues::new(tap);
        let mut drv = Driver::new();
        let mut act = drv.activation();
        let mut hostile = frame(b"gso me");
        // flags NEEDS_CSUM, gso_type TCPV4|ECN, hdr_len, gso_size 1, csum_start,
        // csum_offset past the end, num_buffers.
        hostile[..VNET_HDR_LEN]
            .copy_from_slice(&[1, 0x81, 0xff, 0xff, 1, 0, 0xf0, 0xff, 0xfe, 0xff, 9, 9]);
        // Split inside the header too.
        let a = drv.tx.buffer(&hostile[..5], 5);
        let b = drv.tx.buffer(&hostile[5..], (hostile.len() - 5) as u32);
        drv.tx
            .add_chain(&[(a, 5, false), (b, (hostile.len() - 5) as u32, false)]);
        net.handle(&mut act, TX_QUEUE);
        let mut got = vec![0u8; MAX_FRAME];
        let n = (&host).read(&mut got).unwrap();
        assert_eq!(&got[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
        assert_eq!(&got[VNET_HDR_LEN..n], &hostile[VNET_HDR_LEN..]);

        let mut inbound = frame(b"from the host");
        inbound[0] = 2; // VIRTIO_NET_HDR_F_DATA_VALID
        inbound[1] = 1;
        (&host).write_all(&inbound).unwrap();
        let r = drv.rx.buffer(&[], 1526);
        drv.rx.add_chain(&[(r, 1526, true)]);
        net.handle(&mut act, RX_QUEUE);
        assert_eq!(drv.rx.used_idx(), 1);
        assert_eq!(
            drv.read(r, VNET_HDR_LEN),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        );
    }

    #[test]
    fn rx_frames_wait_for_guest_buffers_then_land_in_them() {
        let (tap, host) = tap_pair();
        let mut net = NetQueues::new(tap);
        let mut drv = Driver::new();
        let mut act = drv.activation();
        let first = frame(b"first");
        let second = frame(&[7u8; 1400]);
        (&host).write_all(&first).unwrap();
        (&host).write_all(&second).unwrap();
        // The tap is readable but the guest has posted nothing yet.
        net.handle(&mut act, TAP_EVENT);
        assert_eq!(drv.rx.used_idx(), 0);
        assert!(
            drv.irq.read().is_err(),
            "no interrupt without a used buffer"
        );
        // One small buffer (header only: the frame is dropped), then one split
        // buffer large enough for the first frame, then one for the second.
        let tiny = drv.rx.buffer(&[], VNET_HDR_LEN as u32);
        drv.rx.add_chain(&[(tiny, VNET_HDR_LEN as u32, true)]);
        let a = drv.rx.buffer(&[], 10);
        let b = drv.rx.buffer(&[], 1514);
        drv.rx.add_chain(&[(a, 10, true), (b, 1514, true)]);
        net.handle(&mut act, RX_QUEUE);
        assert_eq!(drv.rx.used_idx(), 2);
        assert_eq!(drv.rx.used(0).1, 0, "too small: dropped");
        assert_eq!(drv.rx.used(1).1, second.len() as u32);
        assert_eq!(drv.irq.read().unwrap(), 1);
        let mut expect = second.clone();
        expect[10..12].copy_from_slice(&1u16.to_le_bytes());
        let mut got = drv.read(a, 10);
        got.extend(drv.read(b, second.len() - 10));
        assert_eq!(got, expect, "num_buffers = 1, the rest unchanged");
        // The tap is empty now; the device holds nothing.
        let c = drv.rx.buffer(&[], 1526);
        drv.rx.add_chain(&[(c, 1526, true)]);
        net.handle(&mut act, RX_QUEUE);
        assert_eq!(drv.rx.used_idx(), 2);
    }

    /// The device's own thread, seccomp enforced: a frame written into the "tap"
    /// after activation reaches the guest through the edge-triggered tap event, and a
    /// TX notify sends one back.
    #[test]
    fn the_device_thread_moves_frames_both_ways_under_its_filter() {
        let (tap, host) = tap_pair();
        let mut dev = NetDevice::new(tap, MAC, SeccompLevel::Enforce).unwrap();
        let mut drv = Driver::new();
        let rx_buf = drv.rx.buffer(&[], 1526);
        drv.rx.add_chain(&[(rx_buf, 1526, true)]);
        let evts: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let ctx = ActivateContext {
            mem: drv.mem.clone(),
            queues: vec![copy_queue(&drv.rx.queue()), copy_queue(&drv.tx.queue())],
            queue_evts: evts.iter().map(|e| e.try_clone().unwrap()).collect(),
            interrupt: Arc::new(Interrupt::new(drv.irq.try_clone().unwrap())),
            acked_features: dev.features(),
        };
        dev.activate(ctx).unwrap();
        let wait = |what: &str, done: &dyn Fn() -> bool| {
            let start = Instant::now();
            while !done() {
                assert!(start.elapsed() < Duration::from_secs(10), "{what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let inbound = frame(b"to the guest");
        (&host).write_all(&inbound).unwrap();
        wait("rx frame delivered", &|| drv.rx.used_idx() == 1);
        assert_eq!(drv.rx.used(0).1, inbound.len() as u32);
        assert_eq!(
            drv.read(rx_buf + VNET_HDR_LEN as u64, inbound.len() - VNET_HDR_LEN),
            inbound[VNET_HDR_LEN..]
        );
        let outbound = frame(b"from the guest");
        let t = drv.tx.buffer(&outbound, outbound.len() as u32);
        drv.tx.add_chain(&[(t, outbound.len() as u32, false)]);
        evts[TX_QUEUE].write(1).unwrap();
        wait("tx frame consumed", &|| drv.tx.used_idx() == 1);
        let mut got = vec![0u8; MAX_FRAME];
        let n = (&host).read(&mut got).unwrap();
        assert_eq!(&got[..n], &outbound[..]);
        dev.reset();
    }
}

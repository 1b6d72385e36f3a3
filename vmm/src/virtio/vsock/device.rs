//! The virtio-vsock device (id 19; queues rx, tx, event; config = guest CID) and its
//! worker thread: an epoll loop over the queue eventfds, the host listener and the
//! connected host sockets, moving packets between the virtqueues (through
//! virtio-vsock's packet views) and the [`VsockMuxer`].

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::{Header, Interest, OutPacket, VsockMuxer};
use super::{VsockError, MAX_PKT_DATA};
use crate::seccomp::{self, SeccompLevel, ThreadRole};
use crate::virtio::{
    ActivateContext, Interrupt, VirtioDevice, VirtioError, INT_VRING, VIRTIO_F_VERSION_1,
};

/// Virtio device id of vsock.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;

const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_EV: u64 = 2;
const TOKEN_KILL: u64 = 3;
const TOKEN_LISTENER: u64 = 4;
/// Host sockets use `TOKEN_SOCKET_BASE + fd`.
const TOKEN_SOCKET_BASE: u64 = 16;

/// Messages to the vsock thread.
enum WorkerMsg {
    /// The driver set DRIVER_OK: serve these queues until reset.
    Activate(ActivateContext),
    /// The device is going away.
    Exit,
}

/// The vsock device. Its thread starts with the device (so vCPU threads never spawn
/// threads) and serves the queues between activation and reset.
pub struct VsockDevice {
    guest_cid: u64,
    to_worker: Sender<WorkerMsg>,
    /// Ends an activation (reset) or wakes the thread to exit.
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl VsockDevice {
    /// A device with guest CID `guest_cid`; binds `uds_path` now so host clients can
    /// connect before the guest driver is up (they wait in the listen backlog). The
    /// worker thread confines itself with `seccomp`.
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        seccomp: SeccompLevel,
    ) -> Result<Self, VsockError> {
        let mut muxer = VsockMuxer::new(&uds_path, guest_cid)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(VsockError::Worker)?;
        let worker_stop = stop.try_clone().map_err(VsockError::Worker)?;
        let (to_worker, from_device) = channel::<WorkerMsg>();
        let thread = std::thread::Builder::new()
            .name("vsock".into())
            .spawn(move || {
                if let Err(e) = crate::caps::drop_for(ThreadRole::VsockWorker) {
                    tracing::error!("vsock thread: {e}");
                    return;
                }
                if let Err(e) = seccomp::apply(ThreadRole::VsockWorker, seccomp) {
                    tracing::error!("vsock thread: {e}");
                    return;
                }
                while let Ok(WorkerMsg::Activate(ctx)) = from_device.recv() {
                    let _ = worker_stop.read();
                    match VsockWorker::new(ctx, muxer, &worker_stop) {
                        Ok(w) => muxer = w.run(),
                        Err(failed) => {
                            let (m, e) = *failed;
                            tracing::error!("vsock activation: {e}");
                            muxer = m;
                        }
                    }
                    muxer.reset();
                }
            })
            .map_err(VsockError::Worker)?;
        Ok(VsockDevice {
            guest_cid,
            to_worker,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for VsockDevice {
    fn drop(&mut self) {
        let _ = self.to_worker.send(WorkerMsg::Exit);
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.guest_cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = cfg.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        self.to_worker
            .send(WorkerMsg::Activate(ctx))
            .map_err(|_| VirtioError::Activate("the vsock thread has exited".into()))
    }

    fn reset(&mut self) {
        let _ = self.stop.write(1);
    }
}

/// How [`VsockWorker::process_tx`] left the tx ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxState {
    /// Every available chain was handled.
    Drained,
    /// Chains are left in the ring until the guest takes packets off the rx queue.
    WaitingForRxRoom,
}

/// Moves packets between the virtqueues and the muxer.
pub struct VsockWorker {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    muxer: VsockMuxer,
    epoll: Epoll,
    watched: HashMap<RawFd, EventSet>,
}

impl VsockWorker {
    /// A worker over the activated queues; `stop` ends [`run`](Self::run). On error
    /// the muxer is handed back.
    pub fn new(
        ctx: ActivateContext,
        muxer: VsockMuxer,
        stop: &EventFd,
    ) -> Result<Self, Box<(VsockMuxer, VsockError)>> {
        let epoll = match Self::epoll_for(&ctx, &muxer, stop) {
            Ok(e) => e,
            Err(e) => return Err(Box::new((muxer, e))),
        };
        Ok(VsockWorker {
            mem: ctx.mem,
            queues: ctx.queues,
            queue_evts: ctx.queue_evts,
            interrupt: ctx.interrupt,
            muxer,
            epoll,
            watched: HashMap::new(),
        })
    }

    fn epoll_for(
        ctx: &ActivateContext,
        muxer: &VsockMuxer,
        stop: &EventFd,
    ) -> Result<Epoll, VsockError> {
        let epoll = Epoll::new().map_err(VsockError::Worker)?;
        let add = |fd: RawFd, token: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(VsockError::Worker)
        };
        for (i, token) in [(RXQ, TOKEN_RX), (TXQ, TOKEN_TX), (EVQ, TOKEN_EV)] {
            if let Some(e) = ctx.queue_evts.get(i) {
                add(e.as_raw_fd(), token)?;
            }
        }
        add(stop.as_raw_fd(), TOKEN_KILL)?;
        add(muxer.listener_fd(), TOKEN_LISTENER)?;
        Ok(epoll)
    }

    /// The muxer (tests).
    pub fn muxer_mut(&mut self) -> &mut VsockMuxer {
        &mut self.muxer
    }

    /// Runs until the stop eventfd fires; returns the muxer.
    pub fn run(mut self) -> VsockMuxer {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            // Tx waits while the rx queue is full; rx buffers the guest posted free
            // room, so go on until one of them runs dry.
            while self.process_tx() == TxState::WaitingForRxRoom && self.process_rx() {}
            self.process_rx();
            self.sync_interests();
            // Wake for the earliest handshake/close deadline, if any.
            let timeout = self.muxer.next_deadline().map_or(-1, |d| {
                let ms = d
                    .saturating_duration_since(std::time::Instant::now())
                    .as_millis();
                ms.clamp(1, i32::MAX as u128) as i32
            });
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("vsock epoll: {e}");
                    return self.muxer;
                }
            };
            for ev in &events[..n] {
                let set = ev.event_set();
                match ev.data() {
                    TOKEN_RX => drain_evt(&self.queue_evts[RXQ]),
                    TOKEN_TX => drain_evt(&self.queue_evts[TXQ]),
                    TOKEN_EV => drain_evt(&self.queue_evts[EVQ]),
                    TOKEN_KILL => return self.muxer,
                    TOKEN_LISTENER => self.muxer.accept(),
                    token => {
                        let fd = (token - TOKEN_SOCKET_BASE) as RawFd;
                        let hup = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
                        self.muxer.socket_ready(
                            fd,
                            set.contains(EventSet::IN) || hup,
                            set.contains(EventSet::OUT),
                            hup,
                        );
                    }
                }
            }
            self.muxer.expire(std::time::Instant::now());
        }
    }

    /// Keeps epoll's view of the host sockets in line with what the muxer wants.
    fn sync_interests(&mut self) {
        let wanted: HashMap<RawFd, EventSet> = self
            .muxer
            .interests()
            .into_iter()
            .map(|(fd, i)| (fd, event_set(i)))
            .collect();
        self.watched.retain(|fd, _| {
            if wanted.contains_key(fd) {
                true
            } else {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, *fd, EpollEvent::default());
                false
            }
        });
        for (fd, set) in wanted {
            if self.watched.get(&fd) == Some(&set) {
                continue;
            }
            let ev = EpollEvent::new(set, TOKEN_SOCKET_BASE + fd as u64);
            // A closed fd leaves epoll by itself and its number may come back: fall
            // back to Add when Modify finds nothing.
            let r = if self.watched.contains_key(&fd) {
                self.epoll
                    .ctl(ControlOperation::Modify, fd, ev)
                    .or_else(|_| self.epoll.ctl(ControlOperation::Add, fd, ev))
            } else {
                self.epoll
                    .ctl(ControlOperation::Add, fd, ev)
                    .or_else(|_| self.epoll.ctl(ControlOperation::Modify, fd, ev))
            };
            match r {
                Ok(()) => {
                    self.watched.insert(fd, set);
                }
                Err(e) => tracing::warn!(fd, "vsock epoll ctl: {e}"),
            }
        }
    }

    /// Guest → host: parses every tx chain and hands it to the muxer. While the
    /// muxer's rx queue is full the remaining chains stay in the ring (a guest that
    /// posts no rx buffers cannot make us queue replies without bound).
    pub fn process_tx(&mut self) -> TxState {
        let mut used = false;
        let mut state = TxState::Drained;
        loop {
            if self.muxer.rx_queue_full() {
                state = TxState::WaitingForRxRoom;
                break;
            }
            let Some(mut chain) = self.queues[TXQ].pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(&self.mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let hdr = Header {
                        src_cid: pkt.src_cid(),
                        dst_cid: pkt.dst_cid(),
                        src_port: pkt.src_port(),
                        dst_port: pkt.dst_port(),
                        len: pkt.len(),
                        type_: pkt.type_(),
                        op: pkt.op(),
                        flags: pkt.flags(),
                        buf_alloc: pkt.buf_alloc(),
                        fwd_cnt: pkt.fwd_cnt(),
                    };
                    let mut data = vec![0u8; pkt.len() as usize];
                    if let Some(slice) = pkt.data_slice() {
                        let n = slice.copy_to(&mut data[..]);
                        data.truncate(n);
                    } else {
                        data.clear();
                    }
                    self.muxer.handle_guest_packet(&hdr, &data);
                }
                Err(e) => tracing::debug!("vsock: bad tx packet: {e}"),
            }
            if let Err(e) = self.queues[TXQ].add_used(&self.mem, head, 0) {
                tracing::warn!("vsock tx add_used: {e}");
            }
            used = true;
        }
        if used {
            self.notify(TXQ);
        }
        state
    }

    /// Host → guest: fills rx buffers with the muxer's packets, splitting RW payloads
    /// that do not fit one buffer. True when it used at least one buffer.
    pub fn process_rx(&mut self) -> bool {
        let mut used = false;
        while let Some(pkt) = self.muxer.next_packet() {
            let Some(mut chain) = self.queues[RXQ].pop_descriptor_chain(&self.mem) else {
                self.muxer.unpop(pkt);
                break;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(&self.mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut v) => {
                    let room = v.data_slice().map_or(0, |s| s.len());
                    let n = pkt.data.len().min(room);
                    let (now, later) = pkt.data.split_at(n);
                    if !later.is_empty() {
                        let mut rest = OutPacket {
                            hdr: pkt.hdr,
                            data: later.to_vec(),
                        };
                        rest.hdr.len = later.len() as u32;
                        self.muxer.unpop(rest);
                    }
                    let _ = v.header_slice().write_slice(&[0u8; PKT_HEADER_SIZE], 0);
                    let h = pkt.hdr;
                    v.set_src_cid(h.src_cid)
                        .set_dst_cid(h.dst_cid)
                        .set_src_port(h.src_port)
                        .set_dst_port(h.dst_port)
                        .set_type(h.type_)
                        .set_op(h.op)
                        .set_flags(h.flags)
                        .set_buf_alloc(h.buf_alloc)
                        .set_fwd_cnt(h.fwd_cnt)
                        .set_len(n as u32);
                    if let Some(s) = v.data_slice() {
                        s.copy_from(now);
                    }
                    (PKT_HEADER_SIZE + n) as u32
                }
                Err(e) => {
                    tracing::debug!("vsock: unusable rx buffer: {e}");
                    self.muxer.unpop(pkt);
                    0
                }
            };
            if let Err(e) = self.queues[RXQ].add_used(&self.mem, head, len) {
                tracing::warn!("vsock rx add_used: {e}");
            }
            used = true;
        }
        if used {
            self.notify(RXQ);
        }
        used
    }

    fn notify(&mut self, q: usize) {
        match self.queues[q].needs_notification(&self.mem) {
            Ok(false) => {}
            _ => self.interrupt.trigger(INT_VRING),
        }
    }
}

fn event_set(i: Interest) -> EventSet {
    let mut s = EventSet::empty();
    if i.read {
        s |= EventSet::IN;
    }
    if i.write {
        s |= EventSet::OUT;
    }
    s
}

fn drain_evt(e: &EventFd) {
    let _ = e.read();
}

#[cfg(test)]
mod tests {
    use super::super::{op, HOST_CID, TYPE_STREAM};
    use super::*;
    use crate::virtio::test_utils::TestQueue;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use vm_memory::GuestAddress;

    const CID: u64 = 3;

    fn raw_header(op: u16, src_port: u32, dst_port: u32, len: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(CID.to_le_bytes());
        b.extend(HOST_CID.to_le_bytes());
        b.extend(src_port.to_le_bytes());
        b.extend(dst_port.to_le_bytes());
        b.extend(len.to_le_bytes());
        b.extend(TYPE_STREAM.to_le_bytes());
        b.extend(op.to_le_bytes());
        b.extend(0u32.to_le_bytes()); // flags
        b.extend(65536u32.to_le_bytes()); // buf_alloc
        b.extend(0u32.to_le_bytes()); // fwd_cnt
        assert_eq!(b.len(), PKT_HEADER_SIZE);
        b
    }

    fn field_u16(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }
    fn field_u32(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    /// A guest's tx REQUEST + RW travel through the virtqueues to the host socket
    /// `<sock>_<port>`, and the host's reply comes back in an rx buffer.
    #[test]
    fn packets_cross_the_virtqueues() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("v.sock");
        let listener = UnixListener::bind(format!("{}_1234", sock.display())).unwrap();

        let mut rxq = TestQueue::new(&mem, 0x10_0000, 16);
        let mut txq = TestQueue::new(&mem, 0x20_0000, 16);
        let evq = TestQueue::new(&mem, 0x30_0000, 16);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let evts: Vec<_> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let ctx = ActivateContext {
            mem: mem.clone(),
            queues: vec![rxq.queue(), txq.queue(), evq.queue()],
            queue_evts: evts,
            interrupt: Arc::new(Interrupt::new(irq.try_clone().unwrap())),
            acked_features: VIRTIO_F_VERSION_1,
        };
        let muxer = VsockMuxer::new(&sock, CID).unwrap();
        let stop = EventFd::new(0).unwrap();
        let mut w = VsockWorker::new(ctx, muxer, &stop)
            .map_err(|f| f.1)
            .unwrap();

        // Guest: REQUEST to host port 1234 (header-only chain), then RW "ping" with the
        // header and payload in separate descriptors.
        let req = raw_header(op::REQUEST, 50, 1234, 0);
        let a = txq.buffer(&req, req.len() as u32);
        txq.add_chain(&[(a, req.len() as u32, false)]);
        let rw = raw_header(op::RW, 50, 1234, 4);
        let h = txq.buffer(&rw, rw.len() as u32);
        let d = txq.buffer(b"ping", 4);
        txq.add_chain(&[(h, rw.len() as u32, false), (d, 4, false)]);
        w.process_tx();
        assert_eq!(txq.used_idx(), 2);
        assert_eq!(irq.read().unwrap(), 1, "tx completion interrupt");

        let (mut host, _) = listener.accept().unwrap();
        let mut got = [0u8; 4];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");

        // Two rx buffers (header + data in one descriptor each): RESPONSE, then RW.
        let b1 = rxq.buffer(&[], 4096 + PKT_HEADER_SIZE as u32);
        rxq.add_chain(&[(b1, 4096 + PKT_HEADER_SIZE as u32, true)]);
        let b2 = rxq.buffer(&[], 4096 + PKT_HEADER_SIZE as u32);
        rxq.add_chain(&[(b2, 4096 + PKT_HEADER_SIZE as u32, true)]);
        host.write_all(b"pong").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        for (fd, i) in w.muxer_mut().interests() {
            w.muxer_mut().socket_ready(fd, i.read, i.write, false);
        }
        w.process_rx();
        assert_eq!(rxq.used_idx(), 2);
        assert_eq!(rxq.used(0).1, PKT_HEADER_SIZE as u32);
        assert_eq!(rxq.used(1).1, PKT_HEADER_SIZE as u32 + 4);
        let mut hdr = vec![0u8; PKT_HEADER_SIZE + 4];
        mem.read_slice(&mut hdr, GuestAddress(b1)).unwrap();
        assert_eq!(field_u16(&hdr, 30), op::RESPONSE);
        mem.read_slice(&mut hdr, GuestAddress(b2)).unwrap();
        assert_eq!(field_u16(&hdr, 30), op::RW);
        assert_eq!(field_u32(&hdr, 16), 1234, "src_port");
        assert_eq!(field_u32(&hdr, 20), 50, "dst_port");
        assert_eq!(field_u32(&hdr, 24), 4, "len");
        assert_eq!(&hdr[PKT_HEADER_SIZE..], b"pong");
    }

    /// A guest that floods the tx ring and posts no rx buffers: the device takes tx
    /// packets only until the rx queue is full and leaves the rest in the ring; rx
    /// buffers let it go on, and afterwards a new connection still works.
    #[test]
    fn tx_waits_while_the_rx_queue_is_full() {
        use crate::virtio::vsock::muxer::MAX_RX_QUEUE;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("v.sock");
        let listener = UnixListener::bind(format!("{}_1234", sock.display())).unwrap();
        let mut rxq = TestQueue::new(&mem, 0x10_0000, QUEUE_SIZE);
        let mut txq = TestQueue::new(&mem, 0x20_0000, QUEUE_SIZE);
        let evq = TestQueue::new(&mem, 0x30_0000, 16);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let ctx = ActivateContext {
            mem: mem.clone(),
            queues: vec![rxq.queue(), txq.queue(), evq.queue()],
            queue_evts: (0..3)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            interrupt: Arc::new(Interrupt::new(irq.try_clone().unwrap())),
            acked_features: VIRTIO_F_VERSION_1,
        };
        let stop = EventFd::new(0).unwrap();
        let mut w = VsockWorker::new(ctx, VsockMuxer::new(&sock, CID).unwrap(), &stop)
            .map_err(|f| f.1)
            .unwrap();

        // Data for a connection that does not exist: each one asks for an RST.
        let bogus = raw_header(op::RW, 60, 999, 0);
        let b = txq.buffer(&bogus, bogus.len() as u32);
        let fill = |txq: &mut TestQueue, n: usize| {
            for _ in 0..n {
                txq.add_chain(&[(b, bogus.len() as u32, false)]);
            }
        };
        fill(&mut txq, usize::from(QUEUE_SIZE));
        w.process_tx();
        assert_eq!(txq.used_idx(), QUEUE_SIZE);
        fill(&mut txq, 100);
        assert_eq!(w.process_tx(), TxState::WaitingForRxRoom);
        assert_eq!(txq.used_idx(), QUEUE_SIZE, "nothing taken while rx is full");
        assert_eq!(w.muxer_mut().pending_counts(), (MAX_RX_QUEUE, 0, 0));

        // 16 rx buffers: 16 RSTs delivered, then 16 more tx packets taken.
        let r = rxq.buffer(&[], 4096 + PKT_HEADER_SIZE as u32);
        let post = |rxq: &mut TestQueue, n: usize| {
            for _ in 0..n {
                rxq.add_chain(&[(r, 4096 + PKT_HEADER_SIZE as u32, true)]);
            }
        };
        post(&mut rxq, 16);
        assert!(w.process_rx());
        assert_eq!(w.process_tx(), TxState::WaitingForRxRoom);
        assert_eq!(txq.used_idx(), QUEUE_SIZE + 16);
        let mut hdr = vec![0u8; PKT_HEADER_SIZE];
        mem.read_slice(&mut hdr, GuestAddress(r)).unwrap();
        assert_eq!(field_u16(&hdr, 30), op::RST);

        // Enough rx buffers to drain everything, as the run loop does it.
        let mut delivered = 16u32;
        for _ in 0..100 {
            if txq.used_idx() == QUEUE_SIZE + 100 && !w.muxer_mut().has_pending() {
                break;
            }
            let free = usize::from(QUEUE_SIZE) - (delivered - u32::from(rxq.used_idx())) as usize;
            post(&mut rxq, free.min(64));
            delivered += free.min(64) as u32;
            while w.process_tx() == TxState::WaitingForRxRoom && w.process_rx() {}
            w.process_rx();
        }
        assert_eq!(txq.used_idx(), QUEUE_SIZE + 100, "every tx packet taken");
        assert_eq!(w.muxer_mut().pending_counts(), (0, 0, 0));

        // The device still works: a REQUEST to a listening host port is answered.
        let req = raw_header(op::REQUEST, 61, 1234, 0);
        let a = txq.buffer(&req, req.len() as u32);
        txq.add_chain(&[(a, req.len() as u32, false)]);
        post(&mut rxq, 1);
        assert_eq!(w.process_tx(), TxState::Drained);
        assert!(w.process_rx());
        listener.accept().unwrap();
        let last = rxq.used_idx().wrapping_sub(1);
        assert_eq!(rxq.used(last).1, PKT_HEADER_SIZE as u32);
        mem.read_slice(&mut hdr, GuestAddress(r)).unwrap();
        assert_eq!(field_u16(&hdr, 30), op::RESPONSE);
    }

    #[test]
    fn config_space_is_the_guest_cid() {
        let dir = tempfile::tempdir().unwrap();
        let dev =
            VsockDevice::new(0x1_0000_0003, dir.path().join("v.sock"), SeccompLevel::Off).unwrap();
        let mut lo = [0u8; 4];
        dev.read_config(0, &mut lo);
        let mut hi = [0u8; 4];
        dev.read_config(4, &mut hi);
        assert_eq!((u32::from_le_bytes(lo), u32::from_le_bytes(hi)), (3, 1));
        assert_eq!(dev.device_type(), 19);
        assert_eq!(dev.queue_max_sizes().len(), 3);
        // The host socket exists as soon as the device does.
        UnixStream::connect(dir.path().join("v.sock")).unwrap();
    }
}

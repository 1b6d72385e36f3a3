//! Connection multiplexing between guest vsock streams and host Unix sockets.
//!
//! Credit-based flow control follows the virtio spec: each side announces its buffer
//! (`buf_alloc`) and how much it has consumed (`fwd_cnt`); a sender never has more
//! than `buf_alloc - (tx_cnt - fwd_cnt)` bytes in flight. Guest → host bytes wait in a
//! per-connection buffer bounded by our `buf_alloc`; host → guest bytes are read only
//! while the guest has credit.
//!
//! Everything the guest can make us queue is bounded, because a guest that posts no
//! rx buffers must not grow VMM memory: the queue of packets for the guest holds at
//! most [`MAX_RX_QUEUE`] packets (the device stops taking tx packets while it is
//! full); a control packet for a live connection that finds it full is owed instead
//! (a flag on the connection, sent once there is room: the "out of sync" fallback);
//! resets for connections that do not exist (any more) wait in a small deduplicated
//! set of [`MAX_PENDING_RSTS`] and are dropped beyond it; and there are at most
//! [`MAX_CONNECTIONS`] connections.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{op, VsockError, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Receive buffer we announce per connection.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Forwarded bytes after which we tell the guest about freed buffer space.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;
/// Largest payload we put in one packet to the guest (Linux posts 4 KiB rx buffers).
pub const MAX_RX_DATA: usize = 4096;
/// Packets queued for the guest; at this many we stop reading host sockets, the
/// device stops taking the guest's tx packets, and control packets are owed.
pub const MAX_RX_QUEUE: usize = 256;
/// Resets for unknown connections kept while the rx queue is full; more are dropped.
pub const MAX_PENDING_RSTS: usize = 64;
/// Live connections (host- and guest-initiated); a REQUEST beyond it gets RST, a host
/// client beyond it is closed after its CONNECT line.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// How long a guest has to answer our REQUEST, or to send RST after our SHUTDOWN.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(2);
/// First host-side port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// A vsock packet header (host view; byte order handled by the device).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed.
    pub fwd_cnt: u32,
}

/// A packet for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutPacket {
    /// Header (`len` equals `data.len()`).
    pub hdr: Header,
    /// Payload.
    pub data: Vec<u8>,
}

/// Parses `CONNECT <port>` (without the newline).
pub fn parse_connect(line: &str) -> Option<u32> {
    let rest = line.strip_prefix("CONNECT ")?;
    let port = rest.trim_end_matches('\r');
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Host-initiated, REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows.
    Established,
    /// The host side hung up; SHUTDOWN sent, waiting for the guest's RST.
    Closing,
}

/// Connection key: (host-side port, guest-side port).
type Key = (u32, u32);

/// Control packets a connection owes the guest because the rx queue was full when it
/// wanted to send them (bits of [`Connection::owed`]), in the order they are sent.
const OWED_OPS: [(u8, u16, u32); 4] = [
    (OWE_REQUEST, op::REQUEST, 0),
    (OWE_RESPONSE, op::RESPONSE, 0),
    (OWE_CREDIT_UPDATE, op::CREDIT_UPDATE, 0),
    (OWE_SHUTDOWN, op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND),
];
const OWE_REQUEST: u8 = 1;
const OWE_RESPONSE: u8 = 2;
const OWE_CREDIT_UPDATE: u8 = 4;
const OWE_SHUTDOWN: u8 = 8;

fn owed_bit(op: u16) -> Option<u8> {
    OWED_OPS
        .iter()
        .find(|(_, o, _)| *o == op)
        .map(|(b, _, _)| *b)
}

struct Connection {
    stream: UnixStream,
    state: ConnState,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Guest bytes delivered to the host socket.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` last told to the guest.
    fwd_cnt_told: Wrapping<u32>,
    /// Guest bytes not yet written to the host socket.
    tx_buf: VecDeque<u8>,
    /// The guest will send no more: shut the socket's write half once flushed.
    peer_done_sending: bool,
    /// When the connection entered its current state (for the handshake and close
    /// timeouts).
    since: Instant,
    /// `OWE_*` bits: control packets not yet queued for lack of room.
    owed: u8,
}

impl Connection {
    fn new(stream: UnixStream, state: ConnState) -> Self {
        Connection {
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
            tx_buf: VecDeque::new(),
            peer_done_sending: false,
            since: Instant::now(),
            owed: 0,
        }
    }

    fn enter(&mut self, state: ConnState) {
        self.state = state;
        self.since = Instant::now();
    }

    /// Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// What epoll should watch on a host socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    /// Wake when readable.
    pub read: bool,
    /// Wake when writable.
    pub write: bool,
}

/// Routes packets between the guest and host Unix sockets.
pub struct VsockMuxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    handshakes: HashMap<RawFd, Handshake>,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    /// Packets for the guest, at most [`MAX_RX_QUEUE`].
    out: VecDeque<OutPacket>,
    /// Connections with `owed` bits set, each once.
    owing: VecDeque<Key>,
    /// Resets for unknown connections that found `out` full, at most
    /// [`MAX_PENDING_RSTS`], each once.
    pending_rsts: VecDeque<Key>,
    /// Resets dropped since the last debug line about it.
    dropped_rsts: u64,
    next_local_port: u32,
}

impl VsockMuxer {
    /// Listens on `uds_path` (a stale socket file there is replaced).
    pub fn new(uds_path: &Path, guest_cid: u64) -> Result<Self, VsockError> {
        let bind_err = |source| VsockError::Bind {
            path: uds_path.display().to_string(),
            source,
        };
        match std::fs::remove_file(uds_path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = UnixListener::bind(uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(VsockMuxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            out: VecDeque::new(),
            owing: VecDeque::new(),
            pending_rsts: VecDeque::new(),
            dropped_rsts: 0,
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The listening socket's fd.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Drops every connection and queued packet (device reset); keeps listening.
    pub fn reset(&mut self) {
        self.handshakes.clear();
        self.conns.clear();
        self.by_fd.clear();
        self.out.clear();
        self.owing.clear();
        self.pending_rsts.clear();
    }

    /// The earliest handshake or close deadline, if any connection waits on the guest.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter(|c| c.state != ConnState::Established)
            .map(|c| c.since + STATE_TIMEOUT)
            .min()
    }

    /// Resets connections whose guest never answered our REQUEST or SHUTDOWN in time.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state != ConnState::Established && now >= c.since + STATE_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            tracing::debug!(?key, "vsock: guest did not answer in time, RST");
            self.remove(key);
            self.rst(key);
        }
    }

    /// Number of live connections (tests, logging).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Takes the next packet for the guest.
    pub fn next_packet(&mut self) -> Option<OutPacket> {
        let pkt = self.out.pop_front();
        self.catch_up();
        pkt.or_else(|| self.out.pop_front())
    }

    /// Puts back (the rest of) a packet that [`next_packet`](Self::next_packet) gave
    /// and that found no guest buffer; the queue never grows past its bound by it.
    pub fn unpop(&mut self, pkt: OutPacket) {
        if self.out.len() >= MAX_RX_QUEUE {
            // `catch_up` refilled the slot: hand the newest packet back to its source.
            if let Some(last) = self.out.pop_back() {
                self.owe_again(last);
            }
        }
        self.out.push_front(pkt);
    }

    /// True when packets wait for guest rx buffers.
    pub fn has_pending(&self) -> bool {
        !self.out.is_empty() || !self.owing.is_empty() || !self.pending_rsts.is_empty()
    }

    /// True when the rx queue is full: the device leaves the guest's tx packets in
    /// its ring until the guest posts rx buffers.
    pub fn rx_queue_full(&self) -> bool {
        self.out.len() >= MAX_RX_QUEUE
    }

    /// Packets, owed control packets and resets waiting for the guest (tests).
    pub fn pending_counts(&self) -> (usize, usize, usize) {
        (self.out.len(), self.owing.len(), self.pending_rsts.len())
    }

    /// Moves owed control packets, then pending resets, into `out` while it has room.
    fn catch_up(&mut self) {
        while self.out.len() < MAX_RX_QUEUE {
            let Some(&key) = self.owing.front() else {
                break;
            };
            let bits = self.conns.get(&key).map_or(0, |c| c.owed);
            let Some(&(bit, op, flags)) = OWED_OPS.iter().find(|(b, _, _)| bits & b != 0) else {
                self.owing.pop_front();
                continue;
            };
            if let Some(c) = self.conns.get_mut(&key) {
                c.owed &= !bit;
                if c.owed == 0 {
                    self.owing.pop_front();
                }
            }
            self.push(key, op, flags, Vec::new());
        }
        while self.out.len() < MAX_RX_QUEUE {
            let Some(key) = self.pending_rsts.pop_front() else {
                break;
            };
            self.push(key, op::RST, 0, Vec::new());
        }
    }

    /// Takes back a control packet that no longer fits `out`.
    fn owe_again(&mut self, pkt: OutPacket) {
        // Only packets `catch_up` queued come back here: owed ones and resets.
        let key = (pkt.hdr.src_port, pkt.hdr.dst_port);
        match owed_bit(pkt.hdr.op) {
            Some(bit) if self.conns.contains_key(&key) => self.owe(key, bit),
            _ => self.queue_rst(key),
        }
    }

    fn owe(&mut self, key: Key, bit: u8) {
        if let Some(c) = self.conns.get_mut(&key) {
            if c.owed == 0 {
                self.owing.push_back(key);
            }
            c.owed |= bit;
        }
    }

    fn queue_rst(&mut self, key: Key) {
        if self.pending_rsts.contains(&key) {
            return;
        }
        if self.pending_rsts.len() >= MAX_PENDING_RSTS {
            self.dropped_rsts += 1;
            if self.dropped_rsts.is_power_of_two() {
                tracing::debug!(
                    dropped = self.dropped_rsts,
                    "vsock: rx queue full, resets for unknown connections dropped"
                );
            }
            return;
        }
        self.pending_rsts.push_back(key);
    }

    /// What to watch on every host socket (handshakes and connections).
    pub fn interests(&self) -> Vec<(RawFd, Interest)> {
        let room = self.out.len() < MAX_RX_QUEUE;
        let mut v: Vec<_> = self
            .handshakes
            .keys()
            .map(|fd| {
                (
                    *fd,
                    Interest {
                        read: true,
                        write: false,
                    },
                )
            })
            .collect();
        for c in self.conns.values() {
            let read =
                c.state == ConnState::Established && room && c.owed == 0 && c.peer_credit() > 0;
            v.push((
                c.stream.as_raw_fd(),
                Interest {
                    read,
                    write: !c.tx_buf.is_empty(),
                },
            ));
        }
        v
    }

    /// Accepts pending host connections; each must send `CONNECT <port>\n` first.
    pub fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.handshakes.insert(
                            stream.as_raw_fd(),
                            Handshake {
                                stream,
                                line: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("vsock accept: {e}");
                    return;
                }
            }
        }
    }

    /// Handles readiness of host socket `fd`; `hangup` means both directions closed.
    pub fn socket_ready(&mut self, fd: RawFd, readable: bool, writable: bool, hangup: bool) {
        if self.handshakes.contains_key(&fd) {
            self.read_handshake(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let established = self
            .conns
            .get(&key)
            .is_some_and(|c| c.state == ConnState::Established);
        if hangup && !established {
            // Gone while waiting on the guest: epoll would keep reporting it.
            self.remove(key);
            self.rst(key);
            return;
        }
        if writable {
            self.flush_to_host(key);
        }
        if readable {
            self.read_from_host(key);
        }
    }

    fn read_handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        // Byte by byte so no payload after the newline is consumed here.
        loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => {
                    self.handshakes.remove(&fd);
                    return;
                }
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => {
                    hs.line.push(byte[0]);
                    if hs.line.len() > MAX_CONNECT_LINE {
                        self.handshakes.remove(&fd);
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.handshakes.remove(&fd);
                    return;
                }
            }
        }
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        let line = String::from_utf8_lossy(&hs.line).into_owned();
        let Some(peer_port) = parse_connect(&line) else {
            tracing::debug!(line, "vsock: bad handshake, closing");
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::debug!(peer_port, "vsock: connection limit reached, closing");
            return;
        }
        let local_port = self.allocate_local_port(peer_port);
        let key = (local_port, peer_port);
        self.by_fd.insert(fd, key);
        self.conns
            .insert(key, Connection::new(hs.stream, ConnState::Connecting));
        self.push(key, op::REQUEST, 0, Vec::new());
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer_port)) {
                return p;
            }
        }
    }

    /// Queues a packet for connection `key`, stamping our credit. With the queue full
    /// a control packet of a live connection is owed, a reset for an unknown one goes
    /// to the bounded reset set; data is only read from the host with room to spare.
    fn push(&mut self, key: Key, op: u16, flags: u32, data: Vec<u8>) {
        if self.out.len() >= MAX_RX_QUEUE && data.is_empty() {
            match (self.conns.contains_key(&key), owed_bit(op)) {
                (true, Some(bit)) => self.owe(key, bit),
                _ => self.queue_rst(key),
            }
            return;
        }
        let fwd_cnt = match self.conns.get_mut(&key) {
            Some(c) => {
                c.fwd_cnt_told = c.fwd_cnt;
                c.rx_cnt += Wrapping(data.len() as u32);
                c.fwd_cnt.0
            }
            None => 0,
        };
        self.out.push_back(OutPacket {
            hdr: Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: key.0,
                dst_port: key.1,
                len: data.len() as u32,
                type_: TYPE_STREAM,
                op,
                flags,
                buf_alloc: CONN_BUF_SIZE,
                fwd_cnt,
            },
            data,
        });
    }

    fn rst(&mut self, key: Key) {
        self.push(key, op::RST, 0, Vec::new());
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.by_fd.remove(&c.stream.as_raw_fd());
            if c.owed != 0 {
                self.owing.retain(|k| *k != key);
            }
        }
    }

    /// Handles one packet from the guest's tx queue.
    pub fn handle_guest_packet(&mut self, hdr: &Header, data: &[u8]) {
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.op == op::RST {
            self.remove(key);
            return;
        }
        if hdr.type_ != TYPE_STREAM || hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            self.rst(key);
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = hdr.buf_alloc;
            c.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        }
        match hdr.op {
            op::REQUEST => self.guest_connect(key, hdr),
            op::RESPONSE => self.guest_accepted(key),
            op::RW => self.guest_data(key, data),
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.push(key, op::CREDIT_UPDATE, 0, Vec::new());
                } else {
                    self.rst(key);
                }
            }
            op::SHUTDOWN => self.guest_shutdown(key, hdr.flags),
            _ => self.rst(key),
        }
    }

    fn guest_connect(&mut self, key: Key, hdr: &Header) {
        if self.conns.contains_key(&key) {
            self.rst(key);
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::debug!(port = key.0, "vsock: connection limit reached, RST");
            self.rst(key);
            return;
        }
        let mut target = self.uds_path.clone().into_os_string();
        target.push(format!("_{}", key.0));
        match connect_nonblocking(&target) {
            Ok(stream) => {
                self.by_fd.insert(stream.as_raw_fd(), key);
                let mut c = Connection::new(stream, ConnState::Established);
                c.peer_buf_alloc = hdr.buf_alloc;
                c.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
                self.conns.insert(key, c);
                self.push(key, op::RESPONSE, 0, Vec::new());
            }
            Err(e) => {
                tracing::debug!(?target, "vsock: no host listener ({e}), RST");
                self.rst(key);
            }
        }
    }

    fn guest_accepted(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            self.rst(key);
            return;
        };
        if c.state != ConnState::Connecting {
            self.remove(key);
            self.rst(key);
            return;
        }
        let ok = format!("OK {}\n", key.0);
        match c.stream.write_all(ok.as_bytes()) {
            Ok(()) => c.enter(ConnState::Established),
            Err(_) => {
                self.remove(key);
                self.rst(key);
            }
        }
    }

    fn guest_data(&mut self, key: Key, data: &[u8]) {
        let Some(c) = self.conns.get_mut(&key) else {
            self.rst(key);
            return;
        };
        if c.state == ConnState::Connecting || c.tx_buf.len() + data.len() > CONN_BUF_SIZE as usize
        {
            // Data before the handshake, or beyond the credit we gave.
            self.remove(key);
            self.rst(key);
            return;
        }
        c.tx_buf.extend(data);
        self.flush_to_host(key);
    }

    fn guest_shutdown(&mut self, key: Key, flags: u32) {
        let Some(c) = self.conns.get_mut(&key) else {
            self.rst(key);
            return;
        };
        if flags & SHUTDOWN_SEND != 0 {
            c.peer_done_sending = true;
        }
        if flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV {
            // Full close: deliver what we can, then reset (what the guest waits for).
            self.flush_to_host(key);
            self.remove(key);
            self.rst(key);
        } else {
            self.flush_to_host(key);
        }
    }

    /// Writes buffered guest bytes to the host socket; announces credit when enough
    /// space was freed.
    fn flush_to_host(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let mut failed = false;
        while !c.tx_buf.is_empty() {
            let (head, _) = c.tx_buf.as_slices();
            match c.stream.write(head) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    c.tx_buf.drain(..n);
                    c.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.remove(key);
            self.rst(key);
            return;
        }
        if c.tx_buf.is_empty() && c.peer_done_sending {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        if (c.fwd_cnt - c.fwd_cnt_told).0 >= CREDIT_UPDATE_THRESHOLD {
            self.push(key, op::CREDIT_UPDATE, 0, Vec::new());
        }
    }

    /// Reads host bytes into RW packets while the guest has credit.
    fn read_from_host(&mut self, key: Key) {
        loop {
            if self.out.len() >= MAX_RX_QUEUE {
                return;
            }
            let Some(c) = self.conns.get_mut(&key) else {
                return;
            };
            if c.state != ConnState::Established || c.owed != 0 {
                return;
            }
            let want = (c.peer_credit() as usize).min(MAX_RX_DATA);
            if want == 0 {
                return;
            }
            let mut buf = vec![0u8; want];
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    // Host hung up: tell the guest, wait for its RST.
                    c.enter(ConnState::Closing);
                    self.push(key, op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, Vec::new());
                    return;
                }
                Ok(n) => {
                    buf.truncate(n);
                    self.push(key, op::RW, 0, buf);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.remove(key);
                    self.rst(key);
                    return;
                }
            }
        }
    }
}

/// Connects to the Unix socket `path` without blocking: a host listener whose backlog
/// is full refuses (EAGAIN) instead of stalling the vsock thread on a guest REQUEST.
fn connect_nonblocking(path: &OsStr) -> std::io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain data, for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::from(ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket takes no pointers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a live sockaddr_un and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(socket))
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::time::Duration;

    const CID: u64 = 3;

    fn guest_hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 64 * 1024,
            ..Default::default()
        }
    }

    fn muxer() -> (tempfile::TempDir, PathBuf, VsockMuxer) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.sock");
        let m = VsockMuxer::new(&p, CID).unwrap();
        (d, p, m)
    }

    /// Lets the muxer see every host socket as ready, like the epoll loop would.
    fn pump(m: &mut VsockMuxer) {
        m.accept();
        for (fd, i) in m.interests() {
            m.socket_ready(fd, i.read, i.write, false);
        }
    }

    fn drain(m: &mut VsockMuxer) -> Vec<OutPacket> {
        std::iter::from_fn(|| m.next_packet()).collect()
    }

    #[test]
    fn parses_connect_lines() {
        assert_eq!(parse_connect("CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect("CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect("CONNECT"), None);
        assert_eq!(parse_connect("CONNECT -1"), None);
        assert_eq!(parse_connect("CONNECT 99999999999"), None);
        assert_eq!(parse_connect("connect 5"), None);
        assert_eq!(parse_connect("CONNECT 5 6"), None);
    }

    /// Host connects, guest accepts, data both ways, host closes.
    #[test]
    fn host_initiated_connection_round_trip() {
        let (_d, path, mut m) = muxer();
        let mut host = UnixStream::connect(&path).unwrap();
        host.write_all(b"CONNECT 1024\nearly").unwrap();
        pump(&mut m);
        let req = drain(&mut m);
        assert_eq!(req.len(), 1);
        let r = req[0].hdr;
        assert_eq!(
            (r.op, r.dst_port, r.dst_cid, r.src_cid),
            (op::REQUEST, 1024, CID, HOST_CID)
        );
        assert_eq!(r.buf_alloc, CONN_BUF_SIZE);
        let local = r.src_port;

        // Guest accepts: host reads "OK <port>\n", then the early bytes flow.
        m.handle_guest_packet(&guest_hdr(op::RESPONSE, 1024, local), &[]);
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = std::io::BufReader::new(host.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, format!("OK {local}\n"));
        pump(&mut m);
        let rw = drain(&mut m);
        assert_eq!(rw.len(), 1);
        assert_eq!((rw[0].hdr.op, rw[0].hdr.len), (op::RW, 5));
        assert_eq!(rw[0].data, b"early");

        // Guest → host.
        let mut h = guest_hdr(op::RW, 1024, local);
        h.len = 4;
        m.handle_guest_packet(&h, b"pong");
        let mut got = [0u8; 4];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");

        // Host closes: guest gets SHUTDOWN, answers RST, connection is gone.
        drop(reader);
        drop(host);
        pump(&mut m);
        let sd = drain(&mut m);
        assert_eq!(sd.last().unwrap().hdr.op, op::SHUTDOWN);
        assert_eq!(sd.last().unwrap().hdr.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
        m.handle_guest_packet(&guest_hdr(op::RST, 1024, local), &[]);
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn guest_initiated_connection_goes_to_port_socket() {
        let (_d, path, mut m) = muxer();
        let port_sock = PathBuf::from(format!("{}_5000", path.display()));
        let listener = UnixListener::bind(&port_sock).unwrap();
        m.handle_guest_packet(&guest_hdr(op::REQUEST, 7777, 5000), &[]);
        let resp = drain(&mut m);
        assert_eq!(resp.len(), 1);
        assert_eq!(
            (resp[0].hdr.op, resp[0].hdr.src_port, resp[0].hdr.dst_port),
            (op::RESPONSE, 5000, 7777)
        );
        let (mut host, _) = listener.accept().unwrap();
        let mut h = guest_hdr(op::RW, 7777, 5000);
        h.len = 2;
        m.handle_guest_packet(&h, b"hi");
        let mut got = [0u8; 2];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        host.write_all(b"yo").unwrap();
        // Reads wait for the socket: give it a moment to be readable.
        std::thread::sleep(Duration::from_millis(20));
        pump(&mut m);
        let rw = drain(&mut m);
        assert_eq!(rw[0].data, b"yo");
        // Guest full shutdown → RST back, connection removed.
        let mut sd = guest_hdr(op::SHUTDOWN, 7777, 5000);
        sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        m.handle_guest_packet(&sd, &[]);
        assert_eq!(drain(&mut m)[0].hdr.op, op::RST);
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn unknown_ports_and_bad_packets_get_rst() {
        let (_d, _path, mut m) = muxer();
        // No listener at <sock>_6000.
        m.handle_guest_packet(&guest_hdr(op::REQUEST, 1, 6000), &[]);
        // Data on a connection that does not exist.
        m.handle_guest_packet(&guest_hdr(op::RW, 2, 6001), b"x");
        // Wrong socket type.
        let mut dgram = guest_hdr(op::REQUEST, 3, 6002);
        dgram.type_ = 2;
        m.handle_guest_packet(&dgram, &[]);
        // RST for an unknown connection is not answered.
        m.handle_guest_packet(&guest_hdr(op::RST, 4, 6003), &[]);
        let out = drain(&mut m);
        assert_eq!(out.len(), 3);
        for (p, (dst, src)) in out.iter().zip([(1, 6000), (2, 6001), (3, 6002)]) {
            assert_eq!(p.hdr.op, op::RST);
            assert_eq!((p.hdr.dst_port, p.hdr.src_port), (dst, src));
        }
    }

    #[test]
    fn bad_handshake_is_closed_without_guest_traffic() {
        let (_d, path, mut m) = muxer();
        let mut host = UnixStream::connect(&path).unwrap();
        host.write_all(b"HELLO 1\n").unwrap();
        pump(&mut m);
        assert!(drain(&mut m).is_empty());
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(host.read(&mut b).unwrap(), 0, "muxer closed the socket");
    }

    #[test]
    fn credit_limits_host_to_guest_and_credit_update_resumes() {
        let (_d, path, mut m) = muxer();
        let port_sock = PathBuf::from(format!("{}_5001", path.display()));
        let listener = UnixListener::bind(&port_sock).unwrap();
        let mut req = guest_hdr(op::REQUEST, 9, 5001);
        req.buf_alloc = 6000; // the guest can take 6000 bytes
        m.handle_guest_packet(&req, &[]);
        drain(&mut m);
        let (mut host, _) = listener.accept().unwrap();
        let mut cu = guest_hdr(op::CREDIT_UPDATE, 9, 5001);
        cu.buf_alloc = 6000;
        host.write_all(&[7u8; 10_000]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        pump(&mut m);
        let got: usize = drain(&mut m).iter().map(|p| p.data.len()).sum();
        assert_eq!(got, 6000, "no more than the guest's credit");
        assert!(
            m.interests().iter().all(|(_, i)| !i.read),
            "stop reading at zero credit"
        );
        // The guest consumed 6000 bytes.
        cu.fwd_cnt = 6000;
        m.handle_guest_packet(&cu, &[]);
        pump(&mut m);
        let got: usize = drain(&mut m).iter().map(|p| p.data.len()).sum();
        assert_eq!(got, 4000);
        // Credit request is answered with our credit.
        m.handle_guest_packet(&guest_hdr(op::CREDIT_REQUEST, 9, 5001), &[]);
        let p = drain(&mut m);
        assert_eq!(
            (p[0].hdr.op, p[0].hdr.buf_alloc),
            (op::CREDIT_UPDATE, CONN_BUF_SIZE)
        );
    }

    #[test]
    fn guest_to_host_credit_is_announced_and_overrun_resets() {
        let (_d, path, mut m) = muxer();
        let port_sock = PathBuf::from(format!("{}_5002", path.display()));
        let listener = UnixListener::bind(&port_sock).unwrap();
        m.handle_guest_packet(&guest_hdr(op::REQUEST, 11, 5002), &[]);
        drain(&mut m);
        let (mut host, _) = listener.accept().unwrap();
        // Send exactly the threshold: a CREDIT_UPDATE with fwd_cnt follows.
        let chunk = vec![1u8; CREDIT_UPDATE_THRESHOLD as usize];
        let mut h = guest_hdr(op::RW, 11, 5002);
        h.len = chunk.len() as u32;
        m.handle_guest_packet(&h, &chunk);
        let out = drain(&mut m);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].hdr.op, out[0].hdr.fwd_cnt),
            (op::CREDIT_UPDATE, CREDIT_UPDATE_THRESHOLD)
        );
        let mut sink = vec![0u8; chunk.len()];
        host.read_exact(&mut sink).unwrap();
        // Overrunning our buffer (host not reading) is a protocol violation → RST.
        let big = vec![2u8; CONN_BUF_SIZE as usize + 1];
        h.len = big.len() as u32;
        m.handle_guest_packet(&h, &big);
        assert_eq!(drain(&mut m).last().unwrap().hdr.op, op::RST);
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn unanswered_request_times_out_with_rst() {
        let (_d, path, mut m) = muxer();
        let mut host = UnixStream::connect(&path).unwrap();
        host.write_all(b"CONNECT 77\n").unwrap();
        pump(&mut m);
        let req = drain(&mut m);
        assert_eq!(req[0].hdr.op, op::REQUEST);
        let deadline = m.next_deadline().expect("waiting on the guest");
        m.expire(deadline - Duration::from_millis(1));
        assert_eq!(m.connection_count(), 1, "not yet");
        m.expire(deadline);
        assert_eq!(m.connection_count(), 0);
        let rst = drain(&mut m);
        assert_eq!((rst[0].hdr.op, rst[0].hdr.dst_port), (op::RST, 77));
        assert!(m.next_deadline().is_none());
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(host.read(&mut b).unwrap(), 0, "host socket closed");
    }

    #[test]
    fn host_hangup_before_guest_answers_resets() {
        let (_d, path, mut m) = muxer();
        let mut host = UnixStream::connect(&path).unwrap();
        host.write_all(b"CONNECT 78\n").unwrap();
        pump(&mut m);
        assert_eq!(drain(&mut m)[0].hdr.op, op::REQUEST);
        let (fd, _) = m.interests()[0];
        drop(host);
        m.socket_ready(fd, true, false, true);
        assert_eq!(m.connection_count(), 0);
        assert_eq!(drain(&mut m)[0].hdr.op, op::RST);
    }

    fn assert_bounded(m: &VsockMuxer) {
        let (out, owing, rsts) = m.pending_counts();
        assert!(out <= MAX_RX_QUEUE, "rx queue {out}");
        assert!(owing <= m.connection_count(), "owing {owing}");
        assert!(rsts <= MAX_PENDING_RSTS, "pending resets {rsts}");
        assert!(m.connection_count() <= MAX_CONNECTIONS);
    }

    /// A guest-initiated connection to `<sock>_port` that carries "hi" to the host.
    fn assert_still_works(m: &mut VsockMuxer, path: &Path, port: u32) {
        let listener = UnixListener::bind(format!("{}_{port}", path.display())).unwrap();
        m.handle_guest_packet(&guest_hdr(op::REQUEST, 4242, port), &[]);
        let resp = drain(m);
        assert_eq!(resp.last().unwrap().hdr.op, op::RESPONSE);
        let (mut host, _) = listener.accept().unwrap();
        let mut h = guest_hdr(op::RW, 4242, port);
        h.len = 2;
        m.handle_guest_packet(&h, b"hi");
        let mut got = [0u8; 2];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    /// 100k packets for connections that do not exist, nothing drained (no rx
    /// buffers): the rx queue and the reset set stay at their bounds, the rest of the
    /// resets are dropped, and the muxer works afterwards.
    #[test]
    fn a_flood_for_unknown_connections_stays_bounded() {
        let (_d, path, mut m) = muxer();
        for i in 0..100_000u32 {
            let op = [op::RW, op::CREDIT_REQUEST, op::SHUTDOWN, op::RESPONSE][i as usize % 4];
            m.handle_guest_packet(&guest_hdr(op, i, 7000 + i % 1000), b"x");
            assert_bounded(&m);
        }
        assert_eq!(m.pending_counts(), (MAX_RX_QUEUE, 0, MAX_PENDING_RSTS));
        let out = drain(&mut m);
        assert_eq!(out.len(), MAX_RX_QUEUE + MAX_PENDING_RSTS);
        assert!(out.iter().all(|p| p.hdr.op == op::RST));
        assert_eq!(m.pending_counts(), (0, 0, 0));
        assert_still_works(&mut m, &path, 5100);
    }

    /// 100k REQUESTs to ports nobody listens on: each gets RST while there is room,
    /// none grows the muxer beyond its bounds, and no connection is left behind.
    #[test]
    fn a_request_flood_to_unknown_ports_stays_bounded() {
        let (_d, path, mut m) = muxer();
        for i in 0..100_000u32 {
            m.handle_guest_packet(&guest_hdr(op::REQUEST, i, 20_000 + i), &[]);
            assert_bounded(&m);
        }
        assert_eq!(m.connection_count(), 0);
        let out = drain(&mut m);
        assert_eq!(out.len(), MAX_RX_QUEUE + MAX_PENDING_RSTS);
        assert_still_works(&mut m, &path, 5101);
    }

    /// 100k CREDIT_REQUESTs on a live connection with no rx buffers: the replies fill
    /// the rx queue, then one owed CREDIT_UPDATE stands for the rest; draining sends
    /// it, with our current credit, and data still flows.
    #[test]
    fn a_credit_request_flood_is_coalesced() {
        let (_d, path, mut m) = muxer();
        let listener = UnixListener::bind(format!("{}_5003", path.display())).unwrap();
        m.handle_guest_packet(&guest_hdr(op::REQUEST, 12, 5003), &[]);
        let (mut host, _) = listener.accept().unwrap();
        for _ in 0..100_000 {
            m.handle_guest_packet(&guest_hdr(op::CREDIT_REQUEST, 12, 5003), &[]);
            assert_bounded(&m);
        }
        assert_eq!(m.pending_counts(), (MAX_RX_QUEUE, 1, 0));
        let out = drain(&mut m);
        assert_eq!(out.len(), MAX_RX_QUEUE + 1);
        assert_eq!(out[0].hdr.op, op::RESPONSE);
        assert!(out[1..].iter().all(|p| p.hdr.op == op::CREDIT_UPDATE));
        // The host side still reads what the guest sends.
        let mut h = guest_hdr(op::RW, 12, 5003);
        h.len = 3;
        m.handle_guest_packet(&h, b"abc");
        let mut got = [0u8; 3];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");
    }

    /// A host-initiated REQUEST that finds the rx queue full is owed, not lost, and
    /// no host bytes are read for a connection that owes a packet.
    #[test]
    fn control_packets_for_live_connections_are_owed_when_full() {
        let (_d, path, mut m) = muxer();
        for i in 0..MAX_RX_QUEUE as u32 {
            m.handle_guest_packet(&guest_hdr(op::RW, i, 9000), b"x");
        }
        assert!(m.rx_queue_full());
        let mut host = UnixStream::connect(&path).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        pump(&mut m);
        assert_eq!(m.pending_counts(), (MAX_RX_QUEUE, 1, 0));
        let out = drain(&mut m);
        assert_eq!(out.len(), MAX_RX_QUEUE + 1);
        let req = out.last().unwrap().hdr;
        assert_eq!((req.op, req.dst_port), (op::REQUEST, 1024));
    }

    /// Guest REQUESTs beyond the connection limit get RST; the live ones keep working.
    #[test]
    fn connections_are_bounded() {
        let (_d, path, mut m) = muxer();
        let listener = UnixListener::bind(format!("{}_5004", path.display())).unwrap();
        // The host accepts everything (a full backlog would refuse on its own).
        let acceptor = std::thread::spawn(move || {
            let mut held = Vec::new();
            for _ in 0..MAX_CONNECTIONS {
                held.push(listener.accept().unwrap().0);
            }
            held
        });
        for i in 0..100_000u32 {
            m.handle_guest_packet(&guest_hdr(op::REQUEST, i, 5004), &[]);
            if i % 128 == 0 {
                drain(&mut m);
            }
            assert_bounded(&m);
        }
        assert_eq!(m.connection_count(), MAX_CONNECTIONS);
        let held = acceptor.join().unwrap();
        assert_eq!(held.len(), MAX_CONNECTIONS);
        let out = drain(&mut m);
        assert!(out
            .iter()
            .all(|p| p.hdr.op == op::RST || p.hdr.op == op::RESPONSE));
        // A full connection table refuses: this REQUEST is answered with RST.
        m.handle_guest_packet(&guest_hdr(op::REQUEST, 200_000, 5004), &[]);
        assert_eq!(drain(&mut m)[0].hdr.op, op::RST);
        // Closing one frees a slot.
        m.handle_guest_packet(&guest_hdr(op::RST, 0, 5004), &[]);
        assert_eq!(m.connection_count(), MAX_CONNECTIONS - 1);
    }

    /// A REQUEST to a host listener whose backlog is full is refused at once with
    /// RST (a blocking connect would stall the vsock thread here).
    #[test]
    fn a_full_host_backlog_gets_rst_without_blocking() {
        let (_d, path, mut m) = muxer();
        let listener = UnixListener::bind(format!("{}_5005", path.display())).unwrap();
        // SAFETY: listen on a live listening socket only changes its backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 1) }, 0);
        let mut refused = 0;
        for i in 0..10 {
            m.handle_guest_packet(&guest_hdr(op::REQUEST, i, 5005), &[]);
            refused += drain(&mut m).iter().filter(|p| p.hdr.op == op::RST).count();
        }
        assert!(refused > 0, "the backlog filled");
        assert_eq!(m.connection_count(), 10 - refused);
    }

    #[test]
    fn socket_file_is_replaced_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.sock");
        std::fs::write(&p, b"stale").unwrap();
        let m = VsockMuxer::new(&p, CID).unwrap();
        assert!(p.exists());
        drop(m);
        assert!(!p.exists());
    }
}

//! A minimal vhost-user frontend, written from the vhost-user and virtio 1.x
//! specifications, so a suite can drive a vhost-user backend (virtiofsd) as a guest
//! would, with no VM: guest memory is a memfd this process maps and hands over by
//! SCM_RIGHTS, and each queue is a split virtqueue in it.
//!
//! It keeps one descriptor chain in flight per queue (a request buffer the device
//! reads, a reply buffer it writes) and waits for each reply: enough to send any
//! request a hostile guest could send, one at a time.

use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// What went wrong talking vhost-user.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// cannot connect to the vhost-user socket {path}: {source}
    #[error("cannot connect to the vhost-user socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    /// a system call failed
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: std::io::Error,
    },
    /// the backend answered a request with something else
    #[error("vhost-user {request}: {problem}")]
    Protocol {
        request: &'static str,
        problem: String,
    },
    /// the backend refused a request (REPLY_ACK non-zero)
    #[error("vhost-user {request} refused by the backend (ack {ack})")]
    Refused { request: &'static str, ack: u64 },
    /// a buffer or ring access fell outside guest memory
    #[error("guest memory access at {offset:#x}+{len} is outside its {size:#x} bytes")]
    OutOfBounds {
        offset: u64,
        len: usize,
        size: usize,
    },
    /// a ring index at an odd offset (the layout constants are wrong)
    #[error("ring index at odd guest memory offset {offset:#x}")]
    Misaligned { offset: u64 },
    /// the device did not return a used buffer in time
    #[error("queue {queue}: no used buffer within {timeout:?}")]
    Timeout { queue: u16, timeout: Duration },
}

fn sys(what: &'static str) -> impl FnOnce(std::io::Error) -> VhostUserError {
    move |source| VhostUserError::Sys { what, source }
}

/// vhost-user request codes (the frontend's message types).
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
enum Request {
    GetFeatures = 1,
    SetFeatures = 2,
    SetOwner = 3,
    SetMemTable = 5,
    SetVringNum = 8,
    SetVringAddr = 9,
    SetVringBase = 10,
    SetVringKick = 12,
    SetVringCall = 13,
    GetProtocolFeatures = 15,
    SetProtocolFeatures = 16,
    SetVringEnable = 18,
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Self::GetFeatures => "GET_FEATURES",
            Self::SetFeatures => "SET_FEATURES",
            Self::SetOwner => "SET_OWNER",
            Self::SetMemTable => "SET_MEM_TABLE",
            Self::SetVringNum => "SET_VRING_NUM",
            Self::SetVringAddr => "SET_VRING_ADDR",
            Self::SetVringBase => "SET_VRING_BASE",
            Self::SetVringKick => "SET_VRING_KICK",
            Self::SetVringCall => "SET_VRING_CALL",
            Self::GetProtocolFeatures => "GET_PROTOCOL_FEATURES",
            Self::SetProtocolFeatures => "SET_PROTOCOL_FEATURES",
            Self::SetVringEnable => "SET_VRING_ENABLE",
        }
    }
}

/// Header flags: protocol version 1, the reply bit, and "ack this".
const HEADER_VERSION_1: u32 = 0x1;
const HEADER_REPLY: u32 = 0x4;
const HEADER_NEED_REPLY: u32 = 0x8;
const HEADER_SIZE: usize = 12;

/// Virtio feature bits we accept: virtio 1.x, and vhost-user protocol features.
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Protocol feature: the backend acks every request sent with NEED_REPLY.
const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;

/// Split-virtqueue descriptor flags.
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// How long the backend may take to answer one vhost-user message.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Entries per queue; the device handles one chain at a time from us.
pub const QUEUE_SIZE: u16 = 16;
/// Each queue's slice of guest memory: rings, then the request and reply buffers.
const QUEUE_SLICE: u64 = 0x4_0000;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const REQUEST_BUFFER: u64 = 0x4000;
/// The largest request or reply one exchange carries.
pub const BUFFER_SIZE: usize = 0x1_0000;
const REPLY_BUFFER: u64 = REQUEST_BUFFER + BUFFER_SIZE as u64;

/// Guest memory: a memfd mapped shared here, at guest-physical address 0.
pub struct GuestMemory {
    memfd: OwnedFd,
    base: *mut u8,
    size: usize,
}

impl GuestMemory {
    pub fn new(size: usize) -> Result<Self, VhostUserError> {
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new
        // descriptor or -1, checked below.
        let fd = unsafe { libc::memfd_create(c"husk-hostile-guest-memory".as_ptr(), 0) };
        if fd < 0 {
            return Err(sys("memfd_create")(std::io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by memfd_create and nothing else owns it.
        let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
        File::from(memfd.try_clone().map_err(sys("dup memfd"))?)
            .set_len(size as u64)
            .map_err(sys("size the memfd"))?;
        // SAFETY: a fresh shared mapping of `size` bytes of our memfd, at an address the
        // kernel picks; the result is checked against MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                memfd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(sys("mmap guest memory")(std::io::Error::last_os_error()));
        }
        Ok(Self {
            memfd,
            base: base.cast(),
            size,
        })
    }

    /// Where guest-physical `offset` is mapped in this process (what vhost-user calls
    /// the frontend's user address).
    fn user_address(&self, offset: u64) -> u64 {
        self.base as u64 + offset
    }

    fn checked(&self, offset: u64, len: usize) -> Result<*mut u8, VhostUserError> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| end > self.size as u64) {
            return Err(VhostUserError::OutOfBounds {
                offset,
                len,
                size: self.size,
            });
        }
        // SAFETY: offset + len is within the mapping (checked above).
        Ok(unsafe { self.base.add(offset as usize) })
    }

    pub fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), VhostUserError> {
        let at = self.checked(offset, bytes.len())?;
        // SAFETY: `at..at+len` is inside our mapping (checked) and cannot overlap
        // `bytes`, a Rust slice of our own heap or stack.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len()) };
        Ok(())
    }

    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, VhostUserError> {
        let at = self.checked(offset, len)?;
        let mut bytes = vec![0u8; len];
        // SAFETY: `at..at+len` is inside our mapping (checked); `bytes` is a new
        // buffer of `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(at, bytes.as_mut_ptr(), len) };
        Ok(bytes)
    }

    /// A ring index the device may update concurrently: read it volatile.
    fn read_u16(&self, offset: u64) -> Result<u16, VhostUserError> {
        let at = self.checked(offset, 2)?;
        if offset % 2 != 0 {
            return Err(VhostUserError::Misaligned { offset });
        }
        // SAFETY: in bounds and 2-aligned (the mapping is page-aligned, offset even).
        Ok(u16::from_le(unsafe {
            std::ptr::read_volatile(at.cast::<u16>())
        }))
    }

    fn write_u16(&self, offset: u64, value: u16) -> Result<(), VhostUserError> {
        let at = self.checked(offset, 2)?;
        if offset % 2 != 0 {
            return Err(VhostUserError::Misaligned { offset });
        }
        // SAFETY: in bounds and 2-aligned (the mapping is page-aligned, offset even).
        unsafe { std::ptr::write_volatile(at.cast::<u16>(), value.to_le()) };
        Ok(())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: base/size are the mapping made in `new`, unmapped only here.
        unsafe { libc::munmap(self.base.cast(), self.size) };
    }
}

/// An eventfd (kick or call), non-blocking.
fn eventfd() -> Result<File, VhostUserError> {
    // SAFETY: eventfd(2) with an initial count and flags; returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(sys("eventfd")(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by eventfd and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// One split virtqueue in guest memory, with its kick and call eventfds.
struct Virtqueue {
    index: u16,
    base: u64,
    kick: File,
    call: File,
    next_avail: u16,
    last_used: u16,
}

impl Virtqueue {
    fn descriptors(&self) -> u64 {
        self.base + DESC_TABLE
    }
    fn avail(&self) -> u64 {
        self.base + AVAIL_RING
    }
    fn used(&self) -> u64 {
        self.base + USED_RING
    }
    fn request_buffer(&self) -> u64 {
        self.base + REQUEST_BUFFER
    }
    fn reply_buffer(&self) -> u64 {
        self.base + REPLY_BUFFER
    }
}

/// A vhost-user frontend connected to one backend, its queues set up and enabled.
pub struct VhostUserFrontend {
    socket: UnixStream,
    memory: GuestMemory,
    queues: Vec<Virtqueue>,
    reply_ack: bool,
}

impl VhostUserFrontend {
    /// Connects to `socket` and sets the device up as a driver would: owner, features,
    /// guest memory, then `queue_count` queues, each enabled.
    pub fn connect(socket: &Path, queue_count: u16) -> Result<Self, VhostUserError> {
        let stream = UnixStream::connect(socket).map_err(|source| VhostUserError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(sys("set the socket's read timeout"))?;
        let memory = GuestMemory::new(QUEUE_SLICE as usize * usize::from(queue_count))?;
        let mut frontend = Self {
            socket: stream,
            memory,
            queues: Vec::new(),
            reply_ack: false,
        };
        frontend.set_up(queue_count)?;
        Ok(frontend)
    }

    fn set_up(&mut self, queue_count: u16) -> Result<(), VhostUserError> {
        self.send(Request::SetOwner, &[], None)?;
        let offered = self.get_u64(Request::GetFeatures)?;
        let wanted = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES;
        if offered & wanted != wanted {
            return Err(VhostUserError::Protocol {
                request: Request::GetFeatures.name(),
                problem: format!("features {offered:#x} lack {wanted:#x}"),
            });
        }
        let protocol = self.get_u64(Request::GetProtocolFeatures)?;
        let protocol_acked = protocol & PROTOCOL_F_REPLY_ACK;
        self.send(
            Request::SetProtocolFeatures,
            &protocol_acked.to_le_bytes(),
            None,
        )?;
        self.reply_ack = protocol_acked != 0;
        self.send(Request::SetFeatures, &wanted.to_le_bytes(), None)?;

        // One region: all of guest memory, guest-physical 0, the memfd at offset 0.
        let mut table = Vec::new();
        table.extend(1u32.to_le_bytes());
        table.extend(0u32.to_le_bytes());
        table.extend(0u64.to_le_bytes());
        table.extend((self.memory.size as u64).to_le_bytes());
        table.extend(self.memory.user_address(0).to_le_bytes());
        table.extend(0u64.to_le_bytes());
        let memfd = self.memory.memfd.as_raw_fd();
        self.send(Request::SetMemTable, &table, Some(memfd))?;

        for index in 0..queue_count {
            let queue = Virtqueue {
                index,
                base: QUEUE_SLICE * u64::from(index),
                kick: eventfd()?,
                call: eventfd()?,
                next_avail: 0,
                last_used: 0,
            };
            let state = |value: u32| {
                let mut body = u32::from(index).to_le_bytes().to_vec();
                body.extend(value.to_le_bytes());
                body
            };
            self.send(Request::SetVringNum, &state(u32::from(QUEUE_SIZE)), None)?;
            let mut addresses = u32::from(index).to_le_bytes().to_vec();
            addresses.extend(0u32.to_le_bytes()); // flags: no logging
            for ring in [queue.descriptors(), queue.used(), queue.avail()] {
                addresses.extend(self.memory.user_address(ring).to_le_bytes());
            }
            addresses.extend(0u64.to_le_bytes()); // log address
            self.send(Request::SetVringAddr, &addresses, None)?;
            self.send(Request::SetVringBase, &state(0), None)?;
            let fd_message = u64::from(index).to_le_bytes();
            self.send(
                Request::SetVringCall,
                &fd_message,
                Some(queue.call.as_raw_fd()),
            )?;
            self.send(
                Request::SetVringKick,
                &fd_message,
                Some(queue.kick.as_raw_fd()),
            )?;
            self.send(Request::SetVringEnable, &state(1), None)?;
            self.queues.push(queue);
        }
        Ok(())
    }

    fn header(request: Request, flags: u32, len: usize) -> Vec<u8> {
        let mut header = (request as u32).to_le_bytes().to_vec();
        header.extend((HEADER_VERSION_1 | flags).to_le_bytes());
        header.extend((len as u32).to_le_bytes());
        header
    }

    fn write_message(
        &self,
        request: Request,
        flags: u32,
        body: &[u8],
        fd: Option<RawFd>,
    ) -> Result<(), VhostUserError> {
        let header = Self::header(request, flags, body.len());
        let parts = [IoSlice::new(&header), IoSlice::new(body)];
        let fds: Vec<RawFd> = fd.into_iter().collect();
        let control: Vec<ControlMessage> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&fds)]
        };
        let sent = sendmsg::<()>(
            self.socket.as_raw_fd(),
            &parts,
            &control,
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| sys(request.name())(e.into()))?;
        if sent != header.len() + body.len() {
            return Err(VhostUserError::Protocol {
                request: request.name(),
                problem: format!("short send: {sent} bytes"),
            });
        }
        Ok(())
    }

    fn read_reply(&mut self, request: Request) -> Result<Vec<u8>, VhostUserError> {
        let mut header = [0u8; HEADER_SIZE];
        self.socket
            .read_exact(&mut header)
            .map_err(sys(request.name()))?;
        let code = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let flags = u32::from_le_bytes(header[4..8].try_into().unwrap());
        let len = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
        if code != request as u32 || flags & HEADER_REPLY == 0 || len > 4096 {
            return Err(VhostUserError::Protocol {
                request: request.name(),
                problem: format!("reply header code {code} flags {flags:#x} size {len}"),
            });
        }
        let mut body = vec![0u8; len];
        self.socket
            .read_exact(&mut body)
            .map_err(sys(request.name()))?;
        Ok(body)
    }

    fn reply_u64(request: Request, body: &[u8]) -> Result<u64, VhostUserError> {
        let bytes: [u8; 8] = body.try_into().map_err(|_| VhostUserError::Protocol {
            request: request.name(),
            problem: format!("{}-byte reply, expected 8", body.len()),
        })?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// A request with no reply of its own; acked when the backend agreed to REPLY_ACK.
    fn send(
        &mut self,
        request: Request,
        body: &[u8],
        fd: Option<RawFd>,
    ) -> Result<(), VhostUserError> {
        let flags = if self.reply_ack { HEADER_NEED_REPLY } else { 0 };
        self.write_message(request, flags, body, fd)?;
        if self.reply_ack {
            let reply = self.read_reply(request)?;
            let ack = Self::reply_u64(request, &reply)?;
            if ack != 0 {
                return Err(VhostUserError::Refused {
                    request: request.name(),
                    ack,
                });
            }
        }
        Ok(())
    }

    fn get_u64(&mut self, request: Request) -> Result<u64, VhostUserError> {
        self.write_message(request, 0, &[], None)?;
        let reply = self.read_reply(request)?;
        Self::reply_u64(request, &reply)
    }

    /// Puts `request` on queue `queue` (device-readable) with a `BUFFER_SIZE`
    /// device-writable reply buffer after it, kicks, and returns what the device wrote
    /// once it uses the chain, waiting at most `timeout`.
    pub fn exchange(
        &mut self,
        queue: u16,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, VhostUserError> {
        let memory = &self.memory;
        let queue = self
            .queues
            .get_mut(usize::from(queue))
            .ok_or(VhostUserError::Protocol {
                request: "exchange",
                problem: format!("no queue {queue}"),
            })?;
        if request.len() > BUFFER_SIZE {
            return Err(VhostUserError::OutOfBounds {
                offset: queue.request_buffer(),
                len: request.len(),
                size: BUFFER_SIZE,
            });
        }
        memory.write(queue.request_buffer(), request)?;
        memory.write(queue.reply_buffer(), &vec![0u8; BUFFER_SIZE])?;
        // Descriptors hold guest-physical addresses: offsets into guest memory.
        let descriptor = |address: u64, len: u32, flags: u16, next: u16| {
            let mut entry = address.to_le_bytes().to_vec();
            entry.extend(len.to_le_bytes());
            entry.extend(flags.to_le_bytes());
            entry.extend(next.to_le_bytes());
            entry
        };
        memory.write(
            queue.descriptors(),
            &descriptor(queue.request_buffer(), request.len() as u32, DESC_F_NEXT, 1),
        )?;
        memory.write(
            queue.descriptors() + 16,
            &descriptor(queue.reply_buffer(), BUFFER_SIZE as u32, DESC_F_WRITE, 0),
        )?;
        let slot = queue.next_avail % QUEUE_SIZE;
        memory.write_u16(queue.avail() + 4 + 2 * u64::from(slot), 0)?;
        // The descriptors and ring entry must be visible before the new index.
        fence(Ordering::SeqCst);
        queue.next_avail = queue.next_avail.wrapping_add(1);
        memory.write_u16(queue.avail() + 2, queue.next_avail)?;
        fence(Ordering::SeqCst);
        (&queue.kick)
            .write_all(&1u64.to_ne_bytes())
            .map_err(sys("kick"))?;

        let deadline = Instant::now() + timeout;
        loop {
            let used_index = memory.read_u16(queue.used() + 2)?;
            if used_index != queue.last_used {
                fence(Ordering::SeqCst);
                let slot = u64::from(queue.last_used % QUEUE_SIZE);
                let element = memory.read(queue.used() + 4 + 8 * slot, 8)?;
                queue.last_used = queue.last_used.wrapping_add(1);
                let id = u32::from_le_bytes(element[0..4].try_into().unwrap());
                let written = u32::from_le_bytes(element[4..8].try_into().unwrap()) as usize;
                if id != 0 || written > BUFFER_SIZE {
                    return Err(VhostUserError::Protocol {
                        request: "used ring",
                        problem: format!("used element id {id} len {written}"),
                    });
                }
                return memory.read(queue.reply_buffer(), written);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VhostUserError::Timeout {
                    queue: queue.index,
                    timeout,
                });
            }
            wait_readable(&queue.call, left.min(Duration::from_millis(50)))?;
        }
    }
}

/// Waits until `fd` (an eventfd) is readable or `timeout` passes, then drains it.
fn wait_readable(fd: &File, timeout: Duration) -> Result<(), VhostUserError> {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1, a bounded timeout.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as i32) };
    if ready < 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(sys("poll the call eventfd")(error));
        }
    }
    if ready > 0 {
        let mut counter = [0u8; 8];
        // A non-blocking eventfd: EAGAIN just means someone drained it first.
        let _ = (&*fd).read(&mut counter);
    }
    Ok(())
}

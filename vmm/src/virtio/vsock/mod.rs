//! virtio-vsock with the hybrid Unix-socket backend (as Firecracker and Cloud
//! Hypervisor do): a host client connects to `<socket>` and sends `CONNECT <port>\n`,
//! gets `OK <host port>\n`, then bytes flow to the guest's listener on `<port>`;
//! guest-initiated connections to host port P go to `<socket>_P`.
//!
//! `muxer.rs` holds the connection logic (handshake, credit-based flow control, RST on
//! unknown ports) and is tested without KVM; `device.rs` is the virtio device and its
//! worker thread moving packets between the virtqueues and the muxer.

pub mod device;
pub mod muxer;

pub use device::VsockDevice;

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Stream socket type.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload of one packet coming from the guest.
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// Packet operations.
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset.
    pub const RST: u16 = 3;
    /// Half or full shutdown (flags say which).
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Credit announcement.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Credit request.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// Errors from the vsock device and backend.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The host socket could not be bound.
    #[error("binding vsock socket {path}: {source}")]
    Bind {
        /// Path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// epoll or eventfd setup failed.
    #[error("vsock worker setup: {0}")]
    Worker(#[source] std::io::Error),
}

//! virtio-blk backed by a host file (raw image), optionally read-only.
//!
//! `device.rs` holds the device (id 2; one request queue; config = capacity in
//! 512-byte sectors) and the request handling, run on the device's own thread.

pub mod device;

pub use device::BlockDevice;

/// Errors from the virtio-blk device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file could not be opened or measured.
    #[error("virtio-blk disk {path}: {source}")]
    Open {
        /// Path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The device thread could not be started.
    #[error("virtio-blk worker setup: {0}")]
    Worker(#[source] std::io::Error),
}

//! virtio-fs served in-process (as Dragonball does): the FUSE requests the guest puts
//! on the virtqueues are handled by fuse-backend-rs's `Server` over its passthrough
//! file system rooted at the shared directory. No virtiofsd, no vhost-user, no shared
//! memfd; the VMM's own fs thread does the host file I/O under its seccomp filter.
//!
//! `device.rs` holds the device (id 26; queues hiprio + one request queue; config =
//! tag + number of request queues) and its worker thread; `request_check.rs` the
//! checks on the names a request carries, made before the server sees it.

pub mod device;
pub mod request_check;

pub use device::FsDevice;

/// Errors from the virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The passthrough file system could not open the shared directory.
    #[error("virtio-fs share {tag:?}: cannot serve {path}: {source}")]
    SharedDir {
        /// Tag.
        tag: String,
        /// Host directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The shared directory path is not valid UTF-8 (fuse-backend-rs takes a String).
    #[error("virtio-fs shared directory {0} is not valid UTF-8")]
    PathNotUtf8(String),
    /// epoll, eventfd or thread setup failed.
    #[error("virtio-fs worker setup: {0}")]
    Worker(#[source] std::io::Error),
}

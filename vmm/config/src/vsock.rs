//! The virtio-vsock device: a hybrid Unix-socket backend (host clients connect to the
//! socket and send `CONNECT <port>\n`) and the guest's CID.

use std::path::{Path, PathBuf};

/// Lowest guest CID (0-2 are reserved: hypervisor, local, host).
pub const MIN_GUEST_CID: u32 = 3;

/// Errors in the vsock device's configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VsockConfigError {
    /// The vsock socket's directory does not exist.
    #[error("vsock socket directory missing: {0}")]
    SocketDirMissing(PathBuf),
    /// Guest CID reserved.
    #[error("vsock guest CID {0} is reserved (use 3 or more)")]
    ReservedCid(u32),
}

/// The vsock device as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The hybrid vsock Unix socket husk-vmm listens on; guest-initiated connections
    /// go to `<path>_<port>`.
    pub path: PathBuf,
    /// The guest's CID.
    pub cid: u32,
}

impl VsockConfig {
    /// A device on `path` with the default guest CID.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        VsockConfig {
            path: path.into(),
            cid: MIN_GUEST_CID,
        }
    }

    /// Checks the CID and that the socket can be created.
    pub fn check(&self) -> Result<(), VsockConfigError> {
        check_device(&self.path, self.cid)
    }
}

/// Checks a vsock device given by socket path and guest CID.
pub fn check_device(path: &Path, cid: u32) -> Result<(), VsockConfigError> {
    if !crate::parent_exists(path) {
        return Err(VsockConfigError::SocketDirMissing(path.into()));
    }
    if cid < MIN_GUEST_CID {
        return Err(VsockConfigError::ReservedCid(cid));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_and_socket_directory_are_checked() {
        assert_eq!(VsockConfig::new("/tmp/v.sock").check(), Ok(()));
        assert_eq!(VsockConfig::new("vsock.sock").check(), Ok(()));
        assert_eq!(
            VsockConfig {
                cid: 2,
                ..VsockConfig::new("/tmp/v.sock")
            }
            .check(),
            Err(VsockConfigError::ReservedCid(2))
        );
        assert_eq!(
            VsockConfig::new("/no/such/v.sock").check(),
            Err(VsockConfigError::SocketDirMissing("/no/such/v.sock".into()))
        );
    }
}

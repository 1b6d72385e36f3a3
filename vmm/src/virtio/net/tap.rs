//! A host tap device opened through `/dev/net/tun`: one frame per read/write, each
//! behind a 12-byte `virtio_net_hdr_v1` (IFF_VNET_HDR + TUNSETVNETHDRSZ), no packet
//! information prefix (IFF_NO_PI), non-blocking. Attaching to a tap needs
//! CAP_NET_ADMIN unless the tap is persistent and owned by the caller; a name that
//! does not exist yet creates a tap that lives as long as the fd.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::NetError;

/// Size of the vnet header on the tap and in the guest's buffers (VERSION_1).
pub const VNET_HDR_LEN: usize = 12;
/// `IFNAMSIZ` − 1.
pub const IFNAME_MAX: usize = 15;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOR('T', 210, unsigned int)`.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (40 bytes).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// The descriptors open when the process started (the inherited ones), once
/// [`record_inherited_descriptors`] ran.
static INHERITED: std::sync::OnceLock<Vec<RawFd>> = std::sync::OnceLock::new();

/// Records which descriptors the process inherited. husk-vmm's `main` calls it
/// before it opens anything, so that [`Tap::from_fd`] can refuse a number that
/// was not inherited but names one of husk-vmm's own descriptors (/dev/kvm, say)
/// by the time the devices are built.
pub fn record_inherited_descriptors() -> std::io::Result<()> {
    let mut fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The directory's own descriptor was in the listing; it is closed now.
    // SAFETY: F_GETFD only reads the descriptor table entry of each number.
    fds.retain(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0);
    let _ = INHERITED.set(fds);
    Ok(())
}

/// An open tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to (or creates) tap `name`.
    pub fn open(name: &str) -> Result<Self, NetError> {
        if name.is_empty() || name.len() > IFNAME_MAX || name.contains('\0') {
            return Err(NetError::TapName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| NetError::OpenTun {
                name: name.to_string(),
                source,
            })?;
        let ioctl_err = |ioctl| NetError::TapIoctl {
            ioctl,
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        };
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and writes back) a `struct ifreq`, which `req`
        // matches in layout and size; it lives across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(ioctl_err("TUNSETIFF"));
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which is live.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(ioctl_err("TUNSETVNETHDRSZ"));
        }
        let len = req.name.iter().position(|b| *b == 0).unwrap_or(16);
        Ok(Tap {
            file,
            name: String::from_utf8_lossy(&req.name[..len]).into_owned(),
        })
    }

    /// Takes over descriptor `fd`, inherited from the parent, which must be a tap
    /// attached with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (the way a runtime hands over
    /// a tap it created in the container's network namespace). The descriptor is
    /// made non-blocking and close-on-exec; this process owns it from here on.
    pub fn from_fd(fd: RawFd) -> Result<Self, NetError> {
        let bad = |reason: String| NetError::TapFd { fd, reason };
        if fd <= 2 {
            return Err(bad("a standard stream is not a tap".into()));
        }
        let not_open = |fd| {
            // SAFETY: F_GETFD only reads the descriptor table entry of `fd`.
            let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
            !open
                || INHERITED
                    .get()
                    .is_some_and(|inherited| !inherited.contains(&fd))
        };
        if not_open(fd) {
            return Err(bad(
                "not open in husk-vmm when it started; the parent must leave it open \
                 across exec"
                    .into(),
            ));
        }
        // SAFETY: `fd` is open (checked above) and was inherited for this device
        // alone: the config names each descriptor once and nothing else in this
        // process opened or owns it, so the OwnedFd becomes its single owner.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; 16],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes a `struct ifreq` (name and flags) into `req`,
        // which matches it in layout and size and lives across the call.
        if unsafe { libc::ioctl(owned.as_raw_fd(), TUNGETIFF, &mut req) } < 0 {
            return Err(bad(format!(
                "not an attached tun/tap descriptor ({})",
                std::io::Error::last_os_error()
            )));
        }
        let len = req.name.iter().position(|b| *b == 0).unwrap_or(16);
        let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
        let wanted = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if req.flags & wanted != wanted {
            return Err(bad(format!(
                "{name} was attached with flags {:#x}; it needs IFF_TAP | IFF_NO_PI | IFF_VNET_HDR",
                req.flags
            )));
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which is live.
        if unsafe { libc::ioctl(owned.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(NetError::TapIoctl {
                ioctl: "TUNSETVNETHDRSZ",
                name,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: F_GETFL/F_SETFL and F_SETFD change only the flags of the owned
        // descriptor.
        let flags_set = unsafe {
            let flags = libc::fcntl(owned.as_raw_fd(), libc::F_GETFL);
            flags >= 0
                && libc::fcntl(owned.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
                && libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) == 0
        };
        if !flags_set {
            return Err(bad(format!(
                "setting O_NONBLOCK and FD_CLOEXEC: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Tap {
            file: File::from(owned),
            name,
        })
    }

    /// A tap stand-in over any frame-preserving fd (a datagram socket in tests).
    pub fn from_file(file: File, name: &str) -> Self {
        Tap {
            file,
            name: name.to_string(),
        }
    }

    /// The interface name the kernel gave the tap.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (vnet header first); `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (vnet header first).
    pub fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_are_checked_before_any_syscall() {
        for bad in ["", "a-name-that-is-too-long", "nul\0"] {
            assert!(
                matches!(Tap::open(bad), Err(NetError::TapName(_))),
                "{bad:?}"
            );
        }
    }
}

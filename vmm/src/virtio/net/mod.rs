//! virtio-net over a host tap device.
//!
//! `tap.rs` opens the tap (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a
//! 12-byte vnet header, the size of `virtio_net_hdr_v1`, so frames pass between the
//! guest's queues and the tap behind the same header, which the device rewrites to
//! zeros as nothing is negotiated); `device.rs` holds the
//! device (id 1; an RX and a TX queue; config = MAC + link status) and the queue
//! processing, run on the device's own thread, which reads the tap when epoll says
//! it is readable (edge-triggered) and the guest has posted receive buffers.

pub mod device;
pub mod tap;

pub use device::NetDevice;
pub use tap::Tap;

/// Errors from the virtio-net device and its tap.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap name is empty or longer than 15 bytes.
    #[error("tap name {0:?} must be 1 to 15 bytes")]
    TapName(String),
    /// /dev/net/tun could not be opened.
    #[error("opening /dev/net/tun for tap {name}: {source}")]
    OpenTun {
        /// The tap's name.
        name: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A tun ioctl failed (attaching to the tap needs CAP_NET_ADMIN or a persistent
    /// tap owned by the caller).
    #[error("{ioctl} on tap {name}: {source}")]
    TapIoctl {
        /// Which ioctl.
        ioctl: &'static str,
        /// The tap's name.
        name: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An inherited tap descriptor is not usable.
    #[error("tap descriptor {fd}: {reason}")]
    TapFd {
        /// The descriptor number.
        fd: i32,
        /// What is wrong with it.
        reason: String,
    },
    /// A MAC address did not parse.
    #[error("MAC address {0:?}: expected six hex bytes separated by ':'")]
    Mac(String),
    /// The random MAC could not be drawn.
    #[error("drawing a random MAC: {0}")]
    RandomMac(#[source] std::io::Error),
    /// The device thread could not be started.
    #[error("virtio-net worker setup: {0}")]
    Worker(#[source] std::io::Error),
}

pub use husk_vmm_config::net::MacAddr;

/// Parses `xx:xx:xx:xx:xx:xx` (the config crate's parser, with this module's error).
pub fn parse_mac(s: &str) -> Result<MacAddr, NetError> {
    husk_vmm_config::net::parse_mac(s).map_err(|_| NetError::Mac(s.to_string()))
}

/// A random locally administered unicast MAC (`x2:…`), for a device given none.
pub fn random_mac() -> Result<MacAddr, NetError> {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into the live buffer.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        return Err(NetError::RandomMac(std::io::Error::last_os_error()));
    }
    mac[0] = (mac[0] & 0xfc) | 0x02;
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_syntax() {
        assert_eq!(
            parse_mac("02:00:5e:0A:ff:01").unwrap(),
            [2, 0, 0x5e, 0x0a, 0xff, 1]
        );
        for bad in [
            "",
            "02:00:5e:0a:ff",
            "02:00:5e:0a:ff:01:02",
            "2:00:5e:0a:ff:01",
            "zz:00:5e:0a:ff:01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        let m = random_mac().unwrap();
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
    }
}

//! virtio-net devices over host taps, and the `--net` flag.

use serde::{Deserialize, Serialize};

/// Longest Linux interface name (IFNAMSIZ less the NUL).
pub const TAP_NAME_MAX: usize = 15;

/// Errors in a network device's configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetConfigError {
    /// A `--net` value did not parse.
    #[error("--net {value:?}: {reason} (expected tap=<name>|fd=<n>[,mac=xx:xx:xx:xx:xx:xx])")]
    Syntax {
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tap name is empty or longer than 15 bytes.
    #[error("tap name {0:?} must be 1 to 15 bytes")]
    TapName(String),
    /// Two network devices use the same tap.
    #[error("tap {0:?} is given twice")]
    TapTwice(String),
    /// A network device names neither a tap nor a descriptor, or both.
    #[error("a network device needs exactly one of \"tap\" (a name) and \"fd\" (an inherited tap descriptor)")]
    TapOrFd,
    /// A tap descriptor is a standard stream or negative.
    #[error("tap descriptor {0} is not usable: it must be an inherited descriptor above 2")]
    TapFd(i32),
    /// A MAC address did not parse or is multicast.
    #[error("MAC address {0:?}: expected six hex bytes separated by ':', unicast")]
    Mac(String),
}

/// A MAC address.
pub type MacAddr = [u8; 6];

/// A virtio-net device over a host tap: one named `tap` (attached to, or created),
/// or one the parent opened and passed down as descriptor `fd`. Exactly one of the
/// two.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap's name (attached to, or created when missing: needs CAP_NET_ADMIN
    /// unless it is a persistent tap owned by the caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// An inherited descriptor of a tap already attached with IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR (how a runtime hands over a tap it made in another network
    /// namespace); husk-vmm takes ownership of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// The guest's MAC (`xx:xx:xx:xx:xx:xx`); a random locally administered one when
    /// absent.
    #[serde(default)]
    pub mac: Option<String>,
}

/// Where a network device's tap comes from (a checked [`NetConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// Attach to (or create) the tap with this name.
    Name(String),
    /// Take over this inherited, already attached tap descriptor.
    Fd(i32),
}

impl NetConfig {
    /// A device on the inherited tap descriptor `fd`.
    pub fn inherited(fd: i32, mac: Option<String>) -> Self {
        NetConfig {
            tap: None,
            fd: Some(fd),
            mac,
        }
    }

    /// The tap's source, when exactly one of `tap` and `fd` is set.
    pub fn source(&self) -> Result<TapSource, NetConfigError> {
        match (&self.tap, self.fd) {
            (Some(name), None) => Ok(TapSource::Name(name.clone())),
            (None, Some(fd)) => Ok(TapSource::Fd(fd)),
            _ => Err(NetConfigError::TapOrFd),
        }
    }
}

impl std::str::FromStr for NetConfig {
    type Err = NetConfigError;

    /// Parses `tap=<name>[,mac=xx:xx:xx:xx:xx:xx]` or `fd=<n>[,mac=…]` (the `--net`
    /// flag).
    fn from_str(value: &str) -> Result<Self, NetConfigError> {
        let bad = |reason: &str| NetConfigError::Syntax {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let mut net = NetConfig::default();
        for item in value.split(',') {
            let (key, val) = item.split_once('=').ok_or_else(|| bad("missing '='"))?;
            match key {
                "tap" => net.tap = Some(val.to_string()),
                "fd" => {
                    net.fd = Some(
                        val.parse()
                            .map_err(|_| bad("fd= takes a descriptor number"))?,
                    )
                }
                "mac" => net.mac = Some(val.to_string()),
                other => return Err(bad(&format!("unknown key {other:?}"))),
            }
        }
        if net.tap.is_some() == net.fd.is_some() {
            return Err(bad("give one of tap= and fd="));
        }
        Ok(net)
    }
}

/// Parses `xx:xx:xx:xx:xx:xx` (any address, multicast included).
pub fn parse_mac(s: &str) -> Result<MacAddr, NetConfigError> {
    let bad = || NetConfigError::Mac(s.to_string());
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// Checks every device: one tap source each, usable names and descriptors, no tap
/// twice, unicast MACs.
pub fn check_devices(devices: &[NetConfig]) -> Result<(), NetConfigError> {
    for (i, net) in devices.iter().enumerate() {
        let twice = devices[..i]
            .iter()
            .any(|n| n.source().ok() == net.source().ok());
        match net.source()? {
            TapSource::Name(tap) => {
                if tap.is_empty() || tap.len() > TAP_NAME_MAX || tap.contains(['\0', '/']) {
                    return Err(NetConfigError::TapName(tap));
                }
                if twice {
                    return Err(NetConfigError::TapTwice(tap));
                }
            }
            TapSource::Fd(fd) => {
                if fd <= 2 {
                    return Err(NetConfigError::TapFd(fd));
                }
                if twice {
                    return Err(NetConfigError::TapTwice(format!("fd {fd}")));
                }
            }
        }
        if let Some(mac) = &net.mac {
            match parse_mac(mac) {
                Ok(m) if m[0] & 1 == 0 => {}
                _ => return Err(NetConfigError::Mac(mac.clone())),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(name: &str, mac: Option<&str>) -> NetConfig {
        NetConfig {
            tap: Some(name.into()),
            fd: None,
            mac: mac.map(String::from),
        }
    }

    #[test]
    fn net_flag_syntax() {
        let n: NetConfig = "tap=tap0".parse().unwrap();
        assert_eq!(n.source().unwrap(), TapSource::Name("tap0".into()));
        assert_eq!(n.mac, None);
        let n: NetConfig = "mac=02:00:00:00:00:01,tap=t1".parse().unwrap();
        assert_eq!(n.mac.as_deref(), Some("02:00:00:00:00:01"));
        let n: NetConfig = "fd=7,mac=02:00:00:00:00:01".parse().unwrap();
        assert_eq!(n.source().unwrap(), TapSource::Fd(7));
        assert_eq!(n, NetConfig::inherited(7, Some("02:00:00:00:00:01".into())));
        for bad in [
            "",
            "tap0",
            "mac=02:00:00:00:00:01",
            "tap=t,queues=2",
            "fd=x",
            "tap=t,fd=3",
        ] {
            let e = bad.parse::<NetConfig>().unwrap_err();
            assert!(matches!(e, NetConfigError::Syntax { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:00:5e:0A:ff:01"),
            Ok([0x02, 0x00, 0x5e, 0x0a, 0xff, 0x01])
        );
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "2:00:00:00:00:01",
            "xx:00:00:00:00:01",
        ] {
            assert_eq!(parse_mac(bad), Err(NetConfigError::Mac(bad.into())));
        }
    }

    #[test]
    fn devices_are_checked() {
        let fd = |fd: i32| NetConfig::inherited(fd, None);
        assert_eq!(check_devices(&[fd(3), tap("t", None)]), Ok(()));
        assert_eq!(check_devices(&[fd(2)]), Err(NetConfigError::TapFd(2)));
        assert_eq!(
            check_devices(&[fd(5), fd(5)]),
            Err(NetConfigError::TapTwice("fd 5".into()))
        );
        assert_eq!(
            check_devices(&[NetConfig::default()]),
            Err(NetConfigError::TapOrFd)
        );
        assert_eq!(check_devices(&[tap("tap0", None)]), Ok(()));
        assert_eq!(
            check_devices(&[tap("a-very-long-tap-name", None)]),
            Err(NetConfigError::TapName("a-very-long-tap-name".into()))
        );
        assert_eq!(
            check_devices(&[tap("t", None), tap("t", None)]),
            Err(NetConfigError::TapTwice("t".into()))
        );
        for mac in ["02:00:00:00:00", "01:00:5e:00:00:01", "xx:00:00:00:00:01"] {
            assert_eq!(
                check_devices(&[tap("t", Some(mac))]),
                Err(NetConfigError::Mac(mac.into()))
            );
        }
    }
}

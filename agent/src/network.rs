//! The pod's network in the guest: the host carries each interface of the
//! container's network namespace in as a virtio-net device with the same MAC; this
//! module checks what the host sent and configures the devices (name, MTU, IPv4 and
//! IPv6 addresses, routes) in the guest's network namespace, where the sandbox's
//! containers run.

use std::net::IpAddr;

use husk_agent_protocol::agent as pb;
use husk_netlink::{Address, Netlink, NetlinkError, Route};

/// At most this many interfaces, addresses per interface, and routes.
pub const MAX_INTERFACES: usize = 8;
pub const MAX_ADDRESSES: usize = 16;
pub const MAX_ROUTES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid network configuration: {0}")]
    Invalid(String),
    #[error("no guest network device with MAC {0} (was its virtio-net device attached?)")]
    NoDevice(String),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// One interface to configure, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
    pub addresses: Vec<(IpAddr, u8)>,
}

/// A route to add, checked; `interface` indexes [`Plan::interfaces`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRoute {
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub interface: usize,
    pub ipv6: bool,
}

/// A checked ConfigureNetwork request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub interfaces: Vec<Interface>,
    pub routes: Vec<PlannedRoute>,
}

fn invalid(message: impl Into<String>) -> NetworkError {
    NetworkError::Invalid(message.into())
}

/// A Linux interface name: 1..=15 bytes of `[A-Za-z0-9_.-]`, not `.`/`..`, not `lo`.
fn check_name(name: &str) -> Result<(), NetworkError> {
    let valid = (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && name != "."
        && name != ".."
        && name != "lo";
    if valid {
        Ok(())
    } else {
        Err(invalid(format!("interface name {name:?}")))
    }
}

fn parse_ip(text: &str) -> Result<IpAddr, NetworkError> {
    text.parse()
        .map_err(|_| invalid(format!("IP address {text:?}")))
}

/// The longest prefix of `ip`'s family.
fn max_prefix(ip: &IpAddr) -> u32 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// An address or destination the guest may be given: not loopback, not multicast,
/// not unspecified (a destination may be 0.0.0.0/0 or ::/0 written out), and no
/// IPv6 link-local address (the guest makes its own from the MAC).
fn check_unicast(ip: &IpAddr, what: &str) -> Result<(), NetworkError> {
    let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
    if ip.is_loopback() || ip.is_multicast() || link_local {
        return Err(invalid(format!("{what} {ip}")));
    }
    Ok(())
}

fn parse_cidr(text: &str) -> Result<(IpAddr, u8), NetworkError> {
    let (ip, prefix) = text
        .split_once('/')
        .ok_or_else(|| invalid(format!("destination {text:?} (want address/prefix)")))?;
    let ip = parse_ip(ip)?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| u32::from(*p) <= max_prefix(&ip))
        .ok_or_else(|| invalid(format!("prefix length in {text:?}")))?;
    Ok((ip, prefix))
}

/// Checks everything in the request before anything is changed.
pub fn plan(request: &pb::ConfigureNetworkRequest) -> Result<Plan, NetworkError> {
    if request.interfaces.len() > MAX_INTERFACES {
        return Err(invalid(format!(
            "{} interfaces (at most {MAX_INTERFACES})",
            request.interfaces.len()
        )));
    }
    if request.routes.len() > MAX_ROUTES {
        return Err(invalid(format!(
            "{} routes (at most {MAX_ROUTES})",
            request.routes.len()
        )));
    }
    let mut interfaces: Vec<Interface> = Vec::with_capacity(request.interfaces.len());
    for i in &request.interfaces {
        check_name(&i.name)?;
        let mac =
            husk_netlink::parse_mac(&i.mac).ok_or_else(|| invalid(format!("MAC {:?}", i.mac)))?;
        if mac == [0; 6] || mac[0] & 1 == 1 {
            return Err(invalid(format!("MAC {} is not a unicast address", i.mac)));
        }
        let mtu = match i.mtu {
            0 => None,
            68..=65535 => Some(i.mtu),
            other => return Err(invalid(format!("MTU {other} (68..=65535)"))),
        };
        if i.addresses.len() > MAX_ADDRESSES {
            return Err(invalid(format!(
                "{} addresses on {} (at most {MAX_ADDRESSES})",
                i.addresses.len(),
                i.name
            )));
        }
        let mut addresses = Vec::with_capacity(i.addresses.len());
        for a in &i.addresses {
            let ip = parse_ip(&a.address)?;
            if a.prefix_len > max_prefix(&ip) {
                return Err(invalid(format!("prefix length {} of {ip}", a.prefix_len)));
            }
            check_unicast(&ip, "address")?;
            if ip.is_unspecified() {
                return Err(invalid(format!("address {ip}")));
            }
            addresses.push((ip, a.prefix_len as u8));
        }
        if interfaces.iter().any(|o| o.name == i.name || o.mac == mac) {
            return Err(invalid(format!(
                "interface {} or MAC {} twice",
                i.name, i.mac
            )));
        }
        interfaces.push(Interface {
            name: i.name.clone(),
            mac,
            mtu,
            addresses,
        });
    }
    let mut routes = Vec::with_capacity(request.routes.len());
    for r in &request.routes {
        let destination = if r.destination.is_empty() {
            None
        } else {
            Some(parse_cidr(&r.destination)?)
        };
        let gateway = if r.gateway.is_empty() {
            None
        } else {
            Some(parse_ip(&r.gateway)?)
        };
        if destination.is_none() && gateway.is_none() {
            return Err(invalid("a default route needs a gateway"));
        }
        if let Some((ip, _)) = &destination {
            if !ip.is_unspecified() {
                check_unicast(ip, "route destination")?;
            }
        }
        let families: Vec<bool> = destination
            .iter()
            .map(|(ip, _)| ip.is_ipv6())
            .chain(gateway.iter().map(IpAddr::is_ipv6))
            .collect();
        if families.iter().any(|v6| *v6 != r.ipv6) {
            return Err(invalid(format!(
                "route {:?} via {:?}: addresses of another family than the route's",
                r.destination, r.gateway
            )));
        }
        let interface = interfaces
            .iter()
            .position(|i| i.name == r.interface)
            .ok_or_else(|| invalid(format!("route via unknown interface {:?}", r.interface)))?;
        routes.push(PlannedRoute {
            destination,
            gateway,
            interface,
            ipv6: r.ipv6,
        });
    }
    Ok(Plan { interfaces, routes })
}

/// Applies a plan in the agent's network namespace: loopback up, each device found
/// by MAC, renamed, MTU set, addresses added, up; then the routes.
pub fn apply(plan: &Plan) -> Result<(), NetworkError> {
    let mut netlink = Netlink::open()?;
    let links = netlink.links()?;
    if let Some(lo) = links.iter().find(|l| l.name == "lo") {
        netlink.configure_link(lo.index, None, None, true)?;
    }
    let mut indices = Vec::with_capacity(plan.interfaces.len());
    for interface in &plan.interfaces {
        let link = links
            .iter()
            .find(|l| l.mac == Some(interface.mac))
            .ok_or_else(|| NetworkError::NoDevice(husk_netlink::format_mac(&interface.mac)))?;
        let rename = (link.name != interface.name).then_some(interface.name.as_str());
        if link.up && rename.is_some() {
            netlink.configure_link(link.index, None, None, false)?;
        }
        netlink.configure_link(link.index, rename, interface.mtu, true)?;
        for (ip, prefix_len) in &interface.addresses {
            netlink.add_address(Address {
                link: link.index,
                ip: *ip,
                prefix_len: *prefix_len,
            })?;
        }
        indices.push(link.index);
    }
    // Link routes first: a gateway must be reachable before a route can use it.
    let mut routes: Vec<&PlannedRoute> = plan.routes.iter().collect();
    routes.sort_by_key(|r| r.gateway.is_some());
    for route in routes {
        let result = netlink.add_route(&Route {
            destination: route.destination,
            gateway: route.gateway,
            link: Some(indices[route.interface]),
            kernel_made: false,
            ipv6: route.ipv6,
        });
        match result {
            // The kernel already made this subnet's route for an address.
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            other => other?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// name, MAC, MTU, (address, prefix) pairs.
    type InterfaceArgs<'a> = (&'a str, &'a str, u32, &'a [(&'a str, u32)]);

    fn request(
        interfaces: &[InterfaceArgs<'_>],
        routes: &[(&str, &str, &str)],
    ) -> pb::ConfigureNetworkRequest {
        let mut r = pb::ConfigureNetworkRequest::new();
        for (name, mac, mtu, addresses) in interfaces {
            let mut i = pb::GuestInterface::new();
            i.name = name.to_string();
            i.mac = mac.to_string();
            i.mtu = *mtu;
            for (ip, prefix) in *addresses {
                let mut a = pb::IPAddress::new();
                a.address = ip.to_string();
                a.prefix_len = *prefix;
                i.addresses.push(a);
            }
            r.interfaces.push(i);
        }
        for (destination, gateway, interface) in routes {
            let mut route = pb::GuestRoute::new();
            route.destination = destination.to_string();
            route.gateway = gateway.to_string();
            route.interface = interface.to_string();
            route.ipv6 = destination.contains(':') || gateway.contains(':');
            r.routes.push(route);
        }
        r
    }

    #[test]
    fn a_pod_network_is_planned() {
        let plan = plan(&request(
            &[("eth0", "02:42:ac:11:00:02", 1400, &[("172.17.0.2", 16)])],
            &[("", "172.17.0.1", "eth0"), ("10.9.0.0/24", "", "eth0")],
        ))
        .expect("valid");
        assert_eq!(plan.interfaces[0].mac, [2, 0x42, 0xac, 0x11, 0, 2]);
        assert_eq!(plan.interfaces[0].mtu, Some(1400));
        assert_eq!(plan.routes[0].destination, None);
        assert_eq!(
            plan.routes[1].destination,
            Some((IpAddr::from([10, 9, 0, 0]), 24))
        );
    }

    #[test]
    fn a_dual_stack_network_is_planned() {
        let plan = plan(&request(
            &[(
                "eth0",
                "02:42:ac:11:00:02",
                1500,
                &[("172.17.0.2", 16), ("fd00:77::2", 64)],
            )],
            &[
                ("", "172.17.0.1", "eth0"),
                ("", "fd00:77::1", "eth0"),
                ("fd00:99::/48", "", "eth0"),
            ],
        ))
        .expect("valid");
        assert_eq!(
            plan.interfaces[0].addresses[1],
            ("fd00:77::2".parse().unwrap(), 64)
        );
        assert!(!plan.routes[0].ipv6);
        assert!(plan.routes[1].ipv6 && plan.routes[2].ipv6);
        assert_eq!(
            plan.routes[2].destination,
            Some(("fd00:99::".parse().unwrap(), 48))
        );
    }

    #[test]
    fn bad_requests_are_refused_before_anything_changes() {
        let mac = "02:00:00:00:00:01";
        let cases: Vec<pb::ConfigureNetworkRequest> = vec![
            request(&[("lo", mac, 0, &[])], &[]),
            request(&[("a/b", mac, 0, &[])], &[]),
            request(&[("sixteen-chars-xx", mac, 0, &[])], &[]),
            request(&[("eth0", "01:00:5e:00:00:01", 0, &[])], &[]),
            request(&[("eth0", "00:00:00:00:00:00", 0, &[])], &[]),
            request(&[("eth0", "02:00:00:00:00", 0, &[])], &[]),
            request(&[("eth0", mac, 67, &[])], &[]),
            request(&[("eth0", mac, 70000, &[])], &[]),
            request(&[("eth0", mac, 0, &[("10.0.0.1", 33)])], &[]),
            request(&[("eth0", mac, 0, &[("fe80::1", 64)])], &[]),
            request(&[("eth0", mac, 0, &[("fd00::1", 129)])], &[]),
            request(&[("eth0", mac, 0, &[("::1", 128)])], &[]),
            request(&[("eth0", mac, 0, &[("ff02::1", 64)])], &[]),
            request(&[("eth0", mac, 0, &[("127.0.0.2", 8)])], &[]),
            request(&[("eth0", mac, 0, &[("0.0.0.0", 8)])], &[]),
            request(
                &[("eth0", mac, 0, &[])],
                &[("fd00::/64", "10.0.0.1", "eth0")],
            ),
            request(
                &[("eth0", mac, 0, &[]), ("eth0", "02:00:00:00:00:02", 0, &[])],
                &[],
            ),
            request(&[("eth0", mac, 0, &[])], &[("", "", "eth0")]),
            request(&[("eth0", mac, 0, &[])], &[("", "10.0.0.1", "eth1")]),
            request(&[("eth0", mac, 0, &[])], &[("10.0.0.0", "", "eth0")]),
            request(&[("eth0", mac, 0, &[])], &[("10.0.0.0/40", "", "eth0")]),
        ];
        for case in cases {
            assert!(
                matches!(plan(&case), Err(NetworkError::Invalid(_))),
                "accepted {case:?}"
            );
        }
        let many: Vec<(String, String)> = (0..=MAX_INTERFACES)
            .map(|n| (format!("eth{n}"), format!("02:00:00:00:00:{n:02x}")))
            .collect();
        let refs: Vec<InterfaceArgs<'_>> = many
            .iter()
            .map(|(n, m)| (n.as_str(), m.as_str(), 0, &[][..]))
            .collect();
        assert!(plan(&request(&refs, &[])).is_err(), "too many interfaces");
    }
}

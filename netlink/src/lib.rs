//! A small blocking rtnetlink client for what VM networking needs: read a network
//! namespace's links, IPv4 addresses and routes (host side), set links up, rename
//! them and set their MTU, add addresses and routes (the agent, in the guest), and
//! wire a veth to a tap with ingress qdiscs and `mirred` redirects (host side).
//!
//! The socket works in the network namespace of the thread that opened it, so a
//! caller that needs another namespace opens the client on a thread that joined it.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::address::AddressFlags;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::Socket;

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: undecodable netlink reply: {detail}")]
    Decode { what: String, detail: String },
    #[error("no link with index {0}")]
    NoSuchLink(u32),
}

impl NetlinkError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The hardware address (absent on loopback-like links without one).
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
    /// `IFLA_INFO_KIND` ("veth", "tun", "bridge", ...), when the link has one.
    pub kind: Option<String>,
}

impl Link {
    /// Loopback has neither a kind nor a non-zero MAC.
    pub fn is_loopback(&self) -> bool {
        self.name == "lo" || self.mac == Some([0; 6])
    }
}

/// An IPv4 address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub link: u32,
    pub ip: IpAddr,
    pub prefix_len: u8,
}

impl Address {
    /// An IPv6 link-local address (fe80::/10): every IPv6 interface makes its own
    /// from its MAC, so it is never carried.
    pub fn is_link_local(&self) -> bool {
        matches!(self.ip, IpAddr::V6(ip) if ip.segments()[0] & 0xffc0 == 0xfe80)
    }
}

/// An IPv4 unicast route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub link: Option<u32>,
    /// The kernel made it (an address's prefix route, IPv6's fe80::/64).
    pub kernel_made: bool,
    /// IPv6 (else IPv4): a default route has neither destination nor, without a
    /// gateway, an address to tell.
    pub ipv6: bool,
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A route-netlink socket in the opening thread's network namespace.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

const RECEIVE_BUFFER: usize = 64 * 1024;
/// `ETH_P_ALL` in network byte order, as tc filters want their protocol.
const ETH_P_ALL_BE: u16 = 0x0003_u16.to_be();
/// The priority of our redirect filters (tc's default for the first filter).
const FILTER_PRIORITY: u16 = 49152;

impl Netlink {
    pub fn open() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket.set_ext_ack(true).ok();
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Sends one request and collects the replies: every inner message of a dump,
    /// or nothing for an acknowledged change.
    fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0; packet.header.length as usize];
        packet.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .map_err(|source| NetlinkError::Kernel {
                what: what.to_string(),
                source,
            })?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        let mut buffer = vec![0u8; RECEIVE_BUFFER];
        loop {
            let received = self
                .socket
                .recv(&mut &mut buffer[..], 0)
                .map_err(|source| NetlinkError::Kernel {
                    what: what.to_string(),
                    source,
                })?;
            let mut offset = 0;
            while offset < received {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buffer[offset..received])
                        .map_err(|e| NetlinkError::Decode {
                        what: what.to_string(),
                        detail: e.to_string(),
                    })?;
                let length = reply.header.length as usize;
                if reply.header.sequence_number == self.sequence {
                    match reply.payload {
                        NetlinkPayload::Done(_) => return Ok(replies),
                        NetlinkPayload::Error(error) => match error.code {
                            None if !dump => return Ok(replies),
                            None => {}
                            Some(_) => {
                                return Err(NetlinkError::Kernel {
                                    what: what.to_string(),
                                    source: error.to_io(),
                                })
                            }
                        },
                        NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let replies = self.request(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => Some(link_from(&link)),
                _ => None,
            })
            .collect())
    }

    /// The link with this index.
    pub fn link(&mut self, index: u32) -> Result<Link, NetlinkError> {
        self.links()?
            .into_iter()
            .find(|l| l.index == index)
            .ok_or(NetlinkError::NoSuchLink(index))
    }

    /// Every IPv4 and IPv6 address of the namespace.
    pub fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        let mut request = AddressMessage::default();
        request.header.family = AddressFamily::Unspec;
        let replies = self.request(
            "list addresses",
            RouteNetlinkMessage::GetAddress(request),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewAddress(a) => {
                    // IPv4 names the interface's own address IFA_LOCAL (IFA_ADDRESS
                    // is the peer's on point-to-point links); IPv6 has only
                    // IFA_ADDRESS.
                    let ip = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let ip = ip.or_else(|| {
                        a.attributes.iter().find_map(|attr| match attr {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })?;
                    Some(Address {
                        link: a.header.index,
                        ip,
                        prefix_len: a.header.prefix_len,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// The IPv4 and IPv6 unicast routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Unspec;
        let replies = self.request(
            "list routes",
            RouteNetlinkMessage::GetRoute(request),
            NLM_F_DUMP,
        )?;
        let mut routes = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewRoute(r) = reply else {
                continue;
            };
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            let ipv6 = match r.header.address_family {
                AddressFamily::Inet => false,
                AddressFamily::Inet6 => true,
                _ => continue,
            };
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) || r.header.kind != RouteType::Unicast
            {
                continue;
            }
            let mut route = Route {
                destination: None,
                gateway: None,
                link: None,
                kernel_made: r.header.protocol == RouteProtocol::Kernel,
                ipv6,
            };
            let ip = |address: &RouteAddress| match address {
                RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
                RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
                _ => None,
            };
            for attribute in &r.attributes {
                match attribute {
                    RouteAttribute::Destination(address) => {
                        route.destination =
                            ip(address).map(|ip| (ip, r.header.destination_prefix_length));
                    }
                    RouteAttribute::Gateway(address) => route.gateway = ip(address),
                    RouteAttribute::Oif(index) => route.link = Some(*index),
                    _ => {}
                }
            }
            routes.push(route);
        }
        Ok(routes)
    }

    /// Sets a link up (and optionally its MTU and name; a rename needs the link down,
    /// so it happens before the link goes up).
    pub fn configure_link(
        &mut self,
        index: u32,
        name: Option<&str>,
        mtu: Option<u32>,
        up: bool,
    ) -> Result<(), NetlinkError> {
        if name.is_some() || mtu.is_some() {
            let mut message = LinkMessage::default();
            message.header.index = index;
            if let Some(name) = name {
                message
                    .attributes
                    .push(LinkAttribute::IfName(name.to_string()));
            }
            if let Some(mtu) = mtu {
                message.attributes.push(LinkAttribute::Mtu(mtu));
            }
            self.request(
                &format!("configure link {index}"),
                RouteNetlinkMessage::SetLink(message),
                NLM_F_ACK,
            )?;
        }
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.change_mask = LinkFlags::Up;
        if up {
            message.header.flags = LinkFlags::Up;
        }
        self.request(
            &format!("set link {index} {}", if up { "up" } else { "down" }),
            RouteNetlinkMessage::SetLink(message),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    /// Adds an address to a link. An IPv6 one skips duplicate address detection
    /// (it is the engine's, already checked on its network), so it is usable at once.
    pub fn add_address(&mut self, address: Address) -> Result<(), NetlinkError> {
        let mut message = AddressMessage::default();
        message.header.prefix_len = address.prefix_len;
        message.header.index = address.link;
        match address.ip {
            IpAddr::V4(ip) => {
                message.header.family = AddressFamily::Inet;
                message.attributes.push(AddressAttribute::Local(address.ip));
                message
                    .attributes
                    .push(AddressAttribute::Address(address.ip));
                if address.prefix_len < 31 {
                    let host_bits = 32 - u32::from(address.prefix_len);
                    let broadcast = u32::from(ip) | ((1u32 << host_bits) - 1);
                    message
                        .attributes
                        .push(AddressAttribute::Broadcast(Ipv4Addr::from(broadcast)));
                }
            }
            IpAddr::V6(_) => {
                message.header.family = AddressFamily::Inet6;
                message
                    .attributes
                    .push(AddressAttribute::Address(address.ip));
                message
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        self.request(
            &format!(
                "add address {}/{} to link {}",
                address.ip, address.prefix_len, address.link
            ),
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Adds a route to the main table (IPv6 when `route.ipv6`; its destination and
    /// gateway must be of the same family).
    pub fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let mut message = RouteMessage::default();
        message.header.address_family = if route.ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.kind = RouteType::Unicast;
        message.header.scope = if route.gateway.is_some() || route.ipv6 {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if let Some((ip, prefix)) = route.destination {
            message.header.destination_prefix_length = prefix;
            message
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::from(ip)));
        }
        if let Some(gateway) = route.gateway {
            message
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
        }
        if let Some(link) = route.link {
            message.attributes.push(RouteAttribute::Oif(link));
        }
        let describe = match route.destination {
            Some((ip, prefix)) => format!("{ip}/{prefix}"),
            None if route.ipv6 => "default (IPv6)".into(),
            None => "default".into(),
        };
        self.request(
            &format!("add route {describe}"),
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Adds the ingress qdisc (`tc qdisc add dev X ingress`).
    pub fn add_ingress_qdisc(&mut self, link: u32) -> Result<(), NetlinkError> {
        let message = ingress_qdisc(link);
        self.request(
            &format!("add ingress qdisc to link {link}"),
            RouteNetlinkMessage::NewQueueDiscipline(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Removes the ingress qdisc and with it every filter on it. A link without one
    /// (or gone) is not an error: teardown runs after partial setups and crashes.
    pub fn remove_ingress_qdisc(&mut self, link: u32) -> Result<(), NetlinkError> {
        let message = ingress_qdisc(link);
        match self.request(
            &format!("remove ingress qdisc of link {link}"),
            RouteNetlinkMessage::DelQueueDiscipline(message),
            NLM_F_ACK,
        ) {
            Err(e)
                if matches!(
                    e.errno(),
                    Some(libc_errno::ENOENT | libc_errno::EINVAL | libc_errno::ENODEV)
                ) =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Whether the link has an ingress qdisc.
    pub fn has_ingress_qdisc(&mut self, link: u32) -> Result<bool, NetlinkError> {
        let replies = self.request(
            "list qdiscs",
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies.iter().any(|reply| match reply {
            RouteNetlinkMessage::NewQueueDiscipline(q) => {
                q.header.index == link as i32
                    && q.attributes
                        .iter()
                        .any(|a| matches!(a, TcAttribute::Kind(k) if k == "ingress"))
            }
            _ => false,
        }))
    }

    /// Every frame arriving on `from` leaves through `to` (`tc filter add dev FROM
    /// parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev
    /// TO`). `from` needs an
    /// ingress qdisc.
    pub fn redirect_ingress(&mut self, from: u32, to: u32) -> Result<(), NetlinkError> {
        let mut message = TcMessage::with_index(from as i32);
        message.header.parent = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        message.header.info = (u32::from(FILTER_PRIORITY) << 16) | u32::from(ETH_P_ALL_BE);
        let mut generic = TcActionGeneric::default();
        generic.action = TcActionType::Stolen;
        let mut parms = TcMirror::default();
        parms.generic = generic;
        parms.eaction = TcMirrorActionType::EgressRedir;
        parms.ifindex = to;
        let mut mirred = TcAction::default();
        mirred.tab = 1;
        mirred.attributes = vec![
            TcActionAttribute::Kind("mirred".to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                parms,
            ))]),
        ];
        // u32 with one zero key matches every frame; cls_matchall would be the
        // obvious choice but is missing from minimal host kernels (this CI's among
        // them), while cls_u32 is nearly everywhere.
        let mut key = TcU32Key::default();
        key.mask = 0;
        key.val = 0;
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![key];
        message
            .attributes
            .push(TcAttribute::Kind("u32".to_string()));
        message.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![mirred])),
        ]));
        self.request(
            &format!("redirect ingress of link {from} to link {to}"),
            RouteNetlinkMessage::NewTrafficFilter(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }
}

/// The errno values teardown tolerates (no libc dependency for three constants).
mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
}

/// The ingress qdisc of a link (handle ffff:, parent ingress), as add and delete
/// name it.
fn ingress_qdisc(link: u32) -> TcMessage {
    let mut message = TcMessage::with_index(link as i32);
    message.header.parent = TcHandle::INGRESS;
    message.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    message
        .attributes
        .push(TcAttribute::Kind("ingress".to_string()));
    message
}

fn link_from(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        kind: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Address(bytes) => link.mac = bytes.as_slice().try_into().ok(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let netlink_packet_route::link::LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
        assert_eq!(format_mac(&mac), "02:42:ac:11:00:02");
        assert_eq!(parse_mac("02:42:ac:11:00:02"), Some(mac));
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "2:42:ac:11:00:02",
            "zz:42:ac:11:00:02",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    /// Reads this process's namespace: there is always a loopback link with 127.0.0.1.
    #[test]
    fn reads_loopback() {
        let mut netlink = Netlink::open().expect("open netlink");
        let links = netlink.links().expect("links");
        let lo = links.iter().find(|l| l.name == "lo").expect("lo listed");
        assert!(lo.is_loopback());
        let addresses = netlink.addresses().expect("addresses");
        assert!(
            !lo.up
                || addresses
                    .iter()
                    .any(|a| a.link == lo.index && a.ip == Ipv4Addr::LOCALHOST),
            "{addresses:?}"
        );
        netlink.routes().expect("routes");
    }
}

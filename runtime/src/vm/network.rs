//! The container's network namespace carried into the sandbox VM, as Kata's
//! `tcfilter` model does it: for each interface the engine (or CNI plugin) prepared
//! in the namespace, a tap device is created in that namespace, `tc` redirects every
//! frame arriving on the interface to the tap and back, the VMM gets the tap as a
//! virtio-net device, and the agent gives the guest device the interface's MAC,
//! MTU, IPv4 and IPv6 addresses (not IPv6 link-local ones: the guest makes the same
//! from the MAC) and routes. The interface keeps its address on the host; the
//! host stack never sees its traffic (the redirect steals it at ingress).
//!
//! The taps are not persistent: they vanish when the last process holding them (the
//! VMM) exits, and their filters with them. The ingress qdiscs added to the
//! engine's interfaces are removed at teardown, recorded in the sandbox directory
//! for a `delete` after a crash.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::agent::{GuestInterface, GuestNetwork, GuestRoute};
use husk_netlink::{Link, Netlink, NetlinkError};
use serde_json::{json, Value};

/// The file in the sandbox directory that records what [`attach`] changed.
pub const RECORD: &str = "network.json";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "vm isolation cannot share the host's network stack (the spec has no network \
         namespace, e.g. `--network host`): the container runs behind its own kernel; \
         give it a network namespace, or run it with --isolation container"
    )]
    HostNetwork,
    #[error("open network namespace {path}: {source}")]
    OpenNamespace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("join network namespace {path}: {source}")]
    JoinNamespace { path: PathBuf, source: nix::Error },
    #[error("in network namespace {path}: {source}")]
    Netlink { path: PathBuf, source: NetlinkError },
    #[error("create tap {name} in {path}: {source}")]
    Tap {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("network namespace {path} has {count} interfaces to carry; at most {max}")]
    TooManyInterfaces {
        path: PathBuf,
        count: usize,
        max: usize,
    },
    #[error("record {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the guest's network is made of, from the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkPlan {
    /// A network namespace without a path: a new, empty one (loopback only) in the
    /// guest.
    Isolated,
    /// The namespace at this path, prepared by the engine: its interfaces are
    /// carried into the guest.
    Carry(PathBuf),
    /// A network namespace without a path that the spec's host hooks fill (Docker's
    /// `libnetwork-setkey` prestart hook moves the container's veth into
    /// `/proc/<pid>/ns/net`): the sandbox's supervisor gets a new network namespace
    /// on the host, the hooks run with its pid, then its interfaces are carried.
    Prepared,
}

impl NetworkPlan {
    /// The container joins the guest's own network namespace, which holds exactly
    /// the carried interfaces (and loopback).
    pub fn carries_interfaces(&self) -> bool {
        matches!(self, NetworkPlan::Carry(_) | NetworkPlan::Prepared)
    }
}

/// Whether the spec has hooks that run on the host before the container starts
/// (`createRuntime`, or the deprecated `prestart`).
pub fn has_host_setup_hooks(spec: &Value) -> bool {
    ["createRuntime", "prestart"].iter().any(|kind| {
        spec.pointer(&format!("/hooks/{kind}"))
            .and_then(Value::as_array)
            .is_some_and(|hooks| !hooks.is_empty())
    })
}

/// Reads the spec's network namespace. No network namespace at all means the host's
/// network, which a VM cannot have: refused, never downgraded.
pub fn plan(spec: &Value) -> Result<NetworkPlan, NetworkError> {
    let namespaces = spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let network = namespaces
        .iter()
        .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"))
        .ok_or(NetworkError::HostNetwork)?;
    Ok(
        match network
            .get("path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        {
            Some(path) => NetworkPlan::Carry(PathBuf::from(path)),
            None if has_host_setup_hooks(spec) => NetworkPlan::Prepared,
            None => NetworkPlan::Isolated,
        },
    )
}

/// One interface wired to a tap.
#[derive(Debug)]
pub struct Tap {
    /// The tap's file descriptor, for the VMM (`-netdev tap,fd=`).
    pub fd: OwnedFd,
    pub name: String,
    /// The guest device's MAC: the engine's interface's.
    pub mac: [u8; 6],
}

/// What [`attach`] set up; [`Attachment::detach`] (or dropping the taps plus
/// [`detach_recorded`]) undoes it.
#[derive(Debug)]
pub struct Attachment {
    pub namespace: PathBuf,
    pub taps: Vec<Tap>,
    /// Interfaces that got an ingress qdisc (by name: indices can be reused).
    pub interfaces: Vec<String>,
    /// What the agent's ConfigureNetwork gets.
    pub guest: GuestNetwork,
}

/// At most this many interfaces are carried (the agent's limit).
const MAX_INTERFACES: usize = 8;

/// Runs `f` on a thread that joined the network namespace at `path`.
fn in_namespace<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    let file = File::open(path).map_err(|source| NetworkError::OpenNamespace {
        path: path.to_path_buf(),
        source,
    })?;
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|source| NetworkError::JoinNamespace { path, source })?;
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The interfaces worth carrying: up, with a MAC, not loopback, not a tap of ours.
fn carried(links: &[Link]) -> Vec<Link> {
    links
        .iter()
        .filter(|l| {
            !l.is_loopback()
                && l.mac.is_some()
                && l.kind.as_deref() != Some("tun")
                && !l.name.starts_with("husk-tap")
        })
        .cloned()
        .collect()
}

/// Wires the namespace's interfaces to new taps and says what the guest must
/// configure. On failure, what was set up is undone.
pub fn attach(namespace: &Path, record_in: &Path) -> Result<Attachment, NetworkError> {
    let path = namespace.to_path_buf();
    let attachment = in_namespace(namespace, move || {
        let netlink_err = |source| NetworkError::Netlink {
            path: path.clone(),
            source,
        };
        let mut netlink = Netlink::open().map_err(netlink_err)?;
        let links = netlink.links().map_err(netlink_err)?;
        let interfaces = carried(&links);
        if interfaces.len() > MAX_INTERFACES {
            return Err(NetworkError::TooManyInterfaces {
                path: path.clone(),
                count: interfaces.len(),
                max: MAX_INTERFACES,
            });
        }
        let addresses = netlink.addresses().map_err(netlink_err)?;
        let routes = netlink.routes().map_err(netlink_err)?;
        let mut attachment = Attachment {
            namespace: path.clone(),
            taps: Vec::new(),
            interfaces: Vec::new(),
            guest: GuestNetwork::default(),
        };
        let result = (|| {
            for (n, link) in interfaces.iter().enumerate() {
                let name = format!("husk-tap{n}");
                let fd = open_tap(&name).map_err(|source| NetworkError::Tap {
                    name: name.clone(),
                    path: path.clone(),
                    source,
                })?;
                let tap_index = netlink
                    .links()
                    .map_err(netlink_err)?
                    .into_iter()
                    .find(|l| l.name == name)
                    .map(|l| l.index)
                    .ok_or_else(|| NetworkError::Tap {
                        name: name.clone(),
                        path: path.clone(),
                        source: std::io::Error::other("created but not listed"),
                    })?;
                let mac = link.mac.expect("carried links have a MAC");
                attachment.taps.push(Tap {
                    fd,
                    name: name.clone(),
                    mac,
                });
                netlink
                    .configure_link(tap_index, None, Some(link.mtu), true)
                    .map_err(netlink_err)?;
                netlink.add_ingress_qdisc(link.index).map_err(netlink_err)?;
                attachment.interfaces.push(link.name.clone());
                netlink.add_ingress_qdisc(tap_index).map_err(netlink_err)?;
                netlink
                    .redirect_ingress(link.index, tap_index)
                    .map_err(netlink_err)?;
                netlink
                    .redirect_ingress(tap_index, link.index)
                    .map_err(netlink_err)?;

                let mut interface = GuestInterface {
                    name: link.name.clone(),
                    mac: husk_netlink::format_mac(&mac),
                    mtu: link.mtu,
                    addresses: Vec::new(),
                };
                for address in addresses
                    .iter()
                    .filter(|a| a.link == link.index && !a.is_link_local())
                {
                    interface
                        .addresses
                        .push((address.ip.to_string(), address.prefix_len.into()));
                }
                attachment.guest.interfaces.push(interface);
                for route in routes
                    .iter()
                    .filter(|r| r.link == Some(link.index) && !r.kernel_made)
                {
                    attachment.guest.routes.push(GuestRoute {
                        destination: route
                            .destination
                            .map(|(ip, prefix)| format!("{ip}/{prefix}"))
                            .unwrap_or_default(),
                        gateway: route.gateway.map(|g| g.to_string()).unwrap_or_default(),
                        interface: link.name.clone(),
                        ipv6: route.ipv6,
                    });
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(attachment),
            Err(e) => {
                remove_qdiscs(&mut netlink, &attachment.interfaces);
                Err(e)
            }
        }
    })?;
    if !attachment.interfaces.is_empty() {
        let record = record_in.join(RECORD);
        let text = json!({
            "namespace": attachment.namespace,
            "interfaces": attachment.interfaces,
        })
        .to_string();
        if let Err(source) = std::fs::write(&record, text) {
            attachment.detach();
            return Err(NetworkError::Record {
                path: record,
                source,
            });
        }
    }
    Ok(attachment)
}

/// Removes the ingress qdiscs (and so the redirects) from the named interfaces.
fn remove_qdiscs(netlink: &mut Netlink, interfaces: &[String]) {
    let Ok(links) = netlink.links() else {
        return;
    };
    for name in interfaces {
        if let Some(link) = links.iter().find(|l| &l.name == name) {
            if let Err(e) = netlink.remove_ingress_qdisc(link.index) {
                tracing::warn!(error = %e, interface = %name, "cannot remove the ingress redirect");
            }
        }
    }
}

/// Undoes [`attach`] for interfaces in `namespace`; a namespace that is gone (the
/// engine removed it) has nothing left to undo.
fn detach_interfaces(namespace: &Path, interfaces: Vec<String>) {
    if interfaces.is_empty() || !namespace.exists() {
        return;
    }
    let result = in_namespace(namespace, move || {
        let mut netlink = Netlink::open().map_err(|source| NetworkError::Netlink {
            path: PathBuf::new(),
            source,
        })?;
        remove_qdiscs(&mut netlink, &interfaces);
        Ok(())
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot undo the network attachment");
    }
}

impl Attachment {
    /// The taps' descriptors close (the taps vanish once the VMM has exited too) and
    /// the engine's interfaces lose their redirects.
    pub fn detach(self) {
        drop(self.taps);
        detach_interfaces(&self.namespace, self.interfaces);
    }
}

/// Undoes what the record in a sandbox directory says was attached (a `delete`
/// after the sandbox's husk died).
pub fn detach_recorded(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join(RECORD)) else {
        return;
    };
    let record: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let namespace = record["namespace"].as_str().map(PathBuf::from);
    let interfaces: Vec<String> = record["interfaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if let Some(namespace) = namespace {
        detach_interfaces(&namespace, interfaces);
    }
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct InterfaceRequest {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens /dev/net/tun as a new tap named `name` (in this thread's network
/// namespace), with virtio-net headers; not persistent.
fn open_tap(name: &str) -> std::io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")?;
    let mut request = InterfaceRequest {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other(format!("tap name {name} too long")));
    }
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads an ifreq, which `request` is (name and flags at the
    // offsets the kernel expects, padded to its size), valid for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// The taps' descriptors, for the VMM child to inherit.
pub fn raw_fds(taps: &[Tap]) -> Vec<i32> {
    taps.iter().map(|t| t.fd.as_raw_fd()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_says_which_network() {
        let spec = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]}});
        assert_eq!(plan(&spec).unwrap(), NetworkPlan::Isolated);
        let spec = json!({"linux": {"namespaces": [{"type": "network", "path": "/run/netns/a"}]}});
        assert_eq!(
            plan(&spec).unwrap(),
            NetworkPlan::Carry(PathBuf::from("/run/netns/a"))
        );
        let host = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}});
        let err = plan(&host).unwrap_err();
        assert!(matches!(err, NetworkError::HostNetwork));
        assert!(err.to_string().contains("--isolation container"), "{err}");
        assert!(matches!(plan(&json!({})), Err(NetworkError::HostNetwork)));
    }

    #[test]
    fn only_real_interfaces_are_carried() {
        let link = |name: &str, mac: Option<[u8; 6]>, kind: Option<&str>| Link {
            index: 1,
            name: name.into(),
            mac,
            mtu: 1500,
            up: true,
            kind: kind.map(str::to_string),
        };
        let links = vec![
            link("lo", Some([0; 6]), None),
            link("eth0", Some([2, 0, 0, 0, 0, 1]), Some("veth")),
            link("husk-tap0", Some([2, 0, 0, 0, 0, 2]), Some("tun")),
            link("sit0", None, None),
        ];
        let names: Vec<String> = carried(&links).into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["eth0"]);
    }
}

//! Network namespaces and veth pairs a test (or benchmark) creates for itself, as a
//! CNI plugin would: `ip netns add`, a veth pair between two namespaces, addresses
//! and MTU. Everything is removed when the [`Netns`] is dropped; nothing touches the
//! host's own network.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::cmd::{self, Output};

/// `ip` with arguments; panics with its output on failure (fixture set-up).
pub fn ip(args: &[&str]) -> String {
    let out = cmd::run(Command::new("ip").args(args), Duration::from_secs(20));
    assert!(out.code == 0, "ip {}: {out:?}", args.join(" "));
    out.stdout
}

/// Runs a command inside the named namespace.
pub fn in_ns(ns: &str, args: &[&str]) -> Output {
    cmd::run(
        Command::new("ip").args(["netns", "exec", ns]).args(args),
        Duration::from_secs(30),
    )
}

/// A named network namespace (`/run/netns/husk-t-<tag>-<pid>`) with loopback up,
/// removed, with its veth ends, on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("husk-t-{tag}-{}", std::process::id());
        // A namespace left by an earlier run of this pid; usually there is none.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// The namespace's path, for a spec's `linux.namespaces[].path`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command in the namespace.
    pub fn run(&self, args: &[&str]) -> Output {
        in_ns(&self.name, args)
    }

    /// Links in the namespace (`ip -o link` lines).
    pub fn links(&self) -> String {
        ip(&["-n", &self.name, "-o", "link"])
    }

    /// `tc qdisc show` in the namespace.
    pub fn qdiscs(&self) -> String {
        self.run(&["tc", "qdisc", "show"]).stdout
    }

    /// The MAC of `link` in the namespace.
    pub fn mac(&self, link: &str) -> String {
        self.run(&["cat", &format!("/sys/class/net/{link}/address")])
            .stdout
            .trim()
            .to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connects `a` and `b` with a veth pair: `a_name` in `a` with `a_addr` (CIDR),
/// `b_name` in `b` with `b_addr`, both up with `mtu`.
pub fn veth(
    a: &Netns,
    a_name: &str,
    a_addr: &str,
    b: &Netns,
    b_name: &str,
    b_addr: &str,
    mtu: u32,
) {
    static PAIRS: AtomicUsize = AtomicUsize::new(0);
    let n = PAIRS.fetch_add(1, Ordering::Relaxed);
    let tmp_a = format!("hv{}-{n}a", std::process::id() % 100000);
    let tmp_b = format!("hv{}-{n}b", std::process::id() % 100000);
    ip(&[
        "link", "add", &tmp_a, "type", "veth", "peer", "name", &tmp_b,
    ]);
    ip(&["link", "set", &tmp_a, "netns", &a.name]);
    ip(&["link", "set", &tmp_b, "netns", &b.name]);
    let mtu = mtu.to_string();
    for (ns, tmp, name, addr) in [(a, &tmp_a, a_name, a_addr), (b, &tmp_b, b_name, b_addr)] {
        ip(&["-n", &ns.name, "link", "set", tmp, "name", name]);
        ip(&["-n", &ns.name, "link", "set", name, "mtu", &mtu, "up"]);
        ip(&["-n", &ns.name, "addr", "add", addr, "dev", name]);
    }
}

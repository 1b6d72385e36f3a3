//! Networking in vm isolation: the container's network namespace, prepared as a CNI
//! plugin would (a namespace, a veth named eth0 with an address, an MTU and a default
//! route, its peer in another namespace), is carried into the guest: a tap in that
//! namespace, tc redirects veth ⇄ tap, a virtio-net device with the veth's MAC, and
//! the agent gives the guest device the same addresses and routes.
//!
//! Every address here lives in namespaces the suite creates and removes itself
//! (10.77.0.0/16, fd77::/16); nothing touches the host's network.
//!
//! Needs: root, iproute2, busybox-static, qemu-system-x86 and the guest artifacts
//! (`make -s guest-artifacts`). A failing test prints husk's debug log, which holds
//! the guest console.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use husk_e2e::cmd::{self, Background, Output};
use husk_e2e::fixture::{Bundle, Rootfs};
use husk_e2e::netns::{ip, veth, Netns};
use husk_e2e::vm::{HuskRoot, TIMEOUT};
use libtest_mimic::{Arguments, Failed};
use serde_json::json;

/// A shell function `get HOST PORT` fetching `/` over HTTP with busybox nc
/// (busybox-static's wget crashes in its static resolver).
const HTTP_GET: &str =
    "get() { printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox timeout 5 busybox nc \"$1\" \"$2\"; }";

struct Env {
    rootfs: Rootfs,
    /// The operator config naming the guest artifacts.
    config: String,
}

/// One test's runtime root, config and debug log.
struct Husk<'a> {
    env: &'a Env,
    base: HuskRoot,
}

impl std::ops::Deref for Husk<'_> {
    type Target = HuskRoot;
    fn deref(&self) -> &HuskRoot {
        &self.base
    }
}

impl<'a> Husk<'a> {
    fn new(env: &'a Env) -> Self {
        Self {
            env,
            base: HuskRoot::new("husk-vmnet-", &env.config),
        }
    }

    /// husk in vm isolation.
    fn command(&self) -> Command {
        let mut command = self.base.command();
        command.args(["--isolation", "vm"]);
        command
    }

    fn husk(&self, args: &[&str]) -> Output {
        cmd::run(self.command().args(args), TIMEOUT)
    }

    /// A bundle running `script` in the namespace at `netns` (None: a new one),
    /// with CAP_NET_RAW for ping.
    fn bundle(&self, netns: Option<&Netns>, script: &str) -> Bundle {
        let script = format!("{HTTP_GET}; {script}");
        let mut bundle = Bundle::new(self.env.rootfs.path(), &["sh", "-c", &script]);
        let namespaces = bundle.config["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces");
        namespaces.retain(|ns| ns["type"] != "network");
        namespaces.push(match netns {
            Some(ns) => json!({"type": "network", "path": ns.path()}),
            None => json!({"type": "network"}),
        });
        for set in ["bounding", "effective", "permitted"] {
            if let Some(caps) = bundle.config["process"]["capabilities"][set].as_array_mut() {
                caps.push(json!("CAP_NET_RAW"));
            }
        }
        bundle.write();
        bundle
    }

    /// Foreground `run` of a bundle.
    fn run(&self, id: &str, bundle: &Bundle) -> Output {
        self.husk(&["run", "--bundle", bundle.path().to_str().unwrap(), id])
    }

    /// Starts a foreground `run` in the background; waits until its output says
    /// `ready`. Returns the process and its stdout file.
    fn spawn_until_ready(
        &self,
        id: &str,
        bundle: &Bundle,
    ) -> Result<(Background, PathBuf), Failed> {
        let stdout = self.dir.path().join(format!("{id}.out"));
        let stderr = self.dir.path().join(format!("{id}.err"));
        let mut command = self.command();
        command.args(["run", "--bundle"]).arg(bundle.path()).arg(id);
        let child = self.base.spawn_until_ready(command, &stdout, &stderr)?;
        Ok((child, stdout))
    }

    /// The namespace holds no tap of ours and no ingress qdisc any more, and no VM
    /// process is left.
    fn expect_detached(&self, ns: &Netns) -> Result<(), Failed> {
        let gone = cmd::wait_until(Duration::from_secs(10), || {
            !ns.links().contains("husk-tap") && !ns.qdiscs().contains("ingress")
        });
        self.expect(gone, || {
            format!(
                "left in {}: links {} qdiscs {}",
                ns.name,
                ns.links(),
                ns.qdiscs()
            )
        })?;
        let state = self.dir.path().join("state").to_string_lossy().into_owned();
        let left = husk_e2e::leaks::processes_mentioning(&state);
        self.expect(left.is_empty(), || format!("processes left: {left:?}"))
    }
}

/// A pod namespace `<tag>` whose eth0 (10.77.`subnet`.2/24) is a veth to veth-p
/// (10.77.`subnet`.1/24) in a peer namespace `<tag>p`, as a CNI plugin would wire it.
fn pod_with_peer(tag: &str, subnet: u8, mtu: u32) -> (Netns, Netns) {
    let pod = Netns::new(tag);
    let peer = Netns::new(&format!("{tag}p"));
    veth(
        &pod,
        "eth0",
        &format!("10.77.{subnet}.2/24"),
        &peer,
        "veth-p",
        &format!("10.77.{subnet}.1/24"),
        mtu,
    );
    (pod, peer)
}

/// The EUI-64 link-local address (fe80::/64) Linux makes from a MAC, as `ip`
/// prints it.
fn eui64_link_local(mac: &str) -> String {
    let b: Vec<u8> = mac
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).expect("a MAC"))
        .collect();
    let groups = [
        u16::from_be_bytes([b[0] ^ 0x02, b[1]]),
        u16::from_be_bytes([b[2], 0xff]),
        u16::from_be_bytes([0xfe, b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
    ];
    let ip = std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, groups[0], groups[1], groups[2], groups[3]);
    format!("{ip}/64")
}

/// A busybox httpd serving `body` in namespace `ns` on port 8080; killed on drop.
struct Httpd {
    child: Option<Background>,
    _root: tempfile::TempDir,
}

impl Httpd {
    fn start(ns: &Netns, body: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("index.html"), body).unwrap();
        let busybox = husk_e2e::require_program("busybox");
        let child = Background::spawn(
            Command::new("ip")
                .args(["netns", "exec", &ns.name])
                .arg(busybox)
                .args(["httpd", "-f", "-p", "8080", "-h"])
                .arg(root.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        Self {
            child: Some(child),
            _root: root,
        }
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.pid()),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait(Duration::from_secs(5));
        }
    }
}

fn cases() -> Vec<husk_e2e::Case<Env>> {
    vec![
        ("a_vm_container_reaches_its_peer_and_is_reached", |env| {
            let husk = Husk::new(env);
            let (pod, peer) = pod_with_peer("pod", 1, 1400);
            ip(&[
                "-n",
                &pod.name,
                "route",
                "add",
                "default",
                "via",
                "10.77.1.1",
            ]);
            let _server = Httpd::start(&peer, "from-peer\n");
            let pod_mac = pod.mac("eth0");
            let peer_mac = peer.mac("veth-p");
            let bundle = husk.bundle(
                Some(&pod),
                "cat /sys/class/net/eth0/mtu /sys/class/net/eth0/address; \
                 ip -4 -o addr show dev eth0; ip route; \
                 ping -c 2 -W 5 10.77.1.1 | grep -o '2 packets received'; \
                 cat /proc/net/arp; \
                 for i in 1 2 3 4 5; do get 10.77.1.1 8080 | grep from- && break; sleep 1; done; \
                 mkdir -p /tmp/www && echo from-vm > /tmp/www/index.html && \
                 httpd -p 8081 -h /tmp/www && echo ready; trap 'exit 0' TERM; sleep 60 & wait",
            );
            let (child, stdout) = husk.spawn_until_ready("net-peer", &bundle)?;
            let mut from_peer = None;
            let reached = cmd::wait_until(Duration::from_secs(30), || {
                let out = peer.run(&["sh", "-c", &format!("{HTTP_GET}; get 10.77.1.2 8081")]);
                let ok = out.stdout.contains("from-vm");
                from_peer = Some(out);
                ok
            });
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.pid()),
                nix::sys::signal::Signal::SIGTERM,
            );
            let status = child.wait(TIMEOUT);
            let out = std::fs::read_to_string(&stdout).unwrap_or_default();
            husk.expect(status.is_some(), || {
                "husk run did not end after SIGTERM".into()
            })?;
            let checks = [
                ("MTU 1400", out.lines().next() == Some("1400")),
                (
                    "the veth's MAC",
                    out.lines().nth(1) == Some(pod_mac.as_str()),
                ),
                ("address 10.77.1.2/24", out.contains("inet 10.77.1.2/24")),
                ("default route", out.contains("default via 10.77.1.1")),
                ("ping", out.contains("2 packets received")),
                ("ARP entry of the peer", out.contains(&peer_mac)),
                ("TCP to the peer", out.contains("from-peer")),
                ("TCP from the peer", reached),
            ];
            let failed: Vec<&str> = checks.iter().filter(|c| !c.1).map(|c| c.0).collect();
            husk.expect(failed.is_empty(), || {
                format!(
                    "failed: {failed:?}; container output:\n{out}\npeer's request: {from_peer:?}"
                )
            })?;
            husk.expect_detached(&pod)
        }),
        ("dual_stack_ipv6_addresses_and_routes_are_carried", |env| {
            // The CNI plugin gave eth0 an IPv6 address too, a default IPv6 route and
            // one more IPv6 prefix route: the guest gets them all (its link-local
            // address it makes itself, from the same MAC), and reaches the peer
            // over IPv6 with ping and TCP.
            let husk = Husk::new(env);
            let (pod, peer) = pod_with_peer("v6", 5, 1500);
            for (ns, link, address) in [
                (&pod, "eth0", "fd77:5::2/64"),
                (&peer, "veth-p", "fd77:5::1/64"),
            ] {
                ip(&[
                    "-n", &ns.name, "-6", "addr", "add", address, "dev", link, "nodad",
                ]);
            }
            for route in [
                ["default", "via", "fd77:5::1"],
                ["fd77:99::/48", "dev", "eth0"],
            ] {
                ip(&[&["-n", &pod.name, "-6", "route", "add"][..], &route[..]].concat());
            }
            let _httpd = Httpd::start(&peer, "from-peer-v6");
            let bundle = husk.bundle(
                Some(&pod),
                "ip -6 -o addr show dev eth0; ip -6 route; \
                 ping -6 -c 2 -W 5 fd77:5::1 | grep -o '2 packets received'; \
                 for i in 1 2 3 4 5; do get fd77:5::1 8080 | grep from- && break; sleep 1; done",
            );
            let out = husk.run("net-v6", &bundle);
            let guest_link_local = format!("inet6 {}", eui64_link_local(&pod.mac("eth0")));
            let checks = [
                ("exit 0", out.code == 0),
                (
                    "address fd77:5::2/64",
                    out.stdout.contains("inet6 fd77:5::2/64"),
                ),
                (
                    "its own link-local address",
                    out.stdout.contains(&guest_link_local),
                ),
                (
                    "default route",
                    out.stdout.contains("default via fd77:5::1"),
                ),
                ("prefix route", out.stdout.contains("fd77:99::/48")),
                ("ping", out.stdout.contains("2 packets received")),
                ("TCP to the peer", out.stdout.contains("from-peer-v6")),
            ];
            let failed: Vec<&str> = checks.iter().filter(|c| !c.1).map(|c| c.0).collect();
            husk.expect(failed.is_empty(), || {
                format!("failed: {failed:?}; want {guest_link_local}; {out:?}")
            })?;
            husk.expect_detached(&pod)
        }),
        ("two_vms_connect_only_through_the_wired_path", |env| {
            let husk = Husk::new(env);
            let a = Netns::new("a");
            let router = Netns::new("r");
            let b = Netns::new("b");
            veth(
                &a,
                "eth0",
                "10.77.2.2/24",
                &router,
                "to-a",
                "10.77.2.1/24",
                1500,
            );
            veth(
                &b,
                "eth0",
                "10.77.3.2/24",
                &router,
                "to-b",
                "10.77.3.1/24",
                1500,
            );
            ip(&["-n", &a.name, "route", "add", "default", "via", "10.77.2.1"]);
            ip(&["-n", &b.name, "route", "add", "default", "via", "10.77.3.1"]);
            router.run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
            let server = husk.bundle(
                Some(&b),
                "mkdir -p /tmp/www && echo from-b > /tmp/www/index.html && \
                 httpd -p 8080 -h /tmp/www && echo ready; trap 'exit 0' TERM; sleep 120 & wait",
            );
            let (server_run, _) = husk.spawn_until_ready("net-b", &server)?;
            let fetch = "for i in 1 2 3; do get 10.77.3.2 8080 | grep from- && exit 0; sleep 1; done; echo unreachable";
            let client = husk.bundle(Some(&a), fetch);
            let routed = husk.run("net-a1", &client);
            router.run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]);
            let cut = husk.run("net-a2", &client);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(server_run.pid()),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = server_run.wait(TIMEOUT);
            husk.expect(routed.stdout.contains("from-b"), || {
                format!("through the router: {routed:?}")
            })?;
            husk.expect(
                cut.stdout.contains("unreachable") && !cut.stdout.contains("from-b"),
                || format!("with forwarding off the path must be cut: {cut:?}"),
            )?;
            husk.expect_detached(&a)?;
            husk.expect_detached(&b)
        }),
        (
            "a_namespace_without_interfaces_leaves_only_loopback",
            |env| {
                let husk = Husk::new(env);
                let empty = Netns::new("none");
                let script = "ls /sys/class/net | tr '\\n' ' '; echo; ip -4 -o addr show dev lo";
                for (label, ns) in [("--network none", Some(&empty)), ("new namespace", None)] {
                    let out = husk.run("net-none", &husk.bundle(ns, script));
                    husk.expect(
                        out.code == 0
                            && out.stdout.lines().next() == Some("lo ")
                            && (ns.is_none() || out.stdout.contains("inet 127.0.0.1/8")),
                        || format!("{label}: want only loopback (up where carried): {out:?}"),
                    )?;
                }
                husk.expect_detached(&empty)
            },
        ),
        ("the_host_network_is_refused", |env| {
            let husk = Husk::new(env);
            let mut bundle = husk.bundle(None, "echo ran-in-vm");
            bundle.config["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|ns| ns["type"] != "network");
            bundle.write();
            let out = husk.run("net-host", &bundle);
            husk.expect(
                out.code != 0
                    && out.stderr.contains("host's network")
                    && !out.stdout.contains("ran-in-vm"),
                || format!("want a clear refusal: {out:?}"),
            )?;
            let state = husk.dir.path().join("state");
            let left = husk_e2e::leaks::state_entries(&state);
            husk.expect(left.is_empty(), || format!("state left: {left:?}"))
        }),
        ("kill_9_of_the_supervisor_then_delete_detaches", |env| {
            let husk = Husk::new(env);
            let (pod, _peer) = pod_with_peer("k9", 4, 1500);
            let bundle = husk.bundle(Some(&pod), "echo ready; sleep 300");
            let out_path = husk.dir.path().join("k9.out");
            let pid_file = husk.dir.path().join("k9.pid");
            let mut create = husk.command();
            create
                .args(["create", "--bundle"])
                .arg(bundle.path())
                .arg("--pid-file")
                .arg(&pid_file)
                .arg("net-k9")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out_path).unwrap())
                .stderr(Stdio::null());
            let created = Background::spawn(&mut create).wait(TIMEOUT);
            husk.expect(created.is_some_and(|s| s.success()), || {
                format!("create: {created:?}")
            })?;
            husk.husk(&["start", "net-k9"]);
            let attached = pod.links().contains("husk-tap") && pod.qdiscs().contains("ingress");
            husk.expect(attached, || {
                format!("not attached: {} {}", pod.links(), pod.qdiscs())
            })?;
            let pid: i32 = std::fs::read_to_string(&pid_file)
                .unwrap_or_default()
                .trim()
                .parse()
                .unwrap_or(0);
            husk.expect(pid > 0, || "no supervisor pid".into())?;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let stopped = cmd::wait_until(TIMEOUT, || {
                husk.husk(&["state", "net-k9"]).stdout.contains("stopped")
            });
            husk.expect(stopped, || "not reported stopped after kill -9".into())?;
            husk.husk(&["delete", "--force", "net-k9"]);
            husk.expect_detached(&pod)
        }),
    ]
}

fn main() {
    let args = Arguments::from_args();
    husk_e2e::require_root("vm_net");
    // Supervisors of detached containers outlive `husk create`: reap them.
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "cannot become a child subreaper");
    husk_e2e::require_program("ip");
    husk_e2e::require_program("tc");
    husk_e2e::require_program("busybox");
    husk_e2e::require_program("qemu-system-x86_64");
    let (kernel, initramfs) = husk_e2e::guest::artifacts();
    husk_e2e::guest::ensure_helpers();
    let env = Arc::new(Env {
        rootfs: Rootfs::busybox(),
        config: husk_e2e::guest::operator_config(&kernel, &initramfs),
    });
    let trials = husk_e2e::trials(&env, cases());
    let conclusion = libtest_mimic::run(&args, trials);
    drop(env);
    conclusion.exit();
}

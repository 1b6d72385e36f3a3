//! TCP throughput and round-trip latency between a container and a peer, for vm
//! isolation (husk, qemu backend), container isolation (husk) and runc, in one run.
//!
//! Each sample gets a fresh topology as a CNI plugin would make it: a container
//! namespace with a veth `eth0` (10.78.1.2/24, MTU 1500, default route via the peer)
//! and a peer namespace with the other end (10.78.1.1/24). A thread of this process
//! serves the TCP probe (`husk_benches::tcp_probe`) in the peer namespace; the client
//! is this very binary, copied with its shared libraries into the container's busybox
//! rootfs and run there by each runtime from the same bundle (its
//! `linux.namespaces` names the container namespace). One container run measures
//! throughput container → peer, then peer → container, then 1-byte request/response
//! round trips, and prints one JSON line. The server does all the timing, on the
//! host's clock: under QEMU TCG the guest's clock advances in 4 ms steps, too coarse
//! for a round trip. Rounds are interleaved across runtimes after one warm-up round;
//! the report gives medians over the rounds and ratios.
//!
//! Run with `make bench-net` (or `cargo bench -p husk-benches --bench net`); needs
//! root, runc, QEMU and the guest artifacts (`make guest-artifacts`).
//! `HUSK_BENCH_NET_ROUNDS` sets the rounds (default 5).

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use husk_benches::tcp_probe::{self, ProbeReport, ProbeServer};
use husk_benches::{husk_runtimes, median, output_dir, vm_backend, Runtime};
use husk_e2e::cmd;
use husk_e2e::fixture::{Bundle, Rootfs};
use husk_e2e::netns::{ip, veth, Netns};
use serde_json::json;

/// argv[1] that makes this binary the probe client (inside the container).
const CLIENT_ROLE: &str = "--tcp-probe-client";
/// Where the client binary sits in the container's rootfs.
const CLIENT_PATH: &str = "/tcp-probe";
const CONTAINER_ADDR: &str = "10.78.1.2/24";
const PEER_ADDR: &str = "10.78.1.1/24";
const PEER_IP: &str = "10.78.1.1";
const PROBE_PORT: u16 = 5201;
const MTU: u32 = 1500;
/// Each throughput direction.
const THROUGHPUT_TIME: Duration = Duration::from_secs(3);
/// The round-trip measurement.
const ROUND_TRIP_TIME: Duration = Duration::from_secs(2);
/// One container run, VM boot included; beyond it the run is killed and the bench fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(CLIENT_ROLE) {
        std::process::exit(client(&args[2..]));
    }
    bench();
}

/// The client role: `--tcp-probe-client ADDR THROUGHPUT_MS ROUND_TRIP_MS`; prints the
/// report's JSON line, or the error on stderr and exits 1.
fn client(args: &[String]) -> i32 {
    let parsed = (|| {
        let server: SocketAddr = args.first()?.parse().ok()?;
        let throughput_ms: u64 = args.get(1)?.parse().ok()?;
        let round_trip_ms: u64 = args.get(2)?.parse().ok()?;
        Some((server, throughput_ms, round_trip_ms))
    })();
    let Some((server, throughput_ms, round_trip_ms)) = parsed else {
        eprintln!("usage: {CLIENT_ROLE} ADDR:PORT THROUGHPUT_MS ROUND_TRIP_MS; got {args:?}");
        return 2;
    };
    match tcp_probe::measure(
        server,
        Duration::from_millis(throughput_ms),
        Duration::from_millis(round_trip_ms),
    ) {
        Ok(report) => {
            println!("{}", report.to_json_line());
            0
        }
        Err(e) => {
            eprintln!("tcp probe client: {e}");
            1
        }
    }
}

/// One sample's network: the container namespace with `eth0` and a default route, the
/// peer namespace with the probe server. Dropping it stops the server and removes both
/// namespaces (and with them the veth pair).
struct Topology {
    // Declared first so it is dropped first, before its namespace goes.
    _server: ProbeServer,
    container: Netns,
    _peer: Netns,
}

impl Topology {
    fn new() -> Self {
        let container = Netns::new("netbench-ctr");
        let peer = Netns::new("netbench-peer");
        veth(
            &container,
            "eth0",
            CONTAINER_ADDR,
            &peer,
            "veth-peer",
            PEER_ADDR,
            MTU,
        );
        ip(&[
            "-n",
            &container.name,
            "route",
            "add",
            "default",
            "via",
            PEER_IP,
        ]);
        let listener = listen_in(&peer, PROBE_PORT);
        let server = ProbeServer::start(listener).expect("start the tcp probe server");
        Self {
            _server: server,
            container,
            _peer: peer,
        }
    }
}

/// A listening socket bound in `netns`. Only a short-lived thread joins the namespace
/// (setns affects the calling thread alone); the socket stays in it for good.
fn listen_in(netns: &Netns, port: u16) -> TcpListener {
    let path = netns.path();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let namespace =
                    std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
                TcpListener::bind(("0.0.0.0", port))
                    .unwrap_or_else(|e| panic!("listen on port {port} in {path}: {e}"))
            })
            .join()
            .expect("the thread binding the probe server panicked")
    })
}

/// Copies this binary into `rootfs` at [`CLIENT_PATH`], with the shared libraries and
/// the dynamic loader `ldd` names at their own paths (the busybox rootfs has no libc).
fn install_client(rootfs: &Path) {
    let exe = std::env::current_exe().expect("current_exe");
    std::fs::copy(&exe, rootfs.join(CLIENT_PATH.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("copy {} into the rootfs: {e}", exe.display()));
    let ldd = cmd::run(Command::new("ldd").arg(&exe), Duration::from_secs(10)).ok();
    // Lines are "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
    // "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
    let libraries: Vec<PathBuf> = ldd
        .stdout
        .lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    assert!(
        !libraries.is_empty(),
        "ldd named no library for {}: {:?}",
        exe.display(),
        ldd.stdout
    );
    for library in libraries {
        let inside = rootfs.join(library.strip_prefix("/").unwrap());
        std::fs::create_dir_all(inside.parent().unwrap()).expect("library dir in rootfs");
        // fs::copy follows symlinks: the loader's /lib64 link becomes the file itself.
        std::fs::copy(&library, &inside)
            .unwrap_or_else(|e| panic!("copy {} into the rootfs: {e}", library.display()));
    }
}

/// The bundle every runtime runs: the probe client in the container namespace.
fn probe_bundle(rootfs: &Path, container: &Netns) -> Bundle {
    let server = format!("{PEER_IP}:{PROBE_PORT}");
    let throughput_ms = THROUGHPUT_TIME.as_millis().to_string();
    let round_trip_ms = ROUND_TRIP_TIME.as_millis().to_string();
    let mut bundle = Bundle::new(
        rootfs,
        &[
            CLIENT_PATH,
            CLIENT_ROLE,
            &server,
            &throughput_ms,
            &round_trip_ms,
        ],
    );
    let namespaces = bundle.config["linux"]["namespaces"]
        .as_array_mut()
        .expect("the spec has linux.namespaces");
    namespaces.retain(|ns| ns["type"] != "network");
    namespaces.push(json!({"type": "network", "path": container.path()}));
    bundle.write();
    bundle
}

/// Deletes the container on drop, whatever happened to the run (a killed `run` may
/// leave one behind).
struct ContainerCleanup<'a> {
    runtime: &'a Runtime,
    id: String,
}

impl Drop for ContainerCleanup<'_> {
    fn drop(&mut self) {
        let _ = self.runtime.exec(&["delete", "--force", &self.id]);
    }
}

/// One sample: a fresh topology, one container run of the probe client.
fn sample(runtime: &Runtime, rootfs: &Path, id: &str) -> ProbeReport {
    let topology = Topology::new();
    let bundle = probe_bundle(rootfs, &topology.container);
    let _cleanup = ContainerCleanup {
        runtime,
        id: id.to_string(),
    };
    let out = cmd::run(
        runtime
            .command()
            .args(["run", "--bundle"])
            .arg(bundle.path())
            .arg(id),
        RUN_TIMEOUT,
    );
    assert!(
        out.code == 0,
        "{} run {id} exited {} (the runtime or the probe client in the container failed)\nstdout:\n{}\nstderr:\n{}",
        runtime.label,
        out.code,
        out.stdout,
        out.stderr
    );
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    ProbeReport::parse(line).unwrap_or_else(|e| {
        panic!(
            "{} run {id}: {e}\nstdout:\n{}\nstderr:\n{}",
            runtime.label, out.stdout, out.stderr
        )
    })
}

/// Medians over the rounds of one runtime's reports.
struct Summary {
    out_mbit_s: f64,
    in_mbit_s: f64,
    rr_median_us: f64,
    rr_p99_us: f64,
    round_trips: usize,
}

impl Summary {
    fn of(reports: &[ProbeReport]) -> Self {
        let field = |get: fn(&ProbeReport) -> f64| {
            let mut values: Vec<f64> = reports.iter().map(get).collect();
            median(&mut values)
        };
        Self {
            out_mbit_s: field(|r| r.out_mbit_s),
            in_mbit_s: field(|r| r.in_mbit_s),
            rr_median_us: field(|r| r.rr_median_us),
            rr_p99_us: field(|r| r.rr_p99_us),
            round_trips: median(&mut reports.iter().map(|r| r.round_trips).collect::<Vec<_>>()),
        }
    }

    /// "out in rr-median rr-p99" ratios of self to `base`.
    fn ratios(&self, base: &Summary) -> [f64; 4] {
        [
            self.out_mbit_s / base.out_mbit_s,
            self.in_mbit_s / base.in_mbit_s,
            self.rr_median_us / base.rr_median_us,
            self.rr_p99_us / base.rr_p99_us,
        ]
    }
}

/// The lowest and highest of each figure over the rounds: on a 2-core machine they
/// move with whether the two ends of a connection share a core.
fn spread(reports: &[ProbeReport]) -> String {
    let range = |get: fn(&ProbeReport) -> f64, decimals: usize| {
        let low = reports.iter().map(get).fold(f64::INFINITY, f64::min);
        let high = reports.iter().map(get).fold(f64::NEG_INFINITY, f64::max);
        format!("{low:.decimals$}-{high:.decimals$}")
    };
    format!(
        "out {} Mbit/s, in {} Mbit/s, RR median {} µs, RR p99 {} µs",
        range(|r| r.out_mbit_s, 0),
        range(|r| r.in_mbit_s, 0),
        range(|r| r.rr_median_us, 1),
        range(|r| r.rr_p99_us, 1)
    )
}

fn bench() {
    husk_e2e::require_root("network benchmark");
    let runc = husk_e2e::which("runc")
        .unwrap_or_else(|| panic!("runc is not installed; `make setup` installs it"));
    husk_e2e::require_program("ldd");
    let husk = husk_e2e::husk_bin();
    let check = Command::new(&husk)
        .arg("check")
        .output()
        .expect("run husk check");
    assert!(
        check.status.success(),
        "husk check says vm isolation is not usable here; build the guest with `make guest-artifacts`:\n{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let rounds: usize = std::env::var("HUSK_BENCH_NET_ROUNDS")
        .ok()
        .map(|v| {
            v.parse()
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or_else(|| panic!("HUSK_BENCH_NET_ROUNDS={v:?} is not a positive number"))
        })
        .unwrap_or(5);
    let machine = husk_benches::machine_description();
    let backend = vm_backend(&husk);
    let scratch = tempfile::tempdir().expect("scratch dir");
    let config = husk_e2e::guest::operator_config_file(scratch.path());
    let config = config.to_str().unwrap().to_string();

    // A private rootfs (Rootfs::busybox makes a fresh one) with the client in it.
    let rootfs = Rootfs::busybox();
    install_client(rootfs.path());

    let [vm, container] = husk_runtimes(&husk, &config);
    let runtimes = [vm, container, Runtime::new("runc", runc, &[])];
    let mut reports: Vec<Vec<ProbeReport>> = runtimes.iter().map(|_| Vec::new()).collect();
    // Round 0 is a warm-up (page cache, first VM boot), not counted.
    for round in 0..=rounds {
        for (n, runtime) in runtimes.iter().enumerate() {
            let report = sample(runtime, rootfs.path(), &format!("net-{n}-{round}"));
            eprintln!(
                "net bench: round {round}{} {}: {}",
                if round == 0 { " (warm-up)" } else { "" },
                runtime.label,
                report.to_json_line()
            );
            if round > 0 {
                reports[n].push(report);
            }
        }
    }

    let summaries: Vec<Summary> = reports.iter().map(|r| Summary::of(r)).collect();
    let runc_summary = &summaries[2];
    let mut report = String::new();
    let _ = writeln!(report, "machine: {machine}");
    let _ = writeln!(report, "vm isolation: {backend}");
    if backend.contains("tcg") {
        let _ = writeln!(
            report,
            "note: the husk vm figures are under QEMU TCG (software emulation: /dev/kvm here cannot run the guest), so they measure the emulator's CPU cost, not virtio-net under KVM"
        );
    }
    let _ = writeln!(
        report,
        "topology: veth eth0 {CONTAINER_ADDR} (MTU {MTU}) in the container's namespace, peer {PEER_ADDR} in another namespace (vm: tap + tc redirect, virtio-net in the guest)"
    );
    let _ = writeln!(
        report,
        "{rounds} interleaved rounds after one warm-up round; per round one container run: {} s container -> peer, {} s peer -> container ({} KiB writes), {} s of {}-byte request/response round trips, all timed by the peer on the host's clock; medians over the rounds\n",
        THROUGHPUT_TIME.as_secs(),
        THROUGHPUT_TIME.as_secs(),
        tcp_probe::CHUNK / 1024,
        ROUND_TRIP_TIME.as_secs(),
        tcp_probe::MESSAGE
    );
    let _ = writeln!(
        report,
        "| runtime | out Mbit/s | in Mbit/s | RR median µs | RR p99 µs | round trips | out / runc | in / runc | RR median / runc | RR p99 / runc |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (runtime, summary) in runtimes.iter().zip(&summaries) {
        let [out, inward, rr, p99] = summary.ratios(runc_summary);
        let _ = writeln!(
            report,
            "| {} | {:.0} | {:.0} | {:.1} | {:.1} | {} | {out:.2}x | {inward:.2}x | {rr:.2}x | {p99:.2}x |",
            runtime.label,
            summary.out_mbit_s,
            summary.in_mbit_s,
            summary.rr_median_us,
            summary.rr_p99_us,
            summary.round_trips
        );
    }
    let [out, inward, rr, p99] = summaries[0].ratios(&summaries[1]);
    let _ = writeln!(
        report,
        "\nhusk vm / husk container: out {out:.3}x, in {inward:.3}x, RR median {rr:.1}x, RR p99 {p99:.1}x"
    );
    let _ = writeln!(report, "\nrange over the rounds (lowest-highest):");
    for (runtime, rounds) in runtimes.iter().zip(&reports) {
        let _ = writeln!(report, "- {}: {}", runtime.label, spread(rounds));
    }
    print!("\n{report}");

    let dir = output_dir();
    std::fs::create_dir_all(&dir).expect("create target/husk-bench");
    std::fs::write(dir.join("net.md"), &report).expect("write net.md");
    println!("written: {}/net.md", dir.display());
}

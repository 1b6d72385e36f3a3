//! VM isolation against container isolation, side by side in one run: time from QEMU
//! start to the agent answering its health check, `husk run` of `/bin/true`, the guest's
//! memory in use after boot (`free -k` inside) and the host memory (PSS) of all the
//! sandbox's processes.
//!
//! Run with `cargo bench -p husk-benches --bench vm` (root, QEMU, guest artifacts:
//! `make guest-artifacts`). `HUSK_BENCH_VM_ITERATIONS` sets the samples (default 7).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_benches::{proc_field, process_name as name};
use husk_e2e::fixture::{Bundle, Rootfs};

fn husk(root: &Path, isolation: &str) -> Command {
    let mut command = Command::new(husk_e2e::husk_bin());
    command
        .arg("--root")
        .arg(root)
        .args(["--isolation", isolation]);
    command
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

/// `boot_ms=N` from husk's "sandbox VM up" log line.
fn boot_ms(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let at = text.rfind("boot_ms=")?;
    text[at + 8..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn main() {
    husk_e2e::require_root("vm benchmark");
    let check = Command::new(husk_e2e::husk_bin())
        .arg("check")
        .output()
        .expect("run husk check");
    if !check.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&check.stdout));
        panic!("husk check says vm isolation is not usable here; build the guest with `make guest-artifacts`");
    }
    let iterations: usize = std::env::var("HUSK_BENCH_VM_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let rootfs = Rootfs::busybox();
    let truth = Bundle::new(rootfs.path(), &["/bin/true"]);
    let state = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();

    let (mut vm_run, mut ctr_run, mut boots) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..iterations {
        let log = logs.path().join(format!("vm-{i}.log"));
        let started = Instant::now();
        let status = husk(state.path(), "vm")
            .args(["--debug", "--log"])
            .arg(&log)
            .args([
                "run",
                "--bundle",
                truth.path().to_str().unwrap(),
                &format!("bv-{i}"),
            ])
            .stdout(Stdio::null())
            .status()
            .expect("run husk");
        assert!(
            status.success(),
            "vm run failed; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        vm_run.push(started.elapsed().as_secs_f64() * 1000.0);
        boots.push(boot_ms(&log).expect("no boot_ms in husk's log"));

        let started = Instant::now();
        let status = husk(state.path(), "container")
            .args([
                "run",
                "--bundle",
                truth.path().to_str().unwrap(),
                &format!("bc-{i}"),
            ])
            .stdout(Stdio::null())
            .status()
            .expect("run husk");
        assert!(status.success(), "container run failed");
        ctr_run.push(started.elapsed().as_secs_f64() * 1000.0);
    }

    // Memory: a VM whose container reports the guest's memory, then idles while we
    // sample the host side.
    let idle = Bundle::new(rootfs.path(), &["sh", "-c", "free -k; sleep 6"]);
    let mut child = husk(state.path(), "vm")
        .args(["run", "--bundle", idle.path().to_str().unwrap(), "bv-mem"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run husk");
    let husk_pid = child.id() as i32;
    let mut stdout = child.stdout.take().unwrap();
    // `free` prints once the container runs: the VM is booted and idle from then on.
    let mut first = [0u8; 1];
    use std::io::Read;
    let _ = stdout.read_exact(&mut first);
    std::thread::sleep(Duration::from_secs(2));
    let mut pss = Vec::new();
    for pid in husk_benches::process_tree(husk_pid) {
        if let Some(kb) = proc_field(pid, "smaps_rollup", "Pss:") {
            pss.push((name(pid), kb));
        }
    }
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let _ = child.wait();
    let free_output = format!("{}{rest}", first[0] as char);
    let guest_used_kb = free_output
        .lines()
        .find(|l| l.trim_start().starts_with("Mem:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<u64>().ok());

    let (vm, ctr, boot) = (
        median(&mut vm_run),
        median(&mut ctr_run),
        median(&mut boots),
    );
    println!("\nvm isolation (qemu backend) vs container isolation, {iterations} interleaved samples, medians\n");
    println!(
        "{:<44}{:>12}",
        "QEMU start -> agent health check answered",
        format!("{boot:.0} ms")
    );
    println!(
        "{:<44}{:>12}{:>14}",
        "husk run /bin/true", "vm", "container"
    );
    println!(
        "{:<44}{:>12}{:>14}",
        "",
        format!("{vm:.0} ms"),
        format!("{ctr:.1} ms")
    );
    println!(
        "{:<44}{:>12}",
        "ratio vm / container",
        format!("{:.0}x", vm / ctr)
    );
    match guest_used_kb {
        Some(kb) => println!(
            "{:<44}{:>12}",
            "guest memory in use after boot (free -k)",
            format!("{} MiB", kb / 1024)
        ),
        None => println!("guest memory: could not read `free -k` output: {free_output:?}"),
    }
    let total: u64 = pss.iter().map(|(_, kb)| kb).sum();
    println!(
        "{:<44}{:>12}",
        "host PSS of the sandbox's processes",
        format!("{} MiB", total / 1024)
    );
    for (process, kb) in &pss {
        println!("    {process:<40}{:>12}", format!("{} MiB", kb / 1024));
    }
}

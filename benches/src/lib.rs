//! What the bench targets share: the hybrid-cgroup workaround that lets crun run
//! here, medians, reading a process tree's memory from /proc, a runtime driven by its
//! CLI, and the TCP probe of the network benchmark.

pub mod tcp_probe;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// crun 1.8 refuses hybrid cgroup hosts ("cgroups in hybrid mode not supported") as
/// soon as the cgroup2 mount has a controller. The benchmarks run every runtime in one
/// private mount namespace without that mount: all of them then manage the same v1
/// hierarchies (which husk and runc use on this host anyway), so crun can be measured
/// doing the same work. Returns what was done, for the report; None on a host
/// without the hybrid mount.
pub fn hide_unified_cgroup_mount() -> Option<String> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let unified = Path::new("/sys/fs/cgroup/unified");
    if !unified.join("cgroup.controllers").exists() {
        return None;
    }
    let hidden = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .and_then(|()| {
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
        })
        .and_then(|()| umount2(unified, MntFlags::MNT_DETACH));
    Some(match hidden {
        Ok(()) => "runtimes run in a private mount namespace without the cgroup2 mount at /sys/fs/cgroup/unified (hybrid host): all use the v1 hierarchies, so crun 1.8 can run".into(),
        Err(err) => format!("could not hide the hybrid cgroup2 mount ({err}); crun 1.8 may refuse to run"),
    })
}

/// The sample at `per_mille` thousandths of the sorted samples (sorts them): 500 is
/// the median, 990 the 99th percentile. Panics on no samples.
pub fn quantile<T: Copy + PartialOrd>(samples: &mut [T], per_mille: usize) -> T {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    samples[(samples.len() * per_mille / 1000).min(samples.len() - 1)]
}

/// The median of the samples (sorts them).
pub fn median<T: Copy + PartialOrd>(samples: &mut [T]) -> T {
    quantile(samples, 500)
}

/// The 90th percentile of the samples (sorts them).
pub fn p90<T: Copy + PartialOrd>(samples: &mut [T]) -> T {
    quantile(samples, 900)
}

/// `key`'s first number in /proc/<pid>/<file> (e.g. `Pss:` in smaps_rollup, kB).
pub fn proc_field(pid: i32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The process's command name.
pub fn process_name(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `root` and all its descendants, from one walk of /proc.
pub fn process_tree(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for pid in entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        {
            if let Some(parent) = proc_field(pid, "status", "PPid:") {
                children.entry(parent as i32).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut next = 0;
    while next < tree.len() {
        if let Some(kids) = children.get(&tree[next]) {
            tree.extend(kids);
        }
        next += 1;
    }
    tree
}

/// PSS in kB of each process of `root`'s tree, by name (processes that are gone by
/// the time they are read are left out).
pub fn tree_pss_kb(root: i32) -> Vec<(String, u64)> {
    process_tree(root)
        .into_iter()
        .filter_map(|pid| Some((process_name(pid), proc_field(pid, "smaps_rollup", "Pss:")?)))
        .collect()
}

/// One line about the machine the figures came from: CPU model, cores, memory,
/// kernel and the load average at the time.
pub fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_gib = proc_meminfo_kb("MemTotal:").unwrap_or(0) as f64 / 1024.0 / 1024.0;
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{model}, {cores} cores, {mem_gib:.0} GiB, Linux {kernel}, load average {}",
        load.join(" ")
    )
}

fn proc_meminfo_kb(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `command` with stdin and stdout on /dev/null and its stderr in a temporary
/// file (not a pipe: a created container keeps the runtime's stderr open); on
/// failure the error is `what` and that stderr.
pub fn run_quiet(command: &mut Command, what: &str) -> Result<(), String> {
    use std::io::{Read, Seek};
    let mut stderr = tempfile::tempfile().map_err(|e| e.to_string())?;
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.try_clone().map_err(|e| e.to_string())?)
        .status()
        .map_err(|e| format!("{what}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let mut text = String::new();
    let _ = stderr.rewind();
    let _ = stderr.read_to_string(&mut text);
    Err(format!("{what}: {}", text.trim()))
}

/// One runtime as a benchmark drives it: its CLI with global arguments and a private
/// state root (removed on drop).
pub struct Runtime {
    pub label: &'static str,
    program: PathBuf,
    global_args: Vec<String>,
    root: tempfile::TempDir,
}

impl Runtime {
    pub fn new(label: &'static str, program: PathBuf, global_args: &[&str]) -> Self {
        Self {
            label,
            program,
            global_args: global_args.iter().map(|a| a.to_string()).collect(),
            root: tempfile::tempdir().expect("state root"),
        }
    }

    /// The runtime's command with `--root` and the global arguments, for a subcommand.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .arg("--root")
            .arg(self.root.path())
            .args(&self.global_args);
        command
    }

    /// Runs one subcommand; on failure its stderr is the error.
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        run_quiet(
            self.command().args(args),
            &format!("{} {}", self.label, args.join(" ")),
        )
    }

    /// A foreground `run` of the bundle, timed.
    pub fn run(&self, bundle: &Path, id: &str) -> Result<Duration, String> {
        let started = Instant::now();
        self.exec(&["run", "--bundle", bundle.to_str().unwrap(), id])?;
        Ok(started.elapsed())
    }

    /// The pid `state` reports (the container's init, or a VM sandbox's supervisor).
    pub fn state_pid(&self, id: &str) -> Result<i32, String> {
        let out = self
            .command()
            .args(["state", id])
            .output()
            .map_err(|e| e.to_string())?;
        let state: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{} state {id}: {e}", self.label))?;
        state["pid"]
            .as_i64()
            .map(|p| p as i32)
            .ok_or_else(|| format!("{} state {id}: no pid in {state}", self.label))
    }
}

/// husk in vm isolation (with the operator config `config`) and in container
/// isolation, the pair every comparison starts from.
pub fn husk_runtimes(husk: &Path, config: &str) -> [Runtime; 2] {
    [
        Runtime::new(
            "husk vm",
            husk.to_path_buf(),
            &["--isolation", "vm", "--config", config],
        ),
        Runtime::new(
            "husk container",
            husk.to_path_buf(),
            &["--isolation", "container"],
        ),
    ]
}

/// Which backend `auto` picks for vm isolation, from `husk check`'s report (it names
/// QEMU's accelerator, e.g. "qemu with tcg" where KVM cannot run the guest).
pub fn vm_backend(husk: &Path) -> String {
    let out = Command::new(husk).arg("check").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .find(|l| l.contains("auto"))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| "backend: see `husk check`".into())
}

/// Where benchmarks write their reports: `target/husk-bench/`.
pub fn output_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("husk-bench")
}

//! `husk` in vm isolation through QEMU (TCG where hardware virtualization is not
//! usable, as on the PVM hosts here): a foreground `husk --isolation vm run` boots a
//! sandbox VM with the guest kernel and husk-agent, runs the container in it, relays
//! its output, signals and exit status, and leaves nothing behind. Also `husk check`.
//!
//! Needs: root, busybox-static, qemu-system-x86, and the guest artifacts and helpers
//! (`make -s guest-artifacts` builds what is missing; virtiofsd and vhost-device-vsock
//! in $HUSK_CACHE/bin, see docs/guest.md). It fails loudly when any is missing.
//! A failing test prints husk's debug log, which holds the guest console.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use husk_e2e::cmd::{self, Background, Output};
use husk_e2e::fixture::{Bundle, Rootfs};
use husk_e2e::leaks;
use husk_e2e::vm::{HuskRoot, TIMEOUT};
use libtest_mimic::{Arguments, Failed};

struct Env {
    rootfs: Rootfs,
    kernel: PathBuf,
    initramfs: PathBuf,
}

/// One test's private runtime root, operator config and debug log.
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
        Self::with_vm_config(
            env,
            &format!(
                "[vm]\nkernel = {:?}\ninitramfs = {:?}\n",
                env.kernel, env.initramfs
            ),
        )
    }

    fn with_vm_config(env: &'a Env, config: &str) -> Self {
        Self {
            env,
            base: HuskRoot::new("husk-vm-", config),
        }
    }

    /// A runtime root as long as Docker's (`<exec-root>/runtime-runc/moby`, and
    /// 64-hex ids): no socket of a sandbox fits in `sun_path` by its full path.
    fn with_long_root(env: &'a Env) -> Self {
        let mut husk = Self::new(env);
        husk.base.root = husk
            .dir
            .path()
            .join("state/exec/runtime-vm-with-a-long-name/moby");
        std::fs::create_dir_all(&husk.root).unwrap();
        husk
    }

    fn state_root(&self) -> PathBuf {
        self.root.clone()
    }

    fn bundle(&self, args: &[&str]) -> Bundle {
        Bundle::new(self.env.rootfs.path(), args)
    }

    /// `husk --isolation vm run` of `bundle` in the foreground.
    fn run_bundle(&self, id: &str, bundle: &Bundle) -> Output {
        self.husk(&[
            "--isolation",
            "vm",
            "run",
            "--bundle",
            bundle.path().to_str().unwrap(),
            id,
        ])
    }

    /// `husk --isolation vm run` of a bundle running `args`.
    fn vm_run(&self, id: &str, args: &[&str]) -> (Output, Bundle) {
        let bundle = self.bundle(args);
        let out = self.run_bundle(id, &bundle);
        (out, bundle)
    }

    /// Starts `husk --isolation vm run` of `bundle` in the background, stdout and
    /// stderr to files in the test dir, and waits until the container prints `ready`.
    fn spawn_until_ready(
        &self,
        id: &str,
        bundle: &Bundle,
    ) -> Result<(Background, PathBuf, PathBuf), Failed> {
        let stdout_path = self.dir.path().join("stdout");
        let stderr_path = self.dir.path().join("stderr");
        let mut command = self.command();
        command
            .args(["--isolation", "vm", "run", "--bundle"])
            .arg(bundle.path())
            .arg(id);
        let child = self
            .base
            .spawn_until_ready(command, &stdout_path, &stderr_path)?;
        Ok((child, stdout_path, stderr_path))
    }

    /// `husk --isolation vm create` with stdout/stderr to files (the supervisor keeps
    /// them as the container's), then `start`; returns the pid-file pid and the
    /// stdout path. Waits until the container printed `ready`.
    fn create_and_start(&self, id: &str, bundle: &Bundle) -> Result<(i32, PathBuf), Failed> {
        let stdout_path = self.dir.path().join(format!("{id}.out"));
        let pid_file = self.dir.path().join(format!("{id}.pid"));
        let mut command = self.command();
        command
            .args(["--isolation", "vm", "create", "--bundle"])
            .arg(bundle.path())
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(self.dir.path().join(format!("{id}.err"))).unwrap());
        let status = Background::spawn(&mut command).wait(TIMEOUT);
        self.expect(status.is_some_and(|s| s.success()), || {
            format!("husk create exited {status:?}")
        })?;
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .map_err(|e| self.fail(format!("no pid file: {e}")))?
            .parse()
            .map_err(|e| self.fail(format!("pid file: {e}")))?;
        let state = self.state(id);
        self.expect(state["status"] == "created" && state["pid"] == pid, || {
            format!("after create want created with pid {pid}: {state}")
        })?;
        self.husk(&["start", id]).ok();
        let ready = cmd::wait_until(TIMEOUT, || {
            std::fs::read_to_string(&stdout_path).is_ok_and(|s| s.contains("ready"))
        });
        self.expect(ready, || "the container never printed ready".into())?;
        Ok((pid, stdout_path))
    }

    /// `husk state` as JSON.
    fn state(&self, id: &str) -> serde_json::Value {
        let out = self.husk(&["state", id]).ok();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("state JSON: {e}: {out:?}"))
    }

    /// Waits until `husk state` says stopped.
    fn wait_stopped(&self, id: &str) -> Result<(), Failed> {
        let stopped = cmd::wait_until(TIMEOUT, || self.state(id)["status"] == "stopped");
        self.expect(stopped, || {
            format!("{id} never stopped: {}", self.state(id))
        })
    }

    /// Nothing of the sandbox may be left: VM processes (their command lines name
    /// the state root), sockets and state, mounts.
    fn assert_clean(&self, id: &str) -> Result<(), Failed> {
        // Not leaks::leftovers: the rootfs is shared with tests running in parallel,
        // and its mounts here are named by the state root and the id.
        let root = self.state_root();
        let mut left = Vec::new();
        for line in leaks::mounts_matching(id)
            .into_iter()
            .chain(leaks::mounts_matching(&root.to_string_lossy()))
        {
            left.push(format!("mount left: {line}"));
        }
        for entry in leaks::state_entries(&root) {
            left.push(format!("state left: {}/{entry}", root.display()));
        }
        for cgroup in leaks::cgroups_matching(id) {
            left.push(format!("cgroup left: {}", cgroup.display()));
        }
        for (pid, cmdline) in leaks::processes_mentioning(&self.dir.path().to_string_lossy()) {
            left.push(format!("process left: {pid}: {cmdline}"));
        }
        for (pid, cmdline) in leaks::processes_mentioning(id) {
            left.push(format!("process left: {pid}: {cmdline}"));
        }
        self.expect(left.is_empty(), || format!("left behind: {left:#?}"))
    }
}

impl Drop for Husk<'_> {
    /// A failed test may leave its container running: force-delete it before the
    /// temp dir goes, or removing the dir would recurse through the sandbox's bind
    /// mount of the shared busybox rootfs and empty it for every later test.
    fn drop(&mut self) {
        for id in leaks::state_entries(&self.root) {
            if !id.starts_with('.') {
                let _ = cmd::run(self.command().args(["delete", "--force", &id]), TIMEOUT);
            }
        }
    }
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits for an orphaned supervisor (reparented to us, a subreaper) and returns its
/// exit code, 128+N if killed by signal N.
fn reap(pid: i32) -> Option<i32> {
    use nix::sys::wait::{waitpid, WaitStatus};
    match waitpid(nix::unistd::Pid::from_raw(pid), None) {
        Ok(WaitStatus::Exited(_, code)) => Some(code),
        Ok(WaitStatus::Signaled(_, signal, _)) => Some(128 + signal as i32),
        _ => None,
    }
}

/// Accepts one connection on a console socket and takes the descriptor it carries.
fn receive_fd(listener: &std::os::unix::net::UnixListener) -> Option<std::os::fd::OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let (stream, _) = listener.accept().ok()?;
    let mut name = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let fd = msg.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
        _ => None,
    })?;
    // SAFETY: the kernel just passed us this descriptor; nothing else owns it.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The base name of a process's argv[0] (the supervisor runs /proc/self/exe as `husk`).
fn program_name(pid: i32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let arg0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let arg0 = String::from_utf8_lossy(arg0);
    arg0.rsplit('/').next().unwrap_or_default().to_string()
}

/// A line of /proc/<pid>/status, e.g. `Uid`.
fn status_field(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// The (device, inode) of a path, following links (so `/proc/<pid>/root` and
/// `/proc/<pid>/fd/<n>` name what the process holds).
fn identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Direct children of a process.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// What is wrong with the confinement of VM process `pid` (`name`): directories it
/// holds open that are ancestors of its sandbox's state dir (the host's `/`
/// among them), and, for a process in the host's mount namespace, any directory
/// outside the state dir and its run dir.
fn open_dirs_outside(
    pid: i32,
    name: &str,
    state_dir: &std::path::Path,
    allowed: &[PathBuf],
) -> Vec<String> {
    let mut ancestors = Vec::new();
    let mut dir = Some(state_dir);
    while let Some(d) = dir {
        if let Some(id) = identity(d) {
            ancestors.push((id, d.to_path_buf()));
        }
        dir = d.parent();
    }
    let same_mnt = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
        == std::fs::read_link("/proc/self/ns/mnt").ok();
    let mut bad = Vec::new();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default();
    for fd in fds {
        let path = fd.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let id = identity(&path);
        let target = std::fs::read_link(&path).unwrap_or_default();
        if let Some((_, a)) = ancestors.iter().find(|(i, _)| Some(*i) == id) {
            // The state dir itself is allowed to the processes working in it.
            if a != state_dir || !same_mnt {
                bad.push(format!(
                    "{name} ({pid}) holds {} = {} open",
                    path.display(),
                    a.display()
                ));
            }
            continue;
        }
        if same_mnt && !allowed.iter().any(|ok| target.starts_with(ok)) {
            bad.push(format!(
                "{name} ({pid}) holds {} = {} open",
                path.display(),
                target.display()
            ));
        }
    }
    bad
}

fn host_kernel_release() -> String {
    cmd::run(Command::new("uname").arg("-r"), Duration::from_secs(5))
        .ok()
        .stdout_trimmed()
        .to_string()
}

fn cases() -> Vec<husk_e2e::Case<Env>> {
    vec![
        ("hello_and_exit_code_propagate", |env| {
            let husk = Husk::new(env);
            let id = unique("vm-hello");
            let (out, _bundle) = husk.vm_run(&id, &["sh", "-c", "echo hello; exit 3"]);
            husk.expect(out.code == 3 && out.stdout == "hello\n", || {
                format!("want stdout \"hello\\n\" and exit 3, got {out:?}")
            })?;
            husk.assert_clean(&id)
        }),
        ("runs_on_the_guest_kernel", |env| {
            let husk = Husk::new(env);
            let id = unique("vm-uname");
            let (out, _bundle) = husk.vm_run(&id, &["uname", "-r"]);
            let host = host_kernel_release();
            husk.expect(
                out.code == 0 && !out.stdout_trimmed().is_empty() && out.stdout_trimmed() != host,
                || format!("uname -r in the VM must differ from the host's {host:?}: {out:?}"),
            )?;
            husk.assert_clean(&id)
        }),
        ("memory_limit_is_enforced_inside_the_guest", |env| {
            // The spec's limit reaches the guest's cgroup: an allocation past it is
            // OOM-killed by the guest kernel (137), one below it survives.
            let husk = Husk::new(env);
            let id = unique("vm-oom");
            let mut bundle = husk.bundle(&[
                "sh",
                "-c",
                "x=$(head -c $BYTES /dev/zero | tr '\\0' a); echo survived ${#x}",
            ]);
            bundle.config["linux"]["resources"] =
                serde_json::json!({ "memory": { "limit": 32u64 << 20 } });
            for (bytes, want) in [("100000000", 137), ("1000000", 0)] {
                let mut config = bundle.config.clone();
                config["process"]["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(format!("BYTES={bytes}").into());
                bundle.config = config;
                bundle.write();
                let out = husk.run_bundle(&id, &bundle);
                husk.expect(out.code == want && (want != 0 || out.stdout.contains("survived 1000000")), || {
                    format!("allocating {bytes} bytes under a 32 MiB limit: want exit {want}, got {out:?}")
                })?;
                bundle.config["process"]["env"]
                    .as_array_mut()
                    .unwrap()
                    .pop();
            }
            husk.assert_clean(&id)
        }),
        ("vm_is_sized_from_the_spec_limits", |env| {
            // 64 MiB limit + 128 MiB overhead = a 192 MiB guest; a 2-CPU quota gets 2
            // vCPUs (this host has 2 CPUs).
            let husk = Husk::new(env);
            let id = unique("vm-size");
            let mut bundle = husk.bundle(&[
                "sh",
                "-c",
                "grep MemTotal /proc/meminfo; grep -c ^processor /proc/cpuinfo",
            ]);
            bundle.config["linux"]["resources"] = serde_json::json!({
                "memory": { "limit": 64u64 << 20 },
                "cpu": { "quota": 200000, "period": 100000 }
            });
            bundle.write();
            let out = husk.run_bundle(&id, &bundle);
            let mem_kib: u64 = out
                .stdout
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let cpus = out
                .stdout
                .lines()
                .nth(1)
                .unwrap_or_default()
                .trim()
                .to_string();
            let host_cpus = std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(2);
            husk.expect(
                out.code == 0
                    && (150 * 1024..=192 * 1024).contains(&mem_kib)
                    && cpus == host_cpus.to_string(),
                || format!("want ~192 MiB and {host_cpus} vCPUs in the guest: {out:?}"),
            )?;
            husk.assert_clean(&id)
        }),
        ("stderr_is_relayed_separately", |env| {
            let husk = Husk::new(env);
            let id = unique("vm-stderr");
            let (out, _bundle) =
                husk.vm_run(&id, &["sh", "-c", "echo to-out; echo to-err >&2; exit 0"]);
            husk.expect(
                out.code == 0
                    && out.stdout == "to-out\n"
                    && out.stderr.contains("to-err")
                    && !out.stdout.contains("to-err"),
                || format!("stdout/stderr not relayed as written: {out:?}"),
            )?;
            husk.assert_clean(&id)
        }),
        ("stdin_is_relayed", |env| {
            let husk = Husk::new(env);
            let id = unique("vm-stdin");
            let bundle = husk.bundle(&["sh", "-c", "read line; echo got:$line; cat | wc -c"]);
            let mut command = husk.command();
            command
                .args(["--isolation", "vm", "run", "--bundle"])
                .arg(bundle.path())
                .arg(&id);
            let out = cmd::run_with_stdin(&mut command, Some(b"typed\nabc"), TIMEOUT);
            husk.expect(
                out.code == 0 && out.stdout.contains("got:typed") && out.stdout.contains('3'),
                || format!("stdin not relayed (or not closed at EOF): {out:?}"),
            )?;
            husk.assert_clean(&id)
        }),
        ("sigterm_is_forwarded_to_the_container", |env| {
            let husk = Husk::new(env);
            let id = unique("vm-sig");
            let bundle = husk.bundle(&[
                "sh",
                "-c",
                "trap 'echo got-term; exit 7' TERM; echo ready; sleep 600 & wait",
            ]);
            let (child, stdout_path, _) = husk.spawn_until_ready(&id, &bundle)?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.pid()),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            let status = child.wait(TIMEOUT);
            let out = std::fs::read_to_string(&stdout_path).unwrap_or_default();
            husk.expect(
                status.and_then(|s| s.code()) == Some(7) && out.contains("got-term"),
                || format!("want got-term and exit 7, got {status:?}, stdout {out:?}"),
            )?;
            husk.assert_clean(&id)
        }),
        ("vm_processes_are_confined", |env| {
            // Read from /proc while a container runs: QEMU and vhost-device-vsock run as
            // the sandbox's own host uid with no capabilities, QEMU under its seccomp
            // sandbox; virtiofsd serves from its own namespaces with the share as its
            // root and only its file capabilities; none holds a host directory open
            // outside the share, the state dir and the sandbox's run dir.
            let husk = Husk::new(env);
            let id = unique("vm-jail");
            let bundle = husk.bundle(&[
                "sh",
                "-c",
                "trap 'exit 0' TERM; echo ready; sleep 600 & wait",
            ]);
            let (child, _, _) = husk.spawn_until_ready(&id, &bundle)?;
            let state_dir = husk.state_root().join(&id);
            let shared = state_dir.join("shared");
            let record: serde_json::Value = serde_json::from_slice(
                &std::fs::read(state_dir.join("sandbox.json")).unwrap_or_default(),
            )
            .unwrap_or_default();
            let pids: Vec<i32> = record["pids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_i64())
                        .map(|p| p as i32)
                        .collect()
                })
                .unwrap_or_default();
            let mut bad = Vec::new();
            let mut seen = Vec::new();
            let mut uids = Vec::new();
            let host_root = identity(std::path::Path::new("/"));
            let host_mnt = std::fs::read_link("/proc/self/ns/mnt").ok();
            for &pid in &pids {
                let name = program_name(pid);
                seen.push(name.clone());
                let uid = status_field(pid, "Uid");
                let cap_eff = status_field(pid, "CapEff");
                let seccomp = status_field(pid, "Seccomp");
                match name.as_str() {
                    "qemu-system-x86_64" | "vhost-device-vsock" => {
                        let ids: Vec<&str> = uid.split_whitespace().collect();
                        if ids.len() != 4 || ids.contains(&"0") {
                            bad.push(format!("{name} ({pid}) runs with uids {uid:?}"));
                        }
                        if status_field(pid, "Gid")
                            .split_whitespace()
                            .any(|g| g == "0")
                        {
                            bad.push(format!("{name} ({pid}) keeps gid 0"));
                        }
                        uids.push(ids.first().map(|u| u.to_string()).unwrap_or_default());
                        if cap_eff != "0000000000000000"
                            || status_field(pid, "CapPrm") != "0000000000000000"
                        {
                            bad.push(format!("{name} ({pid}) has capabilities: CapEff {cap_eff}"));
                        }
                        if name.starts_with("qemu") && seccomp != "2" {
                            bad.push(format!(
                                "QEMU ({pid}) is not under seccomp filtering: Seccomp {seccomp:?}"
                            ));
                        }
                        if status_field(pid, "NoNewPrivs") != "1" {
                            bad.push(format!("{name} ({pid}) may gain privileges (NoNewPrivs 0)"));
                        }
                        let run_dir =
                            PathBuf::from(format!("/run/husk-vm/{}", ids.first().unwrap_or(&"?")));
                        bad.extend(open_dirs_outside(
                            pid,
                            &name,
                            &state_dir,
                            &[state_dir.clone(), run_dir],
                        ));
                    }
                    "virtiofsd" => {
                        // The process husk started only waits for its sandboxed child.
                        let servers = children(pid);
                        if servers.is_empty() {
                            bad.push(format!("virtiofsd ({pid}) has no sandboxed child"));
                        }
                        bad.extend(open_dirs_outside(
                            pid,
                            "virtiofsd (waiting parent)",
                            &state_dir,
                            std::slice::from_ref(&state_dir),
                        ));
                        for server in servers {
                            seen.push("virtiofsd server".into());
                            let root = identity(&PathBuf::from(format!("/proc/{server}/root")));
                            if root == host_root || root != identity(&shared) {
                                bad.push(format!(
                                    "virtiofsd server ({server}) root is not the share: {root:?}"
                                ));
                            }
                            if std::fs::read_link(format!("/proc/{server}/ns/mnt")).ok() == host_mnt
                            {
                                bad.push(format!(
                                    "virtiofsd server ({server}) is in the host's mount namespace"
                                ));
                            }
                            for ns in ["pid", "net"] {
                                if std::fs::read_link(format!("/proc/{server}/ns/{ns}")).ok()
                                    == std::fs::read_link(format!("/proc/self/ns/{ns}")).ok()
                                {
                                    bad.push(format!("virtiofsd server ({server}) shares the host's {ns} namespace"));
                                }
                            }
                            // Only the file capabilities its sandbox keeps (no SETFCAP,
                            // no SYS_ADMIN, no NET_*).
                            let eff = u64::from_str_radix(&status_field(server, "CapEff"), 16)
                                .unwrap_or(u64::MAX);
                            let allowed: u64 =
                                [0u32, 1, 3, 4, 6, 7, 27].iter().map(|c| 1u64 << c).sum();
                            if eff & !allowed != 0 {
                                bad.push(format!(
                                    "virtiofsd server ({server}) CapEff {eff:x} beyond {allowed:x}"
                                ));
                            }
                            if status_field(server, "Seccomp") != "2" {
                                bad.push(format!(
                                    "virtiofsd server ({server}) has no seccomp filter"
                                ));
                            }
                            bad.extend(open_dirs_outside(
                                server,
                                "virtiofsd server",
                                &state_dir,
                                &[],
                            ));
                        }
                    }
                    other => bad.push(format!("unexpected VM process {other} ({pid})")),
                }
            }
            if uids.len() == 2 && uids[0] != uids[1] {
                bad.push(format!(
                    "QEMU and vhost-device-vsock run as different uids: {uids:?}"
                ));
            }
            for want in [
                "qemu-system-x86_64",
                "vhost-device-vsock",
                "virtiofsd",
                "virtiofsd server",
            ] {
                if !seen.iter().any(|s| s == want) {
                    bad.push(format!(
                        "no {want} among the VM processes {pids:?} ({seen:?})"
                    ));
                }
            }
            // The container ends (TERM, forwarded): the teardown gives the uid back.
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.pid()),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            let status = child.wait(TIMEOUT);
            husk.expect(bad.is_empty(), || {
                format!("confinement of {seen:?}: {bad:#?}")
            })?;
            husk.expect(status.and_then(|s| s.code()) == Some(0), || {
                format!("husk run: {status:?}")
            })?;
            // The uid went back with the sandbox.
            let lease = PathBuf::from(format!(
                "/run/husk-vm/{}.lease",
                uids.first().map(String::as_str).unwrap_or("?")
            ));
            husk.expect(!lease.exists(), || {
                format!("{} is still leased", lease.display())
            })?;
            husk.assert_clean(&id)
        }),
        ("a_dead_vmm_is_an_error_and_leaves_nothing", |env| {
            let husk = Husk::new(env);
            let id = unique("vm-dead");
            let bundle = husk.bundle(&["sh", "-c", "echo ready; sleep 600"]);
            let (child, _, stderr_path) = husk.spawn_until_ready(&id, &bundle)?;
            let qemu: Vec<i32> = leaks::processes_mentioning(&husk.state_root().to_string_lossy())
                .into_iter()
                .filter(|(_, cmdline)| cmdline.contains("qemu-system"))
                .map(|(pid, _)| pid)
                .collect();
            husk.expect(qemu.len() == 1, || format!("want one qemu, found {qemu:?}"))?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(qemu[0]),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            let status = child.wait(TIMEOUT);
            let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            husk.expect(
                status.and_then(|s| s.code()) == Some(1)
                    && err.contains("VM exited unexpectedly")
                    && err.contains("guest console"),
                || {
                    format!(
                        "want exit 1 naming the dead VM with its console, got {status:?}: {err}"
                    )
                },
            )?;
            husk.assert_clean(&id)
        }),
        ("delete_cleans_up_after_a_killed_husk", |env| {
            let husk = Husk::new(env);
            let id = unique("vm-kill9");
            let bundle = husk.bundle(&["sh", "-c", "echo ready; sleep 600"]);
            let (child, _, _) = husk.spawn_until_ready(&id, &bundle)?;
            // A live sandbox is not deleted without --force.
            husk.husk(&["delete", &id]).fails_with("it is running");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.pid()),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            child.wait(TIMEOUT);
            // PR_SET_PDEATHSIG takes the VM processes down with husk.
            let gone = cmd::wait_until(Duration::from_secs(10), || {
                leaks::processes_mentioning(&husk.state_root().to_string_lossy()).is_empty()
            });
            husk.expect(gone, || "VM processes outlived a SIGKILLed husk".into())?;
            husk.husk(&["delete", &id]).ok();
            husk.expect(env.rootfs.path().join("bin/busybox").is_file(), || {
                "delete removed the shared rootfs".into()
            })?;
            husk.assert_clean(&id)
        }),
        ("unusable_vm_is_a_clear_error_never_a_downgrade", |env| {
            let husk = Husk::new(env);
            let id = unique("vm-refuse");
            let bundle = husk.bundle(&["true"]);
            let b = bundle.path().to_str().unwrap();
            husk.husk(&[
                "--isolation",
                "vm",
                "--hypervisor",
                "builtin",
                "run",
                "-b",
                b,
                &id,
            ])
            .fails_with("refusing to fall back to the shared kernel")
            .fails_with("the builtin backend (husk-vmm) needs hardware virtualization");
            let missing = Husk::with_vm_config(env, "[vm]\nkernel = \"/nonexistent/vmlinux\"\n");
            for run in [&["run"][..], &["run", "--detach"], &["create"]] {
                let mut args = vec!["--isolation", "vm"];
                args.extend_from_slice(run);
                args.extend_from_slice(&["-b", b, &id]);
                missing
                    .husk(&args)
                    .fails_with("make guest-kernel initramfs")
                    .fails_with("refusing to fall back to the shared kernel");
            }
            // A terminal needs somewhere to go when detached.
            let mut tty = husk.bundle(&["true"]);
            tty.config["process"]["terminal"] = true.into();
            tty.write();
            husk.husk(&[
                "--isolation",
                "vm",
                "create",
                "-b",
                tty.path().to_str().unwrap(),
                &id,
            ])
            .fails_with("--console-socket");
            husk.assert_clean(&id)?;
            missing.assert_clean(&id)
        }),
        ("create_start_state_exec_ps_pause_kill_delete", |env| {
            let husk = Husk::new(env);
            let id = unique("vm-life");
            let bundle = husk.bundle(&[
                "sh",
                "-c",
                "trap 'echo got-term; exit 9' TERM; echo ready; sleep 600 & wait",
            ]);
            let (pid, stdout_path) = husk.create_and_start(&id, &bundle)?;
            let state = husk.state(&id);
            husk.expect(state["status"] == "running" && state["pid"] == pid, || {
                format!("after start want running with pid {pid}: {state}")
            })?;
            let list = husk.husk(&["list", "--format", "json"]).ok();
            husk.expect(list.stdout.contains(&id), || format!("list: {list:?}"))?;
            let exec = husk.husk(&["exec", &id, "sh", "-c", "echo in-exec; exit 5"]);
            husk.expect(exec.code == 5 && exec.stdout == "in-exec\n", || {
                format!("exec: want in-exec and exit 5: {exec:?}")
            })?;
            // json: host pids (what docker top looks up on the host) — the
            // supervisor and the VM's processes, never guest pids.
            let ps = husk.husk(&["ps", "--format", "json", &id]).ok();
            let pids: Vec<i32> = serde_json::from_str(ps.stdout_trimmed()).unwrap_or_default();
            let commands: Vec<String> = pids.iter().map(|&p| program_name(p)).collect();
            husk.expect(
                pids.contains(&pid)
                    && commands.iter().any(|c| c == "qemu-system-x86_64")
                    && commands.iter().all(|c| {
                        [
                            "husk",
                            "qemu-system-x86_64",
                            "virtiofsd",
                            "vhost-device-vsock",
                        ]
                        .contains(&c.as_str())
                    }),
                || {
                    format!(
                        "ps json: want the supervisor and VM host processes: {ps:?} {commands:?}"
                    )
                },
            )?;
            let table = husk.husk(&["ps", &id]).ok();
            husk.expect(table.stdout.contains("sleep 600"), || {
                format!("ps: {table:?}")
            })?;
            husk.husk(&["pause", &id]).ok();
            husk.expect(husk.state(&id)["status"] == "paused", || {
                "not paused".into()
            })?;
            husk.husk(&["resume", &id]).ok();
            husk.expect(husk.state(&id)["status"] == "running", || {
                "not resumed".into()
            })?;
            let stats = husk.husk(&["events", "--stats", &id]).ok();
            husk.expect(stats.stdout.contains("\"type\":\"stats\""), || {
                format!("events: {stats:?}")
            })?;
            husk.husk(&["delete", &id]).fails_with("it is running");
            husk.husk(&["kill", &id, "TERM"]).ok();
            husk.wait_stopped(&id)?;
            let status = reap(pid);
            let out = std::fs::read_to_string(&stdout_path).unwrap_or_default();
            husk.expect(status == Some(9) && out.contains("got-term"), || {
                format!("want got-term and supervisor exit 9, got {status:?}, stdout {out:?}")
            })?;
            husk.husk(&["kill", &id, "TERM"])
                .fails_with("container not running");
            husk.husk(&["delete", &id]).ok();
            husk.assert_clean(&id)
        }),
        ("long_root_beyond_sun_path", |env| {
            // Docker's state dirs make every sandbox socket path longer than the
            // 107 bytes of sun_path: the VM processes and husk must not care.
            let husk = Husk::with_long_root(env);
            let id = format!("{:0>64}", unique("vm-long").replace('-', ""));
            let socket = husk.state_root().join(&id).join("vhost-vsock.sock");
            husk.expect(socket.as_os_str().len() > 107, || {
                format!("{} is not long enough", socket.display())
            })?;
            let bundle = husk.bundle(&["sh", "-c", "echo ready; sleep 600"]);
            let (pid, _) = husk.create_and_start(&id, &bundle)?;
            let exec = husk.husk(&["exec", &id, "sh", "-c", "echo in-exec; exit 3"]);
            husk.expect(exec.code == 3 && exec.stdout == "in-exec\n", || {
                format!("exec: want in-exec and exit 3: {exec:?}")
            })?;
            let ps = husk.husk(&["ps", "--format", "json", &id]).ok();
            let pids: Vec<i32> = serde_json::from_str(ps.stdout_trimmed()).unwrap_or_default();
            husk.expect(pids.len() == 4 && pids.contains(&pid), || {
                format!("ps json: want supervisor, qemu, virtiofsd, vhost-device-vsock: {ps:?}")
            })?;
            // delete --force recognises the VM processes (relative socket names: their
            // command lines need not name the state dir) and removes everything.
            husk.husk(&["delete", "--force", &id]).ok();
            let status = reap(pid);
            husk.expect(status.is_some(), || "the supervisor was not reaped".into())?;
            husk.assert_clean(&id)
        }),
        (
            "create_with_console_socket_releases_the_callers_stdio",
            |env| {
                // containerd's runc shim reads create's stdout/stderr until end of file
                // when it passes a console socket (`docker run -t`): the supervisor must
                // not keep them open, or the shim waits for the container's exit.
                let husk = Husk::new(env);
                let id = unique("vm-console");
                let mut bundle = husk.bundle(&["sh", "-c", "echo on-the-tty; sleep 600"]);
                bundle.config["process"]["terminal"] = true.into();
                bundle.write();
                let socket = husk.dir.path().join("console.sock");
                let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
                let receiver = std::thread::spawn(move || receive_fd(&listener));
                let pid_file = husk.dir.path().join("console.pid");
                let mut child = husk
                    .command()
                    .args(["--isolation", "vm", "create", "--bundle"])
                    .arg(bundle.path())
                    .arg("--console-socket")
                    .arg(&socket)
                    .arg("--pid-file")
                    .arg(&pid_file)
                    .arg(&id)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut stdout = child.stdout.take().unwrap();
                let mut stderr = child.stderr.take().unwrap();
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    use std::io::Read;
                    let (mut out, mut err) = (String::new(), String::new());
                    let _ = stdout.read_to_string(&mut out);
                    let _ = stderr.read_to_string(&mut err);
                    let _ = tx.send((out, err));
                });
                let eof = rx.recv_timeout(TIMEOUT);
                let status = child.wait().unwrap();
                let master = receiver.join().unwrap();
                let pid: i32 = std::fs::read_to_string(&pid_file)
                    .unwrap_or_default()
                    .parse()
                    .unwrap_or(0);
                let result = husk
                    .expect(status.success() && eof.is_ok(), || {
                        format!("create exited {status:?}; its stdout/stderr reached EOF: {eof:?}")
                    })
                    .and_then(|()| husk.expect(master.is_some(), || "no pty master".into()))
                    .and_then(|()| {
                        husk.husk(&["start", &id]).ok();
                        let master = master.unwrap();
                        // Polled, never blocking: a silent container fails, not hangs.
                        nix::fcntl::fcntl(
                            std::os::fd::AsRawFd::as_raw_fd(&master),
                            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                        )
                        .unwrap();
                        let mut tty = std::fs::File::from(master);
                        let mut seen = Vec::new();
                        let read = cmd::wait_until(TIMEOUT, || {
                            use std::io::Read;
                            let mut buf = [0u8; 256];
                            if let Ok(n) = tty.read(&mut buf) {
                                seen.extend_from_slice(&buf[..n]);
                            }
                            String::from_utf8_lossy(&seen).contains("on-the-tty")
                        });
                        husk.expect(read, || {
                            format!("the tty showed {:?}", String::from_utf8_lossy(&seen))
                        })
                    });
                husk.husk(&["delete", "--force", &id]).ok();
                if pid > 0 {
                    reap(pid);
                }
                result.and(husk.assert_clean(&id))
            },
        ),
        ("run_detached_and_exec_detached", |env| {
            let husk = Husk::new(env);
            let id = unique("vm-detach");
            let bundle = husk.bundle(&["sleep", "600"]);
            husk.husk(&[
                "--isolation",
                "vm",
                "run",
                "--detach",
                "--bundle",
                bundle.path().to_str().unwrap(),
                &id,
            ])
            .ok();
            husk.expect(husk.state(&id)["status"] == "running", || {
                "not running".into()
            })?;
            let pid_file = husk.dir.path().join("exec.pid");
            let marker = husk.dir.path().join("exec.out");
            let mut command = husk.command();
            command
                .args(["exec", "--detach", "--pid-file"])
                .arg(&pid_file)
                .args([&id, "sh", "-c", "echo from-detached-exec; exit 4"])
                .stdout(std::fs::File::create(&marker).unwrap());
            let status = Background::spawn(&mut command).wait(TIMEOUT);
            husk.expect(status.is_some_and(|s| s.success()), || {
                format!("exec -d: {status:?}")
            })?;
            let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
            let code = reap(pid);
            let out = std::fs::read_to_string(&marker).unwrap_or_default();
            husk.expect(code == Some(4) && out == "from-detached-exec\n", || {
                format!("detached exec: want exit 4 and its output, got {code:?} {out:?}")
            })?;
            husk.husk(&["delete", "--force", &id]).ok();
            husk.assert_clean(&id)
        }),
        ("container_namespaces_differ_from_the_agents", |env| {
            let husk = Husk::new(env);
            let id = unique("vm-ns");
            let (out, _bundle) = husk.vm_run(
                &id,
                &[
                    "sh",
                    "-c",
                    "tr '\\0' ' ' </proc/1/cmdline; echo; ls /proc | grep -c '^[0-9]'; \
                     test -e /run/husk/shared && echo sees-agent-mounts | tr a-z A-Z; hostname",
                ],
            );
            let lines: Vec<&str> = out.stdout.lines().collect();
            husk.expect(
                out.code == 0
                    && lines.first().is_some_and(|l| l.starts_with("sh "))
                    && lines.get(1).is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n <= 3))
                    && !out.stdout.contains("SEES-AGENT-MOUNTS")
                    && lines.get(2) == Some(&"husk"),
                || format!("want own pid 1 (sh), few processes, no agent mounts, own hostname: {out:?}"),
            )?;
            husk.assert_clean(&id)
        }),
        ("terminal_in_the_foreground", |env| {
            let husk = Husk::new(env);
            let id = unique("vm-tty");
            let mut bundle = husk.bundle(&[
                "sh",
                "-c",
                "tty; test -t 0 && echo stdin-is-tty; read x; echo got:$x",
            ]);
            bundle.config["process"]["terminal"] = true.into();
            bundle.write();
            let mut line = format!("{:?}", husk.command());
            line.push_str(&format!(
                " --isolation vm run --bundle {} {id}",
                bundle.path().display()
            ));
            let out = cmd::run_with_stdin(
                Command::new("script").args(["-qec", &line, "/dev/null"]),
                Some(b"typed\n"),
                TIMEOUT,
            );
            husk.expect(
                out.code == 0
                    && out.stdout.contains("/dev/pts/")
                    && out.stdout.contains("stdin-is-tty")
                    && out.stdout.contains("got:typed"),
                || format!("terminal: {out:?}"),
            )?;
            husk.assert_clean(&id)
        }),
        ("bind_mounts_are_shared_with_the_host", |env| {
            let husk = Husk::new(env);
            let id = unique("vm-bind");
            let data = husk.dir.path().join("data");
            let ro = husk.dir.path().join("ro");
            std::fs::create_dir(&data).unwrap();
            std::fs::create_dir(&ro).unwrap();
            std::fs::write(data.join("in.txt"), "from-host").unwrap();
            let mut bundle = husk.bundle(&[
                "sh",
                "-c",
                "cat /data/in.txt; echo; echo from-guest > /data/out.txt; \
                 (echo x > /ro/f) 2>/dev/null || echo ro-refused",
            ]);
            bundle.config["mounts"].as_array_mut().unwrap().extend([
                serde_json::json!({"destination": "/data", "type": "bind",
                    "source": data, "options": ["rbind", "rw"]}),
                serde_json::json!({"destination": "/ro", "type": "bind",
                    "source": ro, "options": ["rbind", "ro"]}),
            ]);
            bundle.write();
            let out = husk.run_bundle(&id, &bundle);
            let written = std::fs::read_to_string(data.join("out.txt")).unwrap_or_default();
            husk.expect(
                out.code == 0
                    && out.stdout.contains("from-host")
                    && out.stdout.contains("ro-refused")
                    && written == "from-guest\n"
                    && !ro.join("f").exists(),
                || format!("bind mounts: {out:?}, out.txt {written:?}"),
            )?;
            husk.assert_clean(&id)
        }),
        (
            "host_hooks_run_before_the_vm_and_a_failing_one_fails_create",
            |env| {
                // prestart and createRuntime hooks run on the host with the creating
                // state (the supervisor's pid) on stdin; a failing one fails the run
                // before the container runs, and leaves nothing.
                let husk = Husk::new(env);
                let id = unique("vm-hooks");
                let seen = husk.dir.path().join("hooks.log");
                let record = |kind: &str| {
                    serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c",
                    format!("echo {kind} $(cat) >> {}", seen.display())]})
                };
                let mut bundle = husk.bundle(&["sh", "-c", "echo ran"]);
                bundle.config["hooks"] = serde_json::json!({
                    "prestart": [record("prestart")],
                    "createRuntime": [record("createRuntime")]
                });
                bundle.write();
                let out = husk.run_bundle(&id, &bundle);
                let log = std::fs::read_to_string(&seen).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                husk.expect(
                    out.code == 0
                        && out.stdout == "ran\n"
                        && lines.len() == 2
                        && lines[0].starts_with("prestart {")
                        && lines[1].starts_with("createRuntime {")
                        && lines
                            .iter()
                            .all(|l| l.contains("\"status\":\"creating\"") && l.contains(&id)),
                    || format!("want both hooks, in order, with the state: {out:?}; {log}"),
                )?;
                husk.assert_clean(&id)?;

                let id = unique("vm-hook-fails");
                bundle.config["process"]["args"] = serde_json::json!(["sh", "-c", "echo ran"]);
                bundle.config["hooks"] = serde_json::json!({
                    "prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]
                });
                bundle.write();
                let out = husk.run_bundle(&id, &bundle);
                husk.expect(
                    out.code != 0
                        && out.stderr.contains("prestart hook /bin/sh failed")
                        && !out.stdout.contains("ran"),
                    || format!("want a failed prestart hook to fail the run: {out:?}"),
                )?;
                husk.assert_clean(&id)
            },
        ),
        ("every_hook_kind_runs_where_the_spec_places_it", |env| {
            // Host hooks record their kind and the state on stdin in a host file, in
            // order; startContainer runs in the container's namespaces in the guest
            // (its path is the container's /bin/sh) and leaves a file the container
            // reads. Foreground `run` (poststop as it deletes), then create/start/
            // delete, where `start` and `delete` run poststart and poststop.
            let husk = Husk::new(env);
            let seen = husk.dir.path().join("all-hooks.log");
            let record = |kind: &str| {
                serde_json::json!([{"path": "/bin/sh", "args": ["sh", "-c",
                format!("echo {kind} $(cat) >> {}", seen.display())]}])
            };
            let mut bundle = husk.bundle(&[
                "sh",
                "-c",
                "echo in-container $(cat /tmp/start-container-ran); echo ready; sleep 1",
            ]);
            bundle.config["hooks"] = serde_json::json!({
                "prestart": record("prestart"),
                "createRuntime": record("createRuntime"),
                "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo yes > /tmp/start-container-ran"]}],
                "poststart": record("poststart"),
                "poststop": record("poststop"),
            });
            bundle.write();
            let check_log = |what: &str, id: &str| -> Result<(), Failed> {
                let log = std::fs::read_to_string(&seen).unwrap_or_default();
                let kinds: Vec<&str> = log.lines().filter_map(|l| l.split(' ').next()).collect();
                let status = |kind: &str| {
                    log.lines()
                        .find(|l| l.starts_with(&format!("{kind} ")) && l.contains(id))
                        .unwrap_or_default()
                };
                husk.expect(
                    kinds == ["prestart", "createRuntime", "poststart", "poststop"]
                        && status("prestart").contains("\"status\":\"creating\"")
                        && status("poststart").contains("\"status\":\"running\"")
                        && status("poststop").contains("\"status\":\"stopped\""),
                    || {
                        format!(
                            "{what}: want the four host hooks in order with their states: {log}"
                        )
                    },
                )?;
                std::fs::remove_file(&seen).ok();
                Ok(())
            };
            let id = unique("vm-all-hooks");
            let out = husk.run_bundle(&id, &bundle);
            husk.expect(
                out.code == 0 && out.stdout.contains("in-container yes"),
                || format!("run: the startContainer hook must have run in the container: {out:?}"),
            )?;
            check_log("run", &id)?;
            husk.assert_clean(&id)?;

            let id = unique("vm-all-hooks-detached");
            let (pid, stdout) = husk.create_and_start(&id, &bundle)?;
            husk.wait_stopped(&id)?;
            reap(pid);
            let deleted = husk.husk(&["delete", &id]);
            husk.expect(deleted.code == 0, || format!("delete: {deleted:?}"))?;
            let printed = std::fs::read_to_string(&stdout).unwrap_or_default();
            husk.expect(printed.contains("in-container yes"), || {
                format!("create/start: the startContainer hook must have run: {printed:?}")
            })?;
            check_log("create, start, delete", &id)?;
            husk.assert_clean(&id)
        }),
        ("killed_vmm_or_supervisor_reports_stopped", |env| {
            let husk = Husk::new(env);
            for victim in ["qemu-system", "vm-supervise"] {
                let id = unique("vm-fault");
                let bundle = husk.bundle(&["sh", "-c", "echo ready; sleep 600"]);
                let (pid, _) = husk.create_and_start(&id, &bundle)?;
                let dir = husk.state_root().join(&id);
                let target: Vec<i32> = leaks::processes_mentioning(&dir.to_string_lossy())
                    .into_iter()
                    .chain(leaks::processes_mentioning(&id))
                    .filter(|(_, cmdline)| cmdline.contains(victim))
                    .map(|(pid, _)| pid)
                    .collect();
                husk.expect(!target.is_empty(), || format!("no {victim} process found"))?;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(target[0]),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                husk.wait_stopped(&id)?;
                let status = reap(pid);
                husk.expect(status == Some(137), || {
                    format!("after killing {victim}: want supervisor status 137, got {status:?}")
                })?;
                husk.husk(&["delete", &id]).ok();
                husk.assert_clean(&id)?;
            }
            Ok(())
        }),
        (
            "the_container_sees_the_same_spec_applied_in_both_isolations",
            |env| {
                // One spec, run in container and in vm isolation: everything of it the
                // process can observe from inside (identity, capabilities, limits,
                // environment, hostname, the options of each of its mounts) must read the
                // same. The rootfs and volume sources necessarily differ (an overlay and
                // virtio-fs in the guest), so mounts compare by their per-mount options.
                let husk = Husk::new(env);
                let rw = husk.dir.path().join("vol-rw");
                let ro = husk.dir.path().join("vol-ro");
                for d in [&rw, &ro] {
                    std::fs::create_dir_all(d).unwrap();
                }
                let script = r#"
                for d in /mnt/rw /mnt/ro /mnt/tmp; do
                    awk -v d=$d '$5 == d {print "mount", d, $6}' /proc/self/mountinfo
                done
                grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status
                echo "id $(id)"
                echo "umask $(umask)"
                echo "nofile $(ulimit -n)"
                echo "oom $(cat /proc/self/oom_score_adj)"
                echo "hostname $(hostname)"
                echo "cwd $(pwd)"
                echo "env $SPEC_VAR"
                awk '$5 == "/mnt/tmp" {print "tmpfs", $NF}' /proc/self/mountinfo | tr , '
' | grep -E 'size|mode' | sort | tr '
' ' '
                echo
            "#;
                let mut bundle = husk.bundle(&["sh", "-c", script]);
                let c = &mut bundle.config;
                c["hostname"] = serde_json::json!("conformance");
                c["process"]["cwd"] = serde_json::json!("/tmp");
                c["process"]["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!("SPEC_VAR=from-the-spec"));
                c["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 23});
                c["process"]["rlimits"] =
                    serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1234, "soft": 1234}]);
                c["process"]["oomScoreAdj"] = serde_json::json!(123);
                c["process"]["noNewPrivileges"] = serde_json::json!(true);
                let caps = serde_json::json!(["CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_KILL"]);
                for set in ["bounding", "effective", "permitted"] {
                    c["process"]["capabilities"][set] = caps.clone();
                }
                c["process"]["capabilities"]["inheritable"] = serde_json::json!([]);
                c["process"]["capabilities"]["ambient"] = serde_json::json!([]);
                let mounts = c["mounts"].as_array_mut().unwrap();
                mounts.push(serde_json::json!({"destination": "/mnt/rw", "type": "bind", "source": rw, "options": ["rbind", "rw"]}));
                mounts.push(serde_json::json!({"destination": "/mnt/ro", "type": "bind", "source": ro, "options": ["rbind", "ro", "nosuid"]}));
                mounts.push(serde_json::json!({"destination": "/mnt/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "noexec", "size=1m", "mode=1770"]}));
                bundle.write();
                let mut seen = Vec::new();
                for isolation in ["container", "vm"] {
                    let id = unique(&format!("conf-{isolation}"));
                    let out = husk.husk(&[
                        "--isolation",
                        isolation,
                        "run",
                        "--bundle",
                        bundle.path().to_str().unwrap(),
                        &id,
                    ]);
                    husk.expect(
                        out.code == 0 && out.stdout.contains("mount /mnt/tmp"),
                        || format!("{isolation} isolation run: {out:?}"),
                    )?;
                    husk.husk(&["delete", "--force", &id]);
                    seen.push(out.stdout);
                }
                let differ: Vec<String> = seen[0]
                    .lines()
                    .zip(seen[1].lines())
                    .filter(|(a, b)| a != b)
                    .map(|(a, b)| format!("container: {a:?}\n       vm: {b:?}"))
                    .collect();
                husk.expect(
                differ.is_empty() && seen[0].lines().count() == seen[1].lines().count(),
                || {
                    format!(
                        "the spec reads differently in vm isolation:\n{}\n--- container\n{}--- vm\n{}",
                        differ.join("\n"),
                        seen[0],
                        seen[1]
                    )
                },
            )
            },
        ),
        ("kill_then_delete_never_races", |env| {
            // As with runc: `kill -s KILL` then `delete` at once, no state poll in
            // between; each round must delete and leave nothing.
            let husk = Husk::new(env);
            let bundle = husk.bundle(&["sh", "-c", "echo ready; sleep 100"]);
            for round in 0..3 {
                let id = unique(&format!("vm-kill-delete-{round}"));
                let (pid, _) = husk.create_and_start(&id, &bundle)?;
                let killed = husk.husk(&["kill", &id, "KILL"]);
                husk.expect(killed.code == 0, || format!("kill: {killed:?}"))?;
                let state = husk.state(&id);
                husk.expect(state["status"] == "stopped", || {
                    format!("round {round}: state right after kill -s KILL: {state}")
                })?;
                let deleted = husk.husk(&["delete", &id]);
                husk.expect(deleted.code == 0, || {
                    format!("round {round}: delete right after kill: {deleted:?}")
                })?;
                reap(pid);
                husk.assert_clean(&id)?;
            }
            Ok(())
        }),
        ("a_guest_error_reaches_the_user_with_its_cause", |env| {
            // libcontainer's init in the guest logs why a create failed and sends back
            // only a summary; the user must see the cause, as container isolation
            // prints it. Each spec fails in a different place.
            let husk = Husk::new(env);
            let bad_mount = {
                let mut b = husk.bundle(&["true"]);
                b.config["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({
                        "destination": "/mnt/husk-bad-tmpfs",
                        "type": "tmpfs",
                        "source": "tmpfs",
                        "options": ["size=bogus"],
                    }));
                b.write();
                b
            };
            let missing_binary = husk.bundle(&["/no/such/husk-binary"]);
            let cpuset = {
                let mut b = husk.bundle(&["true"]);
                b.config["linux"]["resources"] = serde_json::json!({"cpu": {"cpus": "0-63"}});
                b.write();
                b
            };
            let cases: [(&str, &Bundle, &[&str]); 3] = [
                (
                    "vm-bad-mount",
                    &bad_mount,
                    &["/mnt/husk-bad-tmpfs", "EINVAL"],
                ),
                (
                    "vm-no-binary",
                    &missing_binary,
                    &["/no/such/husk-binary", "not found"],
                ),
                ("vm-cpuset", &cpuset, &["cpuset.cpus", "0-63"]),
            ];
            for (name, bundle, causes) in cases {
                let id = unique(name);
                let out = husk.run_bundle(&id, bundle);
                husk.expect(
                    out.code != 0 && causes.iter().all(|c| out.stderr.contains(c)),
                    || format!("{name}: the error must name {causes:?}: {out:?}"),
                )?;
                husk.husk(&["delete", "--force", &id]);
                husk.assert_clean(&id)?;
            }
            Ok(())
        }),
        ("check_reports_the_host", |env| {
            let husk = Husk::new(env);
            let out = husk.husk(&["check"]);
            let kernel = env.kernel.to_string_lossy();
            husk.expect(
                out.code == 0
                    && out.stdout.contains("kvm:")
                    && out.stdout.contains("qemu-system-x86_64:")
                    && out.stdout.contains("QEMU emulator version")
                    && out.stdout.contains(kernel.as_ref())
                    && out.stdout.contains("cgroups:")
                    && out.stdout.contains("backend:            qemu with")
                    && out.stdout.contains("vm isolation:       usable"),
                || format!("husk check: {out:?}"),
            )?;
            // What the chosen backend (qemu here) needs is listed plainly; husk-vmm, which
            // only builtin runs, is marked so and never makes vm isolation unusable.
            let line = |name: &str| {
                out.stdout
                    .lines()
                    .find(|l| l.starts_with(&format!("{name}:")))
                    .unwrap_or_default()
                    .to_string()
            };
            for needed in ["virtiofsd", "vhost-device-vsock"] {
                husk.expect(
                    !line(needed).is_empty() && !line(needed).contains("only the"),
                    || format!("husk check must list {needed} as needed by qemu: {out:?}"),
                )?;
            }
            husk.expect(
                line("husk-vmm").contains("(only the builtin backend needs it)"),
                || format!("husk check must mark husk-vmm as builtin's: {out:?}"),
            )?;
            // builtin, asked for: usable with hardware KVM (husk-vmm is built beside
            // husk); elsewhere (PVM here) not, and why.
            let out = husk.husk(&["--hypervisor", "builtin", "check"]);
            if husk_runtime::hypervisor::detect_kvm().usable() {
                husk.expect(
                    out.code == 0 && out.stdout.contains("backend:            builtin with kvm"),
                    || format!("husk --hypervisor builtin check on hardware KVM: {out:?}"),
                )?;
            } else {
                husk.expect(
                    out.code == 1
                        && out.stdout.contains("backend:            none (")
                        && out.stdout.contains("needs hardware virtualization")
                        && out.stdout.contains("NOT usable"),
                    || format!("husk --hypervisor builtin check without hardware KVM: {out:?}"),
                )?;
            }
            let missing = Husk::with_vm_config(env, "[vm]\nkernel = \"/nonexistent/vmlinux\"\n");
            let out = missing.husk(&["check"]);
            husk.expect(out.code == 1 && out.stdout.contains("NOT usable"), || {
                format!("husk check with no kernel must exit 1: {out:?}")
            })
        }),
    ]
}

fn main() {
    let args = Arguments::from_args();
    husk_e2e::require_root("vm");
    // Supervisors of detached containers outlive `husk create`; as a subreaper this
    // suite inherits them and can check their exit status, as an engine does.
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "cannot become a child subreaper");
    husk_e2e::require_program("qemu-system-x86_64");
    let (kernel, initramfs) = husk_e2e::guest::artifacts();
    husk_e2e::guest::ensure_helpers();
    let env = Arc::new(Env {
        rootfs: Rootfs::busybox(),
        kernel,
        initramfs,
    });
    // Everything else vm isolation needs (virtiofsd, vhost-device-vsock): husk says.
    let probe = Husk::new(&env);
    let out = probe.husk(&["check"]);
    if out.code != 0 {
        panic!(
            "vm isolation is not usable on this host, so the vm suite cannot run:\n{}\n{}",
            out.stdout, out.stderr
        );
    }
    drop(probe);
    let trials = husk_e2e::trials(&env, cases());
    let conclusion = libtest_mimic::run(&args, trials);
    drop(env);
    conclusion.exit();
}

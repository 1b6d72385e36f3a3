//! `husk` in vm isolation through QEMU (TCG where hardware virtualization is not
//! usable, as on the PVM hosts here): a foreground `husk --isolation vm run` boots a
//! sandbox VM with the guest kernel and husk-agent, runs the container in it, relays
//! its output, signals and exit status, and leaves nothing behind. Also `husk check`.
//!
//! Needs: root, busybox-static, qemu-system-x86, and the guest artifacts and helpers
//! (`make -s guest-artifacts` builds what is missing; virtiofsd and vhost-device-vsock
//! in $HUSK_CACHE/bin, see docs/guest.md). It fails loudly when any is missing.
//! A failing test prints husk's debug log, which holds the guest console.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use husk_e2e::cmd::{self, Background, Output};
use husk_e2e::fixture::{Bundle, Rootfs};
use husk_e2e::leaks;
use libtest_mimic::{Arguments, Failed};

/// TCG boots in ~1.2 s here; a loaded CI machine can take far longer.
const TIMEOUT: Duration = Duration::from_secs(180);

struct Env {
    rootfs: Rootfs,
    kernel: PathBuf,
    initramfs: PathBuf,
}

/// One test's private runtime root, operator config and debug log.
struct Husk<'a> {
    env: &'a Env,
    dir: tempfile::TempDir,
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
        let dir = tempfile::Builder::new()
            .prefix("husk-vm-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        Self { env, dir }
    }

    fn state_root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("husk.log")
    }

    fn command(&self) -> Command {
        let mut command = Command::new(husk_e2e::husk_bin());
        command
            .arg("--root")
            .arg(self.state_root())
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .arg("--debug")
            .arg("--log")
            .arg(self.log());
        command
    }

    fn husk(&self, args: &[&str]) -> Output {
        cmd::run(self.command().args(args), TIMEOUT)
    }

    fn bundle(&self, args: &[&str]) -> Bundle {
        Bundle::new(self.env.rootfs.path(), args)
    }

    /// `husk --isolation vm run` of a bundle running `args`.
    fn vm_run(&self, id: &str, args: &[&str]) -> (Output, Bundle) {
        let bundle = self.bundle(args);
        let out = self.husk(&[
            "--isolation",
            "vm",
            "run",
            "--bundle",
            bundle.path().to_str().unwrap(),
            id,
        ]);
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
            .arg(id)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        let child = Background::spawn(&mut command);
        let ready = cmd::wait_until(TIMEOUT, || {
            std::fs::read_to_string(&stdout_path).is_ok_and(|s| s.contains("ready"))
        });
        self.expect(ready, || "the container never printed ready".into())?;
        Ok((child, stdout_path, stderr_path))
    }

    /// A failure that carries everything needed to debug it: the output and husk's
    /// debug log, which holds the guest console.
    fn fail(&self, what: String) -> Failed {
        let log = std::fs::read_to_string(self.log()).unwrap_or_else(|_| "(no log)".into());
        format!("{what}\n----- husk debug log (with the guest console) -----\n{log}").into()
    }

    fn expect(&self, condition: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
        if condition {
            Ok(())
        } else {
            Err(self.fail(what()))
        }
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

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
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
                let out = husk.husk(&[
                    "--isolation",
                    "vm",
                    "run",
                    "--bundle",
                    bundle.path().to_str().unwrap(),
                    &id,
                ]);
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
            husk.husk(&["delete", &id])
                .fails_with("running in vm isolation");
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
            .fails_with("the builtin backend (husk-vmm) needs hardware virtualization");
            husk.husk(&["--isolation", "vm", "create", "-b", b, &id])
                .fails_with("not supported yet in vm isolation");
            husk.husk(&["--isolation", "vm", "run", "--detach", "-b", b, &id])
                .fails_with("not supported yet in vm isolation");
            let missing = Husk::with_vm_config(env, "[vm]\nkernel = \"/nonexistent/vmlinux\"\n");
            missing
                .husk(&["--isolation", "vm", "run", "-b", b, &id])
                .fails_with("make guest-kernel initramfs");
            husk.assert_clean(&id)?;
            missing.assert_clean(&id)
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
            let missing = Husk::with_vm_config(env, "[vm]\nkernel = \"/nonexistent/vmlinux\"\n");
            let out = missing.husk(&["check"]);
            husk.expect(out.code == 1 && out.stdout.contains("NOT usable"), || {
                format!("husk check with no kernel must exit 1: {out:?}")
            })
        }),
    ]
}

/// Builds (if needed) and finds the guest kernel and initramfs; fails loudly.
fn guest_artifacts() -> (PathBuf, PathBuf) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = cmd::run(
        Command::new("make")
            .args(["-s", "guest-artifacts"])
            .current_dir(workspace),
        Duration::from_secs(3600),
    )
    .ok();
    let find = |key: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("`make -s guest-artifacts` printed no existing {key}<path>: {out:?}")
            })
    };
    (find("kernel="), find("initramfs="))
}

/// The vhost-user helpers, cargo-installed into $HUSK_CACHE/bin when missing, exactly
/// as tests/guest/boot_test.sh does (`make e2e` runs before `make test-guest`).
fn ensure_helpers() {
    let cache = std::env::var_os("HUSK_CACHE")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME or HUSK_CACHE")).join(".cache/husk")
        });
    for (name, version) in [("vhost-device-vsock", "0.3.0"), ("virtiofsd", "1.14.0")] {
        if cache.join("bin").join(name).is_file() || husk_e2e::which(name).is_some() {
            continue;
        }
        eprintln!(
            "vm suite: installing {name} {version} into {}/bin (a few minutes)",
            cache.display()
        );
        let status = Command::new("cargo")
            .args(["install", "--locked", name, "--version", version, "--root"])
            .arg(&cache)
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo install {name}: {e}"));
        assert!(
            status.success(),
            "cargo install {name} failed (virtiofsd needs libcap-ng-dev and libseccomp-dev)"
        );
    }
}

fn main() {
    let args = Arguments::from_args();
    husk_e2e::require_root("vm");
    husk_e2e::require_program("qemu-system-x86_64");
    let (kernel, initramfs) = guest_artifacts();
    ensure_helpers();
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

//! The `husk` command line on its own, in container isolation: runc's lifecycle and
//! output formats, the isolation policy, and clear errors that leave nothing behind.
//!
//! Needs: root, busybox-static, `script` (bsdutils) (`make setup`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use husk_e2e::check;
use husk_e2e::cmd::{self, Output};
use husk_e2e::fixture::{Bundle, Rootfs};
use husk_e2e::leaks;
use libtest_mimic::{Arguments, Failed};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Operator config under which vm isolation cannot be provided (no guest kernel), so
/// a workload that gets vm isolation must fail: this suite never boots a VM
/// (tests/suites/vm.rs does).
const NO_GUEST_KERNEL: &str = "[vm]\nkernel = \"/nonexistent/husk-guest-vmlinux\"\n";

/// One test's private runtime root and operator config.
struct Husk {
    root: tempfile::TempDir,
    config: PathBuf,
    rootfs: PathBuf,
}

impl Husk {
    fn new(rootfs: &Path, config_toml: &str) -> Self {
        let root = tempfile::Builder::new()
            .prefix("husk-root-")
            .tempdir()
            .unwrap();
        let config = root.path().join("config.toml");
        std::fs::write(&config, config_toml).unwrap();
        // The config lives beside, not inside, the state root we check for leftovers.
        let state = root.path().join("state");
        std::fs::create_dir(&state).unwrap();
        Self {
            root,
            config,
            rootfs: rootfs.to_path_buf(),
        }
    }

    /// A runtime whose operator config makes container isolation the default.
    fn container_default(rootfs: &Path) -> Self {
        Self::new(rootfs, "[isolation]\ndefault = \"container\"\n")
    }

    fn state_root(&self) -> PathBuf {
        self.root.path().join("state")
    }

    fn command(&self) -> Command {
        let mut command = Command::new(husk_e2e::husk_bin());
        command
            .arg("--root")
            .arg(self.state_root())
            .arg("--config")
            .arg(&self.config);
        command
    }

    fn husk(&self, args: &[&str]) -> Output {
        cmd::run(self.command().args(args), TIMEOUT)
    }

    fn bundle(&self, args: &[&str]) -> Bundle {
        Bundle::new(&self.rootfs, args)
    }

    fn state(&self, id: &str) -> Value {
        let out = self.husk(&["state", id]).ok();
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("state is not JSON ({e}): {}", out.stdout))
    }

    /// Fails if anything of this runtime's containers is left on the host.
    fn assert_clean(&self, marker: &str) -> Result<(), Failed> {
        let left = leaks::leftovers(marker, &self.state_root(), &self.rootfs);
        check(left.is_empty(), || {
            format!("left behind:\n{}", left.join("\n"))
        })
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), fastrand())
}

fn fastrand() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

type Case = husk_e2e::Case<Rootfs>;

fn cases() -> Vec<Case> {
    vec![
        ("run_relays_output_and_exit_code", |rootfs| {
            let rootfs = rootfs.path();
            let husk = Husk::container_default(rootfs);
            let bundle = husk.bundle(&["sh", "-c", "echo hello; echo to-stderr >&2; exit 3"]);
            let id = unique("run");
            let out = husk
                .husk(&["run", "--bundle", bundle.path().to_str().unwrap(), &id])
                .code(3);
            check(out.stdout == "hello\n", || {
                format!("stdout {:?}", out.stdout)
            })?;
            check(out.stderr.contains("to-stderr"), || {
                format!("stderr {:?}", out.stderr)
            })?;
            husk.assert_clean(&id)
        }),
        (
            "run_reports_death_by_signal_and_forwards_signals",
            |rootfs| {
                let rootfs = rootfs.path();
                let husk = Husk::container_default(rootfs);
                // Killed from outside: husk run exits 128+9.
                let bundle = husk.bundle(&["sleep", "1000"]);
                let id = unique("sig");
                let run = cmd::Background::spawn(
                    husk.command()
                        .args(["run", "-b", bundle.path().to_str().unwrap(), &id])
                        .stdout(std::process::Stdio::null()),
                );
                check(
                    cmd::wait_until(Duration::from_secs(20), || {
                        husk.husk(&["state", &id]).stdout.contains("\"running\"")
                    }),
                    || "never ran".into(),
                )?;
                husk.husk(&["kill", &id, "KILL"]).ok();
                let status = run.wait(TIMEOUT);
                check(status.and_then(|s| s.code()) == Some(137), || {
                    format!("husk run exited {status:?} after SIGKILL")
                })?;
                husk.assert_clean(&id)?;
                // A signal sent to husk run reaches the container's init.
                let trapping = husk.bundle(&[
                    "sh",
                    "-c",
                    "trap 'exit 5' TERM; while true; do sleep 0.1; done",
                ]);
                let id = unique("fwd");
                let run = cmd::Background::spawn(husk.command().args([
                    "run",
                    "-b",
                    trapping.path().to_str().unwrap(),
                    &id,
                ]));
                check(
                    cmd::wait_until(Duration::from_secs(20), || {
                        husk.husk(&["state", &id]).stdout.contains("\"running\"")
                    }),
                    || "never ran".into(),
                )?;
                std::thread::sleep(Duration::from_millis(300));
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(run.pid()),
                    nix::sys::signal::Signal::SIGTERM,
                )
                .unwrap();
                let status = run.wait(TIMEOUT);
                check(status.and_then(|s| s.code()) == Some(5), || {
                    format!("husk run exited {status:?} after forwarding SIGTERM")
                })?;
                husk.assert_clean(&id)
            },
        ),
        ("container_init_cannot_write_the_runtime_binary", |rootfs| {
            let rootfs = rootfs.path();
            // CVE-2019-5736: the process waiting in a created container runs husk's
            // binary; it must reach it only through a read-only mount.
            let husk = Husk::container_default(rootfs);
            let bundle = husk.bundle(&["true"]);
            let id = unique("exe");
            husk.husk(&["create", "-b", bundle.path().to_str().unwrap(), &id])
                .ok();
            let pid = husk.state(&id)["pid"].as_i64().unwrap();
            let exe = format!("/proc/{pid}/exe");
            let read_only = nix::sys::statvfs::statvfs(exe.as_str())
                .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
            let same_binary = std::fs::metadata(&exe)
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .ok()
                == std::fs::metadata(husk_e2e::husk_bin())
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                    .ok();
            husk.husk(&["delete", "--force", &id]).ok();
            check(read_only == Ok(true), || {
                format!("{exe} is on a writable mount: {read_only:?}")
            })?;
            check(same_binary, || format!("{exe} is not husk's binary"))?;
            check(leaks::mounts_matching(".husk-exe").is_empty(), || {
                "scratch mount left in the mount table".into()
            })?;
            husk.assert_clean(&id)
        }),
        ("lifecycle_create_start_state_kill_delete", |rootfs| {
            let rootfs = rootfs.path();
            let husk = Husk::container_default(rootfs);
            let bundle = husk.bundle(&["sleep", "1000"]);
            let id = unique("life");
            let pid_file = husk.root.path().join("init.pid");
            husk.husk(&[
                "create",
                "--bundle",
                bundle.path().to_str().unwrap(),
                "--pid-file",
                pid_file.to_str().unwrap(),
                &id,
            ])
            .ok();
            let created = husk.state(&id);
            let pid_text = std::fs::read_to_string(&pid_file).unwrap();
            check(created["status"] == "created", || format!("{created}"))?;
            check(
                created["ociVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("1.")),
                || format!("{created}"),
            )?;
            check(created["bundle"] == json!(bundle.path()), || {
                format!("{created}")
            })?;
            check(created["rootfs"] == json!(rootfs), || format!("{created}"))?;
            check(
                pid_text.parse::<i64>().ok() == created["pid"].as_i64()
                    && !pid_text.ends_with('\n'),
                || format!("pid file {pid_text:?} vs state {}", created["pid"]),
            )?;
            husk.husk(&["start", &id]).ok();
            check(husk.state(&id)["status"] == "running", || {
                "not running after start".into()
            })?;
            // Global flags are accepted after the subcommand too.
            let list = cmd::run(
                Command::new(husk_e2e::husk_bin())
                    .args(["list", "--format", "json", "--root"])
                    .arg(husk.state_root()),
                TIMEOUT,
            )
            .ok();
            check(list.stdout.contains(&id), || {
                format!("list: {}", list.stdout)
            })?;
            husk.husk(&["kill", &id, "KILL"]).ok();
            check(
                cmd::wait_until(Duration::from_secs(10), || {
                    husk.state(&id)["status"] == "stopped"
                }),
                || "not stopped after kill".into(),
            )?;
            check(husk.state(&id)["pid"] == 0, || {
                "stopped container reports a pid".into()
            })?;
            husk.husk(&["kill", &id, "TERM"])
                .fails_with("container not running");
            husk.husk(&["delete", &id]).ok();
            husk.husk(&["state", &id]).fails_with("does not exist");
            husk.assert_clean(&id)
        }),
        ("run_detach_then_exec_ps_pause_update_events", |rootfs| {
            let rootfs = rootfs.path();
            let husk = Husk::container_default(rootfs);
            let mut bundle = husk.bundle(&["sleep", "1000"]);
            bundle.config["linux"]["resources"] = json!({ "memory": { "limit": 128u64 << 20 } });
            bundle.write();
            let id = unique("ops");
            husk.husk(&["run", "-d", "-b", bundle.path().to_str().unwrap(), &id])
                .ok();
            let exec = husk
                .husk(&[
                    "exec",
                    "--env",
                    "GREETING=hi",
                    "--cwd",
                    "/tmp",
                    &id,
                    "sh",
                    "-c",
                    "echo $GREETING; pwd; exit 9",
                ])
                .code(9);
            check(exec.stdout == "hi\n/tmp\n", || {
                format!("exec stdout {:?}", exec.stdout)
            })?;
            let process = husk.root.path().join("process.json");
            std::fs::write(&process, json!({ "args": ["sh", "-c", "id -u"], "cwd": "/", "user": { "uid": 1000, "gid": 1000 }, "env": ["PATH=/bin"] }).to_string()).unwrap();
            let exec = husk
                .husk(&["exec", "--process", process.to_str().unwrap(), &id])
                .ok();
            check(exec.stdout.trim() == "1000", || {
                format!("exec --process: {:?}", exec.stdout)
            })?;
            let ps: Vec<i64> =
                serde_json::from_str(&husk.husk(&["ps", "--format", "json", &id]).ok().stdout)
                    .unwrap();
            let init = husk.state(&id)["pid"].as_i64().unwrap();
            check(ps.contains(&init), || {
                format!("ps {ps:?} lacks init {init}")
            })?;
            let table = husk.husk(&["ps", &id]).ok();
            check(
                table.stdout.contains("sleep 1000") && table.stdout.contains("PID"),
                || table.stdout.clone(),
            )?;
            husk.husk(&["pause", &id]).ok();
            check(husk.state(&id)["status"] == "paused", || {
                "not paused".into()
            })?;
            husk.husk(&["exec", &id, "true"]).fails_with("paused");
            husk.husk(&["resume", &id]).ok();
            check(husk.state(&id)["status"] == "running", || {
                "not resumed".into()
            })?;
            husk.husk(&["update", "--memory", "64m", &id]).ok();
            let stats = husk.husk(&["events", "--stats", &id]).ok();
            let event: Value = serde_json::from_str(stats.stdout.trim())
                .map_err(|e| format!("events: {e}: {}", stats.stdout))?;
            check(event["type"] == "stats" && event["id"] == json!(id), || {
                format!("{event}")
            })?;
            let limit = event["data"]["memory"]["memory"]["limit"].as_u64();
            check(limit == Some(64 << 20), || {
                format!("memory limit after update: {limit:?} in {event}")
            })?;
            let resources = husk.root.path().join("resources.json");
            std::fs::write(&resources, json!({ "pids": { "limit": 42 } }).to_string()).unwrap();
            husk.husk(&["update", "--resources", resources.to_str().unwrap(), &id])
                .ok();
            let stats: Value =
                serde_json::from_str(husk.husk(&["events", "--stats", &id]).ok().stdout.trim())
                    .unwrap();
            check(stats["data"]["pids"]["limit"] == 42, || {
                format!("pids after update: {}", stats["data"]["pids"])
            })?;
            husk.husk(&["delete", &id]).fails_with("--force");
            check(husk.state(&id)["status"] == "running", || {
                "refused delete still changed the container".into()
            })?;
            husk.husk(&["delete", "--force", &id]).ok();
            husk.assert_clean(&id)
        }),
        ("foreground_terminal_is_bridged", |rootfs| {
            let rootfs = rootfs.path();
            let husk = Husk::container_default(rootfs);
            let mut bundle = husk.bundle(&["sh", "-c", "tty; read line; echo got:$line"]);
            bundle.config["process"]["terminal"] = json!(true);
            bundle.write();
            let id = unique("tty");
            let line = format!(
                "{} --root {} --config {} run -b {} {id}",
                husk_e2e::husk_bin().display(),
                husk.state_root().display(),
                husk.config.display(),
                bundle.path().display()
            );
            let out = cmd::run_with_stdin(
                Command::new("script").args(["-qec", &line, "/dev/null"]),
                Some(b"typed\n"),
                TIMEOUT,
            );
            check(
                out.stdout.contains("/dev/pts/0") && out.stdout.contains("got:typed"),
                || format!("{out:?}"),
            )?;
            husk.assert_clean(&id)
        }),
        ("vm_isolation_is_refused_never_downgraded", |rootfs| {
            let rootfs = rootfs.path();
            // No isolation config, no flag: vm is the default, and it cannot be met
            // here (no guest kernel), so the run must fail rather than use the host's.
            let husk = Husk::new(rootfs, NO_GUEST_KERNEL);
            let marker_dir = tempfile::tempdir().unwrap();
            let mut bundle = husk.bundle(&["touch", "/mark/ran"]);
            bundle.config["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/mark", "type": "bind", "source": marker_dir.path(), "options": ["rbind", "rw"]
            }));
            bundle.write();
            let id = unique("vm");
            let b = bundle.path().to_str().unwrap();
            husk.husk(&["run", "-b", b, &id]).fails_with("vm isolation");
            husk.husk(&["--isolation", "vm", "run", "-b", b, &id])
                .fails_with("refusing to fall back");
            // An operator default of container does not let the flag's vm be downgraded.
            let lenient = Husk::new(
                rootfs,
                &format!("[isolation]\ndefault = \"container\"\n{NO_GUEST_KERNEL}"),
            );
            lenient
                .husk(&["--isolation", "vm", "create", "-b", b, &id])
                .fails_with("vm isolation");
            check(!marker_dir.path().join("ran").exists(), || {
                "the workload ran in the shared kernel".into()
            })?;
            husk.assert_clean(&id)?;
            lenient.assert_clean(&id)
        }),
        ("annotation_chooses_isolation_only_if_allowed", |rootfs| {
            let rootfs = rootfs.path();
            let strict = Husk::new(
                rootfs,
                "[isolation]\ndefault = \"vm\"\nallow_annotation = false\n",
            );
            let mut bundle = strict.bundle(&["true"]);
            bundle.config["annotations"] = json!({ "io.husk.isolation": "container" });
            bundle.write();
            let id = unique("ann");
            let b_path = bundle.path_buf();
            let b = b_path.to_str().unwrap();
            strict
                .husk(&["run", "-b", b, &id])
                .fails_with("not allowed by the operator config");
            let lenient = Husk::new(
                rootfs,
                "[isolation]\ndefault = \"vm\"\nallow_annotation = true\n",
            );
            lenient.husk(&["run", "-b", b, &id]).ok();
            // An explicit --isolation vm (a runtime registered for untrusted
            // workloads) is never overridden by the annotation, even where allowed:
            // the conflict is refused and nothing runs.
            lenient
                .husk(&["--isolation", "vm", "run", "-b", b, &id])
                .fails_with("conflicts with --isolation vm");
            lenient.assert_clean(&id)?;
            // A workload asking for vm gets vm even where the operator default is container.
            let containers = Husk::new(
                rootfs,
                &format!("[isolation]\ndefault = \"container\"\n{NO_GUEST_KERNEL}"),
            );
            bundle.config["annotations"] = json!({ "io.husk.isolation": "vm" });
            bundle.write();
            containers
                .husk(&["run", "-b", b, &id])
                .fails_with("vm isolation");
            bundle.config["annotations"] = json!({ "io.husk.isolation": "gvisor" });
            bundle.write();
            containers.husk(&["run", "-b", b, &id]).fails_with("gvisor");
            strict.assert_clean(&id)?;
            lenient.assert_clean(&id)?;
            containers.assert_clean(&id)
        }),
        ("bad_operator_config_is_reported", |rootfs| {
            let rootfs = rootfs.path();
            let husk = Husk::new(rootfs, "[isolation]\ndefault = \"chroot\"\n");
            let bundle = husk.bundle(&["true"]);
            let id = unique("cfg");
            husk.husk(&["run", "-b", bundle.path().to_str().unwrap(), &id])
                .fails_with("invalid husk config");
            let missing = cmd::run(
                Command::new(husk_e2e::husk_bin())
                    .args(["--config", "/nonexistent/husk.toml", "--root"])
                    .arg(husk.state_root())
                    .args(["run", "-b", bundle.path().to_str().unwrap(), &id]),
                TIMEOUT,
            );
            missing.fails_with("/nonexistent/husk.toml");
            husk.assert_clean(&id)
        }),
        ("bundle_errors_are_clear_and_leave_nothing", |rootfs| {
            let rootfs = rootfs.path();
            let husk = Husk::container_default(rootfs);
            let id = unique("bad");
            let bundle = husk.bundle(&["true"]);
            let b = bundle.path().to_str().unwrap();
            std::fs::write(
                bundle.path().join("config.json"),
                "{ \"ociVersion\": \"1.0.2\", \"process\": ",
            )
            .unwrap();
            husk.husk(&["create", "-b", b, &id])
                .fails_with("malformed config.json");
            std::fs::remove_file(bundle.path().join("config.json")).unwrap();
            husk.husk(&["create", "-b", b, &id])
                .fails_with("has no config.json");
            husk.husk(&["create", "-b", "/nonexistent-bundle", &id])
                .fails_with("/nonexistent-bundle");
            let mut no_rootfs = husk.bundle(&["true"]);
            no_rootfs.config["root"]["path"] = json!("/nonexistent-rootfs");
            no_rootfs.write();
            husk.husk(&["create", "-b", no_rootfs.path().to_str().unwrap(), &id])
                .fails_with("/nonexistent-rootfs");
            let missing_binary = husk.bundle(&["/bin/no-such-program"]);
            husk.husk(&["run", "-b", missing_binary.path().to_str().unwrap(), &id])
                .fails_with("no-such-program");
            husk.assert_clean(&id)
        }),
        ("ids_are_validated", |rootfs| {
            let rootfs = rootfs.path();
            let husk = Husk::container_default(rootfs);
            let bundle = husk.bundle(&["true"]);
            let b = bundle.path().to_str().unwrap();
            husk.husk(&["create", "-b", b, "../escape"])
                .fails_with("invalid");
            husk.husk(&["create", "-b", b, ""])
                .fails_with("must not be empty");
            husk.husk(&["create", "-b", b, &"x".repeat(300)])
                .fails_with("limit");
            husk.husk(&["create", "-b", b, "a/b"]).fails_with("invalid");
            husk.husk(&["state", "../etc"]).fails_with("invalid");
            check(!husk.root.path().join("escape").exists(), || {
                "created ../escape".into()
            })?;
            husk.assert_clean("escape")
        }),
        (
            "id_in_use_is_refused_and_the_first_container_survives",
            |rootfs| {
                let rootfs = rootfs.path();
                let husk = Husk::container_default(rootfs);
                let bundle = husk.bundle(&["sleep", "1000"]);
                let b = bundle.path().to_str().unwrap();
                let id = unique("dup");
                husk.husk(&["create", "-b", b, &id]).ok();
                husk.husk(&["create", "-b", b, &id])
                    .fails_with("already in use");
                husk.husk(&["run", "-b", b, &id])
                    .fails_with("already in use");
                check(husk.state(&id)["status"] == "created", || {
                    "first container disturbed".into()
                })?;
                husk.husk(&["start", &id]).ok();
                husk.husk(&["start", &id])
                    .fails_with("only a created container can be started");
                husk.husk(&["delete", "--force", &id]).ok();
                husk.assert_clean(&id)
            },
        ),
        ("unknown_ids_and_signals", |rootfs| {
            let rootfs = rootfs.path();
            let husk = Husk::container_default(rootfs);
            for args in [
                vec!["state", "ghost"],
                vec!["kill", "ghost"],
                vec!["start", "ghost"],
                vec!["delete", "ghost"],
                vec!["pause", "ghost"],
                vec!["exec", "ghost", "true"],
                vec!["ps", "ghost"],
            ] {
                husk.husk(&args)
                    .fails_with("container ghost does not exist");
            }
            // runc semantics: a forced delete of a missing container succeeds.
            husk.husk(&["delete", "--force", "ghost"]).ok();
            let bundle = husk.bundle(&["sleep", "1000"]);
            let id = unique("sig");
            husk.husk(&["run", "-d", "-b", bundle.path().to_str().unwrap(), &id])
                .ok();
            husk.husk(&["kill", &id, "SIGNOPE"])
                .fails_with("unknown signal");
            husk.husk(&["kill", &id, "99"]).fails_with("unknown signal");
            check(husk.state(&id)["status"] == "running", || {
                "bad kill changed the container".into()
            })?;
            husk.husk(&["kill", "--all", &id, "9"]).ok();
            husk.husk(&["delete", "--force", &id]).ok();
            husk.assert_clean(&id)
        }),
        ("json_log_carries_the_error_for_engines", |rootfs| {
            let rootfs = rootfs.path();
            let husk = Husk::container_default(rootfs);
            let log = husk.root.path().join("husk.log");
            husk.husk(&[
                "--log",
                log.to_str().unwrap(),
                "--log-format",
                "json",
                "state",
                "ghost",
            ])
            .fails_with("does not exist");
            let text = std::fs::read_to_string(&log).unwrap();
            let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
            check(
                last["level"] == "error"
                    && last["msg"]
                        .as_str()
                        .unwrap()
                        .contains("ghost does not exist")
                    && last["time"].is_string(),
                || text.clone(),
            )
        }),
        ("spec_features_and_version", |rootfs| {
            let rootfs = rootfs.path();
            let husk = Husk::container_default(rootfs);
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().to_str().unwrap();
            husk.husk(&["spec", "--bundle", d]).ok();
            let spec: Value = serde_json::from_str(
                &std::fs::read_to_string(dir.path().join("config.json")).unwrap(),
            )
            .unwrap();
            check(
                spec["ociVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("1.")),
                || format!("{spec}"),
            )?;
            husk.husk(&["spec", "--bundle", d])
                .fails_with("already exists");
            let rootless = tempfile::tempdir().unwrap();
            husk.husk(&[
                "spec",
                "--rootless",
                "--bundle",
                rootless.path().to_str().unwrap(),
            ])
            .ok();
            let features: Value =
                serde_json::from_str(&husk.husk(&["features"]).ok().stdout).unwrap();
            check(
                features["ociVersionMax"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("1.")),
                || format!("{features}"),
            )?;
            check(
                features["linux"]["namespaces"]
                    .as_array()
                    .is_some_and(|n| n.len() >= 7),
                || format!("{features}"),
            )?;
            let version = husk.husk(&["--version"]).ok();
            check(
                version.stdout.contains("husk") && version.stdout.contains("spec: 1."),
                || version.stdout.clone(),
            )
        }),
    ]
}

fn main() {
    let args = Arguments::from_args();
    husk_e2e::require_root("cli");
    husk_e2e::require_program("script");
    let rootfs = Arc::new(Rootfs::busybox());
    let trials = husk_e2e::trials(&rootfs, cases());
    let conclusion = libtest_mimic::run(&args, trials);
    drop(rootfs);
    conclusion.exit();
}

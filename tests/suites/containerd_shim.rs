//! containerd (Debian's 1.6) drives husk through its own shim,
//! `containerd-shim-husk-v2` (`ctr run --runtime io.containerd.husk.v2`): every
//! container runs in a microVM, a CRI pod's containers share one.
//!
//! Needs: root, containerd and ctr, busybox-static, script, qemu-system-x86, the
//! guest artifacts (`make -s guest-artifacts`, run by the suite) and the vhost-user
//! helpers (cargo-installed into $HUSK_CACHE/bin when missing). The shim binary is
//! found in the target directory, which is put first on containerd's PATH. A failing
//! case prints the end of containerd's log, which carries the shim's log (and, for a
//! VM that failed, the guest console).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use husk_e2e::check;
use husk_e2e::cmd;
use husk_e2e::engines::Containerd;
use husk_e2e::fixture::Rootfs;
use husk_e2e::leaks;
use libtest_mimic::{Arguments, Failed, Trial};

const IMAGE: &str = "docker.io/library/husk-busybox:test";
const RUNTIME: &str = "io.containerd.husk.v2";
const SHIM: &str = "containerd-shim-husk-v2";
/// Where the shim keeps its pods' VM state.
const SHIM_STATE: &str = "/run/husk-shim";
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

struct Env {
    containerd: Containerd,
    shim_dir: PathBuf,
}

impl Env {
    fn ctr(&self, args: &[&str]) -> cmd::Output {
        self.containerd.ctr(args)
    }

    /// `ctr run --runtime io.containerd.husk.v2 <extra…>`.
    fn run(&self, extra: &[&str]) -> cmd::Output {
        let mut args = vec!["run", "--runtime", RUNTIME];
        args.extend_from_slice(extra);
        self.ctr(&args)
    }

    /// The end of containerd's log (with the shim's), for failure messages.
    fn log_tail(&self) -> String {
        let log = self.containerd.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    fn fail(&self, what: impl std::fmt::Display) -> String {
        format!("{what}\n--- containerd log (end) ---\n{}", self.log_tail())
    }

    fn task_status(&self, id: &str) -> String {
        let tasks = self.ctr(&["task", "ls"]);
        tasks
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("")
            .to_string()
    }

    fn task_pid(&self, id: &str) -> Option<i32> {
        let tasks = self.ctr(&["task", "ls"]);
        tasks
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
    }

    fn wait_stopped(&self, id: &str) -> bool {
        cmd::wait_until(STOP_TIMEOUT, || self.task_status(id) == "STOPPED")
    }

    /// Kills (if needed) and deletes a task and its container.
    fn remove(&self, id: &str) {
        if self.task_status(id) != "STOPPED" {
            self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            self.wait_stopped(id);
        }
        self.ctr(&["task", "delete", id]);
        self.ctr(&["container", "delete", id]);
    }

    fn exec(&self, id: &str, exec_id: &str, script: &str) -> cmd::Output {
        self.ctr(&["task", "exec", "--exec-id", exec_id, id, "sh", "-c", script])
    }
}

type Case = husk_e2e::Case<Env>;

fn host_kernel() -> String {
    nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned()
}

fn cases() -> Vec<Case> {
    vec![
        ("run_output_exit_code_and_guest_kernel", |env| {
            let out = env.run(&[
                "--rm",
                IMAGE,
                "shim-run-1",
                "sh",
                "-c",
                "echo out-line; echo err-line >&2; uname -r; exit 3",
            ]);
            check(out.code == 3, || env.fail(format!("{out:?}")))?;
            check(out.stdout.contains("out-line"), || {
                env.fail(format!("{out:?}"))
            })?;
            check(
                out.stderr.contains("err-line") || out.stdout.contains("err-line"),
                || env.fail(format!("stderr lost: {out:?}")),
            )?;
            let release = out.stdout.lines().nth(1).unwrap_or("").trim().to_string();
            check(!release.is_empty() && release != host_kernel(), || {
                env.fail(format!(
                    "uname -r {release:?} is not a guest kernel (host {}): {out:?}",
                    host_kernel()
                ))
            })
        }),
        ("exec_pids_metrics_update_pause_resume_kill", |env| {
            let id = "shim-run-2";
            // PID 1 ignores SIGTERM without a handler, in a VM as anywhere.
            let started = env.run(&[
                "-d",
                IMAGE,
                id,
                "sh",
                "-c",
                "trap 'exit 9' TERM; while true; do sleep 1; done",
            ]);
            check(started.code == 0, || env.fail(format!("{started:?}")))?;
            let result = (|| -> Result<(), Failed> {
                let exec = env.exec(id, "e1", "echo exec-ok; exit 5");
                check(exec.code == 5 && exec.stdout.contains("exec-ok"), || {
                    env.fail(format!("exec: {exec:?}"))
                })?;
                let pids = env.ctr(&["task", "ps", id]);
                check(pids.code == 0 && pids.stdout.lines().count() >= 2, || {
                    env.fail(format!("ps: {pids:?}"))
                })?;
                // Host pids containerd may signal: the VM's host processes, never
                // guest pids (which name unrelated host processes, or none).
                for pid in pids
                    .stdout
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_whitespace().next())
                {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    let comm = comm.trim();
                    check(
                        [
                            "qemu-system-x86",
                            "virtiofsd",
                            "vhost-device-vs",
                            "husk-vmm",
                        ]
                        .iter()
                        .any(|vm| comm.starts_with(vm)),
                        || {
                            env.fail(format!(
                                "ps lists pid {pid} ({comm:?}), not a VM process: {pids:?}"
                            ))
                        },
                    )?;
                }
                // ctr 1.6 has no `task update`: call the shim as containerd's CRI
                // UpdateContainerResources does; the guest cgroup's limit shows in
                // the task's metrics.
                let update = env.shim_update(id, r#"{"memory":{"limit":67108864}}"#);
                check(update.is_ok(), || env.fail(format!("update: {update:?}")))?;
                let metrics = env.ctr(&["task", "metrics", id]);
                check(
                    metrics.code == 0
                        && metrics.stdout.contains("memory.usage_in_bytes")
                        && metrics.stdout.contains("67108864"),
                    || env.fail(format!("metrics after update: {metrics:?}")),
                )?;
                env.ctr(&["task", "pause", id]).ok();
                let paused = env.task_status(id);
                env.ctr(&["task", "resume", id]).ok();
                let resumed = env.task_status(id);
                check(paused == "PAUSED" && resumed == "RUNNING", || {
                    env.fail(format!("pause → {paused}, resume → {resumed}"))
                })?;
                env.ctr(&["task", "kill", "-s", "SIGTERM", id]).ok();
                check(env.wait_stopped(id), || {
                    env.fail("not STOPPED after SIGTERM")
                })
            })();
            env.remove(id);
            result
        }),
        ("stdin_reaches_the_container", |env| {
            let out = env.containerd.ctr_with_stdin(
                &[
                    "run",
                    "--runtime",
                    RUNTIME,
                    "--rm",
                    IMAGE,
                    "shim-run-6",
                    "sh",
                    "-c",
                    "read line; echo got:$line",
                ],
                Some(b"from-stdin\n"),
            );
            check(
                out.code == 0 && out.stdout.contains("got:from-stdin"),
                || env.fail(format!("{out:?}")),
            )
        }),
        ("run_with_a_terminal", |env| {
            let line = format!(
                "ctr --address {} --namespace husk-test run -t --rm --runtime {RUNTIME} {IMAGE} \
                 shim-run-3 sh -c 'test -t 0 && test -t 1 && echo tty-ok; exit 7'",
                env.containerd.socket.display()
            );
            let out = cmd::run(
                Command::new("script").args(["-qec", &line, "/dev/null"]),
                Duration::from_secs(120),
            );
            check(out.stdout.contains("tty-ok"), || {
                env.fail(format!("{out:?}"))
            })?;
            check(out.code == 7, || env.fail(format!("exit code: {out:?}")))
        }),
        ("pod_containers_share_one_vm", |env| {
            let annotations = |kind: &str| {
                [
                    "--annotation".to_string(),
                    format!("io.kubernetes.cri.container-type={kind}"),
                    "--annotation".to_string(),
                    "io.kubernetes.cri.sandbox-id=shim-pod".to_string(),
                ]
            };
            let sandbox = annotations("sandbox");
            let member = annotations("container");
            let mut args: Vec<&str> = vec!["-d"];
            args.extend(sandbox.iter().map(String::as_str));
            args.extend([IMAGE, "shim-pod", "sleep", "1000"]);
            let first = env.run(&args);
            let mut args: Vec<&str> = vec!["-d"];
            args.extend(member.iter().map(String::as_str));
            args.extend([IMAGE, "shim-pod-web", "sleep", "1000"]);
            let second = env.run(&args);
            let lone = env.run(&["-d", IMAGE, "shim-lone", "sleep", "1000"]);
            let result = (|| -> Result<(), Failed> {
                for out in [&first, &second, &lone] {
                    check(out.code == 0, || env.fail(format!("{out:?}")))?;
                }
                let boot_id = |id: &str| {
                    env.exec(id, "boot", "cat /proc/sys/kernel/random/boot_id")
                        .stdout
                        .trim()
                        .to_string()
                };
                let (a, b, c) = (
                    boot_id("shim-pod"),
                    boot_id("shim-pod-web"),
                    boot_id("shim-lone"),
                );
                check(!a.is_empty() && a == b, || {
                    env.fail(format!("pod containers in different VMs: {a:?} vs {b:?}"))
                })?;
                check(!c.is_empty() && c != a, || {
                    env.fail(format!("a lone container shares the pod's VM: {c:?}"))
                })?;
                let shims = shims(env).len();
                check(shims == 2, || {
                    env.fail(format!(
                        "{shims} shim processes for one pod and one lone container"
                    ))
                })
            })();
            env.remove("shim-pod-web");
            env.remove("shim-pod");
            env.remove("shim-lone");
            result
        }),
        ("killed_vmm_reports_the_task_stopped", |env| {
            let id = "shim-run-4";
            let started = env.run(&["-d", IMAGE, id, "sleep", "1000"]);
            check(started.code == 0, || env.fail(format!("{started:?}")))?;
            let result = (|| -> Result<(), Failed> {
                let pid = env.task_pid(id).ok_or_else(|| env.fail("no task pid"))?;
                // The VMM works in the pod's state dir (it names no path of it: its
                // files arrive as descriptors).
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
                check(cwd.starts_with(SHIM_STATE), || {
                    env.fail(format!(
                        "task pid {pid} (working in {}) is not the VMM: {}",
                        cwd.display(),
                        String::from_utf8_lossy(&cmdline)
                    ))
                })?;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                check(env.wait_stopped(id), || {
                    env.fail("task not STOPPED after its VMM was killed")
                })?;
                let deleted = env.ctr(&["task", "delete", id]);
                check(deleted.code == 0, || env.fail(format!("{deleted:?}")))
            })();
            env.remove(id);
            result
        }),
        ("vm_request_for_the_shared_kernel_is_refused", |env| {
            let out = env.run(&[
                "--rm",
                "--annotation",
                "io.husk.isolation=container",
                IMAGE,
                "shim-run-5",
                "true",
            ]);
            env.ctr(&["container", "delete", "shim-run-5"]);
            check(
                out.code != 0 && out.stderr.contains("always runs containers in a VM"),
                || env.fail(format!("{out:?}")),
            )
        }),
    ]
}

impl Env {
    /// The task service's Update, called on the shim's socket directly.
    fn shim_update(&self, id: &str, resources_json: &str) -> Result<(), String> {
        use containerd_shim_protos::api::UpdateTaskRequest;
        use protobuf::well_known_types::any::Any;
        let address_file = self
            .containerd
            .dir
            .path()
            .join("state/io.containerd.runtime.v2.task/husk-test")
            .join(id)
            .join("address");
        let address = std::fs::read_to_string(&address_file)
            .map_err(|e| format!("{}: {e}", address_file.display()))?;
        let client = ttrpc::Client::connect(address.trim()).map_err(|e| e.to_string())?;
        let task = containerd_shim_protos::TaskClient::new(client);
        let request = UpdateTaskRequest {
            id: id.into(),
            resources: protobuf::MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: resources_json.as_bytes().to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        task.update(ttrpc::context::with_timeout(30_000_000_000), &request)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Shim processes of this suite name our containerd's socket in `-address`.
    fn shim_dir_needle(&self) -> String {
        self.shim_dir.to_string_lossy().into_owned()
    }
}

/// This suite's shim processes (they name our containerd's socket in `-address`).
fn shims(env: &Env) -> Vec<(i32, String)> {
    leaks::processes_mentioning(&env.shim_dir_needle())
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains(SHIM))
        .collect()
}

fn nothing_left(env: &Env) -> Result<(), Failed> {
    let gone = cmd::wait_until(Duration::from_secs(30), || {
        shims(env).is_empty() && leaks::processes_mentioning(SHIM_STATE).is_empty()
    });
    let tasks = env.ctr(&["task", "ls", "-q"]).ok();
    check(tasks.stdout.trim().is_empty(), || {
        env.fail(format!("tasks left: {}", tasks.stdout))
    })?;
    check(gone, || {
        env.fail(format!(
            "processes left: {:?} {:?}",
            shims(env),
            leaks::processes_mentioning(SHIM_STATE)
        ))
    })?;
    let mounts = leaks::mounts_matching(SHIM_STATE);
    check(mounts.is_empty(), || {
        env.fail(format!("mounts left: {mounts:?}"))
    })?;
    let state = leaks::state_entries(std::path::Path::new(SHIM_STATE));
    check(state.is_empty(), || {
        env.fail(format!("state left in {SHIM_STATE}: {state:?}"))
    })
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    husk_e2e::require_root("containerd_shim");
    husk_e2e::require_program("ctr");
    husk_e2e::require_program("script");
    husk_e2e::require_program("qemu-system-x86_64");
    let shim = husk_e2e::husk_bin().with_file_name(SHIM);
    assert!(
        shim.is_file(),
        "{} not found; build it with `cargo build --release --workspace --bins`",
        shim.display()
    );
    husk_e2e::guest::ensure_helpers();
    let (kernel, initramfs) = husk_e2e::guest::artifacts();
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("husk.toml");
    std::fs::write(
        &config,
        husk_e2e::guest::operator_config(&kernel, &initramfs),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        shim.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let containerd = Containerd::start(&[
        ("PATH", path.as_str()),
        ("HUSK_CONFIG", config.to_str().unwrap()),
    ]);
    let rootfs = Rootfs::busybox();
    let image = husk_e2e::engines::oci_archive(&rootfs, IMAGE);
    containerd
        .ctr_with_stdin(&["images", "import", "-"], Some(&image))
        .ok();
    let env = Arc::new(Env {
        shim_dir: containerd.dir.path().to_path_buf(),
        containerd,
    });

    let mut trials = husk_e2e::trials(&env, cases());
    let leak_env = Arc::clone(&env);
    trials.push(Trial::test("zz_nothing_left_behind", move || {
        nothing_left(&leak_env)
    }));
    let conclusion = libtest_mimic::run(&args, trials);
    drop(env);
    conclusion.exit();
}

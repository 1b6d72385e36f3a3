//! Docker drives husk in vm isolation: `docker run --runtime vm` runs each container
//! in its own QEMU microVM (TCG here), behind the guest kernel of this checkout, with
//! the same user-visible behaviour the container suite (docker.rs) checks for runc's
//! place — plus proofs that the container is behind its own kernel, and that a vm
//! request that cannot be met fails instead of running in the shared kernel.
//!
//! daemon.json registers three runtimes: `vm` (husk `--isolation vm` with an
//! operator config naming this checkout's guest kernel and initramfs),
//! `husk-container` (container isolation, for comparison) and `vm-nokernel` (vm with
//! a config naming a kernel that does not exist).
//!
//! Known and checked as such: `docker top` lists the host processes that stand for
//! the container (its supervisor and VM processes; `husk ps` shows the guest's), and
//! `docker stats` / `OOMKilled` read the host cgroup of the supervisor, not the
//! guest's (docs/runtime.md).
//!
//! dockerd runs in a network namespace of the suite's own, so the user-defined bridge
//! network a case creates (and its addresses) never touch the host's network.
//!
//! Every case removes its container and checks that nothing is left: no supervisor,
//! QEMU, virtiofsd or vhost-device-vsock process, no state dir or socket, no mount. A
//! failure prints the container's guest console (kept in its state dir until `docker
//! rm`) and husk's log for it.
//!
//! Needs: root, docker.io, containerd, busybox-static, qemu-system-x86, the guest
//! artifacts (`make -s guest-artifacts`, run by the suite) and the vhost-user helpers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use husk_e2e::cmd::{self, Output};
use husk_e2e::engines::Dockerd;
use husk_e2e::fixture::Rootfs;
use husk_e2e::leaks;
use husk_e2e::netns::Netns;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::json;

const VM: &str = "vm";
const CONTAINER: &str = "husk-container";
const NO_KERNEL: &str = "vm-nokernel";
const IMAGE: &str = "husk-busybox:test";
/// TCG boots a guest in 1-2 s; a loaded machine is slower.
const TIMEOUT: Duration = Duration::from_secs(120);

struct Env {
    docker: Dockerd,
    /// dockerd's network namespace (dropped after dockerd).
    netns: Netns,
    /// The operator configs daemon.json names (kept until the daemon is gone).
    _configs: tempfile::TempDir,
}

/// A container of one case: its name and full id, for diagnostics and cleanup.
struct Container<'a> {
    env: &'a Env,
    name: String,
    id: String,
}

impl Env {
    fn docker(&self, args: &[&str]) -> Output {
        self.docker.docker(args)
    }

    fn inspect(&self, id: &str, format: &str) -> String {
        self.docker(&["inspect", "-f", format, id])
            .stdout_trimmed()
            .to_string()
    }

    /// The state roots Docker gives its runtimes (`--root`): 20.10 passes
    /// `<exec-root>/runtime-runc/moby` to every runtime, whatever its name.
    fn state_roots(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.docker.exec_root())
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("runtime-"))
                    .map(|e| e.path().join("moby"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// husk's state root holding container `id` (Docker's `--root` for its runtime).
    fn state_root_of(&self, id: &str) -> PathBuf {
        let roots = self.state_roots();
        roots
            .iter()
            .find(|r| r.join(id).exists())
            .or(roots.first())
            .cloned()
            .unwrap_or_else(|| self.docker.exec_root().join("runtime-runc/moby"))
    }

    /// `docker run --name <unique> --runtime <runtime> <flags> IMAGE <command>` in the
    /// foreground (not `--rm`: the container's console stays readable until
    /// [`Container::remove`]).
    fn run(
        &self,
        runtime: &'static str,
        flags: &[&str],
        command: &[&str],
    ) -> (Output, Container<'_>) {
        let name = unique();
        let mut args = vec!["run", "--name", &name, "--runtime", runtime];
        args.extend_from_slice(flags);
        args.push(IMAGE);
        args.extend_from_slice(command);
        let out = self.docker(&args);
        let id = self.inspect(&name, "{{.Id}}");
        let container = Container {
            env: self,
            name,
            id,
        };
        (out, container)
    }

    /// Starts a detached vm container; fails with the output if docker did.
    fn run_detached(&self, flags: &[&str], command: &[&str]) -> Result<Container<'_>, Failed> {
        let mut all = vec!["-d"];
        all.extend_from_slice(flags);
        let (out, container) = self.run(VM, &all, command);
        if out.code != 0 {
            let failure = container.fail(format!("docker run -d failed: {out:?}"));
            container.remove()?;
            return Err(failure);
        }
        Ok(container)
    }

    /// Runs a detached vm container, hands it to `case`, then removes it and checks
    /// that nothing is left, whatever the case returned.
    fn with_container(
        &self,
        flags: &[&str],
        command: &[&str],
        case: impl FnOnce(&Container<'_>) -> Result<(), Failed>,
    ) -> Result<(), Failed> {
        let container = self.run_detached(flags, command)?;
        let result = case(&container);
        let removed = container.remove();
        result.and(removed)
    }

    /// Runs a foreground vm container, hands its output to `case`, then removes it
    /// and checks that nothing is left.
    fn with_run(
        &self,
        flags: &[&str],
        command: &[&str],
        case: impl FnOnce(&Output, &Container<'_>) -> Result<(), Failed>,
    ) -> Result<(), Failed> {
        let (out, container) = self.run(VM, flags, command);
        let result = case(&out, &container);
        let removed = container.remove();
        result.and(removed)
    }

    /// `husk` against the state root of container `id`, as Docker runs it.
    fn husk(&self, id: &str, args: &[&str]) -> Output {
        cmd::run(
            std::process::Command::new(husk_e2e::husk_bin())
                .arg("--root")
                .arg(self.state_root_of(id))
                .args(args)
                .arg(id),
            TIMEOUT,
        )
    }
}

impl Container<'_> {
    fn state_dir(&self) -> PathBuf {
        self.env.state_root_of(&self.id).join(&self.id)
    }

    /// A failure carrying the guest console and husk's log of this container.
    fn fail(&self, what: String) -> Failed {
        let console = std::fs::read_to_string(self.state_dir().join("console.log"))
            .unwrap_or_else(|_| "(no console log: the state dir is gone)".into());
        let log = husk_log(&self.env.docker, &self.id);
        format!(
            "{what}\n----- guest console of {} -----\n{console}\n----- husk log -----\n{log}",
            self.name
        )
        .into()
    }

    fn check(&self, condition: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
        if condition {
            Ok(())
        } else {
            Err(self.fail(what()))
        }
    }

    fn contains(&self, output: &Output, needle: &str) -> Result<(), Failed> {
        self.check(
            output.stdout.contains(needle) || output.stderr.contains(needle),
            || format!("{} did not print {needle:?}: {output:?}", output.command),
        )
    }

    fn docker(&self, args: &[&str]) -> Output {
        self.env.docker(args)
    }

    fn inspect(&self, format: &str) -> String {
        self.env.inspect(&self.id, format)
    }

    fn wait_exited(&self) -> bool {
        cmd::wait_until(TIMEOUT, || self.inspect("{{.State.Status}}") == "exited")
    }

    /// `docker rm -f`, then: nothing of the container may remain on the host.
    fn remove(&self) -> Result<(), Failed> {
        let rm = self.docker(&["rm", "-f", &self.name]);
        let mut left = Vec::new();
        let clean = cmd::wait_until(Duration::from_secs(20), || {
            left = self.leftovers();
            left.is_empty()
        });
        if rm.code != 0 || !clean {
            return Err(format!("docker rm {}: {rm:?}\nleft behind: {left:#?}", self.name).into());
        }
        Ok(())
    }

    /// Processes (supervisor, VMM, helpers, shim: by command line or working
    /// directory), the state dir with its sockets, and mounts naming the container.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if self.id.is_empty() {
            return left;
        }
        for (pid, cmdline) in leaks::processes_mentioning(&self.id) {
            left.push(format!("process left: {pid}: {cmdline}"));
        }
        if self.state_dir().exists() {
            left.push(format!("state left: {}", self.state_dir().display()));
        }
        for line in leaks::mounts_matching(&self.id) {
            left.push(format!("mount left: {line}"));
        }
        left
    }
}

/// husk's log of a container: containerd's runc shim passes `--log <bundle>/log.json`.
fn husk_log(docker: &Dockerd, id: &str) -> String {
    let path = docker
        .containerd
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task/moby")
        .join(id)
        .join("log.json");
    std::fs::read_to_string(&path).unwrap_or_else(|_| format!("(no {})", path.display()))
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    format!(
        "husk-vm-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

/// The base name of a process's argv[0] (the supervisor runs /proc/self/exe as `husk`).
fn program_name(pid: i32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let arg0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let arg0 = String::from_utf8_lossy(arg0);
    arg0.rsplit('/').next().unwrap_or_default().to_string()
}

/// The host processes that may stand for a vm container.
fn is_vm_host_process(program: &str) -> bool {
    [
        "husk",
        "qemu-system-x86_64",
        "virtiofsd",
        "vhost-device-vsock",
    ]
    .contains(&program)
}

type Case = husk_e2e::Case<Env>;

fn cases() -> Vec<Case> {
    vec![
        ("output_and_exit_code", |env| {
            env.with_run(
                &[],
                &["sh", "-c", "echo hello; echo oops >&2; exit 7"],
                |out, c| {
                    c.check(out.code == 7 && out.stdout.trim() == "hello", || {
                        format!("want stdout hello, exit 7: {out:?}")
                    })?;
                    c.contains(out, "oops")
                },
            )
        }),
        ("exec_output_and_exit_code", |env| {
            env.with_container(&[], &["sleep", "1000"], |c| {
                let out = c.docker(&["exec", &c.id, "sh", "-c", "echo exec-ok; exit 5"]);
                c.check(out.code == 5 && out.stdout.trim() == "exec-ok", || {
                    format!("want exec-ok, exit 5: {out:?}")
                })
            })
        }),
        ("tty_with_dash_t", |env| {
            // `create` with a console socket: the shim reads create's stdout to EOF.
            env.with_run(
                &["-t"],
                &["sh", "-c", "tty; test -t 1 && echo stdout-is-tty"],
                |out, c| {
                    c.check(out.code == 0, || format!("docker run -t: {out:?}"))?;
                    c.contains(out, "/dev/pts/")?;
                    c.contains(out, "stdout-is-tty")
                },
            )
        }),
        ("interactive_tty_with_dash_it", |env| {
            let name = unique();
            let line = format!(
                "{} run --name {name} -it --runtime {VM} {IMAGE} sh -c 'test -t 0 && test -t 1 && echo both-ends-tty; read x; echo got:$x'",
                env.docker.client_command_line()
            );
            let out = cmd::run_with_stdin(
                std::process::Command::new("script").args(["-qec", &line, "/dev/null"]),
                Some(b"typed-line\n"),
                TIMEOUT,
            );
            let c = Container {
                env,
                id: env.inspect(&name, "{{.Id}}"),
                name,
            };
            let result = c
                .contains(&out, "both-ends-tty")
                .and_then(|()| c.contains(&out, "got:typed-line"));
            result.and(c.remove())
        }),
        ("stop_delivers_sigterm", |env| {
            env.with_container(
                &[],
                &[
                    "sh",
                    "-c",
                    "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done",
                ],
                |c| {
                    wait_for_log(c, "ready")?;
                    let started = std::time::Instant::now();
                    let stop = c.docker(&["stop", "-t", "30", &c.id]);
                    let took = started.elapsed();
                    let code = c.inspect("{{.State.ExitCode}}");
                    c.check(stop.code == 0 && code == "0", || {
                        format!("stop: {stop:?}, exit code {code}")
                    })?;
                    c.check(took < Duration::from_secs(25), || {
                        format!("stop took {took:?}: SIGTERM did not reach the process")
                    })
                },
            )
        }),
        ("kill_with_signal", |env| {
            env.with_container(
                &[],
                &[
                    "sh",
                    "-c",
                    "trap 'echo got-usr1; exit 42' USR1; echo ready; while true; do sleep 0.1; done",
                ],
                |c| {
                    wait_for_log(c, "ready")?;
                    c.docker(&["kill", "-s", "USR1", &c.id]).ok();
                    let exited = c.wait_exited();
                    let code = c.inspect("{{.State.ExitCode}}");
                    c.check(exited && code == "42", || {
                        format!("exited={exited} code={code}")
                    })?;
                    c.contains(&c.docker(&["logs", &c.id]), "got-usr1")
                },
            )
        }),
        ("top_lists_host_processes_ps_lists_the_guest", |env| {
            env.with_container(&[], &["sleep", "1234"], |c| {
                // docker top: `husk ps --format json` (host pids), looked up in the
                // host's ps: the supervisor and the VM's processes, nothing else.
                let top = c.docker(&["top", &c.id]);
                c.check(
                    top.code == 0
                        && top.stdout.contains("vm-supervise")
                        && top.stdout.contains("qemu-system-x86_64"),
                    || format!("docker top: want the supervisor and QEMU: {top:?}"),
                )?;
                let json = env.husk(&c.id, &["ps", "--format", "json"]);
                let pids: Vec<i32> =
                    serde_json::from_str(json.stdout_trimmed()).unwrap_or_default();
                let comms: Vec<String> = pids.iter().map(|&p| program_name(p)).collect();
                c.check(
                    !pids.is_empty() && comms.iter().all(|c| is_vm_host_process(c)),
                    || {
                        format!(
                            "husk ps json: only host VM processes: {pids:?} {comms:?}: {json:?}"
                        )
                    },
                )?;
                // The container's own processes are the guest's.
                // Polled: right after start the init may still be exec'ing sleep.
                let mut table = env.husk(&c.id, &["ps"]);
                cmd::wait_until(Duration::from_secs(30), || {
                    table = env.husk(&c.id, &["ps"]);
                    table.stdout.contains("sleep 1234")
                });
                c.check(
                    table.code == 0 && table.stdout.contains("sleep 1234"),
                    || format!("husk ps: want the guest's sleep 1234: {table:?}"),
                )
            })
        }),
        ("pause_and_unpause_freeze_processes", |env| {
            let dir = tempfile::tempdir().unwrap();
            let volume = format!("{}:/data", dir.path().display());
            env.with_container(
                &["-v", &volume],
                &[
                    "sh",
                    "-c",
                    "i=0; while true; do i=$((i+1)); echo $i > /data/n; sleep 0.1; done",
                ],
                |c| {
                    let count = || {
                        std::fs::read_to_string(dir.path().join("n"))
                            .unwrap_or_default()
                            .trim()
                            .parse::<u64>()
                            .unwrap_or(0)
                    };
                    c.check(cmd::wait_until(TIMEOUT, || count() > 2), || {
                        "the counter never ran".into()
                    })?;
                    c.docker(&["pause", &c.id]).ok();
                    let paused = c.inspect("{{.State.Status}}");
                    std::thread::sleep(Duration::from_millis(300));
                    let frozen_at = count();
                    std::thread::sleep(Duration::from_millis(1500));
                    let still = count();
                    c.docker(&["unpause", &c.id]).ok();
                    let resumed = c.inspect("{{.State.Status}}");
                    let moved = cmd::wait_until(Duration::from_secs(20), || count() > still);
                    c.check(paused == "paused" && frozen_at == still, || {
                        format!("paused: status {paused}, counter {frozen_at} -> {still}")
                    })?;
                    c.check(resumed == "running" && moved, || {
                        format!("unpaused: status {resumed}, counter moved {moved}")
                    })
                },
            )
        }),
        ("update_memory_and_cpus_reach_the_guest_cgroup", |env| {
            env.with_container(
                &["--memory", "128m", "--memory-swap", "128m"],
                &["sleep", "1000"],
                |c| {
                    let limit = || {
                        let out = env.husk(&c.id, &["events", "--stats"]);
                        let v: serde_json::Value =
                            serde_json::from_str(out.stdout_trimmed()).unwrap_or_default();
                        v["data"]["memory"]["memory"]["limit"].as_u64().unwrap_or(0)
                    };
                    let before = limit();
                    // Without CPU limits Docker sends quota 0, period 0 ("unset").
                    let update =
                        c.docker(&["update", "--memory", "64m", "--memory-swap", "64m", &c.id]);
                    let after = limit();
                    c.check(update.code == 0, || {
                        format!("docker update --memory: {update:?}")
                    })?;
                    c.check(before == 128 << 20 && after == 64 << 20, || {
                        format!("guest memory limit {before} -> {after}")
                    })?;
                    let cpus = c.docker(&["update", "--cpus", "0.5", &c.id]);
                    c.check(cpus.code == 0, || format!("docker update --cpus: {cpus:?}"))?;
                    // Docker shares the (guest's) cgroup namespace: find our cgroup.
                    let cpu_max = c.docker(&[
                        "exec",
                        &c.id,
                        "sh",
                        "-c",
                        "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/cpu.max",
                    ]);
                    c.check(cpu_max.stdout.trim() == "50000 100000", || {
                        format!("guest cpu.max after --cpus 0.5: {cpu_max:?}")
                    })
                },
            )
        }),
        ("stats_answer", |env| {
            // Known: the figures are the supervisor's host cgroup's, not the guest's.
            env.with_container(&["--memory", "64m"], &["sleep", "1000"], |c| {
                let out = c.docker(&[
                    "stats",
                    "--no-stream",
                    "--format",
                    "{{.MemUsage}} pids={{.PIDs}}",
                    &c.id,
                ]);
                eprintln!(
                    "docker_vm: known: docker stats shows the supervisor's host cgroup: {}",
                    out.stdout.trim()
                );
                c.check(out.code == 0 && out.stdout.contains("pids="), || {
                    format!("docker stats: {out:?}")
                })
            })
        }),
        ("memory_limit_is_enforced_oom_137", |env| {
            env.with_container(
                &["--memory", "32m", "--memory-swap", "32m"],
                &[
                    "sh",
                    "-c",
                    "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
                ],
                |c| {
                    let exited = c.wait_exited();
                    let code = c.inspect("{{.State.ExitCode}}");
                    let logs = c.docker(&["logs", &c.id]);
                    // OOMKilled is not checked: it reads the supervisor's host cgroup.
                    let oom = c.inspect("{{.State.OOMKilled}}");
                    eprintln!("docker_vm: known: OOMKilled={oom} for a guest OOM kill");
                    c.check(exited && code == "137", || {
                        format!("exited={exited} code={code} logs={logs:?}")
                    })?;
                    c.check(!logs.stdout.contains("survived"), || {
                        "an allocation past the limit survived".into()
                    })
                },
            )
        }),
        ("pids_limit_is_enforced", |env| {
            env.with_run(
                &["--pids-limit", "5"],
                // sh and 4 sleeps make 5: the 5th fork fails and ash gives up.
                &[
                    "sh",
                    "-c",
                    "for i in 1 2 3 4 5 6 7 8; do sleep 30 & echo forked-$i; done; echo all-forked",
                ],
                |out, c| {
                    c.check(
                        out.code != 0
                            && out.stdout.contains("forked-1")
                            && !out.stdout.contains("all-forked"),
                        || format!("want the fork past the limit to fail: {out:?}"),
                    )
                },
            )
        }),
        ("read_only_rootfs", |env| {
            env.with_run(
                &["--read-only"],
                &["sh", "-c", "touch /x && echo wrote"],
                |out, c| {
                    c.check(out.code != 0 && !out.stdout.contains("wrote"), || {
                        format!("write succeeded: {out:?}")
                    })?;
                    c.contains(out, "Read-only file system")
                },
            )
        }),
        ("user_workdir_env_hostname", |env| {
            env.with_run(
                &[
                    "--user",
                    "1000:1000",
                    "-w",
                    "/tmp",
                    "-e",
                    "FOO=bar",
                    "--hostname",
                    "husky",
                ],
                &["sh", "-c", "id -u; id -g; pwd; echo $FOO; hostname"],
                |out, c| {
                    let lines: Vec<&str> = out.stdout.lines().collect();
                    c.check(
                        out.code == 0 && lines == ["1000", "1000", "/tmp", "bar", "husky"],
                        || format!("got {out:?}"),
                    )
                },
            )
        }),
        ("bind_mount_shared_both_ways", |env| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("from-host"), "host-data\n").unwrap();
            let volume = format!("{}:/data", dir.path().display());
            env.with_container(
                &["-v", &volume],
                &[
                    "sh",
                    "-c",
                    "cat /data/from-host; echo container-data > /data/from-container; \
                     while [ ! -f /data/later ]; do sleep 0.1; done; cat /data/later; sleep 600",
                ],
                |c| {
                    let path = dir.path().join("from-container");
                    let written = cmd::wait_until(TIMEOUT, || {
                        std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == "container-data")
                    });
                    c.check(written, || {
                        "the guest's write never reached the host".into()
                    })?;
                    // Written on the host while the container runs.
                    std::fs::write(dir.path().join("later"), "written-later\n").unwrap();
                    let seen = cmd::wait_until(TIMEOUT, || {
                        c.docker(&["logs", &c.id]).stdout.contains("written-later")
                    });
                    let logs = c.docker(&["logs", &c.id]);
                    c.check(seen && logs.stdout.contains("host-data"), || {
                        format!("the guest did not see the host's files: {logs:?}")
                    })
                },
            )
        }),
        ("own_kernel_not_the_hosts", |env| {
            let host = host_kernel_release();
            env.with_run(&[], &["uname", "-r"], |out, c| {
                let guest = out.stdout.trim();
                c.check(out.code == 0 && !guest.is_empty() && guest != host, || {
                    format!("uname -r in the vm {guest:?}, host {host:?}: {out:?}")
                })
            })?;
            // The container runtime, for contrast, shares the host's.
            let (out, c) = env.run(CONTAINER, &[], &["uname", "-r"]);
            let same = out.stdout.trim() == host;
            c.remove()?;
            husk_e2e::check(same, || format!("husk-container uname -r: {out:?}"))
        }),
        ("host_processes_and_devices_invisible", |env| {
            // A host process the container must not see.
            let mut marker = std::process::Command::new("sleep")
                .arg("31337")
                .spawn()
                .unwrap();
            let host_disks: Vec<String> = std::fs::read_to_string("/proc/partitions")
                .unwrap_or_default()
                .lines()
                .skip(2)
                .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
                .collect();
            let result = env.with_run(
                &[],
                &[
                    "sh",
                    "-c",
                    "ps -o pid,args; echo ---; cat /proc/partitions; ls /sys/block",
                ],
                |out, c| {
                    let (ps, devices) = out.stdout.split_once("---\n").unwrap_or(("", ""));
                    c.check(
                        out.code == 0 && ps.contains("ps -o") && !ps.contains("31337"),
                        || format!("ps inside shows host processes (or failed): {out:?}"),
                    )?;
                    // A container of the shared kernel sees the host's disks there.
                    let seen: Vec<&String> = host_disks
                        .iter()
                        .filter(|d| devices.split_whitespace().any(|w| w == d.as_str()))
                        .collect();
                    c.check(seen.is_empty(), || {
                        format!("host block devices visible in the guest: {seen:?}: {out:?}")
                    })
                },
            );
            let _ = marker.kill();
            let _ = marker.wait();
            result
        }),
        ("two_containers_two_kernels", |env| {
            let boot_id = "cat /proc/sys/kernel/random/boot_id; sleep 600";
            env.with_container(&[], &["sh", "-c", boot_id], |a| {
                env.with_container(&[], &["sh", "-c", boot_id], |b| {
                    let id_of = |c: &Container<'_>| {
                        let mut id = String::new();
                        cmd::wait_until(TIMEOUT, || {
                            id = c.docker(&["logs", &c.id]).stdout.trim().to_string();
                            !id.is_empty()
                        });
                        id
                    };
                    let (ida, idb) = (id_of(a), id_of(b));
                    let host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                        .unwrap()
                        .trim()
                        .to_string();
                    b.check(
                        !ida.is_empty() && ida != idb && ida != host && idb != host,
                        || format!("boot ids: {ida:?} {idb:?}, host {host:?}"),
                    )
                })
            })
        }),
        ("missing_kernel_refused_not_downgraded", |env| {
            let (out, c) = env.run(
                NO_KERNEL,
                &[],
                &["sh", "-c", "echo ran-somewhere; sleep 31338"],
            );
            let running = leaks::processes_mentioning("31338");
            let result = husk_e2e::check(
                out.code != 0
                    && out.stderr.contains("guest kernel not found")
                    && out
                        .stderr
                        .contains("refusing to fall back to the shared kernel")
                    && !out.stdout.contains("ran-somewhere")
                    && running.is_empty(),
                || format!("want a clear refusal and nothing run: {out:?}, processes {running:?}"),
            );
            result.and(c.remove())
        }),
        ("user_defined_bridge_network", |env| {
            // dockerd runs in the suite's own network namespace: the bridge, its
            // veths and 10.79.0.0/24 exist only there. Docker's libnetwork-setkey
            // prestart hook fills the vm container's namespace on the host; husk
            // carries it into the guest.
            let network = format!("husk-br-{}", std::process::id());
            env.docker(&[
                "network",
                "create",
                "--driver",
                "bridge",
                "--subnet",
                "10.79.0.0/24",
                "-o",
                "com.docker.network.driver.mtu=1400",
                &network,
            ])
            .ok();
            let net = format!("--network={network}");
            let result = (|| {
                // A vm server and a runc server on the bridge.
                let serve = |body: &str| {
                    format!("echo {body} > /tmp/index.html; exec httpd -f -p 8080 -h /tmp")
                };
                // Its port is also published on dockerd's loopback (docker-proxy,
                // as --iptables=false leaves it).
                let vm_server = env.run_detached(
                    &[&net, "--ip", "10.79.0.10", "-p", "127.0.0.1:18080:8080"],
                    &["sh", "-c", &serve("from-the-vm-server")],
                )?;
                let (out, runc_server) = env.run(
                    "runc",
                    &["-d", &net, "--ip", "10.79.0.20"],
                    &["sh", "-c", &serve("from-the-runc-server")],
                );
                let result = (|| {
                    runc_server.check(out.code == 0, || format!("runc server: {out:?}"))?;
                    // A vm client fetches from both, retrying while the vm server
                    // boots; it prints its own interface first.
                    let fetch = "get() { printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc \"$1\" 8080; }; \
                         echo eth0 $(cat /sys/class/net/eth0/mtu) $(ip -o -4 addr show eth0 | awk '{print $4}'); \
                         for i in $(seq 90); do get 10.79.0.10 | grep -q from-the-vm-server && break; sleep 1; done; \
                         get 10.79.0.10 | tail -n 1; get 10.79.0.20 | tail -n 1";
                    env.with_run(
                        &[&net, "--ip", "10.79.0.30"],
                        &["sh", "-c", fetch],
                        |out, c| {
                            c.check(out.code == 0, || format!("vm client: {out:?}"))?;
                            c.contains(out, "eth0 1400 10.79.0.30/24")?;
                            c.contains(out, "from-the-vm-server")?;
                            c.contains(out, "from-the-runc-server")
                        },
                    )?;
                    // And runc reaches the vm server over the same bridge.
                    let (out, runc_client) = env.run(
                        "runc",
                        &[&net],
                        &[
                            "sh",
                            "-c",
                            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc 10.79.0.10 8080",
                        ],
                    );
                    let checked = runc_client.check(
                        out.code == 0 && out.stdout.contains("from-the-vm-server"),
                        || format!("runc client to the vm server: {out:?}"),
                    );
                    checked.and(runc_client.remove())?;
                    // The published port, from dockerd's namespace.
                    let busybox = husk_e2e::require_program("busybox");
                    let busybox = busybox.to_str().unwrap();
                    let published = env.netns.run(&[
                        busybox,
                        "sh",
                        "-c",
                        &format!(
                            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | {busybox} timeout 10 {busybox} nc 127.0.0.1 18080"
                        ),
                    ]);
                    vm_server.check(published.stdout.contains("from-the-vm-server"), || {
                        format!("-p 127.0.0.1:18080:8080 from dockerd's namespace: {published:?}")
                    })
                })();
                let result = result.and(runc_server.remove());
                result.and(vm_server.remove())
            })();
            // Every endpoint must be gone for the network to go.
            let rm = env.docker(&["network", "rm", &network]);
            result.and(husk_e2e::check(rm.code == 0, || {
                format!("docker network rm (endpoints left?): {rm:?}")
            }))
        }),
    ]
}

/// Waits until the container's output holds `needle` (its trap is set).
fn wait_for_log(c: &Container<'_>, needle: &str) -> Result<(), Failed> {
    let seen = cmd::wait_until(TIMEOUT, || {
        c.docker(&["logs", &c.id]).stdout.contains(needle)
    });
    c.check(seen, || format!("the container never printed {needle:?}"))
}

fn main() {
    let mut args = Arguments::from_args();
    // One container at a time (2 shared cores, TCG); zz_nothing_left runs last.
    args.test_threads.get_or_insert(1);
    husk_e2e::require_root("docker_vm");
    husk_e2e::require_program("qemu-system-x86_64");
    husk_e2e::require_program("script");
    let husk = husk_e2e::husk_bin();
    let (kernel, initramfs) = husk_e2e::guest::artifacts();
    husk_e2e::guest::ensure_helpers();
    let dir = tempfile::Builder::new()
        .prefix("husk-docker-vm-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("vm.toml");
    std::fs::write(
        &config,
        husk_e2e::guest::operator_config(&kernel, &initramfs),
    )
    .unwrap();
    let missing = dir.path().join("nokernel.toml");
    std::fs::write(
        &missing,
        husk_e2e::guest::operator_config(Path::new("/nonexistent/vmlinux"), &initramfs),
    )
    .unwrap();
    let probe = cmd::run(
        std::process::Command::new(&husk)
            .arg("--config")
            .arg(&config)
            .arg("check"),
        TIMEOUT,
    );
    if probe.code != 0 {
        panic!(
            "vm isolation is not usable on this host, so the docker_vm suite cannot run:\n{}\n{}",
            probe.stdout, probe.stderr
        );
    }
    let vm_args = |config: &Path| {
        json!([
            "--isolation",
            "vm",
            "--config",
            config.display().to_string()
        ])
    };
    let daemon_json = json!({
        "runtimes": {
            VM: { "path": husk, "runtimeArgs": vm_args(&config) },
            NO_KERNEL: { "path": husk, "runtimeArgs": vm_args(&missing) },
            CONTAINER: { "path": husk, "runtimeArgs": ["--isolation", "container"] }
        }
    });
    // Its own network namespace: the user-defined bridge network case's bridge
    // and addresses never touch the host's network.
    let netns = Netns::new("dockerd");
    let docker = Dockerd::start_in(&daemon_json, Some(Path::new(&netns.path())));
    let rootfs = Rootfs::busybox();
    docker
        .docker_with_stdin(&["import", "-", IMAGE], &rootfs.tar())
        .ok();
    let env = Arc::new(Env {
        docker,
        netns,
        _configs: dir,
    });

    let mut trials = husk_e2e::trials(&env, cases());
    let leak_env = Arc::clone(&env);
    // Runs last when run in order: no container, no husk state, no VM process of
    // the suite's daemon may remain.
    trials.push(Trial::test("zz_nothing_left", move || {
        let ids = leak_env.docker(&["ps", "-aq"]).ok().stdout;
        husk_e2e::check(ids.trim().is_empty(), || format!("containers left: {ids}"))?;
        let mut left = Vec::new();
        for root in leak_env.state_roots() {
            left.extend(
                leaks::state_entries(&root)
                    .into_iter()
                    .map(|e| format!("state left: {}/{e}", root.display())),
            );
        }
        let exec_root = leak_env.docker.exec_root();
        for (pid, cmdline) in leaks::processes_mentioning(&exec_root.to_string_lossy()) {
            if is_vm_host_process(&program_name(pid)) {
                left.push(format!("process left: {pid}: {cmdline}"));
            }
        }
        husk_e2e::check(left.is_empty(), || format!("left behind: {left:#?}"))
    }));

    let conclusion = libtest_mimic::run(&args, trials);
    drop(env);
    conclusion.exit();
}

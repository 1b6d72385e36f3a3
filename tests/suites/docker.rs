//! Docker drives husk in container isolation, registered as an alternate runtime in
//! daemon.json, and every user-visible behaviour matches what runc gives.
//!
//! Needs: root, Debian's docker.io and containerd, busybox-static (`make setup`).

use std::sync::Arc;
use std::time::Duration;

use husk_e2e::check;
use husk_e2e::cmd;
use husk_e2e::engines::Dockerd;
use husk_e2e::fixture::Rootfs;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::json;

const RUNTIME: &str = "husk-container";
const IMAGE: &str = "husk-busybox:test";

struct Env {
    docker: Dockerd,
}

impl Env {
    fn docker(&self, args: &[&str]) -> cmd::Output {
        self.docker.docker(args)
    }

    /// `docker run --rm --runtime husk-container <flags> IMAGE <command>`.
    fn run(&self, flags: &[&str], command: &[&str]) -> cmd::Output {
        let mut args = vec!["run", "--rm", "--runtime", RUNTIME];
        args.extend_from_slice(flags);
        args.push(IMAGE);
        args.extend_from_slice(command);
        self.docker(&args)
    }

    /// Starts a detached container and returns its id.
    fn run_detached(&self, flags: &[&str], command: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--runtime", RUNTIME];
        args.extend_from_slice(flags);
        args.push(IMAGE);
        args.extend_from_slice(command);
        self.docker(&args).ok().stdout_trimmed().to_string()
    }

    fn inspect(&self, id: &str, format: &str) -> String {
        self.docker(&["inspect", "-f", format, id])
            .ok()
            .stdout_trimmed()
            .to_string()
    }

    fn remove(&self, id: &str) {
        self.docker(&["rm", "-f", id]).ok();
    }

    /// The container's cgroup directory in a v1 hierarchy.
    fn cgroup_file(&self, id: &str, controller: &str, file: &str) -> String {
        let full_id = self.inspect(id, "{{.Id}}");
        let path = format!("/sys/fs/cgroup/{controller}/docker/{full_id}/{file}");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("cannot read {path}: {err}"))
            .trim()
            .to_string()
    }
}

fn contains(output: &cmd::Output, needle: &str) -> Result<(), Failed> {
    check(
        output.stdout.contains(needle) || output.stderr.contains(needle),
        || {
            format!(
                "{} did not print {needle:?}\nexit {}\nstdout:\n{}\nstderr:\n{}",
                output.command, output.code, output.stdout, output.stderr
            )
        },
    )
}

type Case = husk_e2e::Case<Env>;

fn cases() -> Vec<Case> {
    vec![
        ("output_and_exit_code", |env| {
            let out = env
                .run(&[], &["sh", "-c", "echo hello; echo oops >&2; exit 7"])
                .code(7);
            check(out.stdout.trim() == "hello", || {
                format!("stdout {:?}", out.stdout)
            })?;
            contains(&out, "oops")
        }),
        ("exec_output_and_exit_code", |env| {
            let id = env.run_detached(&[], &["sleep", "1000"]);
            let out = env.docker(&["exec", &id, "sh", "-c", "echo exec-ok; exit 5"]);
            env.remove(&id);
            let out = out.code(5);
            check(out.stdout.trim() == "exec-ok", || {
                format!("stdout {:?}", out.stdout)
            })
        }),
        ("tty_with_dash_t", |env| {
            let out = env
                .run(
                    &["-t"],
                    &["sh", "-c", "tty; test -t 1 && echo stdout-is-tty"],
                )
                .ok();
            contains(&out, "/dev/pts/")?;
            contains(&out, "stdout-is-tty")
        }),
        ("interactive_tty_with_dash_it", |env| {
            // `script` gives the docker client a real terminal, as a user's shell would.
            let line = format!(
                "{} run --rm -it --runtime {RUNTIME} {IMAGE} sh -c 'test -t 0 && test -t 1 && echo both-ends-tty; read x; echo got:$x'",
                env.docker.client_command_line()
            );
            let out = cmd::run_with_stdin(
                std::process::Command::new("script").args(["-qec", &line, "/dev/null"]),
                Some(b"typed-line\n"),
                Duration::from_secs(60),
            );
            contains(&out, "both-ends-tty")?;
            contains(&out, "got:typed-line")
        }),
        ("stop_delivers_sigterm", |env| {
            let id = env.run_detached(
                &[],
                &[
                    "sh",
                    "-c",
                    "trap 'exit 0' TERM; while true; do sleep 0.1; done",
                ],
            );
            std::thread::sleep(Duration::from_millis(500));
            let started = std::time::Instant::now();
            env.docker(&["stop", "-t", "20", &id]).ok();
            let took = started.elapsed();
            let code = env.inspect(&id, "{{.State.ExitCode}}");
            env.remove(&id);
            check(code == "0", || format!("exit code after stop {code}"))?;
            check(took < Duration::from_secs(15), || {
                format!("stop took {took:?}: SIGTERM not delivered")
            })
        }),
        ("kill_with_signal", |env| {
            let id = env.run_detached(
                &[],
                &[
                    "sh",
                    "-c",
                    "trap 'echo got-usr1; exit 42' USR1; while true; do sleep 0.1; done",
                ],
            );
            std::thread::sleep(Duration::from_millis(500));
            env.docker(&["kill", "-s", "USR1", &id]).ok();
            let exited = cmd::wait_until(Duration::from_secs(20), || {
                env.inspect(&id, "{{.State.Status}}") == "exited"
            });
            let code = env.inspect(&id, "{{.State.ExitCode}}");
            let logs = env.docker(&["logs", &id]);
            env.remove(&id);
            check(exited && code == "42", || {
                format!("exited={exited} code={code}")
            })?;
            contains(&logs, "got-usr1")
        }),
        ("top_lists_container_processes", |env| {
            let id = env.run_detached(&[], &["sleep", "1234"]);
            let out = env.docker(&["top", &id]);
            env.remove(&id);
            contains(&out.ok(), "sleep 1234")
        }),
        ("pause_and_unpause_freeze_processes", |env| {
            let id = env.run_detached(&[], &["sleep", "1000"]);
            env.docker(&["pause", &id]).ok();
            let paused_status = env.inspect(&id, "{{.State.Status}}");
            let freezer = env.cgroup_file(&id, "freezer", "freezer.state");
            env.docker(&["unpause", &id]).ok();
            let resumed_status = env.inspect(&id, "{{.State.Status}}");
            let thawed = env.cgroup_file(&id, "freezer", "freezer.state");
            env.remove(&id);
            check(paused_status == "paused" && freezer == "FROZEN", || {
                format!("paused: {paused_status} {freezer}")
            })?;
            check(resumed_status == "running" && thawed == "THAWED", || {
                format!("resumed: {resumed_status} {thawed}")
            })
        }),
        ("update_memory_changes_the_cgroup", |env| {
            let id = env.run_detached(
                &["--memory", "128m", "--memory-swap", "128m"],
                &["sleep", "1000"],
            );
            let before = env.cgroup_file(&id, "memory", "memory.limit_in_bytes");
            let update = env.docker(&["update", "--memory", "64m", "--memory-swap", "64m", &id]);
            let after = env.cgroup_file(&id, "memory", "memory.limit_in_bytes");
            env.remove(&id);
            update.ok();
            check(before == (128u64 << 20).to_string(), || {
                format!("before {before}")
            })?;
            check(after == (64u64 << 20).to_string(), || {
                format!("after {after}")
            })
        }),
        ("stats_report_usage_and_limit", |env| {
            let id = env.run_detached(&["--memory", "64m"], &["sleep", "1000"]);
            let out = env.docker(&[
                "stats",
                "--no-stream",
                "--format",
                "{{.MemUsage}} pids={{.PIDs}}",
                &id,
            ]);
            env.remove(&id);
            let out = out.ok();
            contains(&out, "/ 64MiB")?;
            contains(&out, "pids=1")
        }),
        ("memory_limit_is_enforced_oom_137", |env| {
            let id = env.run_detached(
                &["--memory", "32m", "--memory-swap", "32m"],
                &[
                    "sh",
                    "-c",
                    "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
                ],
            );
            let exited = cmd::wait_until(Duration::from_secs(60), || {
                env.inspect(&id, "{{.State.Status}}") == "exited"
            });
            let code = env.inspect(&id, "{{.State.ExitCode}}");
            let oom = env.inspect(&id, "{{.State.OOMKilled}}");
            let logs = env.docker(&["logs", &id]);
            env.remove(&id);
            check(exited && code == "137", || {
                format!("exited={exited} code={code} logs={}", logs.stdout)
            })?;
            check(oom == "true", || format!("OOMKilled={oom}"))?;
            check(!logs.stdout.contains("survived"), || {
                "allocation past the limit survived".into()
            })
        }),
        ("pids_limit_is_enforced", |env| {
            let out = env.run(
                &["--pids-limit", "5"],
                &["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done 2>/dev/null; n=$(ls /proc | grep -c '^[0-9]'); echo procs=$n; cat /sys/fs/cgroup/pids/pids.max 2>/dev/null"],
            );
            // fork fails once 5 processes exist; the shell reports it.
            check(!out.stdout.contains("procs=9"), || {
                format!("all forks succeeded: {}", out.stdout)
            })?;
            let id = env.run_detached(&["--pids-limit", "5"], &["sleep", "1000"]);
            let max = env.cgroup_file(&id, "pids", "pids.max");
            env.remove(&id);
            check(max == "5", || format!("pids.max {max}"))
        }),
        ("read_only_rootfs", |env| {
            let out = env.run(&["--read-only"], &["sh", "-c", "touch /x && echo wrote"]);
            check(out.code != 0 && !out.stdout.contains("wrote"), || {
                format!("write succeeded: {out:?}")
            })?;
            contains(&out, "Read-only file system")
        }),
        ("cap_drop_all", |env| {
            let out = env.run(
                &["--cap-drop", "ALL"],
                &[
                    "sh",
                    "-c",
                    "grep CapEff /proc/self/status; chown 1 /tmp && echo chowned",
                ],
            );
            contains(&out, "0000000000000000")?;
            check(!out.stdout.contains("chowned"), || {
                "chown worked without CAP_CHOWN".into()
            })?;
            let full = env
                .run(&[], &["sh", "-c", "grep CapEff /proc/self/status"])
                .ok();
            check(!full.stdout.contains("0000000000000000"), || {
                "default capabilities missing".into()
            })
        }),
        ("user_workdir_env_hostname", |env| {
            let out = env
                .run(
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
                )
                .ok();
            let lines: Vec<&str> = out.stdout.lines().collect();
            check(lines == ["1000", "1000", "/tmp", "bar", "husky"], || {
                format!("got {lines:?}")
            })
        }),
        ("bind_mount_both_ways", |env| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("from-host"), "host-data").unwrap();
            let volume = format!("{}:/data", dir.path().display());
            let out = env
                .run(
                    &["-v", &volume],
                    &[
                        "sh",
                        "-c",
                        "cat /data/from-host; echo container-data > /data/from-container",
                    ],
                )
                .ok();
            contains(&out, "host-data")?;
            let written =
                std::fs::read_to_string(dir.path().join("from-container")).unwrap_or_default();
            check(written.trim() == "container-data", || {
                format!("host sees {written:?}")
            })
        }),
    ]
}

fn main() {
    let mut args = Arguments::from_args();
    // One container at a time: cases read cgroup files and timings of their own.
    args.test_threads.get_or_insert(1);
    husk_e2e::require_root("docker");
    let husk = husk_e2e::husk_bin();
    let rootfs = Rootfs::busybox();
    let daemon_json = json!({
        "runtimes": {
            RUNTIME: { "path": husk, "runtimeArgs": ["--isolation", "container"] }
        }
    });
    let docker = Dockerd::start(&daemon_json);
    docker
        .docker_with_stdin(&["import", "-", IMAGE], &rootfs.tar())
        .ok();
    let env = Arc::new(Env { docker });

    let mut trials = husk_e2e::trials(&env, cases());
    let leak_env = Arc::clone(&env);
    // Runs last (one thread, in order): nothing of the containers above may remain in
    // husk's state root.
    trials.push(Trial::test("zz_no_state_left_in_runtime_root", move || {
        // Docker 20.10 gives every runtime `<exec-root>/runtime-runc/<namespace>`.
        let exec_root = leak_env.docker.exec_root();
        let ids = leak_env.docker(&["ps", "-aq"]).ok().stdout;
        check(ids.trim().is_empty(), || format!("containers left: {ids}"))?;
        let mut left = Vec::new();
        let runtime_roots = std::fs::read_dir(&exec_root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("runtime-"));
        for runtime_root in runtime_roots {
            for ns in std::fs::read_dir(runtime_root.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                left.extend(husk_e2e::leaks::state_entries(&ns.path()));
            }
        }
        check(left.is_empty(), || {
            format!("husk state left in {}: {left:?}", exec_root.display())
        })
    }));

    let conclusion = libtest_mimic::run(&args, trials);
    drop(env);
    conclusion.exit();
}

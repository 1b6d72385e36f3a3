//! Podman (Debian's 4.3) runs containers with husk as its OCI runtime.
//!
//! Needs: root, podman, busybox-static. The open-files and process limits are passed
//! explicitly: podman's defaults exceed this machine's hard limits (runc fails the same
//! way without them).

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use husk_e2e::check;
use husk_e2e::cmd;
use husk_e2e::fixture::Rootfs;
use libtest_mimic::{Arguments, Trial};

const IMAGE: &str = "localhost/husk-busybox:test";
const LIMITS: [&str; 6] = [
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=4096:4096",
    "--network",
    "none",
];

struct Env {
    dir: tempfile::TempDir,
    husk: std::path::PathBuf,
    rootfs: Rootfs,
}

impl Env {
    fn podman(&self, args: &[&str]) -> cmd::Output {
        self.podman_with_stdin(args, None)
    }

    fn podman_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> cmd::Output {
        let mut command = Command::new("podman");
        // conmon drops files such as `oom` into its working directory.
        command
            .current_dir(self.dir.path())
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("runroot"))
            .arg("--runtime")
            .arg(&self.husk)
            .args(["--runtime-flag", "isolation=container"])
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .arg("--tmpdir")
            .arg(self.dir.path().join("tmp"))
            .args(args);
        cmd::run_with_stdin(&mut command, stdin, Duration::from_secs(120))
    }

    fn run_args<'a>(&self, leading: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["run"];
        args.extend_from_slice(leading);
        args.extend_from_slice(&LIMITS);
        args.push(IMAGE);
        args.extend_from_slice(command);
        args
    }
}

type Case = husk_e2e::Case<Env>;

fn cases() -> Vec<Case> {
    vec![
        ("run_output_and_exit_code", |env| {
            let out = env
                .podman(&env.run_args(&["--rm"], &["sh", "-c", "echo from-podman; exit 6"]))
                .code(6);
            check(out.stdout.contains("from-podman"), || format!("{out:?}"))
        }),
        ("exec_and_stop", |env| {
            env.podman(&env.run_args(
                &["-d", "--name", "pm1"],
                &[
                    "sh",
                    "-c",
                    "trap 'exit 0' TERM; while true; do sleep 0.1; done",
                ],
            ))
            .ok();
            let exec = env.podman(&["exec", "pm1", "sh", "-c", "echo exec-ok; exit 2"]);
            env.podman(&["stop", "-t", "10", "pm1"]).ok();
            let code = env
                .podman(&["inspect", "-f", "{{.State.ExitCode}}", "pm1"])
                .ok();
            env.podman(&["rm", "-f", "pm1"]).ok();
            let exec = exec.code(2);
            check(exec.stdout.contains("exec-ok"), || format!("{exec:?}"))?;
            check(code.stdout.trim() == "0", || {
                format!("exit code after stop: {}", code.stdout)
            })
        }),
        ("memory_limit_and_user", |env| {
            let out = env.podman(&env.run_args(
                &["--rm", "--memory", "32m", "--user", "1000:1000"],
                &[
                    "sh",
                    "-c",
                    "id -u; x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
                ],
            ));
            check(
                out.code == 137 && out.stdout.contains("1000") && !out.stdout.contains("survived"),
                || format!("{out:?}"),
            )
        }),
    ]
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    husk_e2e::require_root("podman");
    husk_e2e::require_program("podman");
    let dir = tempfile::Builder::new()
        .prefix("husk-podman-")
        .tempdir()
        .unwrap();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    let env = Arc::new(Env {
        dir,
        husk: husk_e2e::husk_bin(),
        rootfs: Rootfs::busybox(),
    });
    env.podman_with_stdin(&["import", "-", IMAGE], Some(&env.rootfs.tar()))
        .ok();

    let mut trials = husk_e2e::trials(&env, cases());
    let leak_env = Arc::clone(&env);
    trials.push(Trial::test("zz_nothing_left_behind", move || {
        let left = leak_env.podman(&["ps", "-aq"]).ok();
        check(left.stdout.trim().is_empty(), || {
            format!("containers left: {}", left.stdout)
        })?;
        let processes =
            husk_e2e::leaks::processes_mentioning(&leak_env.dir.path().to_string_lossy());
        check(processes.is_empty(), || {
            format!("processes left: {processes:?}")
        })
    }));
    let conclusion = libtest_mimic::run(&args, trials);
    // Podman keeps overlay mounts of its store until told otherwise.
    let _ = env.podman(&["system", "reset", "--force"]);
    drop(env);
    conclusion.exit();
}

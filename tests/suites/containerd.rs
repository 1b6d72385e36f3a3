//! containerd (Debian's 1.6) drives husk through its runc shim v2, with husk as the
//! runc binary and the operator config choosing container isolation.
//!
//! Needs: root, containerd and ctr, busybox-static. The image is an OCI archive built
//! from the busybox rootfs by the harness, so no registry and no Docker are involved.

use std::sync::Arc;
use std::time::Duration;

use husk_e2e::check;
use husk_e2e::cmd;
use husk_e2e::engines::Containerd;
use husk_e2e::fixture::Rootfs;
use libtest_mimic::{Arguments, Trial};

const IMAGE: &str = "docker.io/library/husk-busybox:test";

struct Env {
    containerd: Containerd,
    husk: String,
    rootfs: Rootfs,
}

impl Env {
    fn ctr(&self, args: &[&str]) -> cmd::Output {
        self.containerd.ctr(args)
    }

    fn run_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["run", "--runc-binary", self.husk.as_str()];
        args.extend_from_slice(extra);
        args
    }
}

type Case = husk_e2e::Case<Env>;

fn cases() -> Vec<Case> {
    vec![
        ("ctr_run_output_and_exit_code", |env| {
            let out = env
                .ctr(&env.run_args(&[
                    "--rm",
                    IMAGE,
                    "ctr-run-1",
                    "sh",
                    "-c",
                    "echo from-ctr; exit 4",
                ]))
                .code(4);
            check(out.stdout.contains("from-ctr"), || format!("{out:?}"))
        }),
        ("ctr_task_exec_kill_delete", |env| {
            env.ctr(&env.run_args(&["-d", IMAGE, "ctr-run-2", "sleep", "1000"]))
                .ok();
            let exec = env.ctr(&[
                "task",
                "exec",
                "--exec-id",
                "e1",
                "ctr-run-2",
                "sh",
                "-c",
                "echo exec-ok; exit 3",
            ]);
            let tasks = env.ctr(&["task", "ls"]).ok();
            env.ctr(&["task", "kill", "-s", "SIGKILL", "ctr-run-2"])
                .ok();
            let stopped = cmd::wait_until(Duration::from_secs(20), || {
                env.ctr(&["task", "ls"]).stdout.contains("STOPPED")
            });
            env.ctr(&["task", "delete", "ctr-run-2"]).ok();
            env.ctr(&["container", "delete", "ctr-run-2"]).ok();
            let exec = exec.code(3);
            check(exec.stdout.contains("exec-ok"), || format!("{exec:?}"))?;
            check(
                tasks.stdout.contains("ctr-run-2") && tasks.stdout.contains("RUNNING"),
                || tasks.stdout.clone(),
            )?;
            check(stopped, || "task not reported STOPPED after SIGKILL".into())
        }),
        ("ctr_pause_resume", |env| {
            env.ctr(&env.run_args(&["-d", IMAGE, "ctr-run-3", "sleep", "1000"]))
                .ok();
            env.ctr(&["task", "pause", "ctr-run-3"]).ok();
            let paused = env.ctr(&["task", "ls"]).ok();
            env.ctr(&["task", "resume", "ctr-run-3"]).ok();
            let resumed = env.ctr(&["task", "ls"]).ok();
            env.ctr(&["task", "kill", "-s", "SIGKILL", "ctr-run-3"])
                .ok();
            cmd::wait_until(Duration::from_secs(20), || {
                env.ctr(&["task", "ls"]).stdout.contains("STOPPED")
            });
            env.ctr(&["task", "delete", "ctr-run-3"]).ok();
            env.ctr(&["container", "delete", "ctr-run-3"]).ok();
            check(paused.stdout.contains("PAUSED"), || paused.stdout.clone())?;
            check(resumed.stdout.contains("RUNNING"), || {
                resumed.stdout.clone()
            })
        }),
    ]
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    husk_e2e::require_root("containerd");
    husk_e2e::require_program("ctr");
    let husk = husk_e2e::husk_bin();
    // The runc shim cannot pass runtime flags, so the operator config, reaching husk
    // through containerd's environment, chooses container isolation.
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("husk.toml");
    std::fs::write(&config, "[isolation]\ndefault = \"container\"\n").unwrap();
    let containerd = Containerd::start(&[("HUSK_CONFIG", config.to_str().unwrap())]);
    let rootfs = Rootfs::busybox();
    let image = husk_e2e::engines::oci_archive(&rootfs, IMAGE);
    containerd
        .ctr_with_stdin(&["images", "import", "-"], Some(&image))
        .ok();
    let env = Arc::new(Env {
        containerd,
        husk: husk.to_string_lossy().into_owned(),
        rootfs,
    });

    let mut trials = husk_e2e::trials(&env, cases());
    let leak_env = Arc::clone(&env);
    trials.push(Trial::test("zz_nothing_left_behind", move || {
        let tasks = leak_env.ctr(&["task", "ls", "-q"]).ok();
        check(tasks.stdout.trim().is_empty(), || {
            format!("tasks left: {}", tasks.stdout)
        })?;
        let processes = husk_e2e::leaks::processes_rooted_in(leak_env.rootfs.path());
        check(processes.is_empty(), || {
            format!("processes left: {processes:?}")
        })?;
        let cgroups = husk_e2e::leaks::cgroups_matching("ctr-run-");
        check(cgroups.is_empty(), || format!("cgroups left: {cgroups:?}"))
    }));
    let conclusion = libtest_mimic::run(&args, trials);
    drop(env);
    conclusion.exit();
}

//! Load and leaks in container isolation: many concurrent `husk run`s, and hundreds of
//! create/start/delete cycles that must leave no cgroup, mount, state, process or fd.
//!
//! Needs: root, busybox-static.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use husk_e2e::check;
use husk_e2e::cmd;
use husk_e2e::fixture::{Bundle, Rootfs};
use husk_e2e::leaks;
use libtest_mimic::{Arguments, Failed, Trial};

const CONCURRENT: usize = 20;
const CYCLES: usize = 200;

fn husk(root: &Path, args: &[&str]) -> cmd::Output {
    cmd::run(
        Command::new(husk_e2e::husk_bin())
            .arg("--root")
            .arg(root)
            .args(["--isolation", "container"])
            .args(args),
        Duration::from_secs(120),
    )
}

fn concurrent_runs(rootfs: &Path) -> Result<(), Failed> {
    let state = tempfile::tempdir().unwrap();
    let marker = format!("conc{}", std::process::id());
    let bundle = Bundle::new(rootfs, &["sh", "-c", "echo out-$ID; exit $CODE"]);
    let threads: Vec<_> = (0..CONCURRENT)
        .map(|n| {
            let mut config = bundle.config.clone();
            let dir = tempfile::tempdir().unwrap();
            config["process"]["env"]
                .as_array_mut()
                .unwrap()
                .extend([format!("ID={n}").into(), format!("CODE={}", n % 7).into()]);
            std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
            let root = state.path().to_path_buf();
            let id = format!("{marker}-{n}");
            std::thread::spawn(move || {
                let out = husk(&root, &["run", "-b", dir.path().to_str().unwrap(), &id]);
                (n, out)
            })
        })
        .collect();
    let mut failures = Vec::new();
    for thread in threads {
        let (n, out) = thread.join().unwrap();
        if out.code != (n % 7) as i32 || out.stdout != format!("out-{n}\n") {
            failures.push(format!(
                "run {n}: exit {} stdout {:?} stderr {:?}",
                out.code, out.stdout, out.stderr
            ));
        }
    }
    check(failures.is_empty(), || failures.join("\n"))?;
    let left = leaks::leftovers(&marker, state.path(), rootfs);
    check(left.is_empty(), || left.join("\n"))
}

fn create_start_delete_cycles(rootfs: &Path) -> Result<(), Failed> {
    let state = tempfile::tempdir().unwrap();
    let marker = format!("cyc{}", std::process::id());
    let bundle = Bundle::new(rootfs, &["true"]);
    let b = bundle.path().to_str().unwrap().to_string();
    let fds_before = leaks::open_fd_count();
    for n in 0..CYCLES {
        let id = format!("{marker}-{n}");
        husk(state.path(), &["create", "-b", &b, &id]).ok();
        husk(state.path(), &["start", &id]).ok();
        let stopped = cmd::wait_until(Duration::from_secs(10), || {
            husk(state.path(), &["state", &id])
                .stdout
                .contains("\"stopped\"")
        });
        check(stopped, || format!("cycle {n}: container did not stop"))?;
        husk(state.path(), &["delete", &id]).ok();
    }
    let left = leaks::leftovers(&marker, state.path(), rootfs);
    check(left.is_empty(), || left.join("\n"))?;
    let fds_after = leaks::open_fd_count();
    check(fds_after <= fds_before, || {
        format!("open fds grew from {fds_before} to {fds_after}")
    })
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    husk_e2e::require_root("load");
    let rootfs = std::sync::Arc::new(Rootfs::busybox());
    let (a, b) = (rootfs.clone(), rootfs.clone());
    let trials = vec![
        Trial::test(format!("{CONCURRENT}_concurrent_runs"), move || {
            concurrent_runs(a.path())
        }),
        Trial::test(
            format!("{CYCLES}_create_start_delete_cycles_leave_nothing"),
            move || create_start_delete_cycles(b.path()),
        ),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    drop(rootfs);
    conclusion.exit();
}

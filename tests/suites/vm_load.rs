//! Load and leaks in vm isolation: 20 concurrent sandbox VMs (each `husk run` with its
//! own output and exit code), and 50 create/start/delete cycles that must leave no
//! process (QEMU, virtiofsd, vhost-device-vsock, supervisor), socket, state file,
//! mount, cgroup or descriptor behind.
//!
//! Needs what the vm suite needs (root, QEMU, the guest artifacts, the vhost-user
//! helpers); QEMU runs in TCG here, so the concurrent case takes a minute or two.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use husk_e2e::check;
use husk_e2e::cmd;
use husk_e2e::fixture::{Bundle, Rootfs};
use husk_e2e::leaks;
use libtest_mimic::{Arguments, Failed, Trial};

const CONCURRENT: usize = 20;
const CYCLES: usize = 50;
/// 20 TCG guests booting at once on 2 cores take a while.
const TIMEOUT: Duration = Duration::from_secs(600);

struct Env {
    rootfs: Rootfs,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

fn husk(env: &Env, root: &Path, args: &[&str]) -> cmd::Output {
    cmd::run(
        Command::new(husk_e2e::husk_bin())
            .arg("--root")
            .arg(root)
            .arg("--config")
            .arg(&env.config)
            .args(["--isolation", "vm"])
            .args(args),
        TIMEOUT,
    )
}

/// Everything a sandbox leaves if its teardown is broken.
fn leftovers(marker: &str, root: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for line in leaks::mounts_matching(&root.to_string_lossy()) {
        left.push(format!("mount left: {line}"));
    }
    for entry in leaks::state_entries(root) {
        left.push(format!("state left: {}/{entry}", root.display()));
    }
    for cgroup in leaks::cgroups_matching(marker) {
        left.push(format!("cgroup left: {}", cgroup.display()));
    }
    for (pid, cmdline) in leaks::processes_mentioning(&root.to_string_lossy())
        .into_iter()
        .chain(leaks::processes_mentioning(marker))
    {
        left.push(format!("process left: {pid}: {cmdline}"));
    }
    left
}

fn concurrent_runs(env: &Env) -> Result<(), Failed> {
    let state = tempfile::tempdir().unwrap();
    let marker = format!("vmconc{}", std::process::id());
    let bundle = Bundle::new(env.rootfs.path(), &["sh", "-c", "echo out-$ID; exit $CODE"]);
    let results: Vec<(usize, cmd::Output)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..CONCURRENT)
            .map(|n| {
                let mut config = bundle.config.clone();
                config["process"]["env"]
                    .as_array_mut()
                    .unwrap()
                    .extend([format!("ID={n}").into(), format!("CODE={}", n % 7).into()]);
                let root = state.path().to_path_buf();
                let id = format!("{marker}-{n}");
                scope.spawn(move || {
                    let dir = tempfile::tempdir().unwrap();
                    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
                    let out = husk(
                        env,
                        &root,
                        &["run", "-b", dir.path().to_str().unwrap(), &id],
                    );
                    (n, out)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let failures: Vec<String> = results
        .iter()
        .filter(|(n, out)| out.code != (n % 7) as i32 || out.stdout != format!("out-{n}\n"))
        .map(|(n, out)| {
            format!(
                "run {n}: exit {} stdout {:?} stderr {:?}",
                out.code, out.stdout, out.stderr
            )
        })
        .collect();
    check(failures.is_empty(), || failures.join("\n"))?;
    let left = leftovers(&marker, state.path());
    check(left.is_empty(), || left.join("\n"))
}

fn create_start_delete_cycles(env: &Env) -> Result<(), Failed> {
    let state = tempfile::tempdir().unwrap();
    let marker = format!("vmcyc{}", std::process::id());
    let bundle = Bundle::new(env.rootfs.path(), &["true"]);
    let b = bundle.path().to_str().unwrap().to_string();
    let fds_before = leaks::open_fd_count();
    for n in 0..CYCLES {
        let id = format!("{marker}-{n}");
        husk(env, state.path(), &["create", "-b", &b, &id]).ok();
        husk(env, state.path(), &["start", &id]).ok();
        let stopped = cmd::wait_until(TIMEOUT, || {
            husk(env, state.path(), &["state", &id])
                .stdout
                .contains("\"stopped\"")
        });
        check(stopped, || format!("cycle {n}: container did not stop"))?;
        husk(env, state.path(), &["delete", &id]).ok();
    }
    // The supervisors were reparented to us (a subreaper); reap them.
    while nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        .is_ok_and(|s| s != nix::sys::wait::WaitStatus::StillAlive)
    {}
    let left = leftovers(&marker, state.path());
    check(left.is_empty(), || left.join("\n"))?;
    let fds_after = leaks::open_fd_count();
    check(fds_after <= fds_before, || {
        format!("open fds grew from {fds_before} to {fds_after}")
    })
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    husk_e2e::require_root("vm_load");
    husk_e2e::require_program("qemu-system-x86_64");
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "cannot become a child subreaper");
    let (kernel, initramfs) = husk_e2e::guest::artifacts();
    husk_e2e::guest::ensure_helpers();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        husk_e2e::guest::operator_config(&kernel, &initramfs),
    )
    .unwrap();
    let env = std::sync::Arc::new(Env {
        rootfs: Rootfs::busybox(),
        config,
        _dir: dir,
    });
    let (a, b) = (env.clone(), env.clone());
    let trials = vec![
        Trial::test(format!("{CONCURRENT}_concurrent_vm_runs"), move || {
            concurrent_runs(&a)
        }),
        Trial::test(
            format!("{CYCLES}_vm_create_start_delete_cycles_leave_nothing"),
            move || create_start_delete_cycles(&b),
        ),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    drop(env);
    conclusion.exit();
}

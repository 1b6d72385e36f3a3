//! Harness for husk's end-to-end suites: real husk binaries, real engines started on
//! private sockets and data dirs, a busybox rootfs, leak checks, and a virtio-fs
//! driver that talks to virtiofsd as a (hostile) guest would.
//!
//! The suites need root and the engines installed (`make setup`). They refuse to run
//! otherwise, loudly: a suite that cannot run fails, it never passes by skipping.

pub mod cmd;
pub mod engines;
pub mod fixture;
pub mod fuse_client;
pub mod guest;
pub mod leaks;
pub mod netns;
pub mod vhost_user;
pub mod vm;

use std::path::{Path, PathBuf};

/// Panics with an actionable message unless we are root: containers need it.
pub fn require_root(suite: &str) {
    if !nix::unistd::geteuid().is_root() {
        panic!("the {suite} suite needs root (namespaces, cgroups, mounts); run it as root, e.g. via `sudo make test`");
    }
}

/// Finds a program on PATH or panics saying how to install it.
pub fn require_program(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("{name} is not installed; `make setup` installs everything the suites need")
    })
}

/// Looks a program up on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The workspace's target directory for the profile the suites test.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HUSK_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .join("target/release")
}

/// The `husk` binary under test (`HUSK_BIN`, else target/release/husk).
pub fn husk_bin() -> PathBuf {
    let path = std::env::var_os("HUSK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("husk"));
    if !path.is_file() {
        panic!(
            "husk binary {} not found; build it first with `make build` (or set HUSK_BIN)",
            path.display()
        );
    }
    path
}

/// The `husk-vmm` binary under test (target/release/husk-vmm, beside husk).
pub fn husk_vmm_bin() -> PathBuf {
    let path = husk_bin().with_file_name("husk-vmm");
    if !path.is_file() {
        panic!(
            "husk-vmm binary {} not found; build it first with `make build`",
            path.display()
        );
    }
    path
}

/// A test assertion for libtest-mimic trials: `Err` with `message()` unless `condition`.
pub fn check(
    condition: bool,
    message: impl FnOnce() -> String,
) -> Result<(), libtest_mimic::Failed> {
    if condition {
        Ok(())
    } else {
        Err(message().into())
    }
}

/// A named check of a suite, run against the suite's shared environment.
pub type Case<E> = (&'static str, fn(&E) -> Result<(), libtest_mimic::Failed>);

/// Turns a suite's cases into trials that share `env`.
pub fn trials<E: Send + Sync + 'static>(
    env: &std::sync::Arc<E>,
    cases: Vec<Case<E>>,
) -> Vec<libtest_mimic::Trial> {
    cases
        .into_iter()
        .map(|(name, case)| {
            let env = std::sync::Arc::clone(env);
            libtest_mimic::Trial::test(name, move || case(&env))
        })
        .collect()
}

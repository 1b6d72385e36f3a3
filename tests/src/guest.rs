//! The guest side of vm isolation for the suites: the guest kernel and initramfs of
//! this checkout, and the vhost-user helpers QEMU needs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cmd;

/// Builds (if needed) and finds the guest kernel and initramfs; fails loudly.
pub fn artifacts() -> (PathBuf, PathBuf) {
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
pub fn ensure_helpers() {
    let cache = std::env::var_os("HUSK_CACHE")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME or HUSK_CACHE")).join(".cache/husk")
        });
    for (name, version) in [("vhost-device-vsock", "0.3.0"), ("virtiofsd", "1.14.0")] {
        if cache.join("bin").join(name).is_file() || crate::which(name).is_some() {
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

/// An operator config naming this checkout's guest artifacts (never whatever is
/// newest in the shared cache).
pub fn operator_config(kernel: &Path, initramfs: &Path) -> String {
    format!("[vm]\nkernel = {kernel:?}\ninitramfs = {initramfs:?}\n")
}

/// Builds what is missing of the guest (artifacts and helpers) and writes an
/// operator config naming this checkout's artifacts into `dir`; returns its path.
pub fn operator_config_file(dir: &Path) -> PathBuf {
    let (kernel, initramfs) = artifacts();
    ensure_helpers();
    let path = dir.join("husk.toml");
    std::fs::write(&path, operator_config(&kernel, &initramfs))
        .unwrap_or_else(|e| panic!("write the operator config {}: {e}", path.display()));
    path
}

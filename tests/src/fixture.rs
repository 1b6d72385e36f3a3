//! A busybox root file system and OCI bundles around it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::cmd;

/// A minimal root file system: static busybox and its applets.
pub struct Rootfs {
    dir: TempDir,
}

impl Rootfs {
    pub fn busybox() -> Self {
        let busybox = crate::require_program("busybox");
        let dir = tempfile::Builder::new()
            .prefix("husk-rootfs-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path();
        for sub in [
            "bin", "dev", "proc", "sys", "tmp", "etc", "root", "mnt", "run",
        ] {
            std::fs::create_dir_all(root.join(sub)).expect("rootfs dir");
        }
        std::fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
        let list = cmd::run(
            Command::new(&busybox).arg("--list"),
            Duration::from_secs(10),
        )
        .ok();
        for applet in list.stdout.lines().filter(|a| *a != "busybox") {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The rootfs as a tar stream, for `docker import`.
    pub fn tar(&self) -> Vec<u8> {
        let out = std::process::Command::new("tar")
            .arg("-C")
            .arg(self.path())
            .arg("-c")
            .arg(".")
            .output()
            .expect("run tar");
        assert!(out.status.success(), "tar failed");
        out.stdout
    }
}

/// An OCI bundle whose config.json starts from `husk spec` and points at a shared,
/// read-only rootfs (with a private tmpfs on /tmp), so many bundles can share it.
pub struct Bundle {
    dir: TempDir,
    pub config: Value,
}

impl Bundle {
    pub fn new(rootfs: &Path, args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("husk-bundle-")
            .tempdir()
            .expect("temp dir");
        cmd::run(
            Command::new(crate::husk_bin())
                .args(["spec", "--bundle"])
                .arg(dir.path()),
            Duration::from_secs(10),
        )
        .ok();
        let text = std::fs::read_to_string(dir.path().join("config.json")).expect("spec");
        let mut config: Value = serde_json::from_str(&text).expect("spec is json");
        config["root"] = json!({ "path": rootfs, "readonly": true });
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        config["mounts"].as_array_mut().expect("mounts").push(
            json!({ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                          "options": ["nosuid", "nodev", "mode=1777"] }),
        );
        let bundle = Self { dir, config };
        bundle.write();
        bundle
    }

    /// Writes `config` to config.json (call after changing it).
    pub fn write(&self) {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .expect("write config.json");
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_buf(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

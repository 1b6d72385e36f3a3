//! Real engines — containerd, dockerd, podman — each started privately for one suite:
//! own sockets, data and state dirs in a temp dir, stopped and cleaned up on drop.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::cmd::{self, Output};
use crate::leaks;

const ENGINE_START: Duration = Duration::from_secs(60);
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

fn stop_child(child: &mut Child, name: &str) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    for _ in 0..200 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{name} ignored SIGTERM for 10s; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills stray processes (shims, conmon) that name our private dir, then unmounts
/// whatever is still mounted under it.
fn reap_dir(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    for (pid, _) in leaks::processes_mentioning(&needle) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let mut mounts: Vec<String> = leaks::mounts_matching(&needle)
        .iter()
        .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
        .filter(|mountpoint| mountpoint.starts_with(&needle))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mountpoint in mounts {
        let _ = nix::mount::umount2(mountpoint.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A private containerd.
pub struct Containerd {
    pub dir: TempDir,
    pub socket: PathBuf,
    child: Child,
}

impl Containerd {
    /// Starts containerd with `env` added to its environment (shims inherit it).
    pub fn start(env: &[(&str, &str)]) -> Self {
        let program = crate::require_program("containerd");
        let dir = tempfile::Builder::new()
            .prefix("husk-ctd-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "").unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new(program)
            .arg("-c")
            .arg(&config)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(&socket)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let containerd = Self { dir, socket, child };
        let ready = cmd::wait_until(ENGINE_START, || {
            containerd.socket.exists() && containerd.ctr(&["version"]).code == 0
        });
        if !ready {
            panic!("containerd did not come up:\n{}", containerd.log());
        }
        containerd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr` against this containerd in the `husk-test` namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_with_stdin(args, None)
    }

    pub fn ctr_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        cmd::run_with_stdin(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["--namespace", "husk-test"])
                .args(args),
            stdin,
            DOCKER_TIMEOUT,
        )
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        stop_child(&mut self.child, "containerd");
        reap_dir(self.dir.path());
    }
}

/// A private dockerd on its own containerd.
pub struct Dockerd {
    pub dir: TempDir,
    pub socket: PathBuf,
    child: Child,
    // Dropped after dockerd: declared last.
    pub containerd: Containerd,
}

impl Dockerd {
    /// Starts dockerd with this daemon.json.
    pub fn start(daemon_json: &serde_json::Value) -> Self {
        Self::start_in(daemon_json, None)
    }

    /// Starts dockerd with this daemon.json, in the network namespace at `netns`
    /// when given: the bridges, veths and addresses of the networks it makes then
    /// live there, not on the host (containerd and the runtimes stay in the host's).
    pub fn start_in(daemon_json: &serde_json::Value, netns: Option<&Path>) -> Self {
        let program = crate::require_program("dockerd");
        crate::require_program("docker");
        let containerd = Containerd::start(&[]);
        let dir = tempfile::Builder::new()
            .prefix("husk-dockerd-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("docker.sock");
        let config = dir.path().join("daemon.json");
        std::fs::write(&config, serde_json::to_vec_pretty(daemon_json).unwrap()).unwrap();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let mut command = Command::new(program);
        if let Some(netns) = netns {
            let ns = std::fs::File::open(netns)
                .unwrap_or_else(|e| panic!("open network namespace {}: {e}", netns.display()));
            // SAFETY: runs in the forked child before exec; setns(2) is
            // async-signal-safe and `ns` was opened before the fork.
            unsafe {
                command.pre_exec(move || {
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--containerd")
            .arg(&containerd.socket)
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .arg("--config-file")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let dockerd = Self {
            dir,
            socket,
            child,
            containerd,
        };
        if !cmd::wait_until(ENGINE_START, || dockerd.docker(&["version"]).code == 0) {
            panic!("dockerd did not come up:\n{}", dockerd.log());
        }
        dockerd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Docker's exec root, under which each runtime keeps its state root.
    pub fn exec_root(&self) -> PathBuf {
        self.dir.path().join("exec")
    }

    fn client(&self) -> Command {
        // Debian's client matches the 20.10 daemon; a newer one on PATH may not.
        let program = if Path::new("/usr/bin/docker").exists() {
            PathBuf::from("/usr/bin/docker")
        } else {
            crate::require_program("docker")
        };
        let mut command = Command::new(program);
        command
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()));
        command
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        cmd::run(self.client().args(args), DOCKER_TIMEOUT)
    }

    pub fn docker_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        cmd::run_with_stdin(self.client().args(args), Some(stdin), DOCKER_TIMEOUT)
    }

    /// The docker client command line, for running it under `script` for a TTY.
    pub fn client_command_line(&self) -> String {
        format!("/usr/bin/docker -H unix://{}", self.socket.display())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in ids.stdout.split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        stop_child(&mut self.child, "dockerd");
        reap_dir(self.dir.path());
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An OCI image archive (for `ctr images import`) with `rootfs` as its single layer,
/// named `name`.
pub fn oci_archive(rootfs: &crate::fixture::Rootfs, name: &str) -> Vec<u8> {
    use serde_json::json;
    let layer = rootfs.tar();
    let layer_digest = sha256_hex(&layer);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] }
    })
    .to_string()
    .into_bytes();
    let config_digest = sha256_hex(&config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": format!("sha256:{config_digest}"), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar",
                     "digest": format!("sha256:{layer_digest}"), "size": layer.len() }]
    })
    .to_string()
    .into_bytes();
    let manifest_digest = sha256_hex(&manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"), "size": manifest.len(),
            "annotations": { "io.containerd.image.name": name,
                             "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap_or("latest") }
        }]
    })
    .to_string();

    let dir = tempfile::tempdir().expect("temp dir");
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(&layer_digest), &layer).unwrap();
    std::fs::write(blobs.join(&config_digest), &config).unwrap();
    std::fs::write(blobs.join(&manifest_digest), &manifest).unwrap();
    std::fs::write(dir.path().join("index.json"), index).unwrap();
    std::fs::write(
        dir.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let out = Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .args(["-c", "oci-layout", "index.json", "blobs"])
        .output()
        .expect("run tar");
    assert!(out.status.success(), "tar of the OCI layout failed");
    out.stdout
}

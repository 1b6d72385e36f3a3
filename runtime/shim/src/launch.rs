//! The shim's short-lived actions, run by containerd: `start` (find or spawn the pod's
//! long-lived shim and print its address) and `delete` (clean up after a shim that
//! is gone).
//!
//! Written here rather than taken from the `containerd-shim` crate's bootstrap:
//! containerd 1.6 (Debian's) reads the `start` output as a bare address, where the
//! crate answers in the newer JSON/protobuf form.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, Context};
use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::Flags;
use serde_json::Value;

use crate::pod::STATE_ROOT;

/// The descriptor the long-lived shim finds its listening socket on.
pub const LISTEN_FD: i32 = 3;
/// The action that runs the long-lived shim (ours, not containerd's).
pub const SERVE_ACTION: &str = "serve";
/// What `delete` reports for a task whose shim is gone (killed, as its VM was).
const LOST_STATUS: u32 = 137;

const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The bundle: `-bundle`, else the working directory containerd starts us in.
pub fn bundle_dir(flags: &Flags) -> anyhow::Result<PathBuf> {
    if !flags.bundle.is_empty() {
        return Ok(PathBuf::from(&flags.bundle));
    }
    std::env::current_dir().context("the working directory (the bundle)")
}

pub fn read_spec(bundle: &Path) -> anyhow::Result<Value> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))
}

/// The pod a container belongs to: CRI marks a pod's containers with the sandbox's
/// id; the sandbox itself and a container without annotations are their own pod.
pub fn pod_id(spec: &Value, id: &str) -> String {
    let annotations = &spec["annotations"];
    match (
        annotations[CONTAINER_TYPE].as_str(),
        annotations[SANDBOX_ID].as_str(),
    ) {
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => sandbox.to_string(),
        _ => id.to_string(),
    }
}

/// The pod VM's state directory, distinct per containerd, namespace and pod, and
/// short whatever the ids (unix socket paths inside it must stay under 108 bytes).
pub fn state_dir(containerd: &str, namespace: &str, pod: &str) -> PathBuf {
    // FNV-1a: stable across builds, no dependency.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let key = [containerd, namespace, pod].join("\n");
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Path::new(STATE_ROOT).join(format!("{hash:016x}"))
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// `start`: prints the address of the pod's shim, spawning it for a new pod.
pub fn start(flags: &Flags) -> anyhow::Result<()> {
    let bundle = bundle_dir(flags)?;
    let spec = read_spec(&bundle)?;
    let pod = pod_id(&spec, &flags.id);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &pod);
    let path = socket_path(&address);
    if UnixStream::connect(path).is_err() {
        spawn_server(flags, &bundle, &address)?;
    }
    // containerd reloads running shims from this file after a restart.
    std::fs::write(bundle.join("address"), &address)
        .with_context(|| format!("write {}", bundle.join("address").display()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn spawn_server(flags: &Flags, bundle: &Path, address: &str) -> anyhow::Result<()> {
    let path = socket_path(address);
    let _ = std::fs::remove_file(path);
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("listen on {path}"))?;
    let fd = listener.as_raw_fd();
    let exe = std::env::current_exe().context("find our own binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address])
        .args(["-publish-binary", &flags.publish_binary])
        .args(["-socket", address]);
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.arg(SERVE_ACTION)
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (setsid, dup2, fcntl) on descriptors it owns.
    unsafe {
        cmd.pre_exec(move || {
            // Our own session: containerd's signals to its process group miss us.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if fd == LISTEN_FD {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, LISTEN_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("spawn the shim server")?;
    tracing::debug!(pid = child.id(), "shim server spawned");
    Ok(())
}

/// `delete`: containerd's cleanup after a shim that exited or failed to start. The
/// VM processes died with the shim (PR_SET_PDEATHSIG); what may be left is the pod's
/// state dir with its mounts, the socket and the rootfs mount.
pub fn delete(flags: &Flags) -> anyhow::Result<()> {
    let bundle = bundle_dir(flags)?;
    if let Ok(spec) = read_spec(&bundle) {
        let pod = pod_id(&spec, &flags.id);
        let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &pod);
        let path = socket_path(&address);
        if UnixStream::connect(path).is_err() {
            remove_state(&state_dir(&flags.address, &flags.namespace, &pod));
            let _ = std::fs::remove_file(path);
        }
    }
    let rootfs = bundle.join("rootfs");
    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
    let response = DeleteResponse {
        pid: 0,
        exit_status: LOST_STATUS,
        exited_at: MessageField::some(Timestamp::now()),
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    response
        .write_to_writer(&mut out)
        .map_err(|e| anyhow!("write the delete response: {e}"))?;
    out.flush()?;
    Ok(())
}

/// Unmounts everything under `dir`, then removes it — never recursing into a tree
/// that is still mounted.
fn remove_state(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in &mounts {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
    if mounts_under(dir).is_empty() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_group_by_cri_sandbox_id() {
        let sandbox = json!({"annotations": {CONTAINER_TYPE: "sandbox", SANDBOX_ID: "pod1"}});
        let member = json!({"annotations": {CONTAINER_TYPE: "container", SANDBOX_ID: "pod1"}});
        let lone = json!({"ociVersion": "1.0.2"});
        assert_eq!(pod_id(&sandbox, "pod1"), "pod1");
        assert_eq!(pod_id(&member, "web"), "pod1");
        assert_eq!(pod_id(&lone, "solo"), "solo");
    }

    #[test]
    fn state_dirs_are_short_and_distinct() {
        let a = state_dir("/run/containerd/containerd.sock", "k8s.io", &"a".repeat(64));
        let b = state_dir("/run/containerd/containerd.sock", "k8s.io", &"b".repeat(64));
        assert_ne!(a, b);
        assert_eq!(
            a,
            state_dir("/run/containerd/containerd.sock", "k8s.io", &"a".repeat(64))
        );
        assert_ne!(a, state_dir("/tmp/other.sock", "k8s.io", &"a".repeat(64)));
        // Leaves room for "/vhost-vsock.sock" within a unix socket path.
        assert!(a.as_os_str().len() < 40, "{}", a.display());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(
            unescape_mountinfo(r"/run/a\040b"),
            PathBuf::from("/run/a b")
        );
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
    }
}

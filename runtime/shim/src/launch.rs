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
use husk_runtime::bundle::Bundle;

use crate::pod::STATE_ROOT;

/// The descriptor the long-lived shim finds its listening socket on.
pub const LISTEN_FD: i32 = 3;
/// The action that runs the long-lived shim (ours, not containerd's).
pub const SERVE_ACTION: &str = "serve";
/// What `delete` reports for a task whose shim is gone (killed, as its VM was).
const LOST_STATUS: u32 = 137;

/// The bundle: `-bundle`, else the working directory containerd starts us in.
pub fn bundle_dir(flags: &Flags) -> anyhow::Result<PathBuf> {
    if !flags.bundle.is_empty() {
        return Ok(PathBuf::from(&flags.bundle));
    }
    std::env::current_dir().context("the working directory (the bundle)")
}

/// The pod container `id` of `bundle` belongs to (see [`Bundle::pod_id`]).
pub fn pod_id(bundle: &Path, id: &str) -> anyhow::Result<String> {
    Ok(Bundle::load(bundle)?.pod_id(id))
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
    let pod = pod_id(&bundle, &flags.id)?;
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
    if let Ok(pod) = pod_id(&bundle, &flags.id) {
        let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &pod);
        let path = socket_path(&address);
        if UnixStream::connect(path).is_err() {
            let dir = state_dir(&flags.address, &flags.namespace, &pod);
            if husk_runtime::vm::sandbox::is_sandbox_dir(&dir) {
                // The sandbox's one teardown, from what it recorded.
                if let Err(e) = husk_runtime::vm::sandbox::teardown_dir(&dir, &pod, true) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot tear the pod's sandbox down");
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

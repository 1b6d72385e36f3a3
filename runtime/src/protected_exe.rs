//! Keeps containers from overwriting the runtime binary (CVE-2019-5736).
//!
//! A process that enters a container runs this binary until it execs the workload, so
//! the container could reach the binary through `/proc/<pid>/exe` and, once we exit,
//! write to it: the next `husk` anyone runs would be the attacker's. Commands that
//! put a process into a container therefore re-execute from a copy the container
//! cannot write: a read-only bind mount of our own binary, detached from the mount
//! table so it is visible nowhere (the approach runc 1.1 took). That costs a few mount
//! calls; where mounting is not allowed we fall back to a sealed memfd copy of the
//! binary (`pentacle`), which costs a copy of the whole binary on every call.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{statvfs, FsFlags};

/// The binary could not be protected.
#[derive(Debug, thiserror::Error)]
pub enum ProtectError {
    /// Neither a read-only mount nor a sealed copy could be made.
    #[error("cannot run from a read-only or sealed copy of husk: {0}")]
    Unprotected(String),
}

/// Whether we already run from a binary nobody can write: a read-only mount (ours, or
/// a read-only install) or a sealed memfd.
fn already_protected() -> bool {
    let on_read_only_mount = statvfs("/proc/self/exe")
        .map(|s| s.flags().contains(FsFlags::ST_RDONLY))
        .unwrap_or(false);
    on_read_only_mount || pentacle::is_sealed()
}

/// Re-executes this process from a protected copy of its binary unless it already
/// runs from one. `scratch_dir` must be a directory we may create a file in.
pub fn ensure_protected(scratch_dir: &Path) -> Result<(), ProtectError> {
    if already_protected() {
        return Ok(());
    }
    match read_only_binary(scratch_dir) {
        Ok(binary) => {
            let err = reexec(&binary);
            tracing::warn!(%err, "cannot re-execute from the read-only mount; sealing a copy");
        }
        Err(err) => tracing::debug!(%err, "no read-only mount of the binary; sealing a copy"),
    }
    pentacle::ensure_sealed().map_err(|err| ProtectError::Unprotected(err.to_string()))
}

/// Binds our binary read-only onto a scratch file, opens it by path and detaches the
/// mount: the returned descriptor is the only way to reach that mount.
fn read_only_binary(scratch_dir: &Path) -> nix::Result<OwnedFd> {
    let target = scratch_dir.join(format!(".husk-exe-{}", std::process::id()));
    let _ = std::fs::remove_file(&target);
    std::fs::File::create(&target)
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let result = (|| {
        mount(
            Some("/proc/self/exe"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        let remounted = mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        );
        let opened =
            remounted.and_then(|()| open(&target, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()));
        let _ = umount2(&target, MntFlags::MNT_DETACH);
        // SAFETY: `open` returned a fresh descriptor that nothing else owns.
        opened.map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    })();
    let _ = std::fs::remove_file(&target);
    result
}

/// Replaces this process with the binary behind `binary`, same arguments and
/// environment. Returns only on failure.
fn reexec(binary: &OwnedFd) -> std::io::Error {
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut pair = k.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(v.as_bytes());
            CString::new(pair).unwrap_or_default()
        })
        .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let empty = c"";
    // SAFETY: argv and envp are null-terminated arrays of pointers into CStrings that
    // outlive the call; execveat only returns on failure, leaving memory untouched.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            binary.as_raw_fd(),
            empty.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    std::io::Error::last_os_error()
}

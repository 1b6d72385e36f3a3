//! Entering the jail the runtime built for husk-vmm (`--jail DIR`; the runtime's side
//! is `husk_runtime::hypervisor::jail`, docs/vmm.md "Jail").
//!
//! The runtime starts husk-vmm in new mount, pid, network, IPC and UTS namespaces,
//! with DIR a read-only bind mount holding only what the VM needs: `/dev/kvm`, the
//! kernel and initramfs (read-only), the share, the sandbox's run dir and a
//! `proc` of its own pid namespace (`subset=pid`: no `/proc/sys`). It cannot pivot
//! there itself before exec (husk-vmm is not a static binary, so its libraries must
//! still be reachable when it starts); husk-vmm does that as its first act, before it
//! reads its config or any guest input: it takes a mount namespace of its own (so a
//! pivot can never move anyone else's root), pivots into DIR and detaches the host's
//! root (on a host that runs from its initial ramfs, where pivot_root is refused, it
//! moves DIR over `/` and chroots, as switch_root does). From then on the process
//! cannot name a host path.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Errors entering the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The jail must be named by an absolute path.
    #[error("the jail {0} is not an absolute path")]
    NotAbsolute(PathBuf),
    /// A step of entering it failed (the cause follows in the error's chain).
    #[error("entering the jail {dir}: {step}")]
    Step {
        /// The jail.
        dir: PathBuf,
        /// What was being done.
        step: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The entries a jail's root holds (made by the runtime, checked after the pivot).
pub use crate::config::jail::ROOT_ENTRIES as JAIL_ENTRIES;

/// Pivots the calling process into `dir` (see the module docs). Must run before any
/// thread is started: a mount namespace can only be unshared by a single thread.
pub fn enter(dir: &Path) -> Result<(), JailError> {
    if !dir.is_absolute() {
        return Err(JailError::NotAbsolute(dir.into()));
    }
    let step = |step: &'static str| {
        let dir = dir.to_path_buf();
        move |source| JailError::Step { dir, step, source }
    };
    let c_dir = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| step("the path has a NUL")(std::io::Error::other("NUL in path")))?;
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: unshare with a flag only.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })
        .map_err(step("unshare the mount namespace"))?;
    // Slave, not private: mounts the host later makes under the share (a container's
    // rootfs) still reach the jail; nothing made here reaches the host.
    // SAFETY: mount with a valid C string target and null source, type and data.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    })
    .map_err(step("make / a slave mount"))?;
    // SAFETY: chdir with a valid C string.
    check(unsafe { libc::chdir(c_dir.as_ptr()) }).map_err(step("chdir"))?;
    // pivot_root(".", "."): the old root ends up mounted on top of the new one, and
    // is detached next; no directory for it is needed in the read-only jail.
    // SAFETY: pivot_root with two valid C strings.
    let pivoted = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    match check(pivoted as libc::c_int) {
        Ok(()) => {
            // SAFETY: umount2 with a valid C string.
            check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) })
                .map_err(step("detach the host's root"))?;
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // The host runs from its initial ramfs, which no one can pivot away from:
            // move the jail over it and chroot there, as switch_root does. Nothing
            // but the jail is reachable: no descriptor of the host is open, and no
            // thread keeps CAP_SYS_CHROOT or CAP_SYS_ADMIN.
            tracing::warn!(
                jail = %dir.display(),
                "the host's root is its initial ramfs: jail entered by moving it over / and chroot"
            );
            // SAFETY: mount with valid C strings and null type and data.
            check(unsafe {
                libc::mount(
                    c".".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_MOVE,
                    std::ptr::null(),
                )
            })
            .map_err(step("move the jail over the initial ramfs"))?;
            // SAFETY: chroot with a valid C string.
            check(unsafe { libc::chroot(c".".as_ptr()) }).map_err(step("chroot"))?;
        }
        Err(e) => return Err(step("pivot_root")(e)),
    }
    // SAFETY: chdir with a valid C string.
    check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(step("chdir /"))?;
    for name in JAIL_ENTRIES {
        if std::fs::symlink_metadata(Path::new("/").join(name)).is_err() {
            return Err(step("check the jail's contents")(std::io::Error::other(
                format!("/{name} is missing: the runtime did not build this jail"),
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_jail_is_refused_before_anything_changes() {
        let err = enter(Path::new("jail")).unwrap_err();
        assert!(matches!(err, JailError::NotAbsolute(_)), "{err}");
        assert!(err.to_string().contains("not an absolute path"), "{err}");
    }
}

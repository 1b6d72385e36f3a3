//! Landlock confinement of one thread to one directory tree: the virtio-fs thread may
//! open files only beneath its shared directory, whatever a bug in the FUSE server
//! might ask for. Enforced by the kernel per thread (no TSYNC), installed before the
//! thread's seccomp filter (which does not allow the landlock syscalls).
//!
//! Needs Landlock ABI 2 or later (Linux 5.19+, "landlock" in the LSM list): with ABI 1
//! a confined thread could never rename or link across directories, which a root
//! file system needs. Without it the thread runs unconfined by Landlock and the
//! caller says so.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `landlock_create_ruleset` flag: return the ABI version.
const CREATE_RULESET_VERSION: u32 = 1;
/// Rule type: a directory and everything beneath it.
const RULE_PATH_BENEATH: u32 = 1;

/// Filesystem access rights of ABI 1 (execute … make_sym, bits 0-12).
const ACCESS_FS_ABI1: u64 = (1 << 13) - 1;
/// ABI 2: link or rename into another directory.
const ACCESS_FS_REFER: u64 = 1 << 13;
/// ABI 3: truncate.
const ACCESS_FS_TRUNCATE: u64 = 1 << 14;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// What [`confine_thread_beneath`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confinement {
    /// The calling thread can only open files beneath the directory now.
    Confined {
        /// The kernel's Landlock ABI version.
        abi: u32,
    },
    /// The kernel has no usable Landlock (not built, not enabled, or ABI 1).
    Unavailable {
        /// The ABI version, 0 when Landlock is absent.
        abi: u32,
    },
}

/// Errors from setting up Landlock.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The directory could not be opened.
    #[error("opening {path} for Landlock: {source}")]
    Open {
        /// Path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A landlock syscall failed.
    #[error("{call}: {source}")]
    Syscall {
        /// Which call.
        call: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn abi_version() -> u32 {
    // SAFETY: with the VERSION flag the kernel reads no attribute (null, size 0).
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        0
    } else {
        r as u32
    }
}

/// Restricts the calling thread to opening files beneath `dir` (every access right
/// the kernel knows, all allowed there and nowhere else).
pub fn confine_thread_beneath(dir: &Path) -> Result<Confinement, LandlockError> {
    let abi = abi_version();
    if abi < 2 {
        return Ok(Confinement::Unavailable { abi });
    }
    let mut access = ACCESS_FS_ABI1 | ACCESS_FS_REFER;
    if abi >= 3 {
        access |= ACCESS_FS_TRUNCATE;
    }
    let sys = |call| move |source| LandlockError::Syscall { call, source };
    let attr = RulesetAttr {
        handled_access_fs: access,
    };
    // SAFETY: `attr` is a valid ruleset attribute of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(sys("landlock_create_ruleset")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let dir_file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)
        .map_err(|source| LandlockError::Open {
            path: dir.display().to_string(),
            source,
        })?;
    let rule = PathBeneathAttr {
        allowed_access: access,
        parent_fd: dir_file.as_raw_fd(),
    };
    // SAFETY: valid ruleset fd, a rule of the type named, flags 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &rule as *const PathBeneathAttr,
            0u32,
        )
    };
    if r < 0 {
        return Err(sys("landlock_add_rule")(std::io::Error::last_os_error()));
    }
    // Landlock needs no_new_privs (or CAP_SYS_ADMIN); seccomp sets it next anyway.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(sys("prctl(PR_SET_NO_NEW_PRIVS)")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: valid ruleset fd, flags 0; affects only the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) };
    if r < 0 {
        return Err(sys("landlock_restrict_self")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(Confinement::Confined { abi })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the kernel has Landlock, a confined thread reads inside its directory and
    /// gets EACCES outside it while other threads are unaffected; where it has none,
    /// the LSM list says so.
    #[test]
    fn confines_only_the_calling_thread() {
        let parent = tempfile::tempdir().unwrap();
        let inside = parent.path().join("inside");
        std::fs::create_dir(&inside).unwrap();
        std::fs::write(inside.join("ok"), b"in").unwrap();
        std::fs::write(parent.path().join("secret"), b"out").unwrap();
        let (i, p) = (inside.clone(), parent.path().to_path_buf());
        let result = std::thread::spawn(move || {
            let c = confine_thread_beneath(&i).unwrap();
            let inside_read = std::fs::read(i.join("ok")).map_err(|e| e.raw_os_error());
            let outside_read = std::fs::read(p.join("secret")).map_err(|e| e.raw_os_error());
            (c, inside_read, outside_read)
        })
        .join()
        .unwrap();
        match result {
            (Confinement::Confined { abi }, inside_read, outside_read) => {
                assert!(abi >= 2);
                assert_eq!(inside_read, Ok(b"in".to_vec()));
                assert_eq!(outside_read, Err(Some(libc::EACCES)));
            }
            (Confinement::Unavailable { abi }, _, outside_read) => {
                assert!(abi < 2);
                if abi == 0 {
                    let lsm =
                        std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
                    assert!(!lsm.contains("landlock"), "LSM list {lsm:?}");
                }
                assert_eq!(outside_read, Ok(b"out".to_vec()));
            }
        }
        // This thread was never confined.
        assert_eq!(std::fs::read(parent.path().join("secret")).unwrap(), b"out");
    }
}

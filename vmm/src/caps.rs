//! Per-thread capability dropping. Linux keeps capabilities per thread, so each VMM
//! thread drops its own as it starts, once whatever needed privilege (opening
//! /dev/kvm, the tap, binding sockets) is done: every thread ends with empty
//! effective, permitted and inheritable sets (and so no ambient ones) and, where
//! CAP_SETPCAP allows, an empty bounding set. The one exception is the virtio-fs
//! thread, which serves guest file operations as the guest's caller and keeps the
//! file-ownership capabilities virtiofsd keeps by default ([`FS_WORKER_CAPS`]).

use crate::seccomp::ThreadRole;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two 32-bit words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Capability numbers (linux/capability.h).
pub mod cap {
    /// Change file owners.
    pub const CHOWN: u32 = 0;
    /// Bypass file permission checks.
    pub const DAC_OVERRIDE: u32 = 1;
    /// Bypass owner checks (chmod, utimes, …).
    pub const FOWNER: u32 = 3;
    /// Keep set-user/group-id bits on write.
    pub const FSETID: u32 = 4;
    /// Change gids.
    pub const SETGID: u32 = 6;
    /// Change uids.
    pub const SETUID: u32 = 7;
    /// Make device nodes.
    pub const MKNOD: u32 = 27;
}

/// What the virtio-fs thread keeps: act as the guest's caller (setresuid/setresgid)
/// and, as guest root, own, chmod and mknod files on the share.
pub const FS_WORKER_CAPS: u64 = (1 << cap::CHOWN)
    | (1 << cap::DAC_OVERRIDE)
    | (1 << cap::FOWNER)
    | (1 << cap::FSETID)
    | (1 << cap::SETGID)
    | (1 << cap::SETUID)
    | (1 << cap::MKNOD);

/// Errors from dropping capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// capget/capset failed.
    #[error("{call} for the {role:?} thread: {source}")]
    Syscall {
        /// Which call.
        call: &'static str,
        /// Role of the calling thread.
        role: ThreadRole,
        /// The underlying error.
        source: std::io::Error,
    },
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The capabilities a thread of `role` keeps.
pub fn kept_by(role: ThreadRole) -> u64 {
    match role {
        ThreadRole::FsWorker => FS_WORKER_CAPS,
        _ => 0,
    }
}

/// The calling thread's (effective, permitted) sets.
pub fn current() -> Result<(u64, u64), std::io::Error> {
    let mut hdr = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: the header and a two-element data array are what capget(2) expects for
    // version 3; both outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

/// Drops the calling thread's capabilities down to what `role` keeps: bounding set
/// first (needs CAP_SETPCAP, so skipped quietly without it), then effective,
/// permitted and inheritable. Only ever removes capabilities, so it works unprivileged.
pub fn drop_for(role: ThreadRole) -> Result<(), CapsError> {
    let keep = kept_by(role);
    let err = |call| move |source| CapsError::Syscall { call, role, source };
    let (effective, permitted) = current().map_err(err("capget"))?;
    for c in 0..64u32 {
        if keep & (1 << c) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(c), 0, 0, 0) };
        if rc != 0 {
            // EINVAL: past the kernel's last capability; EPERM: no CAP_SETPCAP.
            break;
        }
    }
    let (eff, perm) = (effective & keep, permitted & keep);
    let mut hdr = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: eff as u32,
            permitted: perm as u32,
            inheritable: 0,
        },
        CapData {
            effective: (eff >> 32) as u32,
            permitted: (perm >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: header and data as capset(2) expects for version 3; pid 0 is the
    // calling thread. Both outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(err("capset")(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_drops_its_own_capabilities_only() {
        let (before, _) = current().unwrap();
        std::thread::spawn(|| {
            drop_for(ThreadRole::BlockWorker).unwrap();
            assert_eq!(current().unwrap(), (0, 0));
        })
        .join()
        .unwrap();
        std::thread::spawn(move || {
            drop_for(ThreadRole::FsWorker).unwrap();
            let (eff, perm) = current().unwrap();
            assert_eq!(eff, before & FS_WORKER_CAPS);
            assert_eq!(perm & !FS_WORKER_CAPS, 0);
        })
        .join()
        .unwrap();
        // The test's own thread is untouched.
        assert_eq!(current().unwrap().0, before);
    }
}

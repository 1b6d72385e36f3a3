//! Per-thread capability dropping. Linux keeps capabilities per thread, so each VMM
//! thread drops its own as it starts, once whatever needed privilege (opening
//! /dev/kvm, the tap, binding sockets) is done: every thread ends with empty
//! effective, permitted and inheritable sets (and so no ambient ones) and, where
//! CAP_SETPCAP allows, an empty bounding set. The one exception is the virtio-fs
//! thread, which serves guest file operations as the guest's caller and keeps the
//! file-ownership capabilities virtiofsd keeps by default ([`FS_WORKER_CAPS`]).
//!
//! A jailed husk-vmm (docs/vmm.md, "Jail") is also told a uid (= gid) to run as
//! ([`set_run_as`]): credentials are per thread too, so each thread but the
//! virtio-fs one switches to it with raw `setgroups`/`setresgid`/`setresuid` calls
//! (glibc's wrappers would switch every thread) as it drops its capabilities. The
//! virtio-fs thread stays uid 0, with only [`FS_WORKER_CAPS`], to act as the guest's
//! caller on files of many owners.

use std::sync::OnceLock;

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

/// The uid (= gid) threads switch to, once set.
static RUN_AS: OnceLock<u32> = OnceLock::new();

/// Makes every later [`drop_for`] of a thread that keeps no capabilities switch that
/// thread to `id` (uid and gid, no supplementary groups). Set once, before the VM's
/// threads start; a second, different id is refused.
pub fn set_run_as(id: u32) -> Result<(), CapsError> {
    if id == 0 {
        return Err(CapsError::RunAsRoot);
    }
    let set = *RUN_AS.get_or_init(|| id);
    if set != id {
        return Err(CapsError::RunAsTwice { set, asked: id });
    }
    Ok(())
}

/// The uid threads switch to, if any.
pub fn run_as() -> Option<u32> {
    RUN_AS.get().copied()
}

/// Switches the calling thread (only) to `id`: no supplementary groups, then the
/// gid, then the uid, which also clears its capabilities (no `SECBIT_KEEP_CAPS`).
fn switch_thread_to(id: u32) -> std::io::Result<()> {
    let check = |rc: libc::c_long| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let id = libc::c_long::from(id);
    // SAFETY: the raw syscalls change only the calling thread's credentials (glibc's
    // wrappers would signal every thread); their arguments are plain integers and a
    // null list of zero groups.
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            0,
            std::ptr::null::<libc::gid_t>(),
        ))?;
        check(libc::syscall(libc::SYS_setresgid, id, id, id))?;
        check(libc::syscall(libc::SYS_setresuid, id, id, id))?;
    }
    Ok(())
}

/// Errors from dropping capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// `set_run_as(0)`.
    #[error("cannot run as uid 0: that is root")]
    RunAsRoot,
    /// `set_run_as` with another id than before.
    #[error("threads already run as uid {set}, not {asked}")]
    RunAsTwice {
        /// The id set first.
        set: u32,
        /// The id asked for now.
        asked: u32,
    },
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
/// first (needs CAP_SETPCAP, so skipped quietly without it), then (for a role that
/// keeps none, once [`set_run_as`] was called) the switch to the run-as uid, then
/// effective, permitted and inheritable. Only ever removes capabilities, so it works
/// unprivileged.
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
    if let (Some(id), 0) = (run_as(), keep) {
        // Still privileged (SETUID, SETGID) here; the switch clears the rest.
        switch_thread_to(id).map_err(|source| CapsError::Syscall {
            call: "setresuid",
            role,
            source,
        })?;
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

    /// The `Uid:` line of a thread's status.
    fn uid_line(status: &str) -> String {
        std::fs::read_to_string(status)
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_thread_switches_its_own_uid_only() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("this test switches uids: run it as root (make test-vmm does)");
        }
        assert!(matches!(set_run_as(0), Err(CapsError::RunAsRoot)));
        std::thread::spawn(|| {
            switch_thread_to(300_123).unwrap();
            assert_eq!(
                uid_line("/proc/thread-self/status"),
                "300123 300123 300123 300123"
            );
            assert_eq!(current().unwrap(), (0, 0), "the switch clears capabilities");
            // No way back.
            assert!(switch_thread_to(0).is_err());
        })
        .join()
        .unwrap();
        assert_eq!(uid_line("/proc/thread-self/status"), "0 0 0 0");
    }
}

//! Per-thread seccomp filters (seccompiler). Every VMM thread installs an allowlist for
//! its role right after it starts (the main thread once the vCPUs run). A forbidden
//! syscall raises SIGSYS; the handler prints the syscall number and exits with status
//! 159 (128 + SIGSYS), so a missing entry is loud and easy to diagnose.

use std::collections::BTreeMap;

use seccompiler::{
    apply_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Exit status after a seccomp violation.
pub const SECCOMP_VIOLATION_EXIT: i32 = 159;
/// KVM_RUN ioctl number.
const KVM_RUN: u64 = 0xae80;
/// FIONBIO ioctl number (std's `set_nonblocking`).
const FIONBIO: u64 = 0x5421;

/// How strictly threads are confined: a configuration value, so it lives with the
/// rest of the config in husk-vmm-config.
pub use husk_vmm_config::SeccompLevel;

/// Which allowlist a thread gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// A vCPU: KVM_RUN, device emulation (console writes, eventfds), memory.
    Vcpu,
    /// The vsock worker: epoll, Unix sockets, eventfds.
    VsockWorker,
    /// The main thread while the VM runs: wait, kick vCPUs, join, tear down.
    Main,
    /// The binary's signal thread: sigwait and the stop request.
    Signals,
    /// Forwards stdin to the serial port.
    ConsoleInput,
    /// The virtio-fs server: file system calls relative to fds it holds (passthrough).
    FsWorker,
    /// The virtio-blk worker: positioned I/O on the image it holds.
    BlockWorker,
    /// The virtio-net worker: reads and writes on the tap it holds.
    NetWorker,
}

/// Errors from building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules.
    #[error("building the {role:?} seccomp filter: {source}")]
    Build {
        /// Role.
        role: ThreadRole,
        /// The underlying error.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("installing the {role:?} seccomp filter: {source}")]
    Install {
        /// Role.
        role: ThreadRole,
        /// The underlying error.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler: {0}")]
    Handler(vmm_sys_util::errno::Error),
}

/// Syscalls every thread needs: memory, locks, signals, thread exit, logging.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // HashMap seeds (once per thread).
    libc::SYS_getrandom,
];

fn role_syscalls(role: ThreadRole) -> &'static [i64] {
    match role {
        ThreadRole::Vcpu => &[libc::SYS_read],
        ThreadRole::VsockWorker => &[
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_accept,
            libc::SYS_accept4,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_shutdown,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
        ],
        ThreadRole::Main => &[
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_read,
            libc::SYS_tgkill,
            libc::SYS_nanosleep,
            libc::SYS_clock_nanosleep,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
        ],
        ThreadRole::Signals => &[libc::SYS_rt_sigtimedwait],
        ThreadRole::ConsoleInput => &[
            libc::SYS_read,
            libc::SYS_nanosleep,
            libc::SYS_clock_nanosleep,
        ],
        // What fuse-backend-rs's passthrough issues: *at() calls relative to the fds
        // it holds, reopening through /proc/self/fd, I/O on open files, per-thread
        // credential switches (setresuid/setresgid) and CAP_FSETID juggling.
        ThreadRole::FsWorker => &[
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_pread64,
            libc::SYS_preadv,
            libc::SYS_preadv2,
            libc::SYS_pwrite64,
            libc::SYS_pwritev,
            libc::SYS_pwritev2,
            libc::SYS_openat,
            libc::SYS_newfstatat,
            libc::SYS_fstat,
            libc::SYS_statx,
            libc::SYS_fstatfs,
            libc::SYS_getdents64,
            libc::SYS_lseek,
            libc::SYS_readlinkat,
            libc::SYS_mkdirat,
            libc::SYS_mknodat,
            libc::SYS_symlinkat,
            libc::SYS_linkat,
            libc::SYS_unlinkat,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_fchmod,
            libc::SYS_fchmodat,
            libc::SYS_fchown,
            libc::SYS_fchownat,
            libc::SYS_utimensat,
            libc::SYS_ftruncate,
            libc::SYS_fallocate,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_copy_file_range,
            libc::SYS_dup,
            libc::SYS_umask,
            libc::SYS_setresuid,
            libc::SYS_setresgid,
            libc::SYS_capget,
            libc::SYS_capset,
        ],
        ThreadRole::BlockWorker => &[
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_read,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_fdatasync,
        ],
        // Frames are read(2) from and write(2)n to the tap (write is common).
        ThreadRole::NetWorker => &[
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_read,
        ],
    }
}

/// The allowlist for `role`; violations trap (enforce) or are logged (log). Only
/// [`apply`] may install it: alone it lets the [`GLIBC_LAZY`] calls through.
fn filter_for(role: ThreadRole, level: SeccompLevel) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { role, source };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // GLIBC_LAZY calls pass here and get their EACCES from the filter stacked under
    // this one (`lazy_glibc_filter_for`), which `apply` always installs first.
    for nr in COMMON.iter().chain(role_syscalls(role)).chain(GLIBC_LAZY) {
        rules.insert(*nr, Vec::new());
    }
    let arg1_is = |value: u64| -> Result<SeccompRule, seccompiler::BackendError> {
        SeccompRule::new(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            value,
        )?])
    };
    // fcntl only to duplicate eventfds (virtio activation) and for std's debug-build
    // fd checks on close; the fs server also sets O_APPEND/O_DIRECT on open files.
    let mut fcntl = vec![
        arg1_is(libc::F_GETFD as u64).map_err(build)?,
        arg1_is(libc::F_DUPFD_CLOEXEC as u64).map_err(build)?,
    ];
    if role == ThreadRole::FsWorker {
        fcntl.push(arg1_is(libc::F_GETFL as u64).map_err(build)?);
        fcntl.push(arg1_is(libc::F_SETFL as u64).map_err(build)?);
    }
    rules.insert(libc::SYS_fcntl, fcntl);
    match role {
        ThreadRole::Vcpu => {
            rules.insert(libc::SYS_ioctl, vec![arg1_is(KVM_RUN).map_err(build)?]);
        }
        ThreadRole::VsockWorker => {
            rules.insert(libc::SYS_ioctl, vec![arg1_is(FIONBIO).map_err(build)?]);
            // Hybrid vsock speaks Unix sockets only: no socket of another family
            // (no route to the host's network, netlink or raw packets).
            let unix_only = SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::AF_UNIX as u64,
            )
            .map_err(build)?])
            .map_err(build)?;
            rules.insert(libc::SYS_socket, vec![unix_only]);
        }
        ThreadRole::Main
        | ThreadRole::Signals
        | ThreadRole::ConsoleInput
        | ThreadRole::FsWorker
        | ThreadRole::BlockWorker
        | ThreadRole::NetWorker => {}
    }
    let mismatch = match level {
        SeccompLevel::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // siginfo_t for SIGSYS on x86_64: si_syscall is the int at byte offset 24.
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
    let nr = unsafe { *(info.cast::<u8>().add(24).cast::<i32>()) };
    const PREFIX: &[u8] = b"husk-vmm: seccomp: forbidden syscall ";
    let mut msg = [0u8; 64];
    msg[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let mut n = nr.unsigned_abs();
    let mut k = 0;
    loop {
        digits[k] = b'0' + (n % 10) as u8;
        k += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut len = PREFIX.len();
    for d in digits[..k].iter().rev() {
        msg[len] = *d;
        len += 1;
    }
    msg[len] = b'\n';
    len += 1;
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` is a valid buffer.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), len);
        libc::_exit(SECCOMP_VIOLATION_EXIT);
    }
}

/// Syscalls glibc makes on its own, lazily, from whichever thread happens to reach
/// the code first: `free` shrinking a thread arena's heap opens
/// /proc/sys/vm/overcommit_memory once per process, and an arena created once more
/// than eight exist asks sched_getaffinity for the CPU count. Neither is the thread's
/// own work, and glibc copes with their failure (it then assumes overcommit is on and
/// two CPUs), so a role that does not list them gets `EACCES` instead of SIGSYS: the
/// call still never happens, and a VMM thread is not killed by a `free`.
const GLIBC_LAZY: &[i64] = &[libc::SYS_openat, libc::SYS_sched_getaffinity];

/// The filter stacked under `role`'s allowlist: `EACCES` for the [`GLIBC_LAZY`] calls
/// the role does not need, everything else left to the allowlist. `None` when the
/// role needs them all.
fn lazy_glibc_filter_for(role: ThreadRole) -> Result<Option<BpfProgram>, SeccompError> {
    let build = |source| SeccompError::Build { role, source };
    let denied: BTreeMap<i64, Vec<SeccompRule>> = GLIBC_LAZY
        .iter()
        .filter(|nr| !role_syscalls(role).contains(nr))
        .map(|nr| (*nr, Vec::new()))
        .collect();
    if denied.is_empty() {
        return Ok(None);
    }
    let filter = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(build)?;
    BpfProgram::try_from(filter).map(Some).map_err(build)
}

/// Installs `role`'s filter on the calling thread (no-op when `level` is `Off`).
///
/// Two filters are stacked and the kernel applies the stricter verdict: the
/// allowlist, which lets the [`GLIBC_LAZY`] calls through, and under it the filter
/// that answers those with `EACCES`. The latter goes in first, so a failure to
/// install the allowlist never leaves them allowed.
pub fn apply(role: ThreadRole, level: SeccompLevel) -> Result<(), SeccompError> {
    if level == SeccompLevel::Off {
        return Ok(());
    }
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
        .map_err(SeccompError::Handler)?;
    let install = |source| SeccompError::Install { role, source };
    if let Some(lazy) = lazy_glibc_filter_for(role)? {
        apply_filter(&lazy).map_err(install)?;
    }
    let prog = filter_for(role, level)?;
    apply_filter(&prog).map_err(install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_compiles_to_bpf() {
        for role in [
            ThreadRole::Vcpu,
            ThreadRole::VsockWorker,
            ThreadRole::Main,
            ThreadRole::Signals,
            ThreadRole::ConsoleInput,
            ThreadRole::FsWorker,
            ThreadRole::BlockWorker,
            ThreadRole::NetWorker,
        ] {
            for level in [SeccompLevel::Log, SeccompLevel::Enforce] {
                let prog = filter_for(role, level).unwrap();
                assert!(prog.len() > 10, "{role:?}");
            }
        }
    }

    /// Runs `body` in a forked child with `role`'s filter enforced; returns its exit
    /// status (159 when a syscall was forbidden).
    fn status_under(role: ThreadRole, body: fn() -> i32) -> i32 {
        // SAFETY: fork in a test; the child only makes plain syscalls and leaves with
        // _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: open/dup2 on valid arguments in the child.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                libc::dup2(null, 2);
            }
            let code = match apply(role, SeccompLevel::Enforce) {
                Ok(()) => body(),
                Err(_) => 2,
            };
            // SAFETY: leaving the forked child without running the harness's atexit.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status));
        libc::WEXITSTATUS(status)
    }

    fn socket_of(family: libc::c_int) -> i32 {
        // SAFETY: socket(2) with integer arguments; the descriptor is left to _exit.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        i32::from(fd < 0 && family == libc::AF_UNIX)
    }

    fn ioctl_on_nothing(request: u64) -> i32 {
        // SAFETY: ioctl(2) on fd -1 (EBADF) with an integer argument.
        unsafe { libc::ioctl(-1, request as _, 0) };
        0
    }

    fn exec_true() -> i32 {
        let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
        // SAFETY: execve(2) with NUL-terminated argv and a null envp.
        unsafe { libc::execve(argv[0], argv.as_ptr(), std::ptr::null()) };
        0
    }

    #[test]
    fn the_vsock_thread_may_make_unix_sockets_only() {
        assert_eq!(
            status_under(ThreadRole::VsockWorker, || socket_of(libc::AF_UNIX)),
            0,
            "AF_UNIX is allowed"
        );
        let others: [fn() -> i32; 4] = [
            || socket_of(libc::AF_INET),
            || socket_of(libc::AF_INET6),
            || socket_of(libc::AF_NETLINK),
            || socket_of(libc::AF_PACKET),
        ];
        for (n, body) in others.into_iter().enumerate() {
            assert_eq!(
                status_under(ThreadRole::VsockWorker, body),
                SECCOMP_VIOLATION_EXIT,
                "family #{n} must trap"
            );
        }
    }

    /// What glibc's `free` does on its own when it first shrinks a thread arena.
    fn open_overcommit_sysctl() -> i32 {
        // SAFETY: open(2) of a NUL-terminated path; the descriptor is left to _exit.
        let fd = unsafe {
            libc::open(
                c"/proc/sys/vm/overcommit_memory".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        match (fd, std::io::Error::last_os_error().raw_os_error()) {
            (fd, _) if fd >= 0 => 10,
            (_, Some(libc::EACCES)) => 0,
            _ => 11,
        }
    }

    /// What glibc does when it makes a ninth malloc arena.
    fn cpu_count_by_affinity() -> i32 {
        let mut set = [0u8; 128];
        // SAFETY: sched_getaffinity(2) writes at most `set.len()` bytes into `set`.
        let rc =
            unsafe { libc::syscall(libc::SYS_sched_getaffinity, 0, set.len(), set.as_mut_ptr()) };
        match (rc, std::io::Error::last_os_error().raw_os_error()) {
            (rc, _) if rc > 0 => 10,
            (_, Some(libc::EACCES)) => 0,
            _ => 11,
        }
    }

    /// A VMM thread that frees memory must not die of glibc's lazy open: it gets
    /// EACCES (the open never happens), on every role that does not open files; the
    /// fs server, which does, still opens.
    #[test]
    fn glibcs_lazy_calls_fail_instead_of_killing_the_thread() {
        for role in [
            ThreadRole::Vcpu,
            ThreadRole::VsockWorker,
            ThreadRole::Main,
            ThreadRole::Signals,
            ThreadRole::ConsoleInput,
            ThreadRole::BlockWorker,
            ThreadRole::NetWorker,
        ] {
            assert_eq!(status_under(role, open_overcommit_sysctl), 0, "{role:?}");
            assert_eq!(status_under(role, cpu_count_by_affinity), 0, "{role:?}");
            // The stacked filter changes nothing else: socket(2) still traps.
            if role != ThreadRole::VsockWorker {
                assert_eq!(
                    status_under(role, || socket_of(libc::AF_INET)),
                    SECCOMP_VIOLATION_EXIT,
                    "{role:?}"
                );
            }
        }
        assert_eq!(
            status_under(ThreadRole::FsWorker, open_overcommit_sysctl),
            10,
            "the fs server opens files"
        );
    }

    #[test]
    fn ioctls_are_checked_by_request() {
        // The vCPU thread: KVM_RUN passes the filter (EBADF on a bad fd), any other
        // request traps: TUNSETIFF, and KVM_CREATE_VM on the vsock thread.
        assert_eq!(
            status_under(ThreadRole::Vcpu, || ioctl_on_nothing(KVM_RUN)),
            0
        );
        assert_eq!(
            status_under(ThreadRole::Vcpu, || ioctl_on_nothing(0x4004_54ca)),
            SECCOMP_VIOLATION_EXIT
        );
        assert_eq!(
            status_under(ThreadRole::VsockWorker, || ioctl_on_nothing(0xae01)),
            SECCOMP_VIOLATION_EXIT
        );
        // No thread may exec.
        for role in [
            ThreadRole::Main,
            ThreadRole::FsWorker,
            ThreadRole::VsockWorker,
        ] {
            assert_eq!(
                status_under(role, exec_true),
                SECCOMP_VIOLATION_EXIT,
                "{role:?}"
            );
        }
    }

    #[test]
    fn enforced_filter_allows_listed_and_traps_others() {
        // In a child process so the test harness keeps its syscalls.
        // SAFETY: fork in a test; the child only runs async-signal-safe-ish code and
        // exits with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // Keep the handler's message out of the test output.
            // SAFETY: open/dup2 on valid arguments in the child.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                libc::dup2(null, 2);
            }
            let code = match apply(ThreadRole::Signals, SeccompLevel::Enforce) {
                Ok(()) => {
                    // Allowed: getpid. Forbidden for this role: socket → SIGSYS → 159.
                    // SAFETY: plain syscalls.
                    unsafe {
                        libc::getpid();
                        libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                    }
                    0
                }
                Err(_) => 2,
            };
            // SAFETY: leaving the forked child without running the harness's atexit.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), SECCOMP_VIOLATION_EXIT);
    }
}

//! Host-side confinement of a sandbox's VM processes, shared by both backends: a host
//! uid/gid of their own per sandbox ([`IdLease`]), resource limits, the sandbox's
//! cgroup, size-capped logs, and the one way they are started ([`Launch`]).
//!
//! A sandbox's uid/gid comes from a range the operator reserves for VMs (`[vm]
//! host_ids`, default [`DEFAULT_HOST_IDS`]), is unique among live sandboxes (leases
//! in [`IDS_DIR`], taken under an `flock`) and goes back when the sandbox's VM
//! processes are gone. A uid or gid that has a passwd or group entry is never handed
//! out. The lease also owns the sandbox's *run dir*, `IDS_DIR/<uid>/` (mode 0700,
//! owned by that uid), where the unprivileged processes bind their sockets: they
//! cannot write the state dir, which holds the files the teardown trusts.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The uids/gids handed to sandboxes unless `[vm] host_ids` says otherwise: above
/// every range distributions give to users and to rootless containers' subuids
/// (100000-165535 by default).
pub const DEFAULT_HOST_IDS: [u32; 2] = [200_000, 265_535];
/// Where the leases and the run dirs live (host-wide: one range for every husk root).
pub const IDS_DIR: &str = "/run/husk-vm";
/// What a log of a sandbox (console, VMM, helpers) may grow to; beyond it the output
/// is read and dropped, so the writer never blocks.
pub const LOG_CAP: u64 = 16 << 20;
/// The lock file taken while leases are read or changed.
const LOCK_FILE: &str = "lock";

/// Errors confining a VM process.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The operator's `[vm] host_ids` range is unusable.
    #[error("[vm] host_ids {first}-{last} is not a usable range (want 1 <= first <= last < 4294967294, and not uid 65534)")]
    BadRange { first: u32, last: u32 },
    /// Every uid of the range is leased to a live sandbox.
    #[error("no free host uid for the sandbox's VM processes: every uid in {first}-{last} is leased (see {dir})")]
    Exhausted { first: u32, last: u32, dir: String },
    /// A step of taking or giving back a lease failed.
    #[error("host uid lease: {what}: {source}")]
    Lease {
        what: String,
        source: std::io::Error,
    },
    /// The sandbox's cgroup cannot take the process.
    #[error("cannot place VM processes in cgroup {path}: open cgroup.procs: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A capped log could not be set up.
    #[error("log {path}: {what}: {source}")]
    Log {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    /// The jail's pid namespace could not be made.
    #[error(transparent)]
    Jail(#[from] super::jail::JailError),
    /// Starting the process failed (a confinement step in the child included).
    #[error("cannot start {program} confined: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

/// A range of host ids reserved for VM processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostIds {
    first: u32,
    last: u32,
}

impl HostIds {
    /// The range `[first, last]` (inclusive), checked.
    pub fn new([first, last]: [u32; 2]) -> Result<Self, ConfineError> {
        let nobody = 65_534;
        if first == 0 || last < first || last >= u32::MAX - 1 || (first..=last).contains(&nobody) {
            return Err(ConfineError::BadRange { first, last });
        }
        Ok(Self { first, last })
    }

    /// `[vm] host_ids` of the operator config, else [`DEFAULT_HOST_IDS`].
    pub fn from_config(configured: Option<[u32; 2]>) -> Result<Self, ConfineError> {
        Self::new(configured.unwrap_or(DEFAULT_HOST_IDS))
    }
}

/// A uid (= gid) leased to one sandbox, with its run dir. Dropping it gives both back.
#[derive(Debug)]
pub struct IdLease {
    id: u32,
    dir: PathBuf,
}

/// What a lease file says: the state dir it was taken for, by identity.
fn lease_text(state_dir: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(state_dir)?;
    Ok(format!(
        "{} {} {}\n",
        meta.dev(),
        meta.ino(),
        state_dir.display()
    ))
}

/// Whether the sandbox a lease was taken for is gone: its state dir no longer exists
/// (or is another directory now). A live sandbox keeps its state dir until its VM
/// processes are gone, so a lease of a sandbox whose owner died (kill -9) comes back
/// when `husk delete` removes the dir.
fn lease_is_stale(text: &str) -> bool {
    let mut parts = text.trim_end().splitn(3, ' ');
    let (Some(dev), Some(ino), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        return true;
    };
    match std::fs::metadata(path) {
        Ok(meta) => dev != meta.dev().to_string() || ino != meta.ino().to_string(),
        Err(_) => true,
    }
}

/// Whether `id` names a user or a group of this host (then it may own files).
fn id_is_known(id: u32) -> bool {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(id))
        .ok()
        .flatten()
        .is_some();
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(id))
        .ok()
        .flatten()
        .is_some();
    user || group
}

/// The names a run dir may hold, all made by husk or its VM processes.
pub const RUN_DIR_ENTRIES: &[&str] = &[
    "vhost-vsock.sock",
    "vsock.sock",
    "virtiofs.sock",
    // virtiofsd writes its pid next to its socket.
    "virtiofs.sock.pid",
];

impl IdLease {
    /// Leases the lowest free id of `range` to the sandbox in `state_dir`, in `ids_dir`.
    pub fn take(ids_dir: &Path, range: HostIds, state_dir: &Path) -> Result<Self, ConfineError> {
        let lease_err = |what: String| move |source| ConfineError::Lease { what, source };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(ids_dir)
            .map_err(lease_err(format!("create {}", ids_dir.display())))?;
        // Searchable by all (each sandbox's uid reaches its own run dir), listable
        // and writable by root only.
        std::fs::set_permissions(ids_dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .map_err(lease_err(format!("chmod {}", ids_dir.display())))?;
        let _lock = lock(ids_dir)?;
        let text =
            lease_text(state_dir).map_err(lease_err(format!("stat {}", state_dir.display())))?;
        for id in range.first..=range.last {
            let lease = ids_dir.join(format!("{id}.lease"));
            match std::fs::read_to_string(&lease) {
                Ok(held) if !lease_is_stale(&held) => continue,
                Ok(_) => {
                    // Its sandbox is gone: the lease and its run dir go first.
                    let dir = ids_dir.join(id.to_string());
                    if clear_run_dir(&dir).is_err() {
                        continue;
                    }
                    std::fs::remove_file(&lease)
                        .map_err(lease_err(format!("remove stale {}", lease.display())))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(lease_err(format!("read {}", lease.display()))(e)),
            }
            if id_is_known(id) {
                continue;
            }
            let dir = ids_dir.join(id.to_string());
            if clear_run_dir(&dir).is_err() {
                continue;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(lease_err(format!("create {}", dir.display())))?;
            std::os::unix::fs::chown(&dir, Some(id), Some(id))
                .map_err(lease_err(format!("chown {} to {id}", dir.display())))?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&lease)
                .map_err(lease_err(format!("create {}", lease.display())))?;
            file.write_all(text.as_bytes())
                .map_err(lease_err(format!("write {}", lease.display())))?;
            return Ok(Self { id, dir });
        }
        Err(ConfineError::Exhausted {
            first: range.first,
            last: range.last,
            dir: ids_dir.display().to_string(),
        })
    }

    /// The leased uid, also the gid.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The run dir, owned by the leased uid.
    pub fn run_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for IdLease {
    fn drop(&mut self) {
        let Some(ids_dir) = self.dir.parent() else {
            return;
        };
        let _lock = match lock(ids_dir) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot give back host uid {}", self.id);
                return;
            }
        };
        if let Err(e) = clear_run_dir(&self.dir) {
            // The lease stays; it is stale once the state dir is gone.
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot clear the run dir");
            return;
        }
        let _ = std::fs::remove_file(ids_dir.join(format!("{}.lease", self.id)));
    }
}

/// Takes the leases' lock (released when the file closes).
fn lock(ids_dir: &Path) -> Result<File, ConfineError> {
    let path = ids_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| ConfineError::Lease {
            what: format!("open {}", path.display()),
            source,
        })?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(ConfineError::Lease {
            what: format!("flock {}", path.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(file)
}

/// Removes a run dir: only the names husk knows, never following a link, without
/// listing it (its owner is an unprivileged VM process).
fn clear_run_dir(dir: &Path) -> std::io::Result<()> {
    let fd = match nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // SAFETY: `fd` was just opened and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for name in RUN_DIR_ENTRIES {
        match nix::unistd::unlinkat(
            Some(fd.as_raw_fd()),
            *name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    drop(fd);
    std::fs::remove_dir(dir)
}

/// One resource limit: (resource, soft = hard).
pub type Rlimit = (libc::__rlimit_resource_t, u64);

/// How a VM process is started: program, arguments, working dir, logs, the
/// descriptors it inherits, its credentials, limits and cgroup. Every step is done
/// in the child before exec and fails the spawn (closed) if it fails.
pub struct Launch<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    /// The working dir (the sandbox's state dir: `husk delete` recognises a sandbox's
    /// VM processes by it). Entered as root, before the ids change.
    pub dir: &'a Path,
    /// stderr (and stdout unless `console` is given), capped at [`LOG_CAP`].
    pub log: &'a Path,
    /// stdout to a log of its own (husk-vmm's guest console), capped the same.
    pub console: Option<&'a Path>,
    /// Descriptors kept across exec (same numbers).
    pub inherit: &'a [RawFd],
    /// Run as this uid and gid (no supplementary groups); `None` keeps root.
    pub user: Option<u32>,
    pub limits: &'a [Rlimit],
    /// A cgroup v2 directory to join before exec.
    pub cgroup: Option<&'a Path>,
    /// husk-vmm's jail: its namespaces and mounts are made in the child, after the
    /// cgroup and limits, before exec (see `jail.rs`).
    pub jail: Option<&'a super::jail::Jail>,
}

/// Opens `<cgroup>/cgroup.procs` for the child to write itself into.
pub fn open_cgroup_procs(cgroup: &Path) -> Result<File, ConfineError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .map_err(|source| ConfineError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })
}

/// A log file that takes at most [`LOG_CAP`] bytes: the returned descriptor is the
/// write end of a pipe, copied into `path` by a thread that drops what is beyond the
/// cap (and says so once) and ends when every writer is gone.
pub fn capped_log(path: &Path) -> Result<OwnedFd, ConfineError> {
    capped_log_with(path, LOG_CAP)
}

fn capped_log_with(path: &Path, cap: u64) -> Result<OwnedFd, ConfineError> {
    let log_err = |what| {
        let path = path.to_path_buf();
        move |source| ConfineError::Log { path, what, source }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o640)
        .open(path)
        .map_err(log_err("create"))?;
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| log_err("pipe")(e.into()))?;
    let name = path.display().to_string();
    std::thread::Builder::new()
        .name("husk-log".into())
        .spawn(move || {
            let mut read = File::from(read);
            let mut buf = vec![0u8; 64 << 10];
            let mut written = 0u64;
            let mut noted = false;
            loop {
                let n = match read.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let room = cap.saturating_sub(written) as usize;
                let take = n.min(room);
                if take > 0 {
                    if file.write_all(&buf[..take]).is_err() {
                        break;
                    }
                    written += take as u64;
                }
                if take < n && !noted {
                    noted = true;
                    let _ = writeln!(
                        file,
                        "\n[husk: {name} reached {cap} bytes; the rest is dropped]"
                    );
                }
            }
        })
        .map_err(log_err("start the copier thread"))?;
    Ok(write)
}

/// Starts a VM process as `l` says: own process group (a terminal's Ctrl-C reaches
/// husk, which forwards it to the container, not the VMM), killed if husk dies.
pub fn spawn(l: &Launch<'_>) -> Result<Child, ConfineError> {
    let log_err = capped_log(l.log)?;
    let log = match l.console {
        Some(console) => capped_log(console)?,
        None => log_err.try_clone().map_err(|source| ConfineError::Log {
            path: l.log.to_path_buf(),
            what: "dup",
            source,
        })?,
    };
    let cgroup = l.cgroup.map(open_cgroup_procs).transpose()?;
    let cgroup_fd = cgroup.as_ref().map(|f| f.as_raw_fd());
    let inherit = l.inherit.to_vec();
    let limits: Vec<libc::rlimit> = l
        .limits
        .iter()
        .map(|&(_, v)| libc::rlimit {
            rlim_cur: v,
            rlim_max: v,
        })
        .collect();
    let resources: Vec<_> = l.limits.iter().map(|&(r, _)| r).collect();
    let user = l.user;
    // Owned by the closure (it must be 'static); prepared here, before the fork.
    let jail = l.jail.cloned();
    // An unprivileged process may not be able to reach its program by path (the
    // helpers are installed under /root/.cache): exec it through a descriptor opened
    // here, keeping its name as argv[0].
    // An unprivileged user may not be able to walk to the program (a cache under
    // /root): it is started through a descriptor of its directory, opened here as
    // root. Through the directory, not the file itself, so that the process keeps
    // its name (`ps`, `/proc/<pid>/comm`) rather than the descriptor's number.
    let (program_dir, program_name) = match (l.program.parent(), l.program.file_name()) {
        (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => (dir, name),
        _ => {
            return Err(ConfineError::Spawn {
                program: l.program.display().to_string(),
                source: std::io::Error::other("not an absolute program path"),
            })
        }
    };
    let program = match user {
        Some(_) => Some(File::from(
            nix::fcntl::open(
                program_dir,
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map(|fd| {
                // SAFETY: `fd` was just opened and is owned here.
                unsafe { OwnedFd::from_raw_fd(fd) }
            })
            .map_err(|e| ConfineError::Spawn {
                program: l.program.display().to_string(),
                source: e.into(),
            })?,
        )),
        None => None,
    };
    let mut command = match &program {
        Some(file) => {
            let mut c = Command::new(
                Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())).join(program_name),
            );
            c.arg0(l.program);
            c
        }
        None => Command::new(l.program),
    };
    command
        .args(l.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .current_dir(l.dir)
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe syscalls (write, setrlimit, unshare, mount, setgroups,
    // setresgid, setresuid, prctl, fcntl); it reads data allocated before the fork
    // and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc != 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            if let Some(fd) = cgroup_fd {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (resource, limit) in resources.iter().zip(&limits) {
                check(libc::setrlimit(*resource, limit))?;
            }
            if let Some(jail) = &jail {
                jail.make_mounts_in_child()?;
            }
            if let Some(id) = user {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(id, id, id))?;
                check(libc::setresuid(id, id, id))?;
            }
            // After the id change, which clears the parent-death signal.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            for fd in &inherit {
                check(libc::fcntl(*fd, libc::F_SETFD, 0))?;
            }
            Ok(())
        });
    }
    // A jailed process is born pid 1 of a pid namespace of its own. Only around the
    // fork: while this thread's children go to a new pid namespace it cannot start
    // threads (the log copiers above are already running).
    let child = match l.jail {
        Some(_) => super::jail::in_new_pid_namespace(|| command.spawn())?,
        None => command.spawn(),
    };
    drop(program);
    drop(cgroup);
    child.map_err(|source| ConfineError::Spawn {
        program: l.program.display().to_string(),
        source,
    })
}

/// The limits every VM process gets: no core dumps (guest memory), a bounded number
/// of descriptors.
pub fn base_limits(nofile: u64) -> Vec<Rlimit> {
    vec![(libc::RLIMIT_CORE, 0), (libc::RLIMIT_NOFILE, nofile)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked() {
        assert!(HostIds::new([200_000, 265_535]).is_ok());
        for bad in [[0, 10], [10, 9], [60_000, 70_000], [1, u32::MAX]] {
            assert!(HostIds::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            HostIds::from_config(None).unwrap(),
            HostIds::new(DEFAULT_HOST_IDS).unwrap()
        );
    }

    #[test]
    fn leases_are_unique_and_come_back() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown of the run dir needs root");
            return;
        }
        let ids = tempfile::tempdir().unwrap();
        let states = tempfile::tempdir().unwrap();
        let (a, b) = (states.path().join("a"), states.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let range = HostIds::new([300_000, 300_001]).unwrap();
        let first = IdLease::take(ids.path(), range, &a).unwrap();
        let second = IdLease::take(ids.path(), range, &b).unwrap();
        assert_ne!(first.id(), second.id());
        let meta = std::fs::metadata(first.run_dir()).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (first.id(), 0o700));
        let err = IdLease::take(ids.path(), range, &a).unwrap_err();
        assert!(matches!(err, ConfineError::Exhausted { .. }), "{err}");
        // Given back on drop ...
        let id = first.id();
        drop(first);
        assert!(!ids.path().join(id.to_string()).exists());
        let again = IdLease::take(ids.path(), range, &a).unwrap();
        assert_eq!(again.id(), id);
        // ... and stale once its sandbox's dir is gone (the owner was killed).
        std::mem::forget(second);
        std::fs::remove_dir(&b).unwrap();
        let c = states.path().join("c");
        std::fs::create_dir(&c).unwrap();
        assert!(IdLease::take(ids.path(), range, &c).is_ok());
    }

    #[test]
    fn logs_stop_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let fd = capped_log_with(&path, 1000).unwrap();
        let mut w = File::from(fd);
        for _ in 0..100 {
            w.write_all(&[b'a'; 100]).unwrap();
        }
        drop(w);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if text.contains("the rest is dropped") {
                assert!(text.starts_with(&"a".repeat(1000)));
                assert!(text.len() < 1200, "{}", text.len());
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{text:?}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// A cgroup v2 directory of this host for tests (root only), removed on drop.
    struct TestCgroup(PathBuf);

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    fn test_cgroup() -> Option<TestCgroup> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let base = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|p| {
                p.join("cgroup.procs").exists()
                    && nix::sys::statfs::statfs(*p)
                        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            })?;
        let dir = base.join(format!("husk-confine-test-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        Some(TestCgroup(dir))
    }

    #[test]
    fn processes_start_in_the_cgroup_with_their_limits() {
        let Some(cgroup) = test_cgroup() else {
            eprintln!("skipped: needs root and a cgroup v2 hierarchy");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let args = [
            "-c".to_string(),
            "cat /proc/self/cgroup; ulimit -n; ulimit -c; id -u".to_string(),
        ];
        let mut child = spawn(&Launch {
            program: Path::new("/bin/sh"),
            args: &args,
            dir: dir.path(),
            log: &log,
            console: None,
            inherit: &[],
            user: Some(300_123),
            limits: &base_limits(321),
            cgroup: Some(&cgroup.0),
            jail: None,
        })
        .unwrap();
        assert!(child.wait().unwrap().success());
        let name = cgroup.0.file_name().unwrap().to_str().unwrap().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let out = std::fs::read_to_string(&log).unwrap();
            let lines: Vec<&str> = out.lines().collect();
            // Complete once the last command (id -u) printed: the copier may still be
            // writing the cgroup lines (a dozen on a hybrid host) when we read.
            if out.ends_with("300123\n") {
                assert!(
                    lines
                        .iter()
                        .any(|l| l.starts_with("0::") && l.ends_with(&name)),
                    "{out}"
                );
                assert!(out.contains("\n321\n0\n300123"), "{out}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{out}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn a_missing_cgroup_fails_the_spawn() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-cgroup");
        let err = spawn(&Launch {
            program: Path::new("/bin/true"),
            args: &[],
            dir: dir.path(),
            log: &dir.path().join("log"),
            console: None,
            inherit: &[],
            user: None,
            limits: &[],
            cgroup: Some(&missing),
            jail: None,
        })
        .unwrap_err();
        assert!(matches!(err, ConfineError::Cgroup { .. }), "{err}");
    }
}

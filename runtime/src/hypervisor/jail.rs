//! husk-vmm's jail, in the spirit of Firecracker's jailer: built by the runtime
//! before exec, entered by husk-vmm as its first act (`--jail`, vmm/src/jail.rs).
//!
//! - **A root of its own**: `<state dir>/jail/`, made here (root-owned, 0755), holding
//!   only mount points and the VM's config. In the forked child, in new mount,
//!   network, IPC and UTS namespaces (and a new pid namespace: the child is pid 1 of
//!   its own, see [`in_new_pid_namespace`]), the host's mounts become slaves and the
//!   jail gets: `/dev/kvm` (a bind of the host's node, nosuid, noexec), `kernel` and
//!   `initramfs` (read-only binds of the guest artifacts), `shared` (a recursive bind
//!   of the share: read-only at its top, and still receiving the containers' rootfs
//!   mounts the host makes later), `run` (the sandbox's run dir, owned by its uid:
//!   the vsock socket is bound there), `proc` (a procfs of its own pid namespace with
//!   `subset=pid`: its own `/proc/self`, which virtio-fs reopens files through, and
//!   no `/proc/sys`), and `vm.json`; then the jail's own mount is made read-only,
//!   nosuid, nodev and noexec. These mounts exist only in the VMM's namespace: they
//!   go with it, and none is ever made on the host.
//! - husk-vmm starts as root in there, pivots into the jail and detaches the host's
//!   root before it reads its config; every thread but the virtio-fs one switches to
//!   the sandbox's uid (`run_as`) as it drops its capabilities; the virtio-fs thread
//!   stays uid 0 with only the file-ownership capabilities.
//! - Every step fails the start, with the step named: never a VMM without its jail.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use husk_vmm_config::VmmConfig;

/// The jail, relative to the sandbox's state dir.
pub const JAIL_DIR: &str = "jail";
/// husk-vmm's config, inside the jail.
pub const JAIL_CONFIG: &str = "/vm.json";
/// The KVM device husk-vmm needs.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// The files of a jail, removed by name (never listed): mount points and the config.
const JAIL_FILES: &[&str] = &["vm.json", "kernel", "initramfs", "dev/kvm"];
/// Its directories, removed after the files, innermost first.
const JAIL_DIRS: &[&str] = &["dev", "proc", "run", "shared"];

/// Errors building or entering husk-vmm's jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A step of building the jail directory failed.
    #[error("building husk-vmm's jail {dir}: {what}: {source}")]
    Build {
        dir: PathBuf,
        what: String,
        source: std::io::Error,
    },
    /// What the jail must hold is unusable.
    #[error("husk-vmm's jail: {0}")]
    Source(String),
    /// The new pid namespace could not be made or left.
    #[error("starting husk-vmm in a pid namespace of its own: {what}: {source}")]
    PidNamespace {
        what: &'static str,
        source: std::io::Error,
    },
}

/// What the jail gives husk-vmm, as host paths.
#[derive(Debug, Clone, Copy)]
pub struct JailSources<'a> {
    pub kvm: &'a Path,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    /// The share (the state dir's read-only `shared/`).
    pub shared: &'a Path,
    /// The sandbox's run dir (owned by its uid).
    pub run: &'a Path,
}

/// How one mount of the jail is made.
#[derive(Debug, Clone)]
enum MountKind {
    /// A bind mount, then (if not 0) a remount of it with these flags.
    Bind {
        recursive: bool,
        remount: libc::c_ulong,
    },
    /// A procfs of the child's pid namespace.
    Proc,
}

#[derive(Debug, Clone)]
struct JailMount {
    source: CString,
    /// Absolute, under the jail directory.
    target: CString,
    kind: MountKind,
}

/// A built jail directory and the mounts the child makes in it.
#[derive(Debug, Clone)]
pub struct Jail {
    dir: PathBuf,
    c_dir: CString,
    mounts: Vec<JailMount>,
}

fn c_path(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailError::Source(format!("{} has a NUL byte", path.display())))
}

/// Read-only, no set-id, no devices, no exec: the artifacts' and the root's flags.
const SEALED: libc::c_ulong = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

impl Jail {
    /// Makes `<state_dir>/jail` (a leftover one is removed first) with a mount point
    /// for each of `sources`, checked: `/dev/kvm` a character device, the artifacts
    /// regular files, the share and the run dir directories.
    pub fn build(state_dir: &Path, sources: &JailSources<'_>) -> Result<Self, JailError> {
        let dir = state_dir.join(JAIL_DIR);
        let build_err = |what: String| {
            let dir = dir.clone();
            move |source| JailError::Build { dir, what, source }
        };
        let kind_of = |path: &Path| {
            std::fs::metadata(path)
                .map_err(|e| JailError::Source(format!("{}: {e}", path.display())))
        };
        if !kind_of(sources.kvm)?.file_type().is_char_device() {
            return Err(JailError::Source(format!(
                "{} is not a character device",
                sources.kvm.display()
            )));
        }
        for artifact in [sources.kernel, sources.initramfs] {
            if !kind_of(artifact)?.is_file() {
                return Err(JailError::Source(format!(
                    "{} is not a regular file",
                    artifact.display()
                )));
            }
        }
        for d in [sources.shared, sources.run] {
            if !kind_of(d)?.is_dir() {
                return Err(JailError::Source(format!(
                    "{} is not a directory",
                    d.display()
                )));
            }
        }
        remove(state_dir).map_err(build_err("remove a leftover jail".into()))?;
        let mkdir = |rel: &str| {
            let path = if rel.is_empty() {
                dir.clone()
            } else {
                dir.join(rel)
            };
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(&path)
                .map_err(build_err(format!("create {}", path.display())))
        };
        let touch = |rel: &str| {
            let path = dir.join(rel);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map(drop)
                .map_err(build_err(format!("create {}", path.display())))
        };
        mkdir("")?;
        for d in JAIL_DIRS {
            mkdir(d)?;
        }
        for f in ["kernel", "initramfs", "dev/kvm"] {
            touch(f)?;
        }
        let target = |rel: &str| c_path(&dir.join(rel));
        let bind = |source: &Path, rel: &str, recursive: bool, remount: libc::c_ulong| {
            Ok::<_, JailError>(JailMount {
                source: c_path(source)?,
                target: target(rel)?,
                kind: MountKind::Bind { recursive, remount },
            })
        };
        let mounts = vec![
            bind(
                sources.kvm,
                "dev/kvm",
                false,
                libc::MS_NOSUID | libc::MS_NOEXEC,
            )?,
            bind(sources.kernel, "kernel", false, SEALED)?,
            bind(sources.initramfs, "initramfs", false, SEALED)?,
            // Its own flags (read-only, nosuid, nodev at the top), and its submounts'.
            bind(sources.shared, "shared", true, 0)?,
            bind(
                sources.run,
                "run",
                false,
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            )?,
            JailMount {
                source: c"proc".into(),
                target: target("proc")?,
                kind: MountKind::Proc,
            },
        ];
        Ok(Self {
            c_dir: c_path(&dir)?,
            dir,
            mounts,
        })
    }

    /// The jail directory (husk-vmm's `--jail`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `--config` is, as a host path.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join(JAIL_CONFIG.trim_start_matches('/'))
    }

    /// Run in the forked child before exec: the namespaces and the jail's mounts (see
    /// the module docs). Only syscalls, on data prepared by [`Jail::build`]: safe
    /// after fork.
    ///
    /// A failing step is named on the child's stderr (husk-vmm's log) before the
    /// error (its errno) fails the spawn: `husk: jail: <step> <path>: failed`.
    pub fn make_mounts_in_child(&self) -> std::io::Result<()> {
        let none = std::ptr::null::<libc::c_char>();
        let step = |rc: libc::c_int, what: &CStr, path: &CStr| {
            if rc == 0 {
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            for part in [c"husk: jail: ", what, c" ", path, c": failed\n"] {
                let bytes = part.to_bytes();
                // SAFETY: write(2) of a buffer that outlives the call.
                unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
            }
            Err(err)
        };
        // SAFETY: every call below is unshare or mount, with C strings built before
        // the fork (or literals) and null pointers where the call allows them.
        unsafe {
            step(
                libc::unshare(
                    libc::CLONE_NEWNS
                        | libc::CLONE_NEWNET
                        | libc::CLONE_NEWIPC
                        | libc::CLONE_NEWUTS,
                ),
                c"unshare mount, network, IPC and UTS namespaces",
                c"",
            )?;
            step(
                libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ),
                c"make the host's mounts slaves",
                c"/",
            )?;
            step(
                libc::mount(
                    self.c_dir.as_ptr(),
                    self.c_dir.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                ),
                c"bind the jail onto itself",
                &self.c_dir,
            )?;
            for m in &self.mounts {
                match m.kind {
                    MountKind::Bind { recursive, remount } => {
                        let rec = if recursive { libc::MS_REC } else { 0 };
                        step(
                            libc::mount(
                                m.source.as_ptr(),
                                m.target.as_ptr(),
                                none,
                                libc::MS_BIND | rec,
                                std::ptr::null(),
                            ),
                            c"bind",
                            &m.target,
                        )?;
                        if remount != 0 {
                            step(
                                libc::mount(
                                    none,
                                    m.target.as_ptr(),
                                    none,
                                    libc::MS_REMOUNT | libc::MS_BIND | remount,
                                    std::ptr::null(),
                                ),
                                c"set the flags of",
                                &m.target,
                            )?;
                        }
                    }
                    MountKind::Proc => step(
                        libc::mount(
                            m.source.as_ptr(),
                            m.target.as_ptr(),
                            c"proc".as_ptr(),
                            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                            c"subset=pid".as_ptr().cast(),
                        ),
                        c"mount proc (subset=pid) on",
                        &m.target,
                    )?,
                }
            }
            step(
                libc::mount(
                    none,
                    self.c_dir.as_ptr(),
                    none,
                    libc::MS_REMOUNT | libc::MS_BIND | SEALED,
                    std::ptr::null(),
                ),
                c"make the jail read-only",
                &self.c_dir,
            )?;
        }
        Ok(())
    }
}

/// `config` (host paths, as `builtin::vmm_config` makes it) with the jail's paths
/// and the sandbox's uid: the kernel and initramfs, the share, and the vsock socket
/// in the run dir. The console stays husk-vmm's stdout.
pub fn jailed_config(mut config: VmmConfig, uid: u32) -> VmmConfig {
    let machine = &mut config.machine;
    machine.kernel = machine.kernel.as_ref().map(|_| "/kernel".into());
    machine.initramfs = machine.initramfs.as_ref().map(|_| "/initramfs".into());
    machine.run_as = Some(uid);
    for share in &mut config.fs {
        share.path = "/shared".into();
    }
    if let Some(vsock) = &mut config.vsock {
        vsock.path = Path::new("/run").join(super::VSOCK_SOCKET);
    }
    config
}

/// Removes the jail of the sandbox in `state_dir`, by name (a jail holds no mounts on
/// the host: they lived in the VMM's namespace). Nothing there is not an error.
pub fn remove(state_dir: &Path) -> std::io::Result<()> {
    let dir = state_dir.join(JAIL_DIR);
    let ignore_missing = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    for f in JAIL_FILES {
        ignore_missing(std::fs::remove_file(dir.join(f)))?;
    }
    for d in JAIL_DIRS {
        ignore_missing(std::fs::remove_dir(dir.join(d)))?;
    }
    ignore_missing(std::fs::remove_dir(&dir))
}

/// Runs `spawn` (which forks one child) with this thread's children born in a new
/// pid namespace, so the child is pid 1 of its own and sees no host process; the
/// thread goes back to its own namespace for later children. Only this thread is
/// affected: the namespace for children is per thread. `spawn` must not start
/// threads (clone refuses a thread whose children's pid namespace is another one).
pub fn in_new_pid_namespace<T>(spawn: impl FnOnce() -> T) -> Result<T, JailError> {
    let ns_err = |what| move |source| JailError::PidNamespace { what, source };
    let own =
        File::open("/proc/thread-self/ns/pid").map_err(ns_err("open /proc/thread-self/ns/pid"))?;
    // SAFETY: unshare with a flag only; it changes where this thread's children go.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(ns_err("unshare")(std::io::Error::last_os_error()));
    }
    let spawned = spawn();
    // SAFETY: setns with a descriptor owned here, to this thread's own (active) pid
    // namespace, which is always allowed to root.
    if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
        return Err(ns_err("go back to husk's own pid namespace")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(spawned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_vmm_config::{FsCache, FsShare, MachineConfig, VsockConfig};

    struct Sources {
        _dir: tempfile::TempDir,
        kernel: PathBuf,
        initramfs: PathBuf,
        shared: PathBuf,
        run: PathBuf,
        state: PathBuf,
    }

    fn sources() -> Sources {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().to_path_buf();
        let (kernel, initramfs) = (p.join("vmlinux"), p.join("initramfs.cpio"));
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&initramfs, b"i").unwrap();
        let (shared, run, state) = (p.join("shared"), p.join("run"), p.join("state"));
        for d in [&shared, &run, &state] {
            std::fs::create_dir(d).unwrap();
        }
        Sources {
            _dir: dir,
            kernel,
            initramfs,
            shared,
            run,
            state,
        }
    }

    fn jail_sources<'a>(s: &'a Sources, kvm: &'a Path) -> JailSources<'a> {
        JailSources {
            kvm,
            kernel: &s.kernel,
            initramfs: &s.initramfs,
            shared: &s.shared,
            run: &s.run,
        }
    }

    #[test]
    fn a_jail_holds_only_its_mount_points_and_goes_by_name() {
        let s = sources();
        // /dev/null stands in for /dev/kvm: any character device.
        let jail = Jail::build(&s.state, &jail_sources(&s, Path::new("/dev/null"))).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(jail.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["dev", "initramfs", "kernel", "proc", "run", "shared"]
        );
        assert_eq!(jail.config_file(), s.state.join("jail/vm.json"));
        // With its config, what husk-vmm checks for after entering it.
        names.push(husk_vmm_config::jail::CONFIG_FILE.into());
        names.sort();
        assert_eq!(names, husk_vmm_config::jail::ROOT_ENTRIES);
        assert_eq!(jail.mounts.len(), 6);
        std::fs::write(jail.config_file(), "{}").unwrap();
        // A second build replaces a leftover one.
        let again = Jail::build(&s.state, &jail_sources(&s, Path::new("/dev/null"))).unwrap();
        assert!(!again.config_file().exists());
        remove(&s.state).unwrap();
        assert!(!s.state.join(JAIL_DIR).exists());
        remove(&s.state).unwrap();
    }

    #[test]
    fn unusable_sources_are_refused_by_name() {
        let s = sources();
        let err = Jail::build(&s.state, &jail_sources(&s, &s.kernel)).unwrap_err();
        assert!(
            err.to_string().contains("is not a character device"),
            "{err}"
        );
        let missing = s.state.join("no-kvm");
        let err = Jail::build(&s.state, &jail_sources(&s, &missing)).unwrap_err();
        assert!(err.to_string().contains("no-kvm"), "{err}");
        let mut bad = jail_sources(&s, Path::new("/dev/null"));
        bad.kernel = &s.shared;
        let err = Jail::build(&s.state, &bad).unwrap_err();
        assert!(err.to_string().contains("is not a regular file"), "{err}");
        assert!(!s.state.join(JAIL_DIR).exists(), "nothing built");
    }

    #[test]
    fn the_config_names_only_paths_inside_the_jail() {
        let config = VmmConfig {
            machine: MachineConfig {
                kernel: Some("/host/vmlinux".into()),
                initramfs: Some("/host/initramfs.cpio".into()),
                ..MachineConfig::default()
            },
            vsock: Some(VsockConfig::new("vsock.sock")),
            fs: vec![FsShare {
                tag: "husk-shared".into(),
                path: "/run/husk/x/shared".into(),
                cache: FsCache::default(),
            }],
            ..VmmConfig::default()
        };
        let jailed = jailed_config(config, 200_001);
        assert_eq!(jailed.machine.kernel.as_deref(), Some(Path::new("/kernel")));
        assert_eq!(
            jailed.machine.initramfs.as_deref(),
            Some(Path::new("/initramfs"))
        );
        assert_eq!(jailed.machine.run_as, Some(200_001));
        assert_eq!(jailed.fs[0].path, Path::new("/shared"));
        assert_eq!(jailed.vsock.unwrap().path, Path::new("/run/vsock.sock"));
    }

    #[test]
    fn a_child_in_a_new_pid_namespace_is_its_pid_1_and_the_thread_comes_back() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test makes namespaces: run it as root (make unit-test does)");
        }
        let own = std::fs::read_link("/proc/thread-self/ns/pid").unwrap();
        let out = in_new_pid_namespace(|| {
            std::process::Command::new("/bin/sh")
                .args(["-c", "echo $$"])
                .output()
        })
        .unwrap()
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/pid_for_children").unwrap(),
            own
        );
        let after = std::process::Command::new("/bin/sh")
            .args(["-c", "echo $$"])
            .output()
            .unwrap();
        assert_ne!(String::from_utf8_lossy(&after.stdout).trim(), "1");
    }
}

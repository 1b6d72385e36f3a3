//! The `qemu` backend: `qemu-system-x86_64 -M microvm` with KVM where hardware
//! virtualization is usable, else TCG; vsock through vhost-device-vsock (hybrid vsock
//! on a host Unix socket) and the shared rootfs through virtiofsd, both vhost-user, so
//! the guest memory is a shared memfd. Wired exactly as `tests/guest/boot_test.sh`.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::confine::{self, HostIds, IdLease, Launch, Rlimit};
use super::{
    detect_kvm, Accel, Helper, Hypervisor, HypervisorError, KvmKind, VmBootSpec, VmProcesses,
};

const QEMU: &str = "qemu-system-x86_64";
const VIRTIOFSD: &str = "virtiofsd";
const VHOST_VSOCK: &str = "vhost-device-vsock";
/// The guest's vsock CID (one VM per vhost-device-vsock, so it never clashes).
const GUEST_CID: u32 = 3;
/// vhost-device-vsock's vhost-user socket (QEMU connects), relative to the state dir.
const VHOST_VSOCK_SOCKET: &str = "vhost-vsock.sock";
/// virtiofsd's vhost-user socket, relative to the state dir.
const VIRTIOFS_SOCKET: &str = "virtiofs.sock";
/// How long a helper gets to create its vhost-user socket.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// QEMU's seccomp sandbox: no obsolete calls, no set*id, no fork/exec, no
/// scheduler/affinity changes.
const QEMU_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";
/// Descriptors and tasks (threads count) of a sandbox's unprivileged processes,
/// QEMU and vhost-device-vsock together (RLIMIT_NPROC counts per uid).
const QEMU_NOFILE: u64 = 4096;
const SANDBOX_NPROC: u64 = 512;
/// virtiofsd holds a descriptor per inode the guest has looked up.
const VIRTIOFSD_NOFILE: u64 = 16384;

/// QEMU and its two vhost-user helpers, found on this host.
pub struct Qemu {
    qemu: PathBuf,
    virtiofsd: PathBuf,
    vhost_vsock: PathBuf,
    kvm: KvmKind,
    ids: HostIds,
}

impl Qemu {
    /// Finds QEMU, virtiofsd and vhost-device-vsock, or says which is missing. The
    /// VM processes of each sandbox run as a host uid of `ids`.
    pub fn detect(ids: HostIds) -> Result<Self, HypervisorError> {
        Ok(Self {
            qemu: super::require_program(QEMU, "apt-get install qemu-system-x86")?,
            virtiofsd: super::require_program(
                VIRTIOFSD,
                "cargo install --locked virtiofsd --version 1.14.0 --root $HUSK_CACHE; needs libcap-ng-dev and libseccomp-dev",
            )?,
            vhost_vsock: super::require_program(
                VHOST_VSOCK,
                "cargo install --locked vhost-device-vsock --version 0.3.0 --root $HUSK_CACHE",
            )?,
            kvm: detect_kvm(),
            ids,
        })
    }

    /// Why this accel: for logs and `husk check`.
    pub fn accel_reason(&self) -> String {
        match self.accel() {
            Accel::Kvm => format!("accel kvm: /dev/kvm is {}", self.kvm),
            Accel::Tcg => format!("accel tcg (software emulation, slow): KVM is {}", self.kvm),
        }
    }

    /// `qemu-system-x86_64 --version`'s first line.
    pub fn version(path: &Path) -> Option<String> {
        let out = Command::new(path).arg("--version").output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(str::to_string)
    }

    fn qemu_args(&self, spec: &VmBootSpec, files: &QemuFiles) -> Vec<String> {
        qemu_args(self.accel(), spec, files)
    }
}

/// What QEMU gets by descriptor or by a path in the run dir: it runs unprivileged,
/// so it cannot open the state dir, nor (under /root) the guest artifacts.
struct QemuFiles {
    /// The kernel and initramfs, opened by husk: QEMU reads `/proc/self/fd/<n>`.
    kernel: RawFd,
    initramfs: RawFd,
    /// The write end of the console's capped pipe, as an fd set.
    console: RawFd,
    /// The vhost-user sockets, in the run dir.
    vsock_vhost: PathBuf,
    fs_vhost: PathBuf,
}

/// QEMU's command line.
fn qemu_args(accel: Accel, spec: &VmBootSpec, files: &QemuFiles) -> Vec<String> {
    let mem = format!("{}M", spec.memory_mib);
    let (accel, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    let mut args: Vec<String> = vec![
        "-M".into(),
        format!("microvm,accel={accel},acpi=off,memory-backend=mem"),
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-m".into(),
        mem.clone(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-sandbox".into(),
        QEMU_SANDBOX.into(),
        // The agent leaves with reboot(2) (reboot=t triple-faults): QEMU exits.
        "-no-reboot".into(),
        "-add-fd".into(),
        format!("fd={},set=1,opaque=console", files.console),
        // append: a pipe cannot be truncated (O_TRUNC through an fd set fails).
        "-chardev".into(),
        "file,id=console,path=/dev/fdset/1,append=on".into(),
        "-serial".into(),
        "chardev:console".into(),
        "-kernel".into(),
        format!("/proc/self/fd/{}", files.kernel),
        "-initrd".into(),
        format!("/proc/self/fd/{}", files.initramfs),
        // With acpi=off QEMU appends the virtio_mmio.device= entries itself.
        // no_timer_check: the kernel's IO-APIC timer check counts ticks in a busy
        // loop, which a TCG vCPU on a loaded host can fail, panicking the guest
        // ("IO-APIC + timer doesn't work!", seen with 20 VMs at once); Kata passes
        // it for the same reason.
        "-append".into(),
        "console=ttyS0 reboot=t panic=-1 printk.time=1 no_timer_check".into(),
        "-chardev".into(),
        format!("socket,id=vsock0,path={}", files.vsock_vhost.display()),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsock0".into(),
        "-chardev".into(),
        format!("socket,id=fs0,path={}", files.fs_vhost.display()),
        "-device".into(),
        format!(
            "vhost-user-fs-device,chardev=fs0,tag={}",
            super::SHARED_FS_TAG
        ),
    ];
    for (n, device) in spec.net.iter().enumerate() {
        args.push("-netdev".into());
        args.push(format!("tap,id=net{n},fd={}", device.tap_fd));
        args.push("-device".into());
        args.push(format!(
            "virtio-net-device,netdev=net{n},mac={}",
            husk_netlink::format_mac(&device.mac)
        ));
    }
    args.shrink_to_fit();
    args
}

/// Starts a VM process of a sandbox (see [`confine::Launch`]): in the state dir
/// `dir` (`husk delete` recognises the VM processes of a sandbox by that working
/// directory), output capped in `log`, with `limits`, as `user` (root if `None`).
#[allow(clippy::too_many_arguments)]
fn launch(
    program: &Path,
    args: &[String],
    dir: &Path,
    log: &Path,
    inherit: &[RawFd],
    user: Option<u32>,
    limits: &[Rlimit],
    cgroup: Option<&Path>,
) -> Result<Child, HypervisorError> {
    Ok(confine::spawn(&Launch {
        program,
        args,
        dir,
        log,
        console: None,
        inherit,
        user,
        limits,
        cgroup,
        jail: None,
    })?)
}

/// Opens a guest artifact for an unprivileged QEMU, which reopens it through
/// `/proc/self/fd`: that checks the file's own mode, so it must be world-readable.
pub(super) fn open_artifact(path: &Path) -> Result<File, HypervisorError> {
    let io = |source| HypervisorError::Io {
        what: format!("open {}", path.display()),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode();
    if mode & 0o004 == 0 {
        return Err(HypervisorError::Unconfined(format!(
            "{} is not world-readable (mode {:o}): the unprivileged QEMU could not read it; chmod o+r it",
            path.display(),
            mode & 0o7777
        )));
    }
    Ok(file)
}

/// Makes the run dir's `vsock.sock` reachable as `<state dir>/vsock.sock` for husk
/// (root): a hard link of the socket the unprivileged vhost-device-vsock bound,
/// checked to be a socket of `uid` and linked by descriptor, so that process cannot
/// swap it for a link to another socket. Where the two dirs are on different file
/// systems a symbolic link is the fallback (logged).
pub(super) fn link_vsock_socket(
    run_socket: &Path,
    state_dir: &Path,
    uid: u32,
) -> Result<(), HypervisorError> {
    use std::os::unix::fs::FileTypeExt;
    let io = |what: String| move |source| HypervisorError::Io { what, source };
    let fd: OwnedFd = nix::fcntl::open(
        run_socket,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(|fd| {
        // SAFETY: `fd` was just opened and is owned here.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    })
    .map_err(|e| io(format!("open {}", run_socket.display()))(e.into()))?;
    let meta = File::from(fd.try_clone().map_err(io("dup".into()))?)
        .metadata()
        .map_err(io(format!("stat {}", run_socket.display())))?;
    if !meta.file_type().is_socket() || meta.uid() != uid {
        return Err(HypervisorError::HelperFailed {
            program: VHOST_VSOCK.into(),
            detail: format!("{} is not a socket of uid {uid}", run_socket.display()),
        });
    }
    let target = state_dir.join(super::VSOCK_SOCKET);
    let _ = std::fs::remove_file(&target);
    let c_target = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| HypervisorError::Unconfined(format!("{} has a NUL", target.display())))?;
    // SAFETY: linkat with a descriptor owned here, an empty C string and a valid C
    // string for the target.
    let rc = unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c_target.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EXDEV) {
        return Err(io(format!(
            "link {} to {}",
            run_socket.display(),
            target.display()
        ))(err));
    }
    tracing::warn!(
        "{} and {} are on different file systems: {} is a symbolic link",
        run_socket.display(),
        state_dir.display(),
        target.display()
    );
    std::os::unix::fs::symlink(run_socket, &target)
        .map_err(io(format!("symlink {}", target.display())))
}

/// A socket path that must fit in `sun_path`.
fn socket_path(dir: &Path, name: &str) -> Result<PathBuf, HypervisorError> {
    let path = dir.join(name);
    if path.as_os_str().len() >= 108 {
        return Err(HypervisorError::Unconfined(format!(
            "socket {} does not fit in sun_path (107 bytes): choose a shorter run dir",
            path.display()
        )));
    }
    Ok(path)
}

/// Waits for a helper's socket; fails if the helper exits first.
fn wait_for_socket(
    name: &str,
    child: &mut Child,
    socket: &Path,
    log: &Path,
) -> Result<(), HypervisorError> {
    wait_for_socket_within(name, child, socket, log, HELPER_TIMEOUT)
}

/// [`wait_for_socket`] with another timeout.
pub(super) fn wait_for_socket_within(
    name: &str,
    child: &mut Child,
    socket: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<(), HypervisorError> {
    use std::os::unix::fs::FileTypeExt;
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::metadata(socket)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false)
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            return Err(HypervisorError::HelperFailed {
                program: name.to_string(),
                detail: format!("exited with {status}: {}", tail.trim()),
            });
        }
        if Instant::now() > deadline {
            return Err(HypervisorError::HelperFailed {
                program: name.to_string(),
                detail: format!("no socket {} after {timeout:?}", socket.display()),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How virtiofsd confines itself. It does not check the names in FUSE requests: its
/// passthrough hands them to unlinkat/mknodat/renameat2 as they come, so only its
/// sandbox makes an absolute name ("/etc/shadow") harmless. `none` is never used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsSandbox {
    /// New mount, pid and network namespaces, pivoted into the shared dir (old root
    /// detached): the default.
    Namespace,
    /// chroot(2) into the shared dir, where namespaces cannot be made.
    Chroot,
}

impl FsSandbox {
    /// `namespace` where this host lets root make mount, pid and network namespaces,
    /// else `chroot`.
    pub fn for_host() -> Self {
        static PICK: std::sync::OnceLock<FsSandbox> = std::sync::OnceLock::new();
        *PICK.get_or_init(|| {
            if namespaces_available() {
                FsSandbox::Namespace
            } else {
                tracing::warn!(
                    "this host cannot make mount/pid/network namespaces: virtiofsd runs with --sandbox chroot"
                );
                FsSandbox::Chroot
            }
        })
    }

    fn arg(self) -> &'static str {
        match self {
            FsSandbox::Namespace => "namespace",
            FsSandbox::Chroot => "chroot",
        }
    }
}

/// Whether a child can unshare what virtiofsd's namespace sandbox unshares.
fn namespaces_available() -> bool {
    // SAFETY: the child only calls unshare(2) and _exit(2), both async-signal-safe,
    // so forking a multi-threaded process is sound here.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: plain syscalls with integer arguments in the forked child.
            unsafe {
                let rc = libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET);
                libc::_exit(if rc == 0 { 0 } else { 1 });
            }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => matches!(
            nix::sys::wait::waitpid(child, None),
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
        ),
        Err(_) => false,
    }
}

/// virtiofsd's command line: serve `shared_dir` on the vhost-user socket `socket`,
/// sandboxed as `sandbox` says. Public so that the hostile-guest suite attacks
/// virtiofsd exactly as husk runs it.
pub fn virtiofsd_args(socket: &Path, shared_dir: &Path, sandbox: FsSandbox) -> Vec<String> {
    vec![
        "--socket-path".into(),
        socket.display().to_string(),
        "--shared-dir".into(),
        shared_dir.display().to_string(),
        "--sandbox".into(),
        sandbox.arg().into(),
        // No xattrs are served, so file capabilities cannot be set: SETFCAP goes.
        "--modcaps=-setfcap".into(),
        // No file handles: they need CAP_DAC_READ_SEARCH, and open_by_handle_at
        // reaches any file of the share's file system, outside the sandbox too.
        "--inode-file-handles=never".into(),
        "--seccomp".into(),
        "kill".into(),
        "--cache".into(),
        "never".into(),
        format!("--rlimit-nofile={VIRTIOFSD_NOFILE}"),
    ]
}

/// Refuses a virtiofsd command line that does not sandbox it: `--sandbox` must be
/// given once, as `namespace` or `chroot`.
fn check_sandboxed(args: &[String]) -> Result<(), HypervisorError> {
    let mut modes = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--sandbox" {
            modes.push(it.next().map(String::as_str).unwrap_or(""));
        } else if let Some(mode) = arg.strip_prefix("--sandbox=") {
            modes.push(mode);
        }
    }
    match modes.as_slice() {
        ["namespace"] | ["chroot"] => Ok(()),
        _ => Err(HypervisorError::Unconfined(format!(
            "virtiofsd must run with --sandbox namespace or chroot, got {modes:?}"
        ))),
    }
}

/// Kills and reaps helpers started before a failure.
fn abandon(helpers: Vec<Helper>) {
    for mut h in helpers {
        let _ = h.child.kill();
        let _ = h.child.wait();
    }
}

impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn accel(&self) -> Accel {
        if self.kvm.usable() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    fn start(&self, spec: &VmBootSpec) -> Result<VmProcesses, HypervisorError> {
        let dir = &spec.state_dir;
        // The sandbox's own host uid (= gid) and run dir, where the unprivileged
        // processes bind their sockets.
        let lease = IdLease::take(Path::new(confine::IDS_DIR), self.ids, dir)?;
        let uid = lease.id();
        let run = lease.run_dir().to_path_buf();
        let vsock_vhost = socket_path(&run, VHOST_VSOCK_SOCKET)?;
        let vsock_uds = socket_path(&run, super::VSOCK_SOCKET)?;
        let fs_vhost = socket_path(&run, VIRTIOFS_SOCKET)?;
        let cgroup = spec.cgroup.as_deref();
        let mut helpers: Vec<Helper> = Vec::new();

        // virtiofsd first, while nothing else runs as the sandbox's uid: root, but
        // only inside its sandbox (it serves files of many owners as their owner).
        let fs_log = dir.join("virtiofsd.log");
        let fs_args = virtiofsd_args(&fs_vhost, &spec.shared_dir, FsSandbox::for_host());
        check_sandboxed(&fs_args)?;
        let mut fs = launch(
            &self.virtiofsd,
            &fs_args,
            dir,
            &fs_log,
            &[],
            None,
            &confine::base_limits(VIRTIOFSD_NOFILE),
            cgroup,
        )?;
        let waited = wait_for_socket(VIRTIOFSD, &mut fs, &fs_vhost, &fs_log).and_then(|()| {
            // QEMU, unprivileged, must be able to connect.
            std::os::unix::fs::lchown(&fs_vhost, Some(uid), Some(uid)).map_err(|source| {
                HypervisorError::Io {
                    what: format!("chown {} to {uid}", fs_vhost.display()),
                    source,
                }
            })
        });
        helpers.push(Helper {
            name: VIRTIOFSD,
            child: fs,
            exits_with_vmm: true,
        });
        if let Err(e) = waited {
            abandon(helpers);
            return Err(e);
        }

        let vsock_log = dir.join("vhost-device-vsock.log");
        let mut limits = confine::base_limits(QEMU_NOFILE);
        limits.extend([(libc::RLIMIT_NPROC, SANDBOX_NPROC), (libc::RLIMIT_FSIZE, 0)]);
        let vsock = launch(
            &self.vhost_vsock,
            &[
                "--guest-cid".into(),
                GUEST_CID.to_string(),
                "--socket".into(),
                vsock_vhost.display().to_string(),
                "--uds-path".into(),
                vsock_uds.display().to_string(),
            ],
            dir,
            &vsock_log,
            &[],
            Some(uid),
            &limits,
            cgroup,
        );
        let mut vsock = match vsock {
            Ok(child) => child,
            Err(e) => {
                abandon(helpers);
                return Err(e);
            }
        };
        let waited = wait_for_socket(VHOST_VSOCK, &mut vsock, &vsock_vhost, &vsock_log)
            .and_then(|()| link_vsock_socket(&vsock_uds, dir, uid));
        helpers.push(Helper {
            name: VHOST_VSOCK,
            child: vsock,
            exits_with_vmm: false,
        });
        if let Err(e) = waited {
            abandon(helpers);
            return Err(e);
        }

        let vmm = self.start_qemu(spec, uid, vsock_vhost, fs_vhost);
        match vmm {
            Ok(vmm) => Ok(VmProcesses::new(vmm, QEMU, helpers).with_lease(lease)),
            Err(e) => {
                abandon(helpers);
                Err(e)
            }
        }
    }
}

impl Qemu {
    /// Starts QEMU as `uid`, sandboxed, with the guest artifacts and its console by
    /// descriptor.
    fn start_qemu(
        &self,
        spec: &VmBootSpec,
        uid: u32,
        vsock_vhost: PathBuf,
        fs_vhost: PathBuf,
    ) -> Result<Child, HypervisorError> {
        let kernel = open_artifact(&spec.artifacts.kernel)?;
        let initramfs = open_artifact(&spec.artifacts.initramfs)?;
        let console = confine::capped_log(&spec.console_log())?;
        let files = QemuFiles {
            kernel: kernel.as_raw_fd(),
            initramfs: initramfs.as_raw_fd(),
            console: console.as_raw_fd(),
            vsock_vhost,
            fs_vhost,
        };
        let args = self.qemu_args(spec, &files);
        tracing::debug!(?args, "starting qemu");
        let mut inherit: Vec<RawFd> = spec.net.iter().map(|d| d.tap_fd).collect();
        inherit.extend([files.kernel, files.initramfs, files.console]);
        let mut limits = confine::base_limits(QEMU_NOFILE);
        // The guest RAM is a memfd of this size: nothing else QEMU writes is a file.
        let ram = u64::from(spec.memory_mib) << 20;
        limits.extend([
            (libc::RLIMIT_NPROC, SANDBOX_NPROC),
            (libc::RLIMIT_FSIZE, ram),
        ]);
        launch(
            &self.qemu,
            &args,
            &spec.state_dir,
            &spec.state_dir.join("qemu.log"),
            &inherit,
            Some(uid),
            &limits,
            spec.cgroup.as_deref(),
        )
    }
}

/// Paths of the programs this backend would use, for `husk check`.
pub fn programs() -> [(&'static str, Option<PathBuf>); 3] {
    [
        (QEMU, super::find_program(QEMU)),
        (VIRTIOFSD, super::find_program(VIRTIOFSD)),
        (VHOST_VSOCK, super::find_program(VHOST_VSOCK)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtiofsd_is_always_sandboxed() {
        for sandbox in [FsSandbox::Namespace, FsSandbox::Chroot] {
            let args = virtiofsd_args(
                Path::new("/run/x/v.sock"),
                Path::new("/state/shared"),
                sandbox,
            );
            check_sandboxed(&args).unwrap();
            let at = args.iter().position(|a| a == "--sandbox").unwrap();
            assert_eq!(args[at + 1], sandbox.arg());
            assert!(!args.iter().any(|a| a == "none"), "{args:?}");
            assert!(
                args.iter().any(|a| a == "--inode-file-handles=never"),
                "{args:?}"
            );
        }
        assert!(check_sandboxed(&virtiofsd_args(
            Path::new("v.sock"),
            Path::new("/s"),
            FsSandbox::for_host()
        ))
        .is_ok());
    }

    #[test]
    fn an_unsandboxed_virtiofsd_is_refused() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for bad in [
            args(&["--shared-dir", "/s", "--sandbox", "none"]),
            args(&["--shared-dir", "/s", "--sandbox=none"]),
            args(&["--shared-dir", "/s"]),
            args(&["--sandbox", "namespace", "--sandbox", "none"]),
            args(&["--shared-dir", "/s", "--sandbox"]),
        ] {
            let err = check_sandboxed(&bad).unwrap_err().to_string();
            assert!(
                err.contains("--sandbox namespace or chroot"),
                "{bad:?}: {err}"
            );
        }
        assert!(check_sandboxed(&args(&["--sandbox=chroot"])).is_ok());
    }

    fn spec(state_dir: &Path) -> VmBootSpec {
        VmBootSpec {
            artifacts: super::super::GuestArtifacts {
                kernel: "/root/k/vmlinux".into(),
                initramfs: "/root/i/initramfs.cpio".into(),
            },
            shared_dir: state_dir.join("shared"),
            state_dir: state_dir.into(),
            memory_mib: 256,
            vcpus: 1,
            net: vec![super::super::TapDevice {
                tap_fd: 9,
                mac: [2, 0, 0, 0, 0, 1],
            }],
            cgroup: None,
        }
    }

    #[test]
    fn qemu_is_sandboxed_and_needs_no_path_of_the_state_dir() {
        let files = QemuFiles {
            kernel: 20,
            initramfs: 21,
            console: 22,
            vsock_vhost: "/run/husk-vm/200000/vhost-vsock.sock".into(),
            fs_vhost: "/run/husk-vm/200000/virtiofs.sock".into(),
        };
        let args = qemu_args(Accel::Tcg, &spec(Path::new("/state/sb")), &files);
        let after = |flag: &str| {
            let at = args
                .iter()
                .position(|a| a == flag)
                .unwrap_or_else(|| panic!("{flag} in {args:?}"));
            args[at + 1].as_str()
        };
        assert_eq!(
            after("-sandbox"),
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        );
        assert_eq!(after("-kernel"), "/proc/self/fd/20");
        assert_eq!(after("-initrd"), "/proc/self/fd/21");
        assert_eq!(after("-add-fd"), "fd=22,set=1,opaque=console");
        assert_eq!(
            after("-chardev"),
            "file,id=console,path=/dev/fdset/1,append=on"
        );
        assert_eq!(after("-serial"), "chardev:console");
        assert!(args
            .iter()
            .any(|a| a == "socket,id=vsock0,path=/run/husk-vm/200000/vhost-vsock.sock"));
        assert!(args
            .iter()
            .any(|a| a == "socket,id=fs0,path=/run/husk-vm/200000/virtiofs.sock"));
        assert!(args.iter().any(|a| a == "tap,id=net0,fd=9"));
        // QEMU runs as the sandbox's uid: nothing of the (root-only) state dir and
        // no artifact path is opened by name.
        assert!(
            !args
                .iter()
                .any(|a| a.contains("/state/sb") || a.contains("/root/")),
            "{args:?}"
        );
        assert!(
            !args.iter().any(|a| a == "-runas"),
            "ids are dropped before exec"
        );
    }

    #[test]
    fn artifacts_must_be_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vmlinux");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = open_artifact(&file).unwrap_err().to_string();
        assert!(err.contains("not world-readable"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        open_artifact(&file).unwrap();
    }

    #[test]
    fn long_socket_paths_are_refused() {
        assert!(socket_path(Path::new("/run/husk-vm/200000"), "vsock.sock").is_ok());
        let long = PathBuf::from(format!("/{}", "d".repeat(100)));
        let err = socket_path(&long, "vsock.sock").unwrap_err().to_string();
        assert!(err.contains("sun_path"), "{err}");
    }

    #[test]
    fn this_host_sandboxes_virtiofsd_in_namespaces() {
        // Root here can make the namespaces (the vm suite runs as root).
        if nix::unistd::geteuid().is_root() {
            assert_eq!(FsSandbox::for_host(), FsSandbox::Namespace);
        }
    }
}

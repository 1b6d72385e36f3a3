//! The `qemu` backend: `qemu-system-x86_64 -M microvm` with KVM where hardware
//! virtualization is usable, else TCG; vsock through vhost-device-vsock (hybrid vsock
//! on a host Unix socket) and the shared rootfs through virtiofsd, both vhost-user, so
//! the guest memory is a shared memfd. Wired exactly as `tests/guest/boot_test.sh`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// QEMU and its two vhost-user helpers, found on this host.
pub struct Qemu {
    qemu: PathBuf,
    virtiofsd: PathBuf,
    vhost_vsock: PathBuf,
    kvm: KvmKind,
}

impl Qemu {
    /// Finds QEMU, virtiofsd and vhost-device-vsock, or says which is missing.
    pub fn detect() -> Result<Self, HypervisorError> {
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

    fn qemu_args(&self, spec: &VmBootSpec, vsock_vhost: &Path, fs_vhost: &Path) -> Vec<String> {
        let mem = format!("{}M", spec.memory_mib);
        let (accel, cpu) = match self.accel() {
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
            // The agent leaves with reboot(2) (reboot=t triple-faults): QEMU exits.
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", spec.console_log().display()),
            "-kernel".into(),
            spec.artifacts.kernel.display().to_string(),
            "-initrd".into(),
            spec.artifacts.initramfs.display().to_string(),
            // With acpi=off QEMU appends the virtio_mmio.device= entries itself.
            "-append".into(),
            "console=ttyS0 reboot=t panic=-1 printk.time=1".into(),
            "-chardev".into(),
            format!("socket,id=vsock0,path={}", vsock_vhost.display()),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vsock0".into(),
            "-chardev".into(),
            format!("socket,id=fs0,path={}", fs_vhost.display()),
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
}

/// Spawns a VM process: own process group (a terminal's Ctrl-C reaches husk, which
/// forwards it to the container, not the VMM), output to `log`, killed if husk dies,
/// and working in `dir`, the sandbox's state dir, where its sockets are named
/// relatively (see [`super::VSOCK_SOCKET`]). `husk delete` recognises the VM processes
/// of a sandbox by that working directory.
pub(super) fn spawn(
    program: &Path,
    args: &[String],
    dir: &Path,
    log: &Path,
) -> Result<Child, HypervisorError> {
    spawn_inheriting(program, args, dir, log, &[])
}

/// [`spawn`], and the child keeps the descriptors in `inherit` (same numbers; they
/// are close-on-exec in husk, so no other child gets them).
pub(super) fn spawn_inheriting(
    program: &Path,
    args: &[String],
    dir: &Path,
    log: &Path,
    inherit: &[std::os::fd::RawFd],
) -> Result<Child, HypervisorError> {
    let inherit = inherit.to_vec();
    let name = program.display().to_string();
    let log_file = std::fs::File::create(log).map_err(|source| HypervisorError::Io {
        what: format!("create {}", log.display()),
        source,
    })?;
    let log_err = log_file.try_clone().map_err(|source| HypervisorError::Io {
        what: format!("dup {}", log.display()),
        source,
    })?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .current_dir(dir)
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // prctl(2) and fcntl(2), which are async-signal-safe; it reads `inherit`, which
    // was allocated before the fork, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in &inherit {
                if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn().map_err(|source| HypervisorError::Spawn {
        program: name,
        source,
    })
}

/// Waits for a helper's socket; fails if the helper exits first.
fn wait_for_socket(
    name: &str,
    child: &mut Child,
    socket: &Path,
    log: &Path,
) -> Result<(), HypervisorError> {
    use std::os::unix::fs::FileTypeExt;
    let deadline = Instant::now() + HELPER_TIMEOUT;
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
                detail: format!("no socket {} after {HELPER_TIMEOUT:?}", socket.display()),
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
        "--seccomp".into(),
        "kill".into(),
        "--cache".into(),
        "never".into(),
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
        // Relative to `dir`, the helpers' and QEMU's working directory.
        let vsock_vhost = Path::new(VHOST_VSOCK_SOCKET);
        let fs_vhost = Path::new(VIRTIOFS_SOCKET);
        let mut helpers: Vec<Helper> = Vec::new();

        let vsock_log = dir.join("vhost-device-vsock.log");
        let mut vsock = spawn(
            &self.vhost_vsock,
            &[
                "--guest-cid".into(),
                GUEST_CID.to_string(),
                "--socket".into(),
                VHOST_VSOCK_SOCKET.into(),
                "--uds-path".into(),
                super::VSOCK_SOCKET.into(),
            ],
            dir,
            &vsock_log,
        )?;
        let waited = wait_for_socket(
            VHOST_VSOCK,
            &mut vsock,
            &dir.join(VHOST_VSOCK_SOCKET),
            &vsock_log,
        );
        helpers.push(Helper {
            name: VHOST_VSOCK,
            child: vsock,
            exits_with_vmm: false,
        });
        if let Err(e) = waited {
            abandon(helpers);
            return Err(e);
        }

        let fs_log = dir.join("virtiofsd.log");
        let fs_args = virtiofsd_args(
            Path::new(VIRTIOFS_SOCKET),
            &spec.shared_dir,
            FsSandbox::for_host(),
        );
        if let Err(e) = check_sandboxed(&fs_args) {
            abandon(helpers);
            return Err(e);
        }
        let mut fs = match spawn(&self.virtiofsd, &fs_args, dir, &fs_log) {
            Ok(child) => child,
            Err(e) => {
                abandon(helpers);
                return Err(e);
            }
        };
        let waited = wait_for_socket(VIRTIOFSD, &mut fs, &dir.join(VIRTIOFS_SOCKET), &fs_log);
        helpers.push(Helper {
            name: VIRTIOFSD,
            child: fs,
            exits_with_vmm: true,
        });
        if let Err(e) = waited {
            abandon(helpers);
            return Err(e);
        }

        let args = self.qemu_args(spec, vsock_vhost, fs_vhost);
        tracing::debug!(?args, "starting qemu");
        let taps: Vec<_> = spec.net.iter().map(|d| d.tap_fd).collect();
        let vmm = match spawn_inheriting(&self.qemu, &args, dir, &dir.join("qemu.log"), &taps) {
            Ok(child) => child,
            Err(e) => {
                abandon(helpers);
                return Err(e);
            }
        };
        Ok(VmProcesses {
            vmm,
            vmm_name: QEMU,
            helpers,
            vmm_status: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtiofsd_is_always_sandboxed() {
        for sandbox in [FsSandbox::Namespace, FsSandbox::Chroot] {
            let args = virtiofsd_args(Path::new("fs.sock"), Path::new("/state/shared"), sandbox);
            check_sandboxed(&args).unwrap();
            let at = args.iter().position(|a| a == "--sandbox").unwrap();
            assert_eq!(args[at + 1], sandbox.arg());
            assert!(!args.iter().any(|a| a == "none"), "{args:?}");
        }
        assert!(check_sandboxed(&virtiofsd_args(Path::new("fs.sock"), Path::new("/s"), FsSandbox::for_host())).is_ok());
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
            assert!(err.contains("--sandbox namespace or chroot"), "{bad:?}: {err}");
        }
        assert!(check_sandboxed(&args(&["--sandbox=chroot"])).is_ok());
    }

    #[test]
    fn this_host_sandboxes_virtiofsd_in_namespaces() {
        // Root here can make the namespaces (the vm suite runs as root).
        if nix::unistd::geteuid().is_root() {
            assert_eq!(FsSandbox::for_host(), FsSandbox::Namespace);
        }
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

//! VM backends for vm isolation behind one [`Hypervisor`] trait, and what the host
//! offers them: the kind of KVM, the guest kernel and initramfs, the helper programs.
//!
//! `builtin` (husk-vmm) where /dev/kvm has hardware virtualization, else `qemu`
//! (KVM or TCG); an explicit `builtin` that cannot run is an error, never a swap.

pub mod builtin;
pub mod confine;
pub mod jail;
pub mod qemu;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::config::VmConfig;

/// Guest memory when the operator config does not say.
pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// vCPUs when the operator config does not say.
pub const DEFAULT_VCPUS: u32 = 1;

/// Errors of the hypervisor layer.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The built-in VMM cannot boot a stock Linux guest on this host's KVM.
    #[error("the builtin backend (husk-vmm) needs hardware virtualization, but /dev/kvm is {0}; use --hypervisor qemu (or auto, which picks qemu here)")]
    BuiltinNeedsKvm(String),
    /// A program the backend needs is not installed.
    #[error("{program} not found ({hint})")]
    MissingProgram { program: String, hint: String },
    /// The guest kernel or initramfs cannot be found.
    #[error("{what} not found: {detail}; build the guest artifacts with `make guest-kernel initramfs` (or `make -s guest-artifacts`) or set [vm] {key} in the operator config")]
    MissingArtifact {
        what: &'static str,
        key: &'static str,
        detail: String,
    },
    /// Spawning a process failed.
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// A helper did not come up (its socket never appeared or it exited).
    #[error("{program} did not start: {detail}")]
    HelperFailed { program: String, detail: String },
    /// A VM process would run without the confinement husk requires.
    #[error("refusing to start a VM process unconfined: {0}")]
    Unconfined(String),
    /// Confining a VM process (its uid, limits, cgroup, logs) failed.
    #[error(transparent)]
    Confine(#[from] confine::ConfineError),
    /// husk-vmm's jail could not be built.
    #[error(transparent)]
    Jail(#[from] jail::JailError),
    /// husk-vmm could not be started in its jail (the failing step is in its log).
    #[error("cannot start husk-vmm in its jail: {source}; the failing step is named in {log}")]
    JailedStart {
        log: PathBuf,
        source: confine::ConfineError,
    },
    /// Other I/O on the VM's state directory.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// How the guest's CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation: slow, but still a separate guest kernel.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What /dev/kvm is on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware virtualization: VMX (Intel) or SVM (AMD) in the cpu flags.
    Hardware(&'static str),
    /// kvm-pvm: /dev/kvm without VMX/SVM; a stock Linux guest cannot boot on it.
    Pvm,
    /// /dev/kvm without VMX/SVM that is not kvm-pvm either.
    NoHardwareSupport,
    /// No /dev/kvm.
    None,
}

impl KvmKind {
    /// Whether a stock Linux guest can run on this KVM.
    pub fn usable(self) -> bool {
        matches!(self, KvmKind::Hardware(_))
    }
}

impl fmt::Display for KvmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmKind::Hardware(flag) => write!(f, "hardware ({flag})"),
            KvmKind::Pvm => f.write_str(
                "PVM (/dev/kvm is kvm-pvm, no VMX/SVM: cannot boot a stock Linux guest)",
            ),
            KvmKind::NoHardwareSupport => {
                f.write_str("/dev/kvm present but no vmx/svm cpu flag (unusable)")
            }
            KvmKind::None => f.write_str("none (no /dev/kvm)"),
        }
    }
}

/// Detects the host's KVM: /dev/kvm plus a vmx/svm flag in /proc/cpuinfo.
pub fn detect_kvm() -> KvmKind {
    if !Path::new("/dev/kvm").exists() {
        return KvmKind::None;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(flag) = hardware_flag(&cpuinfo) {
        return KvmKind::Hardware(flag);
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        KvmKind::Pvm
    } else {
        KvmKind::NoHardwareSupport
    }
}

/// `vmx` or `svm` if the first `flags` line of cpuinfo carries it.
fn hardware_flag(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))?
        .split_once(':')?
        .1;
    flags.split_whitespace().find_map(|f| match f {
        "vmx" => Some("vmx"),
        "svm" => Some("svm"),
        _ => None,
    })
}

/// The cgroup layout of the host.
pub fn cgroup_version() -> &'static str {
    let is_cgroup2 = |p: &str| {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            .unwrap_or(false)
    };
    if is_cgroup2("/sys/fs/cgroup") {
        "v2 (unified)"
    } else if is_cgroup2("/sys/fs/cgroup/unified") {
        "hybrid (v1 controllers + cgroup2 at /sys/fs/cgroup/unified)"
    } else if Path::new("/sys/fs/cgroup/memory").exists() {
        "v1"
    } else {
        "none found"
    }
}

/// husk's cache of built guest artifacts and helpers: `$HUSK_CACHE`, else `~/.cache/husk`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HUSK_CACHE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|home| PathBuf::from(home).join(".cache/husk"))
}

/// Finds a helper program: `$HUSK_CACHE/bin` (where `cargo install --root` puts it),
/// then PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let cached = cache_dir().map(|c| c.join("bin").join(name));
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    cached.into_iter().chain(on_path).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Like [`find_program`], with an error saying how to install it.
pub fn require_program(name: &str, hint: &str) -> Result<PathBuf, HypervisorError> {
    find_program(name).ok_or_else(|| HypervisorError::MissingProgram {
        program: name.to_string(),
        hint: hint.to_string(),
    })
}

/// The guest kernel and initramfs a sandbox boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestArtifacts {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

impl GuestArtifacts {
    /// From the operator config (`[vm] kernel`, `[vm] initramfs`), else the newest
    /// build in the cache (`kernel/*/vmlinux`, `initramfs/*/initramfs.cpio`).
    pub fn find(config: &VmConfig) -> Result<Self, HypervisorError> {
        let cache = cache_dir();
        let kernel = pick(
            "guest kernel",
            "kernel",
            config.kernel.as_deref(),
            cache.as_deref(),
            "kernel",
            "vmlinux",
        )?;
        let initramfs = pick(
            "guest initramfs",
            "initramfs",
            config.initramfs.as_deref(),
            cache.as_deref(),
            "initramfs",
            "initramfs.cpio",
        )?;
        Ok(Self { kernel, initramfs })
    }
}

fn pick(
    what: &'static str,
    key: &'static str,
    configured: Option<&Path>,
    cache: Option<&Path>,
    subdir: &str,
    file: &str,
) -> Result<PathBuf, HypervisorError> {
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(HypervisorError::MissingArtifact {
                what,
                key,
                detail: format!(
                    "{} (from [vm] {key} in the operator config) does not exist",
                    path.display()
                ),
            })
        };
    }
    let Some(cache) = cache else {
        return Err(HypervisorError::MissingArtifact {
            what,
            key,
            detail: "no [vm] setting, and neither HUSK_CACHE nor HOME is set".into(),
        });
    };
    newest_in(&cache.join(subdir), file).ok_or_else(|| HypervisorError::MissingArtifact {
        what,
        key,
        detail: format!(
            "no [vm] {key} in the operator config and no {}/*/{file}",
            cache.join(subdir).display()
        ),
    })
}

/// The most recently modified `dir/*/file`.
fn newest_in(dir: &Path, file: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path().join(file))
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            (meta.is_file() && meta.len() > 0).then_some((meta.modified().ok()?, p))
        })
        .max()
        .map(|(_, p)| p)
}

/// Everything a backend needs to boot one sandbox VM.
#[derive(Debug, Clone)]
pub struct VmBootSpec {
    pub artifacts: GuestArtifacts,
    /// Host directory shared with the guest over virtio-fs (tag [`SHARED_FS_TAG`]).
    pub shared_dir: PathBuf,
    /// Where the VM's sockets, console log and helper logs live; every VM process
    /// runs with it as its working directory (see [`VSOCK_SOCKET`]).
    pub state_dir: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// virtio-net devices on taps the caller opened (see `vm::network`); the
    /// descriptors stay the caller's and must outlive the start.
    pub net: Vec<TapDevice>,
    /// A cgroup v2 directory (made by the sandbox core) that every process the
    /// backend starts for this VM joins before exec; a process that cannot join it
    /// is not started. `None`: they stay in husk's cgroup.
    pub cgroup: Option<PathBuf>,
}

/// A virtio-net device backed by an open tap.
#[derive(Debug, Clone, Copy)]
pub struct TapDevice {
    pub tap_fd: std::os::fd::RawFd,
    pub mac: [u8; 6],
}

/// The hybrid vsock Unix socket (`CONNECT <port>\n`), relative to the state dir.
///
/// Every socket of a sandbox is named relative to its state dir, and the VM processes
/// run there: a Unix socket path is limited to 107 bytes (`sun_path`), and the state
/// dirs engines choose leave no room for an absolute one (Docker's is
/// `<exec-root>/runtime-runc/moby/<64 hex digits>`). husk reaches them through a
/// descriptor of the directory (`vm::sandbox::SocketDir`).
pub const VSOCK_SOCKET: &str = "vsock.sock";

/// The virtio-fs tag of the shared directory.
pub const SHARED_FS_TAG: &str = "husk-shared";

impl VmBootSpec {
    /// The guest's serial console log.
    pub fn console_log(&self) -> PathBuf {
        self.state_dir.join("console.log")
    }
}

/// A VM backend.
pub trait Hypervisor {
    /// The backend's name (`qemu`, `builtin`).
    fn name(&self) -> &'static str;
    /// How guest CPUs run with this backend on this host.
    fn accel(&self) -> Accel;
    /// Boots a sandbox VM; returns once its processes run (the agent may still be booting).
    fn start(&self, spec: &VmBootSpec) -> Result<VmProcesses, HypervisorError>;
}

/// A device back-end process of a VM.
pub struct Helper {
    pub name: &'static str,
    pub child: Child,
    /// Whether it leaves by itself once the VMM disconnects (virtiofsd does;
    /// vhost-device-vsock waits for a new VMM and ignores SIGTERM: it is killed).
    pub exits_with_vmm: bool,
}

/// The host processes of one running sandbox VM: the VMM and its helpers.
pub struct VmProcesses {
    /// The VMM process (its exit is the VM's exit).
    vmm: Child,
    vmm_name: &'static str,
    /// Device back-ends (virtiofsd, vhost-device-vsock), stopped after the VMM.
    helpers: Vec<Helper>,
    vmm_status: Option<std::process::ExitStatus>,
    /// The host uid/gid the VM's unprivileged processes run as, given back once they
    /// are gone (fields drop after `Drop::drop` has reaped them).
    lease: Option<confine::IdLease>,
}

impl VmProcesses {
    /// The processes a backend started: the VMM (named for logs) and its helpers.
    pub fn new(vmm: Child, vmm_name: &'static str, helpers: Vec<Helper>) -> Self {
        Self {
            vmm,
            vmm_name,
            helpers,
            vmm_status: None,
            lease: None,
        }
    }

    /// Keeps `lease` until the processes are gone.
    pub fn with_lease(mut self, lease: confine::IdLease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The host uid (= gid) of the VM's unprivileged processes, if any.
    pub fn host_id(&self) -> Option<u32> {
        self.lease.as_ref().map(confine::IdLease::id)
    }

    /// The pid to wait on: the VMM's.
    pub fn vmm_pid(&self) -> u32 {
        self.vmm.id()
    }

    /// Every pid of this VM, the VMM first.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.vmm.id())
            .chain(self.helpers.iter().map(|h| h.child.id()))
            .collect()
    }

    /// `Some(status)` once the VMM has exited.
    pub fn vmm_exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.vmm_status.is_none() {
            self.vmm_status = self.vmm.try_wait().ok().flatten();
        }
        self.vmm_status
    }

    /// Waits up to `grace` for the VMM to exit by itself (after the agent reset the
    /// guest), then kills whatever is left, VMM first, and reaps every process.
    pub fn stop(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.vmm_exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.vmm_exited().is_none() {
            tracing::warn!(
                pid = self.vmm.id(),
                "{} still running after {grace:?}: killing it",
                self.vmm_name
            );
            let _ = self.vmm.kill();
            self.vmm_status = self.vmm.wait().ok();
        }
        // Helpers that leave by themselves get a moment; the rest are killed.
        let deadline = Instant::now() + Duration::from_millis(500);
        for h in &mut self.helpers {
            if h.exits_with_vmm {
                while h.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if h.child.try_wait().ok().flatten().is_none() {
                    terminate(h.name, &mut h.child);
                }
            } else {
                let _ = h.child.kill();
                let _ = h.child.wait();
            }
        }
    }
}

impl Drop for VmProcesses {
    fn drop(&mut self) {
        if self.vmm_exited().is_none() {
            let _ = self.vmm.kill();
            let _ = self.vmm.wait();
        }
        for h in &mut self.helpers {
            if h.child.try_wait().ok().flatten().is_none() {
                let _ = h.child.kill();
                let _ = h.child.wait();
            }
        }
    }
}

/// SIGTERM, a short wait, then SIGKILL; always reaps.
fn terminate(name: &str, child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(pid = child.id(), "{name} ignored SIGTERM: killing it");
    let _ = child.kill();
    let _ = child.wait();
}

/// The backends a user can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Auto,
    Builtin,
    Qemu,
}

/// Resolves a backend choice to a hypervisor: `auto` is builtin (husk-vmm) when
/// /dev/kvm has hardware virtualization and husk-vmm is installed, else qemu; an
/// explicit `builtin` that cannot run is an error. Returns the hypervisor and why.
pub fn select(
    choice: Backend,
    vm: &VmConfig,
) -> Result<(Box<dyn Hypervisor>, String), HypervisorError> {
    let ids = confine::HostIds::from_config(vm.host_ids)?;
    match choice {
        Backend::Builtin => {
            let b = builtin::Builtin::detect(ids)?;
            let why = format!("--hypervisor builtin, {}", b.reason());
            Ok((Box::new(b), why))
        }
        Backend::Qemu => {
            let q = qemu::Qemu::detect(ids)?;
            let why = format!("--hypervisor qemu, {}", q.accel_reason());
            Ok((Box::new(q), why))
        }
        Backend::Auto => {
            let not_builtin = match builtin::Builtin::detect(ids) {
                Ok(b) => {
                    let why = format!("auto: hardware KVM, so builtin: {}", b.reason());
                    return Ok((Box::new(b), why));
                }
                // accel_reason() below says what /dev/kvm is.
                Err(HypervisorError::BuiltinNeedsKvm(_)) => {
                    "builtin needs hardware virtualization".to_string()
                }
                Err(e) => format!("builtin is unavailable: {e}"),
            };
            let q = qemu::Qemu::detect(ids)?;
            let why = format!("auto: qemu ({not_builtin}); {}", q.accel_reason());
            Ok((Box::new(q), why))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_flags() {
        assert_eq!(
            hardware_flag("processor: 0\nflags\t\t: fpu vme svm sse\n"),
            Some("svm")
        );
        assert_eq!(hardware_flag("flags : fpu vmx\n"), Some("vmx"));
        assert_eq!(hardware_flag("flags : fpu vmxx sse\n"), None);
        assert_eq!(hardware_flag("nothing"), None);
    }

    #[test]
    fn configured_artifacts_must_exist() {
        let config = VmConfig {
            kernel: Some("/nonexistent/vmlinux".into()),
            ..Default::default()
        };
        let err = GuestArtifacts::find(&config).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/vmlinux"), "{err}");
        assert!(err.contains("make guest-kernel initramfs"), "{err}");
    }

    #[test]
    fn newest_build_wins() {
        let dir = tempfile::tempdir().unwrap();
        for (sub, age) in [("old", 100), ("new", 0)] {
            let d = dir.path().join(sub);
            std::fs::create_dir(&d).unwrap();
            let f = d.join("vmlinux");
            std::fs::write(&f, b"x").unwrap();
            let t = std::time::SystemTime::now() - Duration::from_secs(age);
            std::fs::File::options()
                .write(true)
                .open(&f)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        assert_eq!(
            newest_in(dir.path(), "vmlinux").unwrap(),
            dir.path().join("new/vmlinux")
        );
        assert_eq!(newest_in(&dir.path().join("nope"), "vmlinux"), None);
    }
}

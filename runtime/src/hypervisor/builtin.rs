//! The `builtin` backend: our own VMM, `husk-vmm` (vmm/, docs/vmm.md), one process per
//! sandbox VM with everything in-process: hybrid vsock on the sandbox's Unix socket and
//! the shared directory served over virtio-fs by the VMM itself. No helpers, no
//! shared memfd. Needs hardware virtualization (a stock Linux guest does not boot on a
//! PVM /dev/kvm).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_vmm_config::{FsCache, FsShare, MachineConfig, NetConfig, VmmConfig, VsockConfig};

use super::confine::{self, HostIds, IdLease, Launch};
use super::jail::{self, Jail, JailSources};
use super::{detect_kvm, Accel, Hypervisor, HypervisorError, KvmKind, VmBootSpec, VmProcesses};

/// The VMM binary's name.
pub const HUSK_VMM: &str = "husk-vmm";

/// Descriptors husk-vmm may hold: virtio-fs keeps one per inode the guest looked up.
const VMM_NOFILE: u64 = 16384;

/// How long husk-vmm gets to bind its vsock socket (it does so before the vCPUs run).
const VSOCK_SOCKET_TIMEOUT: Duration = Duration::from_secs(20);

/// husk-vmm, found on this host, on a KVM it can use.
pub struct Builtin {
    vmm: PathBuf,
    kvm: KvmKind,
    /// The host ids sandboxes lease their uid from.
    ids: HostIds,
}

impl Builtin {
    /// Finds husk-vmm and checks that /dev/kvm has hardware virtualization; its
    /// sandboxes lease their uid from `ids`.
    pub fn detect(ids: HostIds) -> Result<Self, HypervisorError> {
        let kvm = detect_kvm();
        if !kvm.usable() {
            return Err(HypervisorError::BuiltinNeedsKvm(kvm.to_string()));
        }
        let vmm = find_vmm().ok_or_else(|| HypervisorError::MissingProgram {
            program: HUSK_VMM.into(),
            hint: "looked next to the husk binary, in $HUSK_CACHE/bin and on PATH; build it with `cargo build --release -p husk-vmm`".into(),
        })?;
        Ok(Self { vmm, kvm, ids })
    }

    /// The VMM binary in use.
    pub fn program(&self) -> &Path {
        &self.vmm
    }

    /// Why this backend: for logs and `husk check`.
    pub fn reason(&self) -> String {
        format!("{} on /dev/kvm: {}", self.vmm.display(), self.kvm)
    }
}

/// husk-vmm next to the running husk binary (an install or a cargo target dir), then
/// `$HUSK_CACHE/bin`, then PATH.
pub fn find_vmm() -> Option<PathBuf> {
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(HUSK_VMM)));
    // After husk re-executes itself from a protected copy, current_exe() names that
    // copy; argv[0] still names where husk was started from.
    let beside_argv0 = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .filter(|p| p.components().count() > 1)
        .and_then(|p| p.parent().map(|d| d.join(HUSK_VMM)));
    beside_exe
        .into_iter()
        .chain(beside_argv0)
        .find(|p| super::is_executable(p))
        .or_else(|| super::find_program(HUSK_VMM))
}

/// husk-vmm's config for `spec`: kernel, agent initramfs, resources, the sandbox's
/// vsock socket, the shared directory as virtio-fs, and one virtio-net device per tap
/// the runtime attached in the container's network namespace, handed over by
/// descriptor (husk-vmm never joins that namespace). The console is husk-vmm's
/// stdout, which the runtime caps into `console.log`.
pub fn vmm_config(spec: &VmBootSpec) -> VmmConfig {
    VmmConfig {
        machine: MachineConfig {
            kernel: Some(spec.artifacts.kernel.clone()),
            initramfs: Some(spec.artifacts.initramfs.clone()),
            memory_mib: spec.memory_mib,
            // More than 255 is out of husk-vmm's range either way; saturating keeps it
            // refused there, with the limit in the message.
            vcpus: u8::try_from(spec.vcpus).unwrap_or(u8::MAX),
            console: None,
            ..MachineConfig::default()
        },
        // Relative: husk-vmm runs in the state dir (see VSOCK_SOCKET).
        vsock: Some(VsockConfig::new(super::VSOCK_SOCKET)),
        fs: vec![FsShare {
            tag: super::SHARED_FS_TAG.into(),
            path: spec.shared_dir.clone(),
            cache: FsCache::default(),
        }],
        disks: Vec::new(),
        net: spec
            .net
            .iter()
            .map(|device| {
                NetConfig::inherited(device.tap_fd, Some(husk_netlink::format_mac(&device.mac)))
            })
            .collect(),
    }
}

/// Writes `config` to `path` as JSON, readable by its owner only.
fn write_vmm_config(config: &VmmConfig, path: &Path) -> Result<(), HypervisorError> {
    let io_error = |source| HypervisorError::Io {
        what: format!("write {}", path.display()),
        source,
    };
    let json = config.to_json().map_err(|e| io_error(e.into()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error)?;
    // The mode above applies only to a new file; a leftover one keeps its own.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io_error)?;
    file.write_all(json.as_bytes()).map_err(io_error)
}

impl Hypervisor for Builtin {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn accel(&self) -> Accel {
        Accel::Kvm
    }

    fn start(&self, spec: &VmBootSpec) -> Result<VmProcesses, HypervisorError> {
        // The sandbox's own host uid and run dir, where husk-vmm binds its socket.
        let dir = &spec.state_dir;
        let lease = IdLease::take(Path::new(confine::IDS_DIR), self.ids, dir)?;
        let jail = Jail::build(
            dir,
            &JailSources {
                kvm: Path::new(jail::KVM_DEVICE),
                kernel: &spec.artifacts.kernel,
                initramfs: &spec.artifacts.initramfs,
                shared: &spec.shared_dir,
                run: lease.run_dir(),
            },
        )?;
        let config = jail::jailed_config(vmm_config(spec), lease.id());
        tracing::debug!(?config, jail = %jail.dir().display(), "starting husk-vmm");
        write_vmm_config(&config, &jail.config_file())?;
        let args = [
            "--jail".to_string(),
            jail.dir().display().to_string(),
            "--config".to_string(),
            jail::JAIL_CONFIG.to_string(),
        ];
        let taps: Vec<_> = spec.net.iter().map(|d| d.tap_fd).collect();
        let limits = confine::base_limits(VMM_NOFILE);
        let log = dir.join("husk-vmm.log");
        let launch = Launch {
            program: &self.vmm,
            args: &args,
            dir,
            log: &log,
            console: Some(&spec.console_log()),
            inherit: &taps,
            // Root at exec, to pivot; its threads switch to the lease's uid (run_as).
            user: None,
            limits: &limits,
            cgroup: spec.cgroup.as_deref(),
            jail: Some(&jail),
        };
        let mut vmm = confine::spawn(&launch).map_err(|source| HypervisorError::JailedStart {
            log: log.clone(),
            source,
        })?;
        // Bound by husk-vmm as root before any guest code runs, so it must be root's.
        let run_socket = lease.run_dir().join(super::VSOCK_SOCKET);
        let linked = super::qemu::wait_for_socket_within(
            HUSK_VMM,
            &mut vmm,
            &run_socket,
            &log,
            VSOCK_SOCKET_TIMEOUT,
        )
        .and_then(|()| super::qemu::link_vsock_socket(&run_socket, dir, 0));
        if let Err(e) = linked {
            let _ = vmm.kill();
            let _ = vmm.wait();
            return Err(e);
        }
        Ok(VmProcesses::new(vmm, HUSK_VMM, Vec::new()).with_lease(lease))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::GuestArtifacts;

    fn sandbox_spec(state_dir: &Path) -> VmBootSpec {
        VmBootSpec {
            artifacts: GuestArtifacts {
                kernel: "/k/vmlinux".into(),
                initramfs: "/i/initramfs.cpio".into(),
            },
            shared_dir: state_dir.join("shared"),
            state_dir: state_dir.into(),
            memory_mib: 512,
            vcpus: 2,
            net: vec![
                crate::hypervisor::TapDevice {
                    tap_fd: 7,
                    mac: [0x02, 0x42, 0xac, 0x11, 0x00, 0x02],
                },
                crate::hypervisor::TapDevice {
                    tap_fd: 9,
                    mac: [0x0a, 0, 0, 0, 0, 1],
                },
            ],
            cgroup: None,
        }
    }

    #[test]
    fn config_names_every_resource_of_the_sandbox() {
        let config = vmm_config(&sandbox_spec(Path::new("/state/a,b")));
        let machine = &config.machine;
        assert_eq!(machine.kernel.as_deref(), Some(Path::new("/k/vmlinux")));
        assert_eq!(
            machine.initramfs.as_deref(),
            Some(Path::new("/i/initramfs.cpio"))
        );
        assert_eq!((machine.memory_mib, machine.vcpus), (512, 2));
        assert_eq!(machine.console, None, "the console is the capped stdout");
        assert_eq!(config.vsock, Some(VsockConfig::new("vsock.sock")));
        assert_eq!(config.fs[0].path, Path::new("/state/a,b/shared"));
        assert_eq!(
            config.net,
            [
                NetConfig::inherited(7, Some("02:42:ac:11:00:02".into())),
                NetConfig::inherited(9, Some("0a:00:00:00:00:01".into())),
            ]
        );
    }

    #[test]
    fn config_file_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = vmm_config(&sandbox_spec(dir.path()));
        let path = dir.path().join("vm.json");
        std::fs::write(&path, "stale").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_vmm_config(&config, &path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(VmmConfig::from_json_file(&path).unwrap(), config);
    }

    #[test]
    fn refused_without_hardware_virtualization() {
        // On a host with hardware KVM the backend is available; everywhere else
        // (PVM, no /dev/kvm) the error names what /dev/kvm is.
        match Builtin::detect(HostIds::from_config(None).unwrap()) {
            Ok(b) => assert!(detect_kvm().usable(), "{}", b.reason()),
            Err(HypervisorError::BuiltinNeedsKvm(kvm)) => {
                assert!(!detect_kvm().usable());
                assert_eq!(kvm, detect_kvm().to_string());
            }
            Err(HypervisorError::MissingProgram { program, .. }) => {
                assert!(detect_kvm().usable());
                assert_eq!(program, HUSK_VMM);
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}

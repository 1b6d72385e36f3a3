//! The `builtin` backend: our own VMM, `husk-vmm` (vmm/, docs/vmm.md), one process per
//! sandbox VM with everything in-process: hybrid vsock on the sandbox's Unix socket and
//! the shared directory served over virtio-fs by the VMM itself. No helpers, no
//! shared memfd. Needs hardware virtualization (a stock Linux guest does not boot on a
//! PVM /dev/kvm).

use std::path::{Path, PathBuf};

use super::{detect_kvm, Accel, Hypervisor, HypervisorError, KvmKind, RunningVm, VmSpec};

/// The VMM binary's name.
pub const HUSK_VMM: &str = "husk-vmm";

/// husk-vmm, found on this host, on a KVM it can use.
pub struct Builtin {
    vmm: PathBuf,
    kvm: KvmKind,
}

impl Builtin {
    /// Finds husk-vmm and checks that /dev/kvm has hardware virtualization.
    pub fn detect() -> Result<Self, HypervisorError> {
        let kvm = detect_kvm();
        if !kvm.usable() {
            return Err(HypervisorError::BuiltinNeedsKvm(kvm.to_string()));
        }
        let vmm = find_vmm().ok_or_else(|| HypervisorError::MissingProgram {
            program: HUSK_VMM.into(),
            hint: "looked next to the husk binary, in $HUSK_CACHE/bin and on PATH; build it with `cargo build --release -p husk-vmm`".into(),
        })?;
        Ok(Self { vmm, kvm })
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

/// husk-vmm's arguments for `spec`: kernel, agent initramfs, resources, the sandbox's
/// vsock socket and console log, the shared directory as virtio-fs, and one
/// virtio-net device per tap the runtime attached in the container's network
/// namespace, handed over by descriptor (husk-vmm never joins that namespace).
pub fn vmm_args(spec: &VmSpec) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--kernel".into(),
        spec.artifacts.kernel.display().to_string(),
        "--initramfs".into(),
        spec.artifacts.initramfs.display().to_string(),
        "--memory-mib".into(),
        spec.memory_mib.to_string(),
        "--vcpus".into(),
        spec.vcpus.to_string(),
        "--vsock".into(),
        // Relative: husk-vmm runs in the state dir (see VSOCK_SOCKET).
        super::VSOCK_SOCKET.into(),
        "--console".into(),
        spec.console_log().display().to_string(),
        "--fs".into(),
        // path= last: it takes the rest of the value, commas included.
        format!(
            "tag={},path={}",
            super::SHARED_FS_TAG,
            spec.shared_dir.display()
        ),
    ];
    for device in &spec.net {
        args.push("--net".into());
        args.push(format!(
            "fd={},mac={}",
            device.tap_fd,
            husk_netlink::format_mac(&device.mac)
        ));
    }
    args
}

impl Hypervisor for Builtin {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn accel(&self) -> Accel {
        Accel::Kvm
    }

    fn start(&self, spec: &VmSpec) -> Result<RunningVm, HypervisorError> {
        let args = vmm_args(spec);
        tracing::debug!(?args, "starting husk-vmm");
        let taps: Vec<_> = spec.net.iter().map(|d| d.tap_fd).collect();
        let vmm = super::qemu::spawn_inheriting(
            &self.vmm,
            &args,
            &spec.state_dir,
            &spec.state_dir.join("husk-vmm.log"),
            &taps,
        )?;
        Ok(RunningVm {
            vmm,
            vmm_name: HUSK_VMM,
            helpers: Vec::new(),
            vmm_status: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::GuestArtifacts;

    #[test]
    fn arguments_name_every_resource_of_the_sandbox() {
        let spec = VmSpec {
            artifacts: GuestArtifacts {
                kernel: "/k/vmlinux".into(),
                initramfs: "/i/initramfs.cpio".into(),
            },
            shared_dir: "/state/a,b/shared".into(),
            state_dir: "/state/a,b".into(),
            memory_mib: 512,
            vcpus: 2,
            net: vec![
                crate::hypervisor::NetDevice {
                    tap_fd: 7,
                    mac: [0x02, 0x42, 0xac, 0x11, 0x00, 0x02],
                },
                crate::hypervisor::NetDevice {
                    tap_fd: 9,
                    mac: [0x0a, 0, 0, 0, 0, 1],
                },
            ],
        };
        let args = vmm_args(&spec);
        let value = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].as_str()
        };
        assert_eq!(value("--kernel"), "/k/vmlinux");
        assert_eq!(value("--initramfs"), "/i/initramfs.cpio");
        assert_eq!(value("--memory-mib"), "512");
        assert_eq!(value("--vcpus"), "2");
        assert_eq!(value("--vsock"), "vsock.sock");
        assert_eq!(value("--console"), "/state/a,b/console.log");
        assert_eq!(value("--fs"), "tag=husk-shared,path=/state/a,b/shared");
        let nets: Vec<_> = args
            .windows(2)
            .filter(|w| w[0] == "--net")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(
            nets,
            ["fd=7,mac=02:42:ac:11:00:02", "fd=9,mac=0a:00:00:00:00:01"]
        );
    }

    #[test]
    fn refused_without_hardware_virtualization() {
        // On a host with hardware KVM the backend is available; everywhere else
        // (PVM, no /dev/kvm) the error names what /dev/kvm is.
        match Builtin::detect() {
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

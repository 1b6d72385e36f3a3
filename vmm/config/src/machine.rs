//! The machine: what the guest runs (kernel and initramfs, or raw test code), its
//! command line, vCPUs, memory, serial console and the VMM's seccomp level.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default kernel command line: serial console, i8042 reset for reboot, panic reboots,
/// no PCI, no legacy keyboard probing beyond what the reset needs, and no IO-APIC
/// timer check (it routes the PIT through the IO-APIC and counts ticks in a busy
/// loop: a slow or nested host can fail it, and a nested KVM's PIT emulation locked
/// up under it).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd no_timer_check";
/// Largest vCPU count accepted.
pub const MAX_VCPUS: u8 = 32;
/// Largest guest memory accepted (MiB).
pub const MAX_MEMORY_MIB: u32 = 256 * 1024;

// The next three belong to husk-vmm's guest memory layout (`vmm/src/arch/layout.rs`);
// they are repeated here so validation needs no KVM crates, and husk-vmm asserts at
// compile time that both copies agree.

/// Smallest guest memory accepted for a Linux guest.
pub const MIN_LINUX_MEMORY_MIB: u32 = 32;
/// Smallest guest memory accepted at all (the layout needs the first 2 MiB).
pub const MIN_MEMORY_MIB: u32 = 2;
/// Largest command line the layout holds (including NUL).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Room kept free on the command line for the virtio-mmio device entries appended at
/// build time.
pub const CMDLINE_DEVICE_RESERVE: usize = 512;

/// Errors in the machine's configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MachineConfigError {
    /// Neither a kernel nor a raw payload.
    #[error("no kernel given (--kernel or \"kernel\" in the config)")]
    NoKernel,
    /// Both a kernel and a raw payload.
    #[error("give either a kernel or a raw64 payload, not both")]
    KernelAndRaw,
    /// The kernel (or raw payload) file does not exist.
    #[error("kernel file missing: {0}")]
    KernelMissing(PathBuf),
    /// The initramfs file does not exist.
    #[error("initramfs file missing: {0}")]
    InitramfsMissing(PathBuf),
    /// An initramfs or command line was given with a raw payload.
    #[error("a raw64 payload takes no initramfs or command line")]
    RawWithLinuxOptions,
    /// vCPU count out of range.
    #[error("vCPU count {0} out of range 1..={max}", max = MAX_VCPUS)]
    VcpuCount(u8),
    /// Memory too small for the payload.
    #[error("memory too small: {mib} MiB, need at least {min} MiB")]
    MemoryTooSmall {
        /// Requested.
        mib: u32,
        /// Minimum for this payload.
        min: u32,
    },
    /// Memory too large.
    #[error("memory too large: {0} MiB, at most {max} MiB", max = MAX_MEMORY_MIB)]
    MemoryTooLarge(u32),
    /// The command line cannot fit.
    #[error("kernel command line is {0} bytes, at most {max} fit", max = CMDLINE_MAX_SIZE - CMDLINE_DEVICE_RESERVE)]
    CmdlineTooLong(usize),
    /// The console log's directory does not exist.
    #[error("console log directory missing: {0}")]
    ConsoleDirMissing(PathBuf),
    /// `run_as` names root, which is what leaving it out means.
    #[error("run_as 0 is root: leave it out to keep root, or name the sandbox's host uid")]
    RunAsRoot,
}

/// How strictly husk-vmm's threads are confined by seccomp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SeccompLevel {
    /// No filters.
    Off,
    /// Filters installed; violations are logged by the kernel (audit) and allowed.
    Log,
    /// Filters installed; a violation ends the VMM with status 159.
    #[default]
    Enforce,
}

/// The machine as configured (all paths host paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    /// Uncompressed ELF vmlinux (PVH entry preferred) or bzImage.
    pub kernel: Option<PathBuf>,
    /// Raw 64-bit code loaded at 1 MiB and entered in long mode (test guests).
    pub raw64: Option<PathBuf>,
    /// Initramfs (cpio, optionally compressed as the kernel supports).
    pub initramfs: Option<PathBuf>,
    /// Kernel command line; virtio-mmio devices are appended to it.
    pub cmdline: Option<String>,
    /// vCPU count.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Console log file; stdout when absent.
    pub console: Option<PathBuf>,
    /// Forward the VMM's stdin to the guest's serial port.
    pub console_input: bool,
    /// Try to boot a Linux kernel even on a PVM host (where stock kernels fail).
    pub allow_pvm: bool,
    /// Per-thread seccomp filters: off, log or enforce (default).
    pub seccomp: SeccompLevel,
    /// The uid (= gid) every thread but the virtio-fs one switches to once its
    /// privileged setup is done (a jailed husk-vmm: the sandbox's host id); `None`
    /// keeps root (capabilities are dropped either way).
    pub run_as: Option<u32>,
}

/// vCPUs when the config does not say.
pub const DEFAULT_VCPUS: u8 = 1;
/// Guest memory (MiB) when the config does not say.
pub const DEFAULT_MEMORY_MIB: u32 = 128;

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            kernel: None,
            raw64: None,
            initramfs: None,
            cmdline: None,
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            console: None,
            console_input: false,
            allow_pvm: false,
            seccomp: SeccompLevel::default(),
            run_as: None,
        }
    }
}

/// What the guest runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A Linux kernel.
    Linux {
        /// Kernel image.
        kernel: PathBuf,
        /// Optional initramfs.
        initramfs: Option<PathBuf>,
        /// Command line (before virtio-mmio devices are appended).
        cmdline: String,
    },
    /// Raw 64-bit machine code (test guests).
    Raw64(Vec<u8>),
}

impl MachineConfig {
    /// Checks what the guest runs and loads it: the kernel and initramfs must exist
    /// (they are opened at build time), a raw payload is read here.
    pub fn payload(&self) -> Result<Payload, MachineConfigError> {
        match (&self.kernel, &self.raw64) {
            (None, None) => Err(MachineConfigError::NoKernel),
            (Some(_), Some(_)) => Err(MachineConfigError::KernelAndRaw),
            (Some(kernel), None) => {
                if !kernel.is_file() {
                    return Err(MachineConfigError::KernelMissing(kernel.clone()));
                }
                if let Some(initramfs) = &self.initramfs {
                    if !initramfs.is_file() {
                        return Err(MachineConfigError::InitramfsMissing(initramfs.clone()));
                    }
                }
                let cmdline = self
                    .cmdline
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
                if cmdline.len() > CMDLINE_MAX_SIZE - CMDLINE_DEVICE_RESERVE {
                    return Err(MachineConfigError::CmdlineTooLong(cmdline.len()));
                }
                Ok(Payload::Linux {
                    kernel: kernel.clone(),
                    initramfs: self.initramfs.clone(),
                    cmdline,
                })
            }
            (None, Some(raw)) => {
                if self.initramfs.is_some() || self.cmdline.is_some() {
                    return Err(MachineConfigError::RawWithLinuxOptions);
                }
                let code = std::fs::read(raw)
                    .map_err(|_| MachineConfigError::KernelMissing(raw.clone()))?;
                Ok(Payload::Raw64(code))
            }
        }
    }
}

/// Range and existence checks on the machine's resources, for any payload (also for
/// a validated VM built by hand, as tests do).
pub fn check_resources(
    payload: &Payload,
    vcpus: u8,
    memory_mib: u32,
    console: Option<&Path>,
) -> Result<(), MachineConfigError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MachineConfigError::VcpuCount(vcpus));
    }
    let min = match payload {
        Payload::Linux { .. } => MIN_LINUX_MEMORY_MIB,
        Payload::Raw64(_) => MIN_MEMORY_MIB,
    };
    if memory_mib < min {
        return Err(MachineConfigError::MemoryTooSmall {
            mib: memory_mib,
            min,
        });
    }
    if memory_mib > MAX_MEMORY_MIB {
        return Err(MachineConfigError::MemoryTooLarge(memory_mib));
    }
    if let Some(console) = console {
        if !crate::parent_exists(console) {
            return Err(MachineConfigError::ConsoleDirMissing(console.into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_file() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("vmlinux");
        std::fs::write(&k, b"\x7fELF").unwrap();
        (d, k)
    }

    #[test]
    fn payload_needs_exactly_one_existing_kernel() {
        assert_eq!(
            MachineConfig::default().payload(),
            Err(MachineConfigError::NoKernel)
        );
        let c = MachineConfig {
            kernel: Some("/nonexistent/vmlinux".into()),
            ..Default::default()
        };
        assert_eq!(
            c.payload(),
            Err(MachineConfigError::KernelMissing(
                "/nonexistent/vmlinux".into()
            ))
        );
        let (_d, k) = kernel_file();
        let c = MachineConfig {
            kernel: Some(k.clone()),
            raw64: Some(k.clone()),
            ..Default::default()
        };
        assert_eq!(c.payload(), Err(MachineConfigError::KernelAndRaw));
        let c = MachineConfig {
            kernel: Some(k.clone()),
            initramfs: Some("/nope".into()),
            ..Default::default()
        };
        assert_eq!(
            c.payload(),
            Err(MachineConfigError::InitramfsMissing("/nope".into()))
        );
        let payload = MachineConfig {
            kernel: Some(k.clone()),
            ..Default::default()
        }
        .payload()
        .unwrap();
        assert!(
            matches!(payload, Payload::Linux { ref cmdline, .. } if cmdline == DEFAULT_CMDLINE)
        );
        let c = MachineConfig {
            kernel: Some(k),
            cmdline: Some("x".repeat(4000)),
            ..Default::default()
        };
        assert_eq!(c.payload(), Err(MachineConfigError::CmdlineTooLong(4000)));
    }

    #[test]
    fn raw_payload_is_read_and_takes_no_linux_options() {
        let (_d, k) = kernel_file();
        let c = MachineConfig {
            raw64: Some(k.clone()),
            ..Default::default()
        };
        assert_eq!(c.payload(), Ok(Payload::Raw64(b"\x7fELF".to_vec())));
        let c = MachineConfig {
            raw64: Some(k),
            cmdline: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(c.payload(), Err(MachineConfigError::RawWithLinuxOptions));
    }

    #[test]
    fn resources_are_range_checked_per_payload() {
        let linux = Payload::Linux {
            kernel: "/k".into(),
            initramfs: None,
            cmdline: String::new(),
        };
        let raw = Payload::Raw64(vec![0xf4]);
        assert_eq!(check_resources(&linux, 1, 128, None), Ok(()));
        assert_eq!(
            check_resources(&linux, 0, 128, None),
            Err(MachineConfigError::VcpuCount(0))
        );
        assert_eq!(
            check_resources(&linux, 33, 128, None),
            Err(MachineConfigError::VcpuCount(33))
        );
        assert_eq!(
            check_resources(&linux, 1, 8, None),
            Err(MachineConfigError::MemoryTooSmall { mib: 8, min: 32 })
        );
        assert_eq!(check_resources(&raw, 1, 2, None), Ok(()));
        assert_eq!(
            check_resources(&raw, 1, 1, None),
            Err(MachineConfigError::MemoryTooSmall { mib: 1, min: 2 })
        );
        assert_eq!(
            check_resources(&linux, 1, u32::MAX, None),
            Err(MachineConfigError::MemoryTooLarge(u32::MAX))
        );
        assert_eq!(
            check_resources(&linux, 1, 128, Some(Path::new("/no/such/dir/log"))),
            Err(MachineConfigError::ConsoleDirMissing(
                "/no/such/dir/log".into()
            ))
        );
        assert_eq!(
            check_resources(&linux, 1, 128, Some(Path::new("console.log"))),
            Ok(()),
            "a relative name is in the working directory"
        );
    }
}

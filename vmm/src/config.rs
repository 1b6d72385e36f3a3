//! VM configuration: what the `husk-vmm` binary reads from flags or a JSON file, and
//! its validation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::layout::{CMDLINE_MAX_SIZE, MIN_LINUX_MEMORY_MIB, MIN_MEMORY_MIB};
use crate::seccomp::SeccompLevel;

/// Default kernel command line: serial console, i8042 reset for reboot, panic reboots,
/// no PCI, no legacy keyboard probing beyond what the reset needs.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";
/// Largest vCPU count accepted.
pub const MAX_VCPUS: u8 = 32;
/// Largest guest memory accepted (MiB).
pub const MAX_MEMORY_MIB: u32 = 256 * 1024;
/// Lowest guest CID (0-2 are reserved: hypervisor, local, host).
pub const MIN_GUEST_CID: u32 = 3;

/// Errors from configuration validation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Neither a kernel nor a raw payload.
    #[error("no kernel given (--kernel or \"kernel\" in the config)")]
    NoKernel,
    /// Both a kernel and a raw payload.
    #[error("give either a kernel or a raw64 payload, not both")]
    KernelAndRaw,
    /// The kernel file does not exist.
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
    #[error("kernel command line is {0} bytes, at most {max} fit", max = CMDLINE_MAX_SIZE - 512)]
    CmdlineTooLong(usize),
    /// The console log's directory does not exist.
    #[error("console log directory missing: {0}")]
    ConsoleDirMissing(PathBuf),
    /// The vsock socket's directory does not exist.
    #[error("vsock socket directory missing: {0}")]
    VsockDirMissing(PathBuf),
    /// Guest CID reserved.
    #[error("vsock guest CID {0} is reserved (use 3 or more)")]
    VsockCid(u32),
    /// The JSON config did not parse.
    #[error("config file {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What serde said.
        message: String,
    },
}

/// The VM as described by flags or a JSON file (all paths host paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Uncompressed ELF vmlinux (PVH entry preferred) or bzImage.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Raw 64-bit code loaded at 1 MiB and entered in long mode (test guests).
    #[serde(default)]
    pub raw64: Option<PathBuf>,
    /// Initramfs (cpio, optionally compressed as the kernel supports).
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line; virtio-mmio devices are appended to it.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// vCPU count.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Console log file; stdout when absent.
    #[serde(default)]
    pub console: Option<PathBuf>,
    /// Hybrid vsock Unix socket path; no vsock device when absent.
    #[serde(default)]
    pub vsock: Option<PathBuf>,
    /// Guest CID of the vsock device.
    #[serde(default = "default_cid")]
    pub vsock_cid: u32,
    /// Try to boot a Linux kernel even on a PVM host (where stock kernels fail).
    #[serde(default)]
    pub allow_pvm: bool,
    /// Forward the VMM's stdin to the guest's serial port.
    #[serde(default)]
    pub console_input: bool,
    /// Per-thread seccomp filters: off, log or enforce (default).
    #[serde(default)]
    pub seccomp: SeccompLevel,
}

fn default_vcpus() -> u8 {
    1
}
fn default_memory_mib() -> u32 {
    128
}
fn default_cid() -> u32 {
    MIN_GUEST_CID
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: None,
            raw64: None,
            initramfs: None,
            cmdline: None,
            vcpus: default_vcpus(),
            memory_mib: default_memory_mib(),
            console: None,
            vsock: None,
            vsock_cid: default_cid(),
            allow_pvm: false,
            console_input: false,
            seccomp: SeccompLevel::default(),
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

/// A validated VM description, ready for [`crate::builder::build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// What runs.
    pub payload: Payload,
    /// vCPU count.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Console log file (stdout when `None`).
    pub console: Option<PathBuf>,
    /// Hybrid vsock: (Unix socket path, guest CID).
    pub vsock: Option<(PathBuf, u32)>,
    /// Boot Linux even on a PVM host.
    pub allow_pvm: bool,
    /// Forward stdin to the serial port.
    pub console_input: bool,
    /// Seccomp filters for the VMM's threads.
    pub seccomp: SeccompLevel,
}

fn parent_exists(p: &Path) -> bool {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.is_dir(),
        _ => true,
    }
}

impl VmConfig {
    /// Reads a JSON config file.
    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        Self::from_json(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })
    }

    /// Parses JSON config text.
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks the config and turns it into a [`VmSpec`]. Reads a raw64 payload file.
    pub fn validate(&self) -> Result<VmSpec, ConfigError> {
        let payload = match (&self.kernel, &self.raw64) {
            (None, None) => return Err(ConfigError::NoKernel),
            (Some(_), Some(_)) => return Err(ConfigError::KernelAndRaw),
            (Some(k), None) => {
                if !k.is_file() {
                    return Err(ConfigError::KernelMissing(k.clone()));
                }
                if let Some(i) = &self.initramfs {
                    if !i.is_file() {
                        return Err(ConfigError::InitramfsMissing(i.clone()));
                    }
                }
                let cmdline = self
                    .cmdline
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
                // Leave room for the virtio-mmio device entries appended later.
                if cmdline.len() > CMDLINE_MAX_SIZE - 512 {
                    return Err(ConfigError::CmdlineTooLong(cmdline.len()));
                }
                Payload::Linux {
                    kernel: k.clone(),
                    initramfs: self.initramfs.clone(),
                    cmdline,
                }
            }
            (None, Some(r)) => {
                if self.initramfs.is_some() || self.cmdline.is_some() {
                    return Err(ConfigError::RawWithLinuxOptions);
                }
                let code = std::fs::read(r).map_err(|_| ConfigError::KernelMissing(r.clone()))?;
                Payload::Raw64(code)
            }
        };
        let spec = VmSpec {
            payload,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            console: self.console.clone(),
            vsock: self.vsock.clone().map(|p| (p, self.vsock_cid)),
            allow_pvm: self.allow_pvm,
            console_input: self.console_input,
            seccomp: self.seccomp,
        };
        spec.check()?;
        Ok(spec)
    }
}

impl VmSpec {
    /// A spec for raw 64-bit test code with one vCPU, 16 MiB and no devices but the
    /// legacy ones.
    pub fn raw64(code: Vec<u8>) -> Self {
        VmSpec {
            payload: Payload::Raw64(code),
            vcpus: 1,
            memory_mib: 16,
            console: None,
            vsock: None,
            allow_pvm: false,
            console_input: false,
            seccomp: SeccompLevel::default(),
        }
    }

    /// Range and existence checks shared by every way of building a spec.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::VcpuCount(self.vcpus));
        }
        let min = match self.payload {
            Payload::Linux { .. } => MIN_LINUX_MEMORY_MIB,
            Payload::Raw64(_) => MIN_MEMORY_MIB,
        };
        if self.memory_mib < min {
            return Err(ConfigError::MemoryTooSmall {
                mib: self.memory_mib,
                min,
            });
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(ConfigError::MemoryTooLarge(self.memory_mib));
        }
        if let Some(c) = &self.console {
            if !parent_exists(c) {
                return Err(ConfigError::ConsoleDirMissing(c.clone()));
            }
        }
        if let Some((p, cid)) = &self.vsock {
            if !parent_exists(p) {
                return Err(ConfigError::VsockDirMissing(p.clone()));
            }
            if *cid < MIN_GUEST_CID {
                return Err(ConfigError::VsockCid(*cid));
            }
        }
        Ok(())
    }
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
    fn json_with_defaults() {
        let c = VmConfig::from_json(r#"{"kernel": "/k", "vsock": "/run/v.sock"}"#).unwrap();
        assert_eq!(c.kernel.as_deref(), Some(Path::new("/k")));
        assert_eq!((c.vcpus, c.memory_mib, c.vsock_cid), (1, 128, 3));
        assert!(VmConfig::from_json(r#"{"kernal": "/k"}"#)
            .unwrap_err()
            .contains("unknown field"));
    }

    #[test]
    fn validates_kernel_presence() {
        assert_eq!(VmConfig::default().validate(), Err(ConfigError::NoKernel));
        let c = VmConfig {
            kernel: Some("/nonexistent/vmlinux".into()),
            ..Default::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::KernelMissing("/nonexistent/vmlinux".into()))
        );
        let (_d, k) = kernel_file();
        let c = VmConfig {
            kernel: Some(k.clone()),
            raw64: Some(k.clone()),
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::KernelAndRaw));
        let c = VmConfig {
            kernel: Some(k.clone()),
            initramfs: Some("/nope".into()),
            ..Default::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::InitramfsMissing("/nope".into()))
        );
        let spec = VmConfig {
            kernel: Some(k.clone()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert!(
            matches!(spec.payload, Payload::Linux { ref cmdline, .. } if cmdline == DEFAULT_CMDLINE)
        );
    }

    #[test]
    fn validates_ranges() {
        let (_d, k) = kernel_file();
        let base = VmConfig {
            kernel: Some(k),
            ..Default::default()
        };
        let c = VmConfig {
            vcpus: 0,
            ..base.clone()
        };
        assert_eq!(c.validate(), Err(ConfigError::VcpuCount(0)));
        let c = VmConfig {
            vcpus: 33,
            ..base.clone()
        };
        assert_eq!(c.validate(), Err(ConfigError::VcpuCount(33)));
        let c = VmConfig {
            memory_mib: 8,
            ..base.clone()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::MemoryTooSmall { mib: 8, min: 32 })
        );
        let c = VmConfig {
            memory_mib: u32::MAX,
            ..base.clone()
        };
        assert_eq!(c.validate(), Err(ConfigError::MemoryTooLarge(u32::MAX)));
        let c = VmConfig {
            cmdline: Some("x".repeat(4000)),
            ..base.clone()
        };
        assert_eq!(c.validate(), Err(ConfigError::CmdlineTooLong(4000)));
        let c = VmConfig {
            console: Some("/no/such/dir/log".into()),
            ..base.clone()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::ConsoleDirMissing("/no/such/dir/log".into()))
        );
        let c = VmConfig {
            vsock: Some("/tmp/v.sock".into()),
            vsock_cid: 2,
            ..base.clone()
        };
        assert_eq!(c.validate(), Err(ConfigError::VsockCid(2)));
        let c = VmConfig {
            vsock: Some("/no/such/v.sock".into()),
            ..base.clone()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::VsockDirMissing("/no/such/v.sock".into()))
        );
    }

    #[test]
    fn raw_payload_rejects_linux_options_and_allows_small_memory() {
        let (_d, k) = kernel_file();
        let c = VmConfig {
            raw64: Some(k.clone()),
            memory_mib: 2,
            ..Default::default()
        };
        assert!(matches!(c.validate().unwrap().payload, Payload::Raw64(ref b) if b == b"\x7fELF"));
        let c = VmConfig {
            raw64: Some(k),
            cmdline: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::RawWithLinuxOptions));
    }
}

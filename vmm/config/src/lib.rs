//! husk-vmm's configuration, one module per device as Firecracker's `vmm_config/`:
//! [`machine`] (payload, vCPUs, memory, console, seccomp), [`vsock`], [`fs`],
//! [`block`] and [`net`]. Each holds its config type, its flag parser (`FromStr`
//! where the flag is compound), its checks and its error enum.
//!
//! A crate of its own so the runtime can build husk-vmm's config as types and hand it
//! over serialised, without pulling KVM, FUSE or seccomp crates into itself.
//!
//! Two names, chosen not to collide with the runtime's own `VmConfig` (the operator's
//! `[vm]` section) and `VmBootSpec` (what a hypervisor backend boots):
//! - [`VmmConfig`]: what husk-vmm is told, by flags or a JSON file (`--config`);
//!   unchecked.
//! - [`ValidatedVm`]: what [`VmmConfig::validate`] makes of it, checked and with a raw
//!   payload read; what husk-vmm's builder boots.

pub mod block;
pub mod fs;
pub mod jail;
pub mod machine;
pub mod net;
pub mod vsock;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use block::{BlockConfigError, BlockDisk};
pub use fs::{FsCache, FsConfigError, FsShare};
pub use machine::{MachineConfig, MachineConfigError, Payload, SeccompLevel};
pub use net::{NetConfig, NetConfigError, TapSource};
pub use vsock::{VsockConfig, VsockConfigError};

/// Errors of a whole configuration: a device's, or the JSON file's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VmmConfigError {
    /// The machine.
    #[error(transparent)]
    Machine(#[from] MachineConfigError),
    /// The vsock device.
    #[error(transparent)]
    Vsock(#[from] VsockConfigError),
    /// A virtio-fs share.
    #[error(transparent)]
    Fs(#[from] FsConfigError),
    /// A virtio-blk disk.
    #[error(transparent)]
    Block(#[from] BlockConfigError),
    /// A network device.
    #[error(transparent)]
    Net(#[from] NetConfigError),
    /// The JSON config did not parse.
    #[error("config file {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What serde said.
        message: String,
    },
}

/// What husk-vmm is told to boot (all paths host paths, relative ones in husk-vmm's
/// working directory).
///
/// Serialised flat, as `--config` has always read it: `kernel`, `raw64`,
/// `initramfs`, `cmdline`, `vcpus`, `memory_mib`, `console`, `console_input`,
/// `allow_pvm`, `seccomp`, `run_as`, `vsock`, `vsock_cid`, `fs`, `disks`, `net`; unknown keys are
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "ConfigFile", into = "ConfigFile")]
pub struct VmmConfig {
    /// Payload, vCPUs, memory, console, seccomp.
    pub machine: MachineConfig,
    /// The vsock device; none when absent.
    pub vsock: Option<VsockConfig>,
    /// Host directories shared with the guest over virtio-fs, one device each.
    pub fs: Vec<FsShare>,
    /// Disk images attached over virtio-blk, one device each.
    pub disks: Vec<BlockDisk>,
    /// Network devices (virtio-net over host taps), one per tap.
    pub net: Vec<NetConfig>,
}

/// A VM description that passed every check, ready for husk-vmm's builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedVm {
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
    /// The uid (= gid) the threads but the virtio-fs one switch to (never 0).
    pub run_as: Option<u32>,
    /// virtio-fs shares, one device each.
    pub fs: Vec<FsShare>,
    /// virtio-blk disks, one device each.
    pub disks: Vec<BlockDisk>,
    /// virtio-net devices, one per tap.
    pub net: Vec<NetConfig>,
}

impl VmmConfig {
    /// Reads a JSON config file.
    pub fn from_json_file(path: &Path) -> Result<Self, VmmConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| VmmConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        Self::from_json(&text).map_err(|message| VmmConfigError::Parse {
            path: path.into(),
            message,
        })
    }

    /// Parses JSON config text.
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The JSON text [`VmmConfig::from_json`] reads back; fails only on a path that is
    /// not UTF-8.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// Checks the config and turns it into a [`ValidatedVm`]. Reads a raw64 payload
    /// file.
    pub fn validate(&self) -> Result<ValidatedVm, VmmConfigError> {
        let machine = &self.machine;
        let vm = ValidatedVm {
            payload: machine.payload()?,
            vcpus: machine.vcpus,
            memory_mib: machine.memory_mib,
            console: machine.console.clone(),
            vsock: self.vsock.as_ref().map(|v| (v.path.clone(), v.cid)),
            allow_pvm: machine.allow_pvm,
            console_input: machine.console_input,
            seccomp: machine.seccomp,
            run_as: machine.run_as,
            fs: self.fs.clone(),
            disks: self.disks.clone(),
            net: self.net.clone(),
        };
        vm.check()?;
        Ok(vm)
    }
}

impl ValidatedVm {
    /// Raw 64-bit test code with one vCPU, 16 MiB and no devices but the legacy ones.
    pub fn raw64(code: Vec<u8>) -> Self {
        ValidatedVm {
            payload: Payload::Raw64(code),
            vcpus: 1,
            memory_mib: 16,
            console: None,
            vsock: None,
            allow_pvm: false,
            console_input: false,
            seccomp: SeccompLevel::default(),
            run_as: None,
            fs: Vec::new(),
            disks: Vec::new(),
            net: Vec::new(),
        }
    }

    /// Range and existence checks, rerun by the builder since tests fill in a
    /// `ValidatedVm` by hand.
    pub fn check(&self) -> Result<(), VmmConfigError> {
        machine::check_resources(
            &self.payload,
            self.vcpus,
            self.memory_mib,
            self.console.as_deref(),
        )?;
        if self.run_as == Some(0) {
            return Err(MachineConfigError::RunAsRoot.into());
        }
        if let Some((path, cid)) = &self.vsock {
            vsock::check_device(path, *cid)?;
        }
        fs::check_shares(&self.fs)?;
        block::check_disks(&self.disks)?;
        net::check_devices(&self.net)?;
        Ok(())
    }
}

/// Whether the directory a file would be created in exists (a bare name: the working
/// directory, which does).
fn parent_exists(p: &Path) -> bool {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.is_dir(),
        _ => true,
    }
}

/// The JSON file's flat layout (kept from before the per-device split, so existing
/// files and scripts still work); [`VmmConfig`] converts to and from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    kernel: Option<PathBuf>,
    #[serde(default)]
    raw64: Option<PathBuf>,
    #[serde(default)]
    initramfs: Option<PathBuf>,
    #[serde(default)]
    cmdline: Option<String>,
    #[serde(default = "default_vcpus")]
    vcpus: u8,
    #[serde(default = "default_memory_mib")]
    memory_mib: u32,
    #[serde(default)]
    console: Option<PathBuf>,
    #[serde(default)]
    vsock: Option<PathBuf>,
    #[serde(default = "default_cid")]
    vsock_cid: u32,
    #[serde(default)]
    allow_pvm: bool,
    #[serde(default)]
    console_input: bool,
    #[serde(default)]
    seccomp: SeccompLevel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_as: Option<u32>,
    #[serde(default)]
    fs: Vec<FsShare>,
    #[serde(default)]
    disks: Vec<BlockDisk>,
    #[serde(default)]
    net: Vec<NetConfig>,
}

fn default_vcpus() -> u8 {
    machine::DEFAULT_VCPUS
}
fn default_memory_mib() -> u32 {
    machine::DEFAULT_MEMORY_MIB
}
fn default_cid() -> u32 {
    vsock::MIN_GUEST_CID
}

impl From<ConfigFile> for VmmConfig {
    fn from(file: ConfigFile) -> Self {
        VmmConfig {
            machine: MachineConfig {
                kernel: file.kernel,
                raw64: file.raw64,
                initramfs: file.initramfs,
                cmdline: file.cmdline,
                vcpus: file.vcpus,
                memory_mib: file.memory_mib,
                console: file.console,
                console_input: file.console_input,
                allow_pvm: file.allow_pvm,
                seccomp: file.seccomp,
                run_as: file.run_as,
            },
            // A CID without a socket configures no device: it is dropped.
            vsock: file.vsock.map(|path| VsockConfig {
                path,
                cid: file.vsock_cid,
            }),
            fs: file.fs,
            disks: file.disks,
            net: file.net,
        }
    }
}

impl From<VmmConfig> for ConfigFile {
    fn from(config: VmmConfig) -> Self {
        let machine = config.machine;
        let (vsock, vsock_cid) = match config.vsock {
            Some(v) => (Some(v.path), v.cid),
            None => (None, default_cid()),
        };
        ConfigFile {
            kernel: machine.kernel,
            raw64: machine.raw64,
            initramfs: machine.initramfs,
            cmdline: machine.cmdline,
            vcpus: machine.vcpus,
            memory_mib: machine.memory_mib,
            console: machine.console,
            vsock,
            vsock_cid,
            allow_pvm: machine.allow_pvm,
            console_input: machine.console_input,
            seccomp: machine.seccomp,
            run_as: machine.run_as,
            fs: config.fs,
            disks: config.disks,
            net: config.net,
        }
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
        let c = VmmConfig::from_json(r#"{"kernel": "/k", "vsock": "/run/v.sock"}"#).unwrap();
        assert_eq!(c.machine.kernel.as_deref(), Some(Path::new("/k")));
        assert_eq!((c.machine.vcpus, c.machine.memory_mib), (1, 128));
        assert_eq!(c.vsock, Some(VsockConfig::new("/run/v.sock")));
        assert!(VmmConfig::from_json(r#"{"kernal": "/k"}"#)
            .unwrap_err()
            .contains("unknown field"));
        assert!(VmmConfig::from_json(r#"{"net": [{"fd": 3, "queues": 2}]}"#)
            .unwrap_err()
            .contains("unknown field"));
        assert_eq!(VmmConfig::from_json("{}").unwrap(), VmmConfig::default());
    }

    #[test]
    fn json_keeps_the_flat_layout_and_devices() {
        let c = VmmConfig::from_json(
            r#"{"raw64": "/code", "memory_mib": 8, "vcpus": 2, "seccomp": "log",
                "vsock": "v.sock", "vsock_cid": 7,
                "fs": [{"tag": "t", "path": "/x", "cache": "always"}],
                "disks": [{"path": "/img", "read_only": true}],
                "net": [{"tap": "tap0", "mac": "02:00:00:00:00:07"}, {"fd": 9}]}"#,
        )
        .unwrap();
        assert_eq!(c.machine.raw64.as_deref(), Some(Path::new("/code")));
        assert_eq!(
            (c.machine.memory_mib, c.machine.vcpus, c.machine.seccomp),
            (8, 2, SeccompLevel::Log)
        );
        assert_eq!(
            c.vsock,
            Some(VsockConfig {
                path: "v.sock".into(),
                cid: 7
            })
        );
        assert_eq!(c.fs[0].cache, FsCache::Always);
        assert!(c.disks[0].read_only);
        assert_eq!(c.net[0].tap.as_deref(), Some("tap0"));
        assert_eq!(c.net[1], NetConfig::inherited(9, None));
        // What the runtime writes is what husk-vmm reads back.
        assert_eq!(VmmConfig::from_json(&c.to_json().unwrap()).unwrap(), c);
        let flat: serde_json::Value = serde_json::from_str(&c.to_json().unwrap()).unwrap();
        assert_eq!(flat["vsock_cid"], 7);
        assert_eq!(flat["net"][1], serde_json::json!({"fd": 9, "mac": null}));
    }

    #[test]
    fn validation_reports_each_device_error() {
        let (d, k) = kernel_file();
        let base = VmmConfig {
            machine: MachineConfig {
                kernel: Some(k.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let vm = base.validate().unwrap();
        assert!(
            matches!(vm.payload, Payload::Linux { ref cmdline, .. } if cmdline == machine::DEFAULT_CMDLINE)
        );
        assert_eq!(
            VmmConfig::default().validate(),
            Err(MachineConfigError::NoKernel.into())
        );
        let c = VmmConfig {
            machine: MachineConfig {
                vcpus: 0,
                ..base.machine.clone()
            },
            ..base.clone()
        };
        assert_eq!(c.validate(), Err(MachineConfigError::VcpuCount(0).into()));
        let as_root = VmmConfig {
            machine: MachineConfig {
                run_as: Some(0),
                ..base.machine.clone()
            },
            ..base.clone()
        };
        assert_eq!(
            as_root.validate(),
            Err(MachineConfigError::RunAsRoot.into())
        );
        let jailed = VmmConfig {
            machine: MachineConfig {
                run_as: Some(200_000),
                ..base.machine.clone()
            },
            ..base.clone()
        };
        assert_eq!(jailed.validate().unwrap().run_as, Some(200_000));
        let text = jailed.to_json().unwrap();
        assert!(text.contains("\"run_as\": 200000"), "{text}");
        assert_eq!(VmmConfig::from_json(&text).unwrap(), jailed);
        assert!(!base.to_json().unwrap().contains("run_as"));
        let c = VmmConfig {
            vsock: Some(VsockConfig {
                path: "/tmp/v.sock".into(),
                cid: 2,
            }),
            ..base.clone()
        };
        assert_eq!(c.validate(), Err(VsockConfigError::ReservedCid(2).into()));
        let c = VmmConfig {
            fs: vec![FsShare {
                tag: "a".into(),
                path: k.clone(),
                cache: FsCache::Auto,
            }],
            ..base.clone()
        };
        assert_eq!(
            c.validate(),
            Err(FsConfigError::DirMissing(k.clone()).into())
        );
        let c = VmmConfig {
            disks: vec![BlockDisk {
                path: d.path().into(),
                read_only: false,
            }],
            ..base.clone()
        };
        assert_eq!(
            c.validate(),
            Err(BlockConfigError::ImageMissing(d.path().into()).into())
        );
        let c = VmmConfig {
            net: vec![NetConfig::inherited(5, None), NetConfig::inherited(3, None)],
            ..base.clone()
        };
        assert_eq!(c.validate().unwrap().net.len(), 2);
        let c = VmmConfig {
            net: vec![NetConfig::inherited(1, None)],
            ..base
        };
        assert_eq!(c.validate(), Err(NetConfigError::TapFd(1).into()));
    }

    #[test]
    fn device_messages_are_shown_unchanged() {
        let e = VmmConfigError::from(MachineConfigError::KernelMissing("/k".into()));
        assert_eq!(e.to_string(), "kernel file missing: /k");
        let e = VmmConfigError::from(MachineConfigError::CmdlineTooLong(4000));
        assert_eq!(
            e.to_string(),
            "kernel command line is 4000 bytes, at most 3584 fit"
        );
    }

    #[test]
    fn raw_payload_allows_small_memory() {
        let (_d, k) = kernel_file();
        let c = VmmConfig {
            machine: MachineConfig {
                raw64: Some(k),
                memory_mib: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(matches!(c.validate().unwrap().payload, Payload::Raw64(ref b) if b == b"\x7fELF"));
        assert_eq!(ValidatedVm::raw64(vec![0xf4]).check(), Ok(()));
    }
}

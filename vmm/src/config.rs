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
/// Longest virtio-fs tag (the config space field is 36 bytes).
pub const FS_TAG_MAX: usize = 36;

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
    /// A `--fs` value did not parse.
    #[error("--fs {value:?}: {reason} (expected tag=<tag>,path=<dir>[,cache=auto|never|always])")]
    FsSyntax {
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `--disk` value did not parse.
    #[error("--disk {value:?}: {reason} (expected [readonly,]path=<file>)")]
    DiskSyntax {
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `--net` value did not parse.
    #[error("--net {value:?}: {reason} (expected tap=<name>|fd=<n>[,mac=xx:xx:xx:xx:xx:xx])")]
    NetSyntax {
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tap name is empty or longer than 15 bytes.
    #[error("tap name {0:?} must be 1 to 15 bytes")]
    NetTapName(String),
    /// Two network devices use the same tap.
    #[error("tap {0:?} is given twice")]
    NetTapTwice(String),
    /// A network device names neither a tap nor a descriptor, or both.
    #[error("a network device needs exactly one of \"tap\" (a name) and \"fd\" (an inherited tap descriptor)")]
    NetTapOrFd,
    /// A tap descriptor is a standard stream or negative.
    #[error("tap descriptor {0} is not usable: it must be an inherited descriptor above 2")]
    NetTapFd(i32),
    /// A MAC address did not parse or is multicast.
    #[error("MAC address {0:?}: expected six hex bytes separated by ':', unicast")]
    NetMac(String),
    /// A disk image does not exist or is not a regular file.
    #[error("virtio-blk disk image missing (or not a regular file): {0}")]
    DiskMissing(PathBuf),
    /// A virtio-fs tag is empty or longer than 36 bytes.
    #[error("virtio-fs tag {0:?} must be 1 to 36 bytes")]
    FsTag(String),
    /// Two shares use the same tag.
    #[error("virtio-fs tag {0:?} is given twice")]
    FsTagTwice(String),
    /// A shared directory does not exist or is not a directory.
    #[error("virtio-fs shared directory missing (or not a directory): {0}")]
    FsDirMissing(PathBuf),
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
    /// Host directories shared with the guest over virtio-fs.
    #[serde(default)]
    pub fs: Vec<FsShare>,
    /// Disk images attached over virtio-blk.
    #[serde(default)]
    pub disks: Vec<BlockDisk>,
    /// Network devices (virtio-net over host taps).
    #[serde(default)]
    pub net: Vec<NetConfig>,
}

/// A virtio-net device over a host tap: one named `tap` (attached to, or created),
/// or one the parent opened and passed down as descriptor `fd`. Exactly one of the
/// two.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap's name (attached to, or created when missing: needs CAP_NET_ADMIN
    /// unless it is a persistent tap owned by the caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// An inherited descriptor of a tap already attached with IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR (how a runtime hands over a tap it made in another network
    /// namespace); husk-vmm takes ownership of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// The guest's MAC (`xx:xx:xx:xx:xx:xx`); a random locally administered one when
    /// absent.
    #[serde(default)]
    pub mac: Option<String>,
}

/// Where a network device's tap comes from (a validated [`NetConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// Attach to (or create) the tap with this name.
    Name(String),
    /// Take over this inherited, already attached tap descriptor.
    Fd(i32),
}

impl NetConfig {
    /// The tap's source, once [`VmConfig::validate`] checked that exactly one is set.
    pub fn source(&self) -> Result<TapSource, ConfigError> {
        match (&self.tap, self.fd) {
            (Some(name), None) => Ok(TapSource::Name(name.clone())),
            (None, Some(fd)) => Ok(TapSource::Fd(fd)),
            _ => Err(ConfigError::NetTapOrFd),
        }
    }
}

impl std::str::FromStr for NetConfig {
    type Err = ConfigError;

    /// Parses `tap=<name>[,mac=xx:xx:xx:xx:xx:xx]` or `fd=<n>[,mac=…]` (the `--net`
    /// flag).
    fn from_str(value: &str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError::NetSyntax {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let mut net = NetConfig::default();
        for item in value.split(',') {
            let (key, val) = item.split_once('=').ok_or_else(|| bad("missing '='"))?;
            match key {
                "tap" => net.tap = Some(val.to_string()),
                "fd" => {
                    net.fd = Some(
                        val.parse()
                            .map_err(|_| bad("fd= takes a descriptor number"))?,
                    )
                }
                "mac" => net.mac = Some(val.to_string()),
                other => return Err(bad(&format!("unknown key {other:?}"))),
            }
        }
        if net.tap.is_some() == net.fd.is_some() {
            return Err(bad("give one of tap= and fd="));
        }
        Ok(net)
    }
}

/// A host file attached as a virtio-blk disk (raw image; the guest sees its size
/// rounded down to 512-byte sectors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDisk {
    /// The image file.
    pub path: PathBuf,
    /// Refuse guest writes (the device offers VIRTIO_BLK_F_RO; the file is opened
    /// read-only).
    #[serde(default)]
    pub read_only: bool,
}

impl std::str::FromStr for BlockDisk {
    type Err = ConfigError;

    /// Parses `[readonly,]path=<file>` (the `--disk` flag; `path=` takes the rest).
    fn from_str(value: &str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError::DiskSyntax {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let mut read_only = false;
        let mut rest = value;
        loop {
            if let Some(path) = rest.strip_prefix("path=") {
                if path.is_empty() {
                    return Err(bad("empty path"));
                }
                return Ok(BlockDisk {
                    path: PathBuf::from(path),
                    read_only,
                });
            }
            let (key, next) = rest
                .split_once(',')
                .ok_or_else(|| bad("path= is required (last)"))?;
            match key {
                "readonly" | "ro" => read_only = true,
                other => return Err(bad(&format!("unknown key {other:?}"))),
            }
            rest = next;
        }
    }
}

/// How the guest kernel may cache a virtio-fs share (FUSE entry/attribute timeouts
/// and page cache), as virtiofsd's `--cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsCache {
    /// Nothing cached: every access goes to the host (host-side changes show at once).
    Never,
    /// Short timeouts (1 s), page cache dropped on open: the default.
    #[default]
    Auto,
    /// Everything cached for long: only for shares the host does not change.
    Always,
}

/// One directory shared with the guest over virtio-fs; the guest mounts it with
/// `mount -t virtiofs <tag> <dir>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsShare {
    /// The mount tag the guest names (1 to 36 bytes).
    pub tag: String,
    /// The host directory; the guest sees nothing outside it.
    pub path: PathBuf,
    /// Guest caching.
    #[serde(default)]
    pub cache: FsCache,
}

impl std::str::FromStr for FsShare {
    type Err = ConfigError;

    /// Parses `tag=<tag>,path=<dir>[,cache=auto|never|always]` (the `--fs` flag).
    fn from_str(value: &str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError::FsSyntax {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let (mut tag, mut path, mut cache) = (None, None, FsCache::default());
        // The path comes last when it may hold commas: `path=` takes the rest.
        let mut rest = value;
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=').ok_or_else(|| bad("missing '='"))?;
            let (val, next) = if key == "path" {
                (after, "")
            } else {
                after.split_once(',').unwrap_or((after, ""))
            };
            match key {
                "tag" => tag = Some(val.to_string()),
                "path" => path = Some(PathBuf::from(val)),
                "cache" => {
                    cache = match val {
                        "auto" => FsCache::Auto,
                        "never" => FsCache::Never,
                        "always" => FsCache::Always,
                        _ => return Err(bad("cache is auto, never or always")),
                    }
                }
                other => return Err(bad(&format!("unknown key {other:?}"))),
            }
            rest = next;
        }
        Ok(FsShare {
            tag: tag.ok_or_else(|| bad("tag= is required"))?,
            path: path.ok_or_else(|| bad("path= is required"))?,
            cache,
        })
    }
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
            fs: Vec::new(),
            disks: Vec::new(),
            net: Vec::new(),
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
    /// virtio-fs shares, one device each.
    pub fs: Vec<FsShare>,
    /// virtio-blk disks, one device each.
    pub disks: Vec<BlockDisk>,
    /// virtio-net devices, one per tap.
    pub net: Vec<NetConfig>,
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
            fs: self.fs.clone(),
            disks: self.disks.clone(),
            net: self.net.clone(),
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
            fs: Vec::new(),
            disks: Vec::new(),
            net: Vec::new(),
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
        for (i, share) in self.fs.iter().enumerate() {
            if share.tag.is_empty() || share.tag.len() > FS_TAG_MAX {
                return Err(ConfigError::FsTag(share.tag.clone()));
            }
            if self.fs[..i].iter().any(|s| s.tag == share.tag) {
                return Err(ConfigError::FsTagTwice(share.tag.clone()));
            }
            if !share.path.is_dir() {
                return Err(ConfigError::FsDirMissing(share.path.clone()));
            }
        }
        for disk in &self.disks {
            if !disk.path.is_file() {
                return Err(ConfigError::DiskMissing(disk.path.clone()));
            }
        }
        for (i, net) in self.net.iter().enumerate() {
            let twice = self.net[..i]
                .iter()
                .any(|n| n.source().ok() == net.source().ok());
            match net.source()? {
                TapSource::Name(tap) => {
                    if tap.is_empty() || tap.len() > 15 || tap.contains(['\0', '/']) {
                        return Err(ConfigError::NetTapName(tap));
                    }
                    if twice {
                        return Err(ConfigError::NetTapTwice(tap));
                    }
                }
                TapSource::Fd(fd) => {
                    if fd <= 2 {
                        return Err(ConfigError::NetTapFd(fd));
                    }
                    if twice {
                        return Err(ConfigError::NetTapTwice(format!("fd {fd}")));
                    }
                }
            }
            if let Some(mac) = &net.mac {
                match crate::virtio::net::parse_mac(mac) {
                    Ok(m) if m[0] & 1 == 0 => {}
                    _ => return Err(ConfigError::NetMac(mac.clone())),
                }
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
    fn fs_flag_syntax() {
        let s: FsShare = "tag=husk-shared,path=/run/a,b".parse().unwrap();
        assert_eq!(s.tag, "husk-shared");
        assert_eq!(s.path, Path::new("/run/a,b"), "path= takes the rest");
        assert_eq!(s.cache, FsCache::Auto);
        let s: FsShare = "cache=never,tag=t,path=/x".parse().unwrap();
        assert_eq!((s.tag.as_str(), s.cache), ("t", FsCache::Never));
        for bad in [
            "tag=t",
            "path=/x",
            "tag=t,cache=sometimes,path=/x",
            "tag",
            "mode=1,path=/x",
        ] {
            let e = bad.parse::<FsShare>().unwrap_err();
            assert!(matches!(e, ConfigError::FsSyntax { .. }), "{bad}: {e}");
        }
        let c = VmConfig::from_json(r#"{"fs": [{"tag": "t", "path": "/x", "cache": "always"}]}"#)
            .unwrap();
        assert_eq!(c.fs[0].cache, FsCache::Always);
    }

    #[test]
    fn disk_flag_syntax_and_checks() {
        let d: BlockDisk = "path=/img,with,commas".parse().unwrap();
        assert_eq!(
            (d.path.as_path(), d.read_only),
            (Path::new("/img,with,commas"), false)
        );
        let d: BlockDisk = "readonly,path=/img".parse().unwrap();
        assert!(d.read_only);
        for bad in ["/img", "readonly", "rw,path=/img", "path="] {
            let e = bad.parse::<BlockDisk>().unwrap_err();
            assert!(matches!(e, ConfigError::DiskSyntax { .. }), "{bad}: {e}");
        }
        let (dir, k) = kernel_file();
        let c = VmConfig {
            kernel: Some(k.clone()),
            disks: vec![BlockDisk {
                path: dir.path().into(),
                read_only: true,
            }],
            ..Default::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::DiskMissing(dir.path().into()))
        );
        let c = VmConfig::from_json(r#"{"disks": [{"path": "/x", "read_only": true}]}"#).unwrap();
        assert!(c.disks[0].read_only);
    }

    #[test]
    fn net_flag_syntax_and_checks() {
        let n: NetConfig = "tap=tap0".parse().unwrap();
        assert_eq!(n.source().unwrap(), TapSource::Name("tap0".into()));
        assert_eq!(n.mac, None);
        let n: NetConfig = "mac=02:00:00:00:00:01,tap=t1".parse().unwrap();
        assert_eq!(n.mac.as_deref(), Some("02:00:00:00:00:01"));
        let n: NetConfig = "fd=7,mac=02:00:00:00:00:01".parse().unwrap();
        assert_eq!(n.source().unwrap(), TapSource::Fd(7));
        for bad in [
            "",
            "tap0",
            "mac=02:00:00:00:00:01",
            "tap=t,queues=2",
            "fd=x",
            "tap=t,fd=3",
        ] {
            let e = bad.parse::<NetConfig>().unwrap_err();
            assert!(matches!(e, ConfigError::NetSyntax { .. }), "{bad}: {e}");
        }
        let (_d, k) = kernel_file();
        let with = |net: Vec<NetConfig>| VmConfig {
            kernel: Some(k.clone()),
            net,
            ..Default::default()
        };
        let tap = |t: &str, mac: Option<&str>| NetConfig {
            tap: Some(t.into()),
            fd: None,
            mac: mac.map(String::from),
        };
        let fd = |fd: i32| NetConfig {
            fd: Some(fd),
            ..Default::default()
        };
        assert_eq!(
            with(vec![fd(3), tap("t", None)])
                .validate()
                .unwrap()
                .net
                .len(),
            2
        );
        assert_eq!(with(vec![fd(2)]).validate(), Err(ConfigError::NetTapFd(2)));
        assert_eq!(
            with(vec![fd(5), fd(5)]).validate(),
            Err(ConfigError::NetTapTwice("fd 5".into()))
        );
        assert_eq!(
            with(vec![NetConfig::default()]).validate(),
            Err(ConfigError::NetTapOrFd)
        );
        assert_eq!(
            with(vec![tap("tap0", None)]).validate().unwrap().net.len(),
            1
        );
        assert_eq!(
            with(vec![tap("a-very-long-tap-name", None)]).validate(),
            Err(ConfigError::NetTapName("a-very-long-tap-name".into()))
        );
        assert_eq!(
            with(vec![tap("t", None), tap("t", None)]).validate(),
            Err(ConfigError::NetTapTwice("t".into()))
        );
        for mac in ["02:00:00:00:00", "01:00:5e:00:00:01", "xx:00:00:00:00:01"] {
            assert_eq!(
                with(vec![tap("t", Some(mac))]).validate(),
                Err(ConfigError::NetMac(mac.into()))
            );
        }
        let c = VmConfig::from_json(r#"{"net": [{"tap": "tap0", "mac": "02:00:00:00:00:07"}]}"#)
            .unwrap();
        assert_eq!(c.net[0], tap("tap0", Some("02:00:00:00:00:07")));
        let c = VmConfig::from_json(r#"{"net": [{"fd": 9}]}"#).unwrap();
        assert_eq!(c.net[0], fd(9));
    }

    #[test]
    fn fs_shares_are_checked() {
        let (d, k) = kernel_file();
        let share = |tag: &str, path: &Path| FsShare {
            tag: tag.into(),
            path: path.into(),
            cache: FsCache::Auto,
        };
        let base = VmConfig {
            kernel: Some(k.clone()),
            ..Default::default()
        };
        let with = |fs: Vec<FsShare>| VmConfig { fs, ..base.clone() };
        assert_eq!(
            with(vec![share("a", d.path())])
                .validate()
                .unwrap()
                .fs
                .len(),
            1
        );
        let long = "x".repeat(37);
        assert_eq!(
            with(vec![share(&long, d.path())]).validate(),
            Err(ConfigError::FsTag(long))
        );
        assert_eq!(
            with(vec![share("", d.path())]).validate(),
            Err(ConfigError::FsTag(String::new()))
        );
        assert_eq!(
            with(vec![share("a", d.path()), share("a", d.path())]).validate(),
            Err(ConfigError::FsTagTwice("a".into()))
        );
        assert_eq!(
            with(vec![share("a", &k)]).validate(),
            Err(ConfigError::FsDirMissing(k.clone()))
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

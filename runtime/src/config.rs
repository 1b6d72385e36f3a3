//! Operator configuration: `/etc/husk/config.toml` (or `--config FILE`).
//!
//! The file is optional. With no file and no `--isolation` flag every workload runs in
//! `vm` isolation: secure by default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::isolation::Isolation;

/// Where the operator configuration lives unless `--config` or `HUSK_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/husk/config.toml";

/// Errors reading the operator configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` could not be read.
    #[error("cannot read husk config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid husk config {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// The whole operator configuration.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub isolation: IsolationConfig,
    #[serde(default)]
    pub vm: VmConfig,
}

/// The `[vm]` table: how sandbox VMs are booted.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The guest kernel (an uncompressed vmlinux with a PVH entry). Unset: the newest
    /// `$HUSK_CACHE/kernel/*/vmlinux` (`~/.cache/husk` without HUSK_CACHE).
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// The initramfs whose /init is husk-agent. Unset: the newest
    /// `$HUSK_CACHE/initramfs/*/initramfs.cpio`.
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Guest memory in MiB (default 256).
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// Guest vCPUs (default 1).
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// The host uids (= gids) the VM processes of sandboxes run as, `[first, last]`:
    /// one per live sandbox. Reserve a range no user and no file of the host has
    /// (default 200000-265535).
    #[serde(default)]
    pub host_ids: Option<[u32; 2]>,
}

/// The `[isolation]` table.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationConfig {
    /// Isolation used when neither the command line nor an allowed annotation chooses
    /// one. Unset means `vm`.
    #[serde(default)]
    pub default: Option<Isolation>,
    /// Whether the `io.husk.isolation` annotation of a workload may choose `container`.
    /// An annotation asking for `vm` is always honoured: it only strengthens isolation.
    #[serde(default)]
    pub allow_annotation: bool,
}

impl Config {
    /// Parses configuration text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: err.message().to_string(),
        })
    }

    /// Loads the configuration. An explicitly named file must exist; the default path may
    /// be absent, in which case the built-in defaults apply.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match explicit {
            Some(path) => (path, true),
            None => (Path::new(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(err) if !required && err.kind() == std::io::ErrorKind::NotFound => {
                Ok(Self::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_vm_and_no_annotation() {
        let config = Config::parse("", Path::new("x")).unwrap();
        assert_eq!(config.isolation.default, None);
        assert!(!config.isolation.allow_annotation);
    }

    #[test]
    fn parses_isolation_table() {
        let config = Config::parse(
            "[isolation]\ndefault = \"container\"\nallow_annotation = true\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(config.isolation.default, Some(Isolation::Container));
        assert!(config.isolation.allow_annotation);
    }

    #[test]
    fn rejects_unknown_keys_and_values() {
        let err = Config::parse("[isolation]\ndefualt = \"vm\"\n", Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/c.toml"), "{err}");
        assert!(err.contains("defualt"), "{err}");
        let err = Config::parse("[isolation]\ndefault = \"chroot\"\n", Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("chroot"), "{err}");
    }

    #[test]
    fn parses_vm_table() {
        let config = Config::parse(
            "[vm]\nkernel = \"/k/vmlinux\"\ninitramfs = \"/i.cpio\"\nmemory_mib = 512\nvcpus = 2\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(config.vm.kernel.as_deref(), Some(Path::new("/k/vmlinux")));
        assert_eq!(config.vm.initramfs.as_deref(), Some(Path::new("/i.cpio")));
        assert_eq!(config.vm.memory_mib, Some(512));
        assert_eq!(config.vm.vcpus, Some(2));
        let err = Config::parse("[vm]\nkernal = \"/k\"\n", Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kernal"), "{err}");
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_explicit_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = Config::load(Some(&missing)).unwrap_err().to_string();
        assert!(err.contains("nope.toml"), "{err}");
    }
}

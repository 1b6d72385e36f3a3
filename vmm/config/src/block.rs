//! virtio-blk disks: raw host image files, and the `--disk` flag.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Errors in a virtio-blk disk's configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockConfigError {
    /// A `--disk` value did not parse.
    #[error("--disk {value:?}: {reason} (expected [readonly,]path=<file>)")]
    Syntax {
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A disk image does not exist or is not a regular file.
    #[error("virtio-blk disk image missing (or not a regular file): {0}")]
    ImageMissing(PathBuf),
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
    type Err = BlockConfigError;

    /// Parses `[readonly,]path=<file>` (the `--disk` flag; `path=` takes the rest).
    fn from_str(value: &str) -> Result<Self, BlockConfigError> {
        let bad = |reason: &str| BlockConfigError::Syntax {
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

/// Checks that every disk image is a regular file.
pub fn check_disks(disks: &[BlockDisk]) -> Result<(), BlockConfigError> {
    match disks.iter().find(|disk| !disk.path.is_file()) {
        Some(missing) => Err(BlockConfigError::ImageMissing(missing.path.clone())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn disk_flag_syntax() {
        let d: BlockDisk = "path=/img,with,commas".parse().unwrap();
        assert_eq!(
            (d.path.as_path(), d.read_only),
            (Path::new("/img,with,commas"), false)
        );
        let d: BlockDisk = "readonly,path=/img".parse().unwrap();
        assert!(d.read_only);
        for bad in ["/img", "readonly", "rw,path=/img", "path="] {
            let e = bad.parse::<BlockDisk>().unwrap_err();
            assert!(matches!(e, BlockConfigError::Syntax { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn images_must_be_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, [0u8; 512]).unwrap();
        let disk = |path: &Path| BlockDisk {
            path: path.into(),
            read_only: true,
        };
        assert_eq!(check_disks(&[disk(&image)]), Ok(()));
        assert_eq!(
            check_disks(&[disk(&image), disk(dir.path())]),
            Err(BlockConfigError::ImageMissing(dir.path().into()))
        );
    }
}

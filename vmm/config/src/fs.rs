//! virtio-fs shares: host directories the guest mounts with
//! `mount -t virtiofs <tag> <dir>`, and the `--fs` flag.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Longest virtio-fs tag (the config space field is 36 bytes).
pub const FS_TAG_MAX: usize = 36;

/// Errors in a virtio-fs share's configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FsConfigError {
    /// A `--fs` value did not parse.
    #[error("--fs {value:?}: {reason} (expected tag=<tag>,path=<dir>[,cache=auto|never|always])")]
    Syntax {
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A virtio-fs tag is empty or longer than 36 bytes.
    #[error("virtio-fs tag {0:?} must be 1 to 36 bytes")]
    Tag(String),
    /// Two shares use the same tag.
    #[error("virtio-fs tag {0:?} is given twice")]
    TagTwice(String),
    /// A shared directory does not exist or is not a directory.
    #[error("virtio-fs shared directory missing (or not a directory): {0}")]
    DirMissing(PathBuf),
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

/// One directory shared with the guest over virtio-fs.
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
    type Err = FsConfigError;

    /// Parses `tag=<tag>,path=<dir>[,cache=auto|never|always]` (the `--fs` flag).
    fn from_str(value: &str) -> Result<Self, FsConfigError> {
        let bad = |reason: &str| FsConfigError::Syntax {
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

/// Checks every share: tags that fit the config space and are unique, directories
/// that exist.
pub fn check_shares(shares: &[FsShare]) -> Result<(), FsConfigError> {
    for (i, share) in shares.iter().enumerate() {
        if share.tag.is_empty() || share.tag.len() > FS_TAG_MAX {
            return Err(FsConfigError::Tag(share.tag.clone()));
        }
        if shares[..i].iter().any(|s| s.tag == share.tag) {
            return Err(FsConfigError::TagTwice(share.tag.clone()));
        }
        if !share.path.is_dir() {
            return Err(FsConfigError::DirMissing(share.path.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

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
            assert!(matches!(e, FsConfigError::Syntax { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn shares_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let share = |tag: &str, path: &Path| FsShare {
            tag: tag.into(),
            path: path.into(),
            cache: FsCache::Auto,
        };
        assert_eq!(check_shares(&[share("a", d.path())]), Ok(()));
        let long = "x".repeat(37);
        assert_eq!(
            check_shares(&[share(&long, d.path())]),
            Err(FsConfigError::Tag(long))
        );
        assert_eq!(
            check_shares(&[share("", d.path())]),
            Err(FsConfigError::Tag(String::new()))
        );
        assert_eq!(
            check_shares(&[share("a", d.path()), share("a", d.path())]),
            Err(FsConfigError::TagTwice("a".into()))
        );
        assert_eq!(
            check_shares(&[share("a", &file)]),
            Err(FsConfigError::DirMissing(file.clone()))
        );
    }
}

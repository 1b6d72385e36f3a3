//! Validation of everything that crosses from the host into the agent. The host is
//! not trusted more than it must be: ids, paths and sizes are checked before they
//! touch the filesystem or the kernel, and a bad value is an error reply.

use std::path::{Component, Path, PathBuf};

/// Longest container or exec id (same bound as Kata and runc's practical limit).
pub const MAX_ID_LEN: usize = 128;
/// Largest JSON document accepted (OCI spec, process, resources).
pub const MAX_JSON_LEN: usize = 1 << 20;
/// Largest single stdio read or write.
pub const MAX_IO_LEN: usize = 1 << 20;
/// Longest relative path accepted.
pub const MAX_PATH_LEN: usize = 4096;

/// Errors of request validation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidationError {
    /// id is empty, too long, or has characters outside `[A-Za-z0-9_.-]`
    #[error("invalid {what} {id:?}: must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}")]
    Id { what: &'static str, id: String },
    /// path is absolute, empty, too long, has NUL or a `..` component
    #[error("invalid path {0:?}: must be relative, without '..', at most 4096 bytes")]
    Path(String),
    /// path resolves (through symlinks) outside the directory it must stay in
    #[error("path {path:?} escapes {base:?}")]
    Escape { path: String, base: String },
    /// path could not be resolved
    #[error("path {path:?}: {reason}")]
    Resolve { path: String, reason: String },
    /// a size field is out of its allowed range
    #[error("{what} = {value} out of range {min}..={max}")]
    Range {
        what: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
}

/// A container id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`.
pub fn container_id(id: &str) -> Result<&str, ValidationError> {
    check_id("container id", id)
}

/// An exec id: empty (the container's init process) or a valid id.
pub fn exec_id(id: &str) -> Result<&str, ValidationError> {
    if id.is_empty() {
        Ok(id)
    } else {
        check_id("exec id", id)
    }
}

fn check_id<'a>(what: &'static str, id: &'a str) -> Result<&'a str, ValidationError> {
    let bytes = id.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_ID_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(id)
    } else {
        Err(ValidationError::Id {
            what,
            id: id.chars().take(MAX_ID_LEN + 8).collect(),
        })
    }
}

/// A relative path with only normal components (no `/` prefix, no `..`, no NUL).
/// `.` components are dropped.
pub fn relative_path(path: &str) -> Result<PathBuf, ValidationError> {
    let bad = || ValidationError::Path(path.chars().take(256).collect());
    if path.is_empty() || path.len() > MAX_PATH_LEN || path.contains('\0') {
        return Err(bad());
    }
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// Resolves `path` (validated with [`relative_path`]) under `base` and checks that
/// the result, with symlinks followed, is still inside `base`. The target must exist.
pub fn resolve_under(base: &Path, path: &str) -> Result<PathBuf, ValidationError> {
    let rel = relative_path(path)?;
    let resolve_err = |p: &Path, e: std::io::Error| ValidationError::Resolve {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    let base = base.canonicalize().map_err(|e| resolve_err(base, e))?;
    let joined = base.join(&rel);
    let real = joined.canonicalize().map_err(|e| resolve_err(&joined, e))?;
    if !real.starts_with(&base) {
        return Err(ValidationError::Escape {
            path: path.to_string(),
            base: base.display().to_string(),
        });
    }
    Ok(real)
}

/// Checks that `value` lies in `min..=max`.
pub fn in_range(
    what: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<u64, ValidationError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ValidationError::Range {
            what,
            value,
            min,
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "A1", "0abc", "web-1.v2_x", &"x".repeat(128)] {
            assert_eq!(container_id(ok), Ok(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "a/b",
            "a b",
            "../x",
            "a\0",
            "é",
            &"x".repeat(129),
        ] {
            assert!(container_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(exec_id(""), Ok(""));
        assert!(exec_id("/").is_err());
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative_path("a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(relative_path("./a//b/.").unwrap(), PathBuf::from("a/b"));
        for bad in [
            "",
            ".",
            "/a",
            "a/../b",
            "..",
            "a/..",
            "a\0b",
            &"a".repeat(4097),
        ] {
            assert!(relative_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resolve_stays_inside_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("shared");
        std::fs::create_dir_all(base.join("bundle/rootfs")).unwrap();
        std::os::unix::fs::symlink("/", base.join("evil")).unwrap();
        std::os::unix::fs::symlink("bundle", base.join("ok")).unwrap();
        let real_base = base.canonicalize().unwrap();
        assert_eq!(
            resolve_under(&base, "bundle/rootfs").unwrap(),
            real_base.join("bundle/rootfs")
        );
        assert_eq!(
            resolve_under(&base, "ok/rootfs").unwrap(),
            real_base.join("bundle/rootfs")
        );
        assert!(matches!(
            resolve_under(&base, "evil"),
            Err(ValidationError::Escape { .. })
        ));
        assert!(matches!(
            resolve_under(&base, "missing"),
            Err(ValidationError::Resolve { .. })
        ));
        assert!(matches!(
            resolve_under(&base, "../shared"),
            Err(ValidationError::Path(_))
        ));
    }

    #[test]
    fn ranges() {
        assert_eq!(in_range("len", 1, 1, 10), Ok(1));
        assert!(in_range("len", 0, 1, 10).is_err());
        assert!(in_range("len", 11, 1, 10).is_err());
    }
}

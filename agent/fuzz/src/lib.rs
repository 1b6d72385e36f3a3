//! Shared pieces of the husk-agent fuzz targets: oracles for the validation rules,
//! written from the rules in docs/guest.md rather than from `husk_agent::validate`,
//! and a scratch tree whose symlinks point inside and outside a base directory.

use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

/// The documented id rule: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`.
pub fn id_is_valid(id: &str) -> bool {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok && id.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The documented relative-path rule. Returns the path's normal components, or
/// None when it must be refused: empty, over 4096 bytes, a NUL, a leading `/`, a
/// `..` component, or nothing left once `.` components are dropped.
pub fn relative_components(path: &str) -> Option<Vec<&str>> {
    if path.is_empty() || path.len() > 4096 || path.contains('\0') || path.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return None;
    }
    Some(parts)
}

/// Whether `path` lies at or below `base`, decided by device and inode of each
/// ancestor rather than by comparing strings (the code under test compares
/// strings). `path` should be canonical: a symlink ancestor does not count.
pub fn is_inside(path: &Path, base: &Path) -> bool {
    let Ok(b) = std::fs::metadata(base) else {
        return false;
    };
    path.ancestors().any(|a| {
        std::fs::symlink_metadata(a).is_ok_and(|m| (m.dev(), m.ino()) == (b.dev(), b.ino()))
    })
}

/// A scratch directory holding `base/` (the directory paths must stay in), a
/// sibling `outside/`, and a sibling `base-evil/` whose name shares base's prefix.
pub struct Tree {
    _dir: tempfile::TempDir,
    /// Canonical path of `base/`.
    pub base: PathBuf,
    /// Canonical path of the scratch directory (parent of `base/`).
    pub root: PathBuf,
}

impl Tree {
    /// Builds the tree (under `$TMPDIR`). Symlinks in `base/`:
    /// inside: `in_rel -> a/b`, `in_abs -> <base>/a`, `self -> .`, `a/b/top -> ../..`;
    /// outside: `up -> ..`, `abs -> /`, `out -> ../outside`, `evil -> ../base-evil`,
    /// `a/b/deep -> ../../..`, `a/esc -> ../../outside/secret`, `zero -> /dev/zero`,
    /// `proc -> /proc/self/cwd`; broken: `loop1 <-> loop2`, `dangling -> nowhere`.
    pub fn new() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("husk-fuzz-").tempdir()?;
        let root = dir.path().canonicalize()?;
        let base = root.join("base");
        std::fs::create_dir_all(base.join("a/b/c"))?;
        std::fs::write(base.join("a/file"), b"inside")?;
        std::fs::create_dir_all(root.join("outside"))?;
        std::fs::write(root.join("outside/secret"), b"outside")?;
        std::fs::create_dir_all(root.join("base-evil/x"))?;
        let links: [(&str, PathBuf); 15] = [
            ("in_rel", "a/b".into()),
            ("in_abs", base.join("a")),
            ("self", ".".into()),
            ("a/b/top", "../..".into()),
            ("up", "..".into()),
            ("abs", "/".into()),
            ("out", "../outside".into()),
            ("evil", "../base-evil".into()),
            ("a/b/deep", "../../..".into()),
            ("a/esc", "../../outside/secret".into()),
            ("zero", "/dev/zero".into()),
            ("proc", "/proc/self/cwd".into()),
            ("loop1", "loop2".into()),
            ("loop2", "loop1".into()),
            ("dangling", "nowhere".into()),
        ];
        for (link, target) in links {
            symlink(target, base.join(link))?;
        }
        Ok(Self {
            _dir: dir,
            base,
            root,
        })
    }
}

/// Checks the oracles and the tree against known answers; the targets call it once
/// at start, so a broken oracle fails the run instead of passing everything.
pub fn self_check(t: &Tree) {
    assert!(id_is_valid("a") && id_is_valid("A-1.b_c") && id_is_valid(&"x".repeat(128)));
    for bad in ["", "-a", ".a", "a/b", "é", "a\0", &"x".repeat(129)] {
        assert!(!id_is_valid(bad), "{bad:?}");
    }
    assert_eq!(relative_components("./a//b/."), Some(vec!["a", "b"]));
    for bad in ["", ".", "/a", "a/../b", "..", "a\0"] {
        assert_eq!(relative_components(bad), None, "{bad:?}");
    }
    let resolved = |link: &str| t.base.join(link).canonicalize().expect(link);
    for inside in ["in_rel", "in_abs", "self", "a/b/top"] {
        assert!(is_inside(&resolved(inside), &t.base), "{inside}");
    }
    for outside in [
        "up", "abs", "out", "evil", "a/b/deep", "a/esc", "zero", "proc",
    ] {
        assert!(!is_inside(&resolved(outside), &t.base), "{outside}");
    }
    for broken in ["loop1", "dangling"] {
        assert!(t.base.join(broken).canonicalize().is_err(), "{broken}");
    }
}

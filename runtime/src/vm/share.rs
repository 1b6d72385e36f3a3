//! The host side of a sandbox's shared directory, the guest's `/run/husk/shared`
//! over virtio-fs. Two directories of the state dir make it:
//!
//! - `private/`, host-only, where every mount is made: each container's rootfs and
//!   bind-mount sources under a folder of its own, `private/c/<guest id>/`. It is a
//!   mount of its own with shared propagation;
//! - `shared/`, what the backends serve to the guest: a bind of `private/` in the same
//!   peer group, remounted read-only, nosuid and nodev. Every mount made under
//!   `private/` appears under `shared/` by propagation (and in a helper's or jail's
//!   mount namespace that holds a slave copy), but the guest can change nothing of
//!   the directories the host works in: the top level, `c/`, each container's folder
//!   and its `mounts/` are read-only to it. Only inside a container's own mounts (its
//!   rootfs, a writable volume) can it write, and the host never walks those.
//!
//! Every host operation here still goes through a descriptor of the state directory
//! and resolves paths with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, and mounts
//! are attached to, and detached from, the descriptor of their target: should a path
//! ever be writable by the guest, a symlink or `..` planted there makes the operation
//! fail instead of leading it to a host path. A bind is prepared detached
//! (`open_tree`), made nosuid, nodev and, for a read-only one, read-only recursively
//! (`mount_setattr(AT_RECURSIVE)`) before it is attached (`move_mount`): the guest
//! never sees it writable, nor a writable submount of it. The host only ever touches
//! paths it recorded itself: it never lists a directory the guest can write.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::guest_spec::{SharedMount, MOUNTS_DIR};

/// The guest's read-only view of the share, relative to the state directory.
pub const SHARED_DIR: &str = "shared";
/// The host-only side of the share, where mounts are made, relative to the state
/// directory.
pub const PRIVATE_DIR: &str = "private";
/// Containers' folders, relative to the shared (and the private) directory.
pub const CONTAINERS_DIR: &str = "c";
/// A container's rootfs inside its folder.
const ROOTFS_NAME: &str = "rootfs";

/// Errors of sharing with the guest.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("cannot open the sandbox state dir {path}: {source}")]
    OpenStateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} in the shared directory: {source}")]
    Path {
        what: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("cannot share {source_path} with the guest at {target}: {source}")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        source: nix::Error,
    },
    /// A relative path that is not plain (absolute, `..`, `.`): never one of ours.
    #[error("refusing the shared path {0}: not a plain relative path")]
    NotPlain(PathBuf),
}

/// Where a container's files are in the share, relative to the state directory
/// (what the host records) and to the shared directory (what the guest is told).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerShare {
    /// `c/<guest id>`, relative to the shared directory.
    pub folder: String,
    /// Every target bound for the container, relative to the state directory, in
    /// the order made.
    pub mounts: Vec<PathBuf>,
}

impl ContainerShare {
    /// The rootfs as the agent's CreateContainer names it (relative to the share).
    pub fn guest_rootfs(&self) -> String {
        format!("{}/{ROOTFS_NAME}", self.folder)
    }
}

/// The state directory of a sandbox, held open: every path below is resolved from
/// this descriptor.
pub struct StateDir {
    fd: OwnedFd,
}

fn plain(rel: &Path) -> Result<(), ShareError> {
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(ShareError::NotPlain(rel.to_path_buf()));
    }
    Ok(())
}

impl StateDir {
    pub fn open(dir: &Path) -> Result<Self, ShareError> {
        let file = File::options()
            .read(true)
            .custom_flags_path()
            .open(dir)
            .map_err(|source| ShareError::OpenStateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self { fd: file.into() })
    }

    /// Opens `rel` beneath the state directory without following any symlink.
    fn open_beneath(&self, rel: &Path, flags: OFlag) -> Result<OwnedFd, ShareError> {
        plain(rel)?;
        let how = OpenHow::new()
            // No O_NOFOLLOW: with it O_PATH would open a trailing symlink itself;
            // RESOLVE_NO_SYMLINKS refuses every symlink, the last one included.
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        let fd = nix::fcntl::openat2(self.fd.as_raw_fd(), rel, how).map_err(|source| {
            ShareError::Path {
                what: "open",
                path: rel.to_path_buf(),
                source,
            }
        })?;
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The parent directory of `rel` (opened beneath) and `rel`'s last component.
    fn parent_of<'a>(&self, rel: &'a Path) -> Result<(OwnedFd, &'a std::ffi::OsStr), ShareError> {
        plain(rel)?;
        let name = rel
            .file_name()
            .ok_or_else(|| ShareError::NotPlain(rel.into()))?;
        let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
        let fd = match parent {
            Some(p) => self.open_beneath(p, OFlag::O_PATH | OFlag::O_DIRECTORY)?,
            None => self.fd.try_clone().map_err(|e| ShareError::Path {
                what: "dup",
                path: rel.into(),
                source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)),
            })?,
        };
        Ok((fd, name))
    }

    /// Creates directory `rel` (each missing component, none through a symlink).
    pub fn make_dirs(&self, rel: &Path) -> Result<(), ShareError> {
        plain(rel)?;
        let mut so_far = PathBuf::new();
        for component in rel.components() {
            so_far.push(component);
            let (parent, name) = self.parent_of(&so_far)?;
            match nix::sys::stat::mkdirat(
                Some(parent.as_raw_fd()),
                name,
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(source) => {
                    return Err(ShareError::Path {
                        what: "create",
                        path: so_far,
                        source,
                    })
                }
            }
        }
        // An existing component may have been anything: make sure it is a directory.
        self.open_beneath(rel, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map(drop)
    }

    /// Creates an empty file `rel` (a file bind mount's target); fails if it exists.
    fn make_file(&self, rel: &Path) -> Result<(), ShareError> {
        let (parent, name) = self.parent_of(rel)?;
        let fd = nix::fcntl::openat(
            Some(parent.as_raw_fd()),
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|source| ShareError::Path {
            what: "create",
            path: rel.into(),
            source,
        })?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(())
    }

    /// Bind-mounts `source` (a host path the engine gave) on `rel`, recursively,
    /// nosuid and nodev, and read-only on the host too when asked (the guest kernel is
    /// not trusted to honour `ro` alone): the tree is cloned detached, its attributes
    /// set on every mount of it, and only then attached, so no one ever sees it
    /// otherwise.
    fn bind(&self, source: &Path, rel: &Path, read_only: bool) -> Result<(), ShareError> {
        let bind_err = |source_err| ShareError::Bind {
            source_path: source.to_path_buf(),
            target: rel.to_path_buf(),
            source: source_err,
        };
        let target = self.open_beneath(rel, OFlag::O_PATH)?;
        let tree = mount_api::clone_tree(source).map_err(bind_err)?;
        let mut attributes = mount_api::MOUNT_ATTR_NOSUID | mount_api::MOUNT_ATTR_NODEV;
        if read_only {
            attributes |= mount_api::MOUNT_ATTR_RDONLY;
        }
        mount_api::set_attributes(&tree, attributes).map_err(bind_err)?;
        mount_api::attach(&tree, &target).map_err(bind_err)
    }

    /// Detaches the mount on `rel`. `Ok(false)`: nothing was mounted there (any
    /// more); a path that no longer resolves beneath the state dir (gone, or a
    /// symlink the guest put in its place) is an error, never "unmounted".
    pub fn unmount(&self, rel: &Path) -> Result<bool, ShareError> {
        let target = self.open_beneath(rel, OFlag::O_PATH)?;
        let path = format!("/proc/self/fd/{}", target.as_raw_fd());
        match nix::mount::umount2(path.as_str(), MntFlags::MNT_DETACH) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EINVAL) => Ok(false),
            Err(source) => Err(ShareError::Path {
                what: "unmount",
                path: rel.into(),
                source,
            }),
        }
    }

    /// Removes the file or empty directory `rel`; `Ok(())` if it is gone already.
    pub fn remove(&self, rel: &Path) -> Result<(), ShareError> {
        let (parent, name) = match self.parent_of(rel) {
            Ok(found) => found,
            Err(ShareError::Path {
                source: nix::errno::Errno::ENOENT,
                ..
            }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let dir = nix::unistd::unlinkat(
            Some(parent.as_raw_fd()),
            name,
            nix::unistd::UnlinkatFlags::RemoveDir,
        );
        let result = match dir {
            Err(nix::errno::Errno::ENOTDIR) => nix::unistd::unlinkat(
                Some(parent.as_raw_fd()),
                name,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ),
            other => other,
        };
        match result {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(source) => Err(ShareError::Path {
                what: "remove",
                path: rel.into(),
                source,
            }),
        }
    }
}

/// `File::options()` with the flags for a directory handle.
trait PathHandle {
    fn custom_flags_path(&mut self) -> &mut Self;
}

impl PathHandle for std::fs::OpenOptions {
    fn custom_flags_path(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        // std adds O_CLOEXEC; O_PATH ignores the access mode.
        self.custom_flags(libc::O_PATH | libc::O_DIRECTORY)
    }
}

/// The folder of the container with guest id `guest_id`, relative to the share.
pub fn container_folder(guest_id: &str) -> String {
    format!("{CONTAINERS_DIR}/{guest_id}")
}

/// Binds a container's rootfs to `private/c/<guest id>/rootfs` (read-only when its
/// spec's `root.readonly` says so: the guest agent then writes mount points into an
/// overlay of its own) and each bind-mount source to
/// `private/c/<guest id>/mounts/<name>`. Every target is passed to
/// `record` before it is mounted (so a crash leaves it recorded for the teardown);
/// on failure what was made is undone.
pub fn share_container(
    state: &StateDir,
    guest_id: &str,
    rootfs: &Path,
    read_only_rootfs: bool,
    mounts: &[SharedMount],
    record: &mut dyn FnMut(&[PathBuf]) -> std::io::Result<()>,
) -> Result<ContainerShare, ShareError> {
    let folder = container_folder(guest_id);
    let base = Path::new(PRIVATE_DIR).join(&folder);
    let mut share = ContainerShare {
        folder,
        mounts: Vec::new(),
    };
    let result = (|| {
        let target = base.join(ROOTFS_NAME);
        state.make_dirs(&target)?;
        bind_recorded(state, rootfs, &target, read_only_rootfs, &mut share, record)?;
        if !mounts.is_empty() {
            state.make_dirs(&base.join(MOUNTS_DIR))?;
        }
        for m in mounts {
            let target = base.join(MOUNTS_DIR).join(&m.name);
            if m.is_dir {
                state.make_dirs(&target)?;
            } else {
                state.make_file(&target)?;
            }
            bind_recorded(state, &m.source, &target, m.read_only, &mut share, record)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(share),
        Err(e) => {
            let left = unshare_container(state, &share);
            let _ = record(&left);
            Err(e)
        }
    }
}

fn bind_recorded(
    state: &StateDir,
    source: &Path,
    target: &Path,
    read_only: bool,
    share: &mut ContainerShare,
    record: &mut dyn FnMut(&[PathBuf]) -> std::io::Result<()>,
) -> Result<(), ShareError> {
    share.mounts.push(target.to_path_buf());
    record(&share.mounts).map_err(|e| ShareError::Path {
        what: "record",
        path: target.to_path_buf(),
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    state.bind(source, target, read_only)
}

/// Unmounts and removes what [`share_container`] made, deepest first, then the
/// container's folder if empty. Returns the targets that could not be unmounted
/// (still recorded: the sandbox dir must then stay).
pub fn unshare_container(state: &StateDir, share: &ContainerShare) -> Vec<PathBuf> {
    let left = release_mounts(state, &share.mounts);
    if left.is_empty() {
        let base = Path::new(PRIVATE_DIR).join(&share.folder);
        for dir in [base.join(MOUNTS_DIR), base] {
            if let Err(e) = state.remove(&dir) {
                tracing::warn!(error = %e, "cannot remove a container's shared folder");
            }
        }
    }
    left
}

/// Unmounts and removes the recorded `targets` (relative to the state dir), last
/// first. Returns those still mounted.
pub fn release_mounts(state: &StateDir, targets: &[PathBuf]) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for target in targets.iter().rev() {
        match state.unmount(target) {
            Ok(_) => {
                if let Err(e) = state.remove(target) {
                    tracing::warn!(error = %e, "cannot remove a shared mount point");
                }
            }
            Err(ShareError::Path {
                what: "open",
                source: nix::errno::Errno::ENOENT,
                ..
            }) => {
                // Never made (a crash between record and mkdir) or removed already.
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot unmount a shared path");
                left.push(target.clone());
            }
        }
    }
    left.reverse();
    left
}

/// Makes the share of a new sandbox: `private/` as a mount with shared propagation
/// and `shared/` as its read-only, nosuid, nodev view (see the module docs). Run
/// before the VM starts; [`release_share`] undoes it (also after a crash: it checks
/// what is mounted, and both paths are host-only).
pub fn prepare_share(state: &StateDir) -> Result<(), ShareError> {
    let private = Path::new(PRIVATE_DIR);
    let shared = Path::new(SHARED_DIR);
    state.make_dirs(&private.join(CONTAINERS_DIR))?;
    state.make_dirs(shared)?;
    let mount_err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ShareError::Path { what, path, source }
    };
    let fd_path = |fd: &OwnedFd| format!("/proc/self/fd/{}", fd.as_raw_fd());
    // private/ onto itself, then shared: later mounts under it propagate to its peers.
    let dir = state.open_beneath(private, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    nix::mount::mount(
        Some(fd_path(&dir).as_str()),
        fd_path(&dir).as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(mount_err("mount", private))?;
    let mounted = state.open_beneath(private, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    nix::mount::mount(
        None::<&str>,
        fd_path(&mounted).as_str(),
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(mount_err("make shared", private))?;
    // shared/: a bind of the shared mount joins its peer group; then read-only. No
    // guest runs yet, so the moment between the two is unobserved.
    let view = state.open_beneath(shared, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    nix::mount::mount(
        Some(fd_path(&mounted).as_str()),
        fd_path(&view).as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(mount_err("mount", shared))?;
    let view_mounted = state.open_beneath(shared, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    nix::mount::mount(
        None::<&str>,
        fd_path(&view_mounted).as_str(),
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(mount_err("make read-only", shared))
}

/// Undoes [`prepare_share`] once every container's mounts and folders are gone:
/// detaches `shared/` and `private/` where mounted and removes them. Idempotent.
/// `legacy_folders`: containers' folders a sandbox made by an older husk kept
/// directly under `shared/`.
pub fn release_share(state: &StateDir, legacy_folders: &[String]) -> Result<(), ShareError> {
    for top in [SHARED_DIR, PRIVATE_DIR] {
        // Anything stacked on it (never by us, but a crash could leave two).
        loop {
            match state.unmount(Path::new(top)) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(ShareError::Path {
                    what: "open",
                    source: nix::errno::Errno::ENOENT,
                    ..
                }) => break,
                Err(e) => return Err(e),
            }
        }
    }
    state.remove(&Path::new(PRIVATE_DIR).join(CONTAINERS_DIR))?;
    state.remove(Path::new(PRIVATE_DIR))?;
    for folder in legacy_folders {
        let base = Path::new(SHARED_DIR).join(folder);
        for dir in [base.join(MOUNTS_DIR), base] {
            state.remove(&dir)?;
        }
    }
    state.remove(&Path::new(SHARED_DIR).join(CONTAINERS_DIR))?;
    state.remove(Path::new(SHARED_DIR))
}

/// The new mount API (open_tree, mount_setattr, move_mount; Linux 5.12+), which nix
/// does not wrap.
mod mount_api {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
    pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
    pub const MOUNT_ATTR_NODEV: u64 = 0x4;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

    /// `struct mount_attr` (linux/mount.h).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }

    /// A detached copy of the mount tree at `source` (a host path the engine gave),
    /// submounts included.
    pub fn clone_tree(source: &Path) -> Result<OwnedFd, nix::Error> {
        let path = CString::new(source.as_os_str().as_bytes()).map_err(|_| nix::Error::EINVAL)?;
        // SAFETY: open_tree reads the NUL-terminated path, which outlives the call,
        // and returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                path.as_ptr(),
                OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(nix::Error::last());
        }
        // SAFETY: open_tree returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Sets `attributes` on every mount of the detached tree `tree`.
    pub fn set_attributes(tree: &OwnedFd, attributes: u64) -> Result<(), nix::Error> {
        let attr = MountAttr {
            attr_set: attributes,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: mount_setattr reads `attr` (of the size passed) and the empty
        // NUL-terminated path, both alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc != 0 {
            return Err(nix::Error::last());
        }
        Ok(())
    }

    /// Attaches the detached tree `tree` on the file or directory `target` (a
    /// descriptor: no path is resolved again).
    pub fn attach(tree: &OwnedFd, target: &OwnedFd) -> Result<(), nix::Error> {
        // SAFETY: move_mount reads the two empty NUL-terminated paths, alive for the
        // call; the descriptors are open.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                target.as_raw_fd(),
                c"".as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            )
        };
        if rc != 0 {
            return Err(nix::Error::last());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_plain_and_never_cross_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), "host file").unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.make_dirs(Path::new("shared/c/web/rootfs")).unwrap();
        assert!(dir.path().join("shared/c/web/rootfs").is_dir());
        // The guest replaces its folder with a symlink to a host directory.
        std::fs::remove_dir_all(dir.path().join("shared/c/web")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("shared/c/web")).unwrap();
        // The link itself is no directory to walk through (ENOTDIR or ELOOP).
        let err = state.remove(Path::new("shared/c/web/victim")).unwrap_err();
        assert!(
            matches!(err, ShareError::Path { what: "open", .. }),
            "{err}"
        );
        assert!(
            outside.path().join("victim").exists(),
            "the host file survives"
        );
        assert!(state.make_dirs(Path::new("shared/c/web/x")).is_err());
        assert!(!outside.path().join("x").exists());
        assert!(state.unmount(Path::new("shared/c/web")).is_err());
        for bad in ["/etc", "../x", "shared/../../x", "", "./shared"] {
            assert!(
                matches!(state.remove(Path::new(bad)), Err(ShareError::NotPlain(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn release_skips_what_was_never_made_and_removes_what_is_not_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.make_dirs(Path::new("private/c/a/rootfs")).unwrap();
        state.make_dirs(Path::new("shared")).unwrap();
        let share = ContainerShare {
            folder: "c/a".into(),
            mounts: vec![
                PathBuf::from("private/c/a/rootfs"),
                PathBuf::from("private/c/a/mounts/0"),
            ],
        };
        assert_eq!(share.guest_rootfs(), "c/a/rootfs");
        assert!(unshare_container(&state, &share).is_empty());
        release_share(&state, &[]).unwrap();
        assert!(!dir.path().join("shared").exists());
    }
}

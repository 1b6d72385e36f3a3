//! Checks on the names a FUSE request carries, made before the request reaches the
//! FUSE server, so no syscall ever sees a hostile name.
//!
//! A well-behaved guest kernel sends each name as one path component of at most
//! `NAME_MAX` bytes followed by exactly one NUL (it resolves paths, "." and ".."
//! itself; LOOKUP of ".." is only for NFS export, which virtio-fs does not do). So a
//! name that is empty, longer than `NAME_MAX`, "." or "..", holds a '/' (an absolute
//! or multi-component path), lacks its NUL or has bytes after it (an embedded NUL)
//! is refused. So is MKNOD of a character or block device: a guest could otherwise
//! make a node for a host device in the share (the host never opens special files,
//! see `device.rs`, but the node would be there for anything else that does).
//! A symlink's target is not checked: the guest resolves it, the host never does.

use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, LinkIn, MkdirIn, MknodIn, Opcode, Rename2In, RenameIn,
};

/// Longest name (one path component), as Linux's `NAME_MAX`.
pub const NAME_MAX: usize = 255;
/// Longest symlink target, NUL included, as Linux's `PATH_MAX`.
pub const PATH_MAX: usize = 4096;
/// Largest body of a request that carries names: a fixed part, a name and a target.
pub const MAX_NAMED_BODY: usize = 64 + NAME_MAX + 1 + PATH_MAX;

/// What a name-carrying request holds after its `InHeader`.
struct NamedLayout {
    /// Size of the fixed argument before the names.
    fixed: usize,
    /// How many path components follow it.
    names: usize,
    /// Whether a symlink target (any bytes but NUL) follows the names.
    target: bool,
}

fn layout(opcode: u32) -> Option<NamedLayout> {
    let named = |fixed, names, target| {
        Some(NamedLayout {
            fixed,
            names,
            target,
        })
    };
    match opcode {
        o if o == Opcode::Lookup as u32 => named(0, 1, false),
        o if o == Opcode::Unlink as u32 => named(0, 1, false),
        o if o == Opcode::Rmdir as u32 => named(0, 1, false),
        o if o == Opcode::Symlink as u32 => named(0, 1, true),
        o if o == Opcode::Mknod as u32 => named(size_of::<MknodIn>(), 1, false),
        o if o == Opcode::Mkdir as u32 => named(size_of::<MkdirIn>(), 1, false),
        o if o == Opcode::Create as u32 => named(size_of::<CreateIn>(), 1, false),
        o if o == Opcode::Link as u32 => named(size_of::<LinkIn>(), 1, false),
        o if o == Opcode::Rename as u32 => named(size_of::<RenameIn>(), 2, false),
        o if o == Opcode::Rename2 as u32 => named(size_of::<Rename2In>(), 2, false),
        _ => None,
    }
}

/// True for requests whose body [`check`] needs to see.
pub fn carries_names(opcode: u32) -> bool {
    layout(opcode).is_some()
}

/// Checks the body (everything after the `InHeader`) of a request with `opcode`:
/// `Err(errno)` to refuse it, `Ok(())` to hand it to the server.
pub fn check(opcode: u32, body: &[u8]) -> Result<(), i32> {
    let Some(layout) = layout(opcode) else {
        return Ok(());
    };
    if body.len() > MAX_NAMED_BODY || body.len() < layout.fixed {
        return Err(libc::EINVAL);
    }
    let (fixed, mut rest) = body.split_at(layout.fixed);
    if opcode == Opcode::Mknod as u32 {
        let mode = u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            return Err(libc::EPERM);
        }
    }
    for _ in 0..layout.names {
        let (name, after) = split_cstr(rest).ok_or(libc::EINVAL)?;
        check_name(name)?;
        rest = after;
    }
    if layout.target {
        let (target, after) = split_cstr(rest).ok_or(libc::EINVAL)?;
        if target.is_empty() || target.len() >= PATH_MAX {
            return Err(libc::EINVAL);
        }
        rest = after;
    }
    if !rest.is_empty() {
        // Bytes after the last NUL: a name with an embedded NUL.
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// One path component: not empty, not "." or "..", no '/', at most `NAME_MAX` bytes.
fn check_name(name: &[u8]) -> Result<(), i32> {
    if name.len() > NAME_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// The bytes before the first NUL and those after it; `None` without a NUL.
fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = b.iter().position(|c| *c == 0)?;
    Some((&b[..nul], &b[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend_from_slice(p);
            v.push(0);
        }
        v
    }

    #[test]
    fn one_component_names_pass() {
        let lookup = Opcode::Lookup as u32;
        assert_eq!(check(lookup, &names(&[b"hello.txt"])), Ok(()));
        assert_eq!(check(lookup, &names(&[b"...".as_slice()])), Ok(()));
        assert_eq!(check(lookup, &names(&[&[b'a'; NAME_MAX]])), Ok(()));
        let mut rename = vec![0u8; size_of::<RenameIn>()];
        rename.extend(names(&[b"old", b"new"]));
        assert_eq!(check(Opcode::Rename as u32, &rename), Ok(()));
        // A symlink's target may be anything the guest resolves itself.
        let symlink = names(&[b"link", b"/etc/shadow"]);
        assert_eq!(check(Opcode::Symlink as u32, &symlink), Ok(()));
        // Requests without names are not looked at.
        assert_eq!(check(Opcode::Getattr as u32, b"../x\0"), Ok(()));
    }

    #[test]
    fn hostile_names_are_refused() {
        let lookup = Opcode::Lookup as u32;
        for bad in [
            names(&[b"/etc/shadow"]),
            names(&[b".."]),
            names(&[b"."]),
            names(&[b"../secret"]),
            names(&[b"a/b"]),
            names(&[b""]),
            names(&[b"x", b"y"]), // "x\0y\0": an embedded NUL
            b"no-nul".to_vec(),
            Vec::new(),
        ] {
            assert_eq!(check(lookup, &bad), Err(libc::EINVAL), "{bad:?}");
        }
        assert_eq!(
            check(lookup, &names(&[&[b'a'; NAME_MAX + 1]])),
            Err(libc::ENAMETOOLONG)
        );
        let mut rename = vec![0u8; size_of::<RenameIn>()];
        rename.extend(names(&[b"ok", b"../moved"]));
        assert_eq!(check(Opcode::Rename as u32, &rename), Err(libc::EINVAL));
        // Too short for its fixed part.
        assert_eq!(check(Opcode::Rename2 as u32, b"ab\0"), Err(libc::EINVAL));
        let symlink = names(&[b"../link", b"target"]);
        assert_eq!(check(Opcode::Symlink as u32, &symlink), Err(libc::EINVAL));
        let symlink = names(&[b"link"]);
        assert_eq!(check(Opcode::Symlink as u32, &symlink), Err(libc::EINVAL));
        let huge = vec![b'a'; MAX_NAMED_BODY + 1];
        assert_eq!(check(Opcode::Symlink as u32, &huge), Err(libc::EINVAL));
    }

    #[test]
    fn device_nodes_are_refused_fifos_are_not() {
        let mknod = |mode: u32| {
            let mut b = mode.to_le_bytes().to_vec();
            b.extend([0u8; 12]);
            b.extend(names(&[b"node"]));
            check(Opcode::Mknod as u32, &b)
        };
        assert_eq!(mknod(libc::S_IFCHR | 0o666), Err(libc::EPERM));
        assert_eq!(mknod(libc::S_IFBLK | 0o600), Err(libc::EPERM));
        assert_eq!(mknod(libc::S_IFIFO | 0o600), Ok(()));
        assert_eq!(mknod(libc::S_IFSOCK | 0o600), Ok(()));
        assert_eq!(mknod(libc::S_IFREG | 0o600), Ok(()));
    }
}

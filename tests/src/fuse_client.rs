//! A virtio-fs driver speaking FUSE (the kernel's `fuse.h` wire format, protocol 7.31)
//! over [`VhostUserFrontend`]: what a guest kernel sends, but with any name we like —
//! absolute names, names with '/', "..". Requests go on the request queue (1); the
//! hiprio queue (0) is set up, as a guest's is, and left idle.

use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;

use crate::vhost_user::{VhostUserError, VhostUserFrontend};

/// What went wrong below FUSE (a FUSE error reply is a [`FuseReply`], not this).
#[derive(Debug, thiserror::Error)]
pub enum FuseClientError {
    /// the transport failed
    #[error(transparent)]
    Transport(#[from] VhostUserError),
    /// the reply was not a well-formed answer to the request
    #[error("{opcode}: malformed reply: {problem}")]
    Malformed {
        opcode: &'static str,
        problem: String,
    },
}

/// The root directory's node id: the shared directory.
pub const ROOT_NODE: u64 = 1;

const HIPRIO_QUEUE_AND_ONE_REQUEST_QUEUE: u16 = 2;
const REQUEST_QUEUE: u16 = 1;
const IN_HEADER_SIZE: usize = 40;
const OUT_HEADER_SIZE: usize = 16;
const ENTRY_OUT_SIZE: usize = 128;

const FUSE_KERNEL_VERSION: u32 = 7;
const FUSE_KERNEL_MINOR_VERSION: u32 = 31;

/// FUSE opcodes this driver sends.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
enum Opcode {
    Lookup = 1,
    Symlink = 6,
    Mknod = 8,
    Mkdir = 9,
    Unlink = 10,
    Rmdir = 11,
    Rename = 12,
    Link = 13,
    Init = 26,
    Create = 35,
}

impl Opcode {
    fn name(self) -> &'static str {
        match self {
            Self::Lookup => "LOOKUP",
            Self::Symlink => "SYMLINK",
            Self::Mknod => "MKNOD",
            Self::Mkdir => "MKDIR",
            Self::Unlink => "UNLINK",
            Self::Rmdir => "RMDIR",
            Self::Rename => "RENAME",
            Self::Link => "LINK",
            Self::Init => "INIT",
            Self::Create => "CREATE",
        }
    }
}

/// A node the file system returned (from `fuse_entry_out`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub node: u64,
    /// The host inode number (`attr.ino`).
    pub ino: u64,
    pub mode: u32,
}

/// A FUSE reply: an errno, or success with its body.
#[derive(Debug, Clone)]
pub struct FuseReply {
    pub opcode: &'static str,
    /// 0 on success, else the (positive) errno.
    pub error: i32,
    pub body: Vec<u8>,
}

impl FuseReply {
    pub fn errno(&self) -> Option<Errno> {
        (self.error != 0).then(|| Errno::from_raw(self.error))
    }

    /// The entry of a LOOKUP/MKDIR/MKNOD/SYMLINK/LINK/CREATE success.
    pub fn entry(&self) -> Option<Entry> {
        if self.error != 0 || self.body.len() < ENTRY_OUT_SIZE {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(self.body[at..at + 8].try_into().unwrap());
        let u32_at = |at: usize| u32::from_le_bytes(self.body[at..at + 4].try_into().unwrap());
        Some(Entry {
            node: u64_at(0),
            ino: u64_at(40),
            mode: u32_at(100),
        })
    }

    /// "ENOENT (No such file or directory)" or "succeeded".
    pub fn outcome(&self) -> String {
        match self.errno() {
            Some(errno) => format!("{errno:?} ({})", errno.desc()),
            None => match self.entry() {
                Some(entry) => format!("succeeded (host inode {})", entry.ino),
                None => "succeeded".to_string(),
            },
        }
    }
}

/// A FUSE session with a virtio-fs device: INIT done, requests one at a time.
pub struct FuseSession {
    device: VhostUserFrontend,
    next_unique: u64,
    timeout: Duration,
}

fn name_arg(name: &[u8]) -> Vec<u8> {
    let mut arg = name.to_vec();
    arg.push(0);
    arg
}

impl FuseSession {
    /// Connects to the vhost-user socket, sets the device up and sends FUSE_INIT;
    /// every request (INIT included) must be answered within `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, FuseClientError> {
        let device = VhostUserFrontend::connect(socket, HIPRIO_QUEUE_AND_ONE_REQUEST_QUEUE)?;
        let mut session = Self {
            device,
            next_unique: 1,
            timeout,
        };
        let mut init = Vec::new();
        init.extend(FUSE_KERNEL_VERSION.to_le_bytes());
        init.extend(FUSE_KERNEL_MINOR_VERSION.to_le_bytes());
        init.extend(0u32.to_le_bytes()); // max_readahead
        init.extend(0u32.to_le_bytes()); // flags: ask for nothing
        let reply = session.request(Opcode::Init, 0, &[&init])?;
        if reply.error != 0 || reply.body.len() < 8 {
            return Err(FuseClientError::Malformed {
                opcode: Opcode::Init.name(),
                problem: format!("{} with {} bytes", reply.outcome(), reply.body.len()),
            });
        }
        Ok(session)
    }

    /// Sends one request for `node` (as root, uid/gid 0: the guest says who it is)
    /// and returns the reply.
    fn request(
        &mut self,
        opcode: Opcode,
        node: u64,
        args: &[&[u8]],
    ) -> Result<FuseReply, FuseClientError> {
        let unique = self.next_unique;
        self.next_unique += 1;
        let len = IN_HEADER_SIZE + args.iter().map(|a| a.len()).sum::<usize>();
        let mut message = Vec::with_capacity(len);
        message.extend((len as u32).to_le_bytes());
        message.extend((opcode as u32).to_le_bytes());
        message.extend(unique.to_le_bytes());
        message.extend(node.to_le_bytes());
        message.extend(0u32.to_le_bytes()); // uid
        message.extend(0u32.to_le_bytes()); // gid
        message.extend(1u32.to_le_bytes()); // pid: the guest's init
        message.extend(0u16.to_le_bytes()); // total_extlen
        message.extend(0u16.to_le_bytes()); // padding
        for arg in args {
            message.extend_from_slice(arg);
        }
        let reply = self
            .device
            .exchange(REQUEST_QUEUE, &message, self.timeout)?;
        let malformed = |problem: String| FuseClientError::Malformed {
            opcode: opcode.name(),
            problem,
        };
        if reply.len() < OUT_HEADER_SIZE {
            return Err(malformed(format!("{} bytes", reply.len())));
        }
        let reply_len = u32::from_le_bytes(reply[0..4].try_into().unwrap()) as usize;
        let error = i32::from_le_bytes(reply[4..8].try_into().unwrap());
        let reply_unique = u64::from_le_bytes(reply[8..16].try_into().unwrap());
        if reply_unique != unique || reply_len != reply.len() || error > 0 {
            return Err(malformed(format!(
                "len {reply_len} (wrote {}), error {error}, unique {reply_unique} for {unique}",
                reply.len()
            )));
        }
        Ok(FuseReply {
            opcode: opcode.name(),
            error: -error,
            body: reply[OUT_HEADER_SIZE..].to_vec(),
        })
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<FuseReply, FuseClientError> {
        self.request(Opcode::Lookup, parent, &[&name_arg(name)])
    }

    pub fn mkdir(&mut self, parent: u64, name: &[u8]) -> Result<FuseReply, FuseClientError> {
        let mut mkdir_in = 0o755u32.to_le_bytes().to_vec();
        mkdir_in.extend(0u32.to_le_bytes()); // umask
        self.request(Opcode::Mkdir, parent, &[&mkdir_in, &name_arg(name)])
    }

    /// A FIFO named `name`.
    pub fn mknod_fifo(&mut self, parent: u64, name: &[u8]) -> Result<FuseReply, FuseClientError> {
        let mut mknod_in = (libc::S_IFIFO | 0o644).to_le_bytes().to_vec();
        mknod_in.extend(0u32.to_le_bytes()); // rdev
        mknod_in.extend(0u32.to_le_bytes()); // umask
        mknod_in.extend(0u32.to_le_bytes()); // padding
        self.request(Opcode::Mknod, parent, &[&mknod_in, &name_arg(name)])
    }

    /// A symlink `name` pointing at `target`.
    pub fn symlink(
        &mut self,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> Result<FuseReply, FuseClientError> {
        self.request(
            Opcode::Symlink,
            parent,
            &[&name_arg(name), &name_arg(target)],
        )
    }

    /// Creates and opens `name` (O_CREAT|O_EXCL|O_WRONLY); the handle is never released:
    /// the session ends with the daemon.
    pub fn create(&mut self, parent: u64, name: &[u8]) -> Result<FuseReply, FuseClientError> {
        let flags = (libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY) as u32;
        let mut create_in = flags.to_le_bytes().to_vec();
        create_in.extend((libc::S_IFREG | 0o644).to_le_bytes());
        create_in.extend(0u32.to_le_bytes()); // umask
        create_in.extend(0u32.to_le_bytes()); // open_flags
        self.request(Opcode::Create, parent, &[&create_in, &name_arg(name)])
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> Result<FuseReply, FuseClientError> {
        self.request(Opcode::Unlink, parent, &[&name_arg(name)])
    }

    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> Result<FuseReply, FuseClientError> {
        self.request(Opcode::Rmdir, parent, &[&name_arg(name)])
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
    ) -> Result<FuseReply, FuseClientError> {
        self.request(
            Opcode::Rename,
            parent,
            &[
                &new_parent.to_le_bytes(),
                &name_arg(name),
                &name_arg(new_name),
            ],
        )
    }

    /// A hard link to `node`, named `new_name` in `new_parent`.
    pub fn link(
        &mut self,
        node: u64,
        new_parent: u64,
        new_name: &[u8],
    ) -> Result<FuseReply, FuseClientError> {
        self.request(
            Opcode::Link,
            new_parent,
            &[&node.to_le_bytes(), &name_arg(new_name)],
        )
    }
}

//! The virtio-fs device (id 26; queue 0 = hiprio, queue 1 = requests; config = tag
//! and request queue count) and its handler, run on the device's queue thread: every
//! descriptor chain goes to fuse-backend-rs's `Server` over a `PassthroughFs` rooted
//! at the shared directory.
//!
//! What the guest can reach: passthrough resolves every name relative to a directory
//! fd it already holds with `O_NOFOLLOW`, and never follows symlinks on the host
//! (the guest resolves them itself). Extended attributes and file handles
//! (`open_by_handle_at`) are off. FIFOs and sockets in the share are never opened on
//! the host: the guest kernel opens those itself, so a FUSE OPEN, a truncating
//! SETATTR or a CREATE of an existing name on one can only come from a hostile guest
//! (a node it made to reach a host FIFO or socket, or to block this thread) and is
//! refused with EPERM before the server sees it.
//!
//! Before any of that, every name a request carries is checked
//! (`request_check.rs`): an absolute name, "." or "..", a '/' or an embedded NUL
//! gets EINVAL, and MKNOD of a character or block device EPERM, before any syscall.
//! Log lines a guest's requests cause are rate-limited (`virtio/guest_log.rs`).

use std::ffi::CStr;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{CreateIn, InHeader, Opcode, OutHeader, SetattrIn};
use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config as PassthroughConfig, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::request_check::{self, MAX_NAMED_BODY};
use super::FsError;
use crate::config::{FsCache, FsShare};
use crate::guest_warn;
use crate::landlock::{self, Confinement};
use crate::seccomp::{SeccompLevel, ThreadRole};
use crate::virtio::guest_log::GuestLogLimit;
use crate::virtio::worker::{Activation, QueueThread};
use crate::virtio::{ActivateContext, VirtioDevice, VirtioError, INT_VRING, VIRTIO_F_VERSION_1};

/// Virtio device id of virtio-fs.
pub const VIRTIO_ID_FS: u32 = 26;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// Queues: hiprio (FORGET, INTERRUPT) and one request queue.
pub const NUM_QUEUES: usize = 2;
/// Bytes of the tag field in config space.
pub const TAG_LEN: usize = 36;

/// FUSE SETATTR `valid` bit: the size changes (truncate).
const FATTR_SIZE: u32 = 1 << 3;
/// FATTR_FH: SETATTR names an open handle (then nothing is opened for it).
const FATTR_FH: u32 = 1 << 6;

/// The file system the device serves.
pub type SharedFs = PassthroughFs<()>;

/// One virtio-fs share. Its thread starts with the device (vCPU threads never spawn
/// threads) and serves the queues between activation and reset.
pub struct FsDevice {
    config: [u8; TAG_LEN + 4],
    worker: QueueThread,
}

/// The passthrough configuration for `share`: timeouts as virtiofsd's `--cache`, no
/// xattrs, no file handles, no writeback, no DAX.
fn passthrough_config(share: &FsShare, root: String) -> PassthroughConfig {
    let (policy, timeout) = match share.cache {
        FsCache::Never => (CachePolicy::Never, Duration::ZERO),
        FsCache::Auto => (CachePolicy::Auto, Duration::from_secs(1)),
        FsCache::Always => (CachePolicy::Always, Duration::from_secs(86400)),
    };
    PassthroughConfig {
        root_dir: root,
        cache_policy: policy,
        attr_timeout: timeout,
        entry_timeout: timeout,
        // Standalone (no fuse-backend-rs Vfs above it): FUSE_INIT imports the root
        // and negotiates only what this config asks for.
        do_import: true,
        xattr: false,
        inode_file_handles: false,
        writeback: false,
        ..Default::default()
    }
}

impl FsDevice {
    /// A device serving `share.path` under `share.tag`. Opens the directory now, so a
    /// missing or unreadable share fails the VM build instead of the guest's mount.
    /// The worker thread confines itself with `seccomp`.
    pub fn new(share: &FsShare, seccomp: SeccompLevel) -> Result<Self, FsError> {
        let fs = Arc::new(open_share(share)?);
        let mut config = [0u8; TAG_LEN + 4];
        let tag = share.tag.as_bytes();
        let n = tag.len().min(TAG_LEN);
        config[..n].copy_from_slice(&tag[..n]);
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());

        let mut handler = FsHandler::new(fs);
        let dir = share.path.clone();
        let confine = move || match landlock::confine_thread_beneath(&dir) {
            Ok(Confinement::Confined { abi }) => {
                tracing::info!(abi, path = %dir.display(), "virtio-fs thread confined by Landlock");
            }
            Ok(Confinement::Unavailable { abi }) => tracing::info!(
                abi,
                "virtio-fs: the kernel has no Landlock ABI >= 2; containment rests on \
                 passthrough's checks and seccomp"
            ),
            Err(e) => tracing::warn!(
                "virtio-fs: Landlock confinement failed ({e}); containment rests on \
                 passthrough's checks and seccomp"
            ),
        };
        let worker = QueueThread::spawn(
            "virtio-fs",
            ThreadRole::FsWorker,
            seccomp,
            confine,
            move |act, q| handler.process_queue(act, q),
        )
        .map_err(FsError::Worker)?;
        Ok(FsDevice { config, worker })
    }
}

/// Opens the passthrough file system on `share.path` and imports its root.
pub fn open_share(share: &FsShare) -> Result<SharedFs, FsError> {
    let err = |source| FsError::SharedDir {
        tag: share.tag.clone(),
        path: share.path.display().to_string(),
        source,
    };
    let root = share
        .path
        .to_str()
        .ok_or_else(|| FsError::PathNotUtf8(share.path.display().to_string()))?
        .to_string();
    let fs = SharedFs::new(passthrough_config(share, root)).map_err(err)?;
    fs.import().map_err(err)?;
    Ok(fs)
}

impl VirtioDevice for FsDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        self.worker.activate(ctx)
    }

    fn reset(&mut self) {
        self.worker.reset();
    }
}

/// Hands the chains of the activated queues to the FUSE server.
pub struct FsHandler {
    server: Arc<Server<Arc<SharedFs>>>,
    fs: Arc<SharedFs>,
    log_limit: GuestLogLimit,
}

impl FsHandler {
    /// A handler serving `fs`.
    pub fn new(fs: Arc<SharedFs>) -> Self {
        FsHandler {
            server: Arc::new(Server::new(fs.clone())),
            fs,
            log_limit: GuestLogLimit::default(),
        }
    }

    /// Handles every available chain of queue `q`, then interrupts the guest once.
    pub fn process_queue(&mut self, act: &mut Activation, q: usize) {
        let mut used = false;
        while let Some(chain) = act.queues[q].pop_descriptor_chain(&act.mem) {
            let head = chain.head_index();
            let len = match self.handle_chain(&act.mem, chain) {
                Ok(len) => len,
                Err(e) => {
                    tracing::debug!("virtio-fs request: {e}");
                    0
                }
            };
            if let Err(e) = act.queues[q].add_used(&act.mem, head, len as u32) {
                tracing::warn!("virtio-fs add_used: {e}");
            }
            used = true;
        }
        if used {
            act.interrupt.trigger(INT_VRING);
        }
    }

    fn handle_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<usize, String> {
        let reader =
            Reader::from_descriptor_chain(mem, chain.clone()).map_err(|e| e.to_string())?;
        let mut writer = VirtioFsWriter::new(mem, chain).map_err(|e| e.to_string())?;
        if let Some((unique, errno)) = self.refused(reader.clone()) {
            let out = OutHeader {
                len: std::mem::size_of::<OutHeader>() as u32,
                error: -errno,
                unique,
            };
            writer.write_obj(out).map_err(|e| e.to_string())?;
            return Ok(writer.bytes_written());
        }
        self.server
            .handle_message(reader, Writer::VirtioFs(writer), None, None)
            .map_err(|e| e.to_string())
    }

    /// `Some((unique, errno))` for a request carrying a name it may not (see
    /// `request_check.rs`) or one that would open a device node, FIFO or socket on
    /// the host (see the module doc); `None` lets the server handle it, malformed
    /// requests included (it refuses those itself).
    fn refused(&mut self, mut r: Reader<'_>) -> Option<(u64, i32)> {
        let hdr: InHeader = r.read_obj().ok()?;
        let errno = if request_check::carries_names(hdr.opcode) {
            self.refused_names(&hdr, r)?
        } else {
            self.refused_open(&hdr, r)?
        };
        Some((hdr.unique, errno))
    }

    /// The errno for a request whose names break the rules, or a CREATE of a name
    /// that exists as a special file (passthrough would open it: a FIFO without a
    /// reader would block the fs thread for good).
    fn refused_names(&mut self, hdr: &InHeader, mut r: Reader<'_>) -> Option<i32> {
        let body_len = (hdr.len as usize).checked_sub(std::mem::size_of::<InHeader>())?;
        let checked = if body_len > MAX_NAMED_BODY {
            Err(libc::EINVAL)
        } else if body_len > r.available_bytes() {
            return None;
        } else {
            Ok(())
        };
        let mut body = vec![0u8; if checked.is_ok() { body_len } else { 0 }];
        r.read_exact(&mut body).ok()?;
        if let Err(errno) = checked.and_then(|()| request_check::check(hdr.opcode, &body)) {
            guest_warn!(
                self.log_limit,
                opcode = hdr.opcode,
                errno,
                "virtio-fs: refused a name that is not one path component, or a device node"
            );
            return Some(errno);
        }
        if hdr.opcode != Opcode::Create as u32 {
            return None;
        }
        // Checked above: CreateIn, then one name and its NUL.
        let name = CStr::from_bytes_with_nul(&body[std::mem::size_of::<CreateIn>()..]).ok()?;
        let ctx = Context::new();
        let entry = self.fs.lookup(&ctx, hdr.nodeid, name).ok()?;
        self.fs.forget(&ctx, entry.inode, 1);
        self.special_file(entry.inode, entry.attr.st_mode)
    }

    /// The errno for an OPEN, or a truncating SETATTR without a handle, of a special
    /// file.
    fn refused_open(&mut self, hdr: &InHeader, mut r: Reader<'_>) -> Option<i32> {
        let opens_inode = if hdr.opcode == Opcode::Open as u32 {
            true
        } else if hdr.opcode == Opcode::Setattr as u32 {
            let set: SetattrIn = r.read_obj().ok()?;
            set.valid & FATTR_SIZE != 0 && set.valid & FATTR_FH == 0
        } else {
            false
        };
        if !opens_inode {
            return None;
        }
        let (st, _) = self.fs.getattr(&Context::new(), hdr.nodeid, None).ok()?;
        self.special_file(hdr.nodeid, st.st_mode)
    }

    /// EPERM, logged, when `mode` is neither a regular file nor a directory.
    fn special_file(&mut self, inode: u64, mode: u32) -> Option<i32> {
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFREG || kind == libc::S_IFDIR {
            return None;
        }
        guest_warn!(
            self.log_limit,
            inode,
            mode,
            "virtio-fs: refused to open a special file on the host"
        );
        Some(libc::EPERM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp;
    use crate::virtio::guest_log::LINES_PER_INTERVAL;
    use crate::virtio::test_utils::TestQueue;
    use crate::virtio::Interrupt;
    use fuse_backend_rs::abi::fuse_abi::{
        AttrOut, EntryOut, GetattrIn, InitIn, InitOut, LinkIn, MkdirIn, MknodIn, OpenIn, OpenOut,
        ReadIn, Rename2In, RenameIn, WriteIn, WriteOut, ROOT_ID,
    };
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::Path;
    use vm_memory::{ByteValued, Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const REQ_QUEUE_BASE: u64 = 0x10_0000;
    const OUT_LEN: u32 = 8192;

    fn share(dir: &Path, cache: FsCache) -> FsShare {
        FsShare {
            tag: "husk-shared".into(),
            path: dir.into(),
            cache,
        }
    }

    /// A driver's view of one activated device: writes FUSE requests into the request
    /// queue and reads the replies back, as the guest's virtio-fs driver would.
    struct Driver {
        mem: GuestMemoryMmap,
        handler: FsHandler,
        act: Activation,
        irq: EventFd,
        next_unique: u64,
        req: TestQueue<'static>,
    }

    impl Driver {
        fn new(dir: &Path) -> Self {
            // Leaked so the test queue can borrow it for the whole test.
            let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap(),
            ));
            let hiprio = TestQueue::new(mem, 0x8_0000, 16);
            let req = TestQueue::new(mem, REQ_QUEUE_BASE, 16);
            let irq = EventFd::new(EFD_NONBLOCK).unwrap();
            let act = Activation {
                mem: mem.clone(),
                queues: vec![hiprio.queue(), req.queue()],
                interrupt: Arc::new(Interrupt::new(irq.try_clone().unwrap())),
            };
            let fs = Arc::new(open_share(&share(dir, FsCache::Never)).unwrap());
            Driver {
                mem: mem.clone(),
                handler: FsHandler::new(fs),
                act,
                irq,
                next_unique: 1,
                req,
            }
        }

        /// Sends one request as (header+body readable, reply writable) and returns the
        /// reply header and payload.
        fn call_as(&mut self, uid: u32, opcode: Opcode, node: u64, body: &[u8]) -> (i32, Vec<u8>) {
            let len = (std::mem::size_of::<InHeader>() + body.len()) as u32;
            let hdr = InHeader {
                len,
                opcode: opcode as u32,
                unique: self.next_unique,
                nodeid: node,
                uid,
                gid: uid,
                pid: 1,
                padding: 0,
            };
            self.next_unique += 1;
            let mut req = hdr.as_slice().to_vec();
            req.extend_from_slice(body);
            let a = self.req.buffer(&req, len);
            let b = self.req.buffer(&[], OUT_LEN);
            let before = self.req.used_idx();
            self.req.add_chain(&[(a, len, false), (b, OUT_LEN, true)]);
            self.handler.process_queue(&mut self.act, 1);
            assert_eq!(
                self.req.used_idx(),
                before.wrapping_add(1),
                "request completed"
            );
            assert_eq!(self.irq.read().unwrap(), 1, "used-buffer interrupt");
            let (_, written) = self.req.used(before);
            let out: OutHeader = self.mem.read_obj(GuestAddress(b)).unwrap();
            assert_eq!(out.unique, hdr.unique);
            assert_eq!(out.len, written, "reply length matches the used length");
            let mut payload = vec![0u8; written as usize - std::mem::size_of::<OutHeader>()];
            self.mem
                .read_slice(&mut payload, GuestAddress(b + 16))
                .unwrap();
            (out.error, payload)
        }

        fn call(&mut self, opcode: Opcode, node: u64, body: &[u8]) -> (i32, Vec<u8>) {
            self.call_as(0, opcode, node, body)
        }

        fn ok<T: ByteValued>(&mut self, opcode: Opcode, node: u64, body: &[u8]) -> T {
            let (err, payload) = self.call(opcode, node, body);
            assert_eq!(err, 0, "{opcode:?} failed");
            obj(&payload)
        }

        fn init(&mut self) -> InitOut {
            let init = InitIn {
                major: 7,
                minor: 31,
                max_readahead: 0x20000,
                flags: 0,
            };
            self.ok(Opcode::Init, 0, init.as_slice())
        }

        fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
            let (err, payload) = self.call(Opcode::Lookup, parent, &cstr(name));
            if err != 0 {
                return Err(err);
            }
            Ok(obj(&payload))
        }
    }

    fn obj<T: ByteValued>(b: &[u8]) -> T {
        T::from_slice(&b[..std::mem::size_of::<T>()])
            .copied()
            .unwrap()
    }

    fn cstr(name: &str) -> Vec<u8> {
        let mut v = name.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn with_name<T: ByteValued>(arg: T, name: &str) -> Vec<u8> {
        let mut v = arg.as_slice().to_vec();
        v.extend(cstr(name));
        v
    }

    #[test]
    fn config_space_holds_tag_and_queue_count() {
        let dir = tempfile::tempdir().unwrap();
        let dev = FsDevice::new(&share(dir.path(), FsCache::Auto), SeccompLevel::Off).unwrap();
        assert_eq!(dev.device_type(), 26);
        assert_eq!(dev.queue_max_sizes(), vec![QUEUE_SIZE; 2]);
        let mut tag = [0u8; TAG_LEN];
        dev.read_config(0, &mut tag);
        assert_eq!(&tag[..11], b"husk-shared");
        assert!(tag[11..].iter().all(|b| *b == 0));
        let mut n = [0u8; 4];
        dev.read_config(TAG_LEN as u64, &mut n);
        assert_eq!(u32::from_le_bytes(n), 1, "one request queue");
    }

    #[test]
    fn a_missing_share_fails_at_build_time() {
        let err = FsDevice::new(
            &share(Path::new("/nonexistent/husk-share"), FsCache::Auto),
            SeccompLevel::Off,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("/nonexistent/husk-share"), "{err}");
        assert!(err.contains("husk-shared"), "{err}");
    }

    /// A whole guest session on the fs thread with its seccomp filter enforced: any
    /// syscall passthrough needs that the filter lacks ends the test binary with
    /// "husk-vmm: seccomp: forbidden syscall N" and status 159.
    #[test]
    fn serves_a_session_under_the_enforced_filter() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.txt"), b"hello from the host\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        // Device setup (eventfds, opening the share) happens on the VMM's main thread.
        let driver = Driver::new(dir.path());
        std::thread::spawn(move || {
            seccomp::apply(ThreadRole::FsWorker, SeccompLevel::Enforce).unwrap();
            session(driver);
        })
        .join()
        .expect("session thread");
        // What the guest wrote is on the host, owned by the guest caller's uid.
        let out = dir.path().join("sub/out.txt");
        assert_eq!(std::fs::read(&out).unwrap(), b"written by the guest");
        assert_eq!(std::fs::metadata(&out).unwrap().uid(), 1000);
        assert!(dir.path().join("renamed").is_dir());
        assert!(!dir.path().join("newdir").exists());
    }

    fn session(mut d: Driver) {
        let init = d.init();
        assert_eq!(init.major, 7);

        // lookup + getattr + open + read of a host file
        let e = d.lookup(ROOT_ID, "hello.txt").unwrap();
        assert_eq!(e.attr.size, 20);
        let a: AttrOut = d.ok(Opcode::Getattr, e.nodeid, GetattrIn::default().as_slice());
        assert_eq!(a.attr.size, 20);
        let o: OpenOut = d.ok(
            Opcode::Open,
            e.nodeid,
            OpenIn {
                flags: libc::O_RDONLY as u32,
                fuse_flags: 0,
            }
            .as_slice(),
        );
        let read = ReadIn {
            fh: o.fh,
            offset: 6,
            size: 100,
            ..Default::default()
        };
        let (err, data) = d.call(Opcode::Read, e.nodeid, read.as_slice());
        assert_eq!(err, 0);
        assert_eq!(data, b"from the host\n");

        // create + write as uid 1000 in a subdirectory
        let sub = d.lookup(ROOT_ID, "sub").unwrap();
        let create = CreateIn {
            flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0o022,
            fuse_flags: 0,
        };
        let (err, payload) = d.call_as(
            1000,
            Opcode::Create,
            sub.nodeid,
            &with_name(create, "out.txt"),
        );
        assert_eq!(err, 0, "create");
        let entry: EntryOut = obj(&payload);
        let open: OpenOut = obj(&payload[std::mem::size_of::<EntryOut>()..]);
        let data = b"written by the guest";
        let mut body = WriteIn {
            fh: open.fh,
            offset: 0,
            size: data.len() as u32,
            ..Default::default()
        }
        .as_slice()
        .to_vec();
        body.extend_from_slice(data);
        let (err, payload) = d.call_as(1000, Opcode::Write, entry.nodeid, &body);
        assert_eq!(err, 0, "write");
        assert_eq!(obj::<WriteOut>(&payload).size, data.len() as u32);

        // mkdir + rename, readdirplus of the root
        let mkdir = MkdirIn {
            mode: 0o755,
            umask: 0,
        };
        let _: EntryOut = d.ok(Opcode::Mkdir, ROOT_ID, &with_name(mkdir, "newdir"));
        let mut body = RenameIn { newdir: ROOT_ID }.as_slice().to_vec();
        body.extend(cstr("newdir"));
        body.extend(cstr("renamed"));
        let (err, _) = d.call(Opcode::Rename, ROOT_ID, &body);
        assert_eq!(err, 0, "rename");
        let o: OpenOut = d.ok(
            Opcode::Opendir,
            ROOT_ID,
            OpenIn {
                flags: libc::O_RDONLY as u32,
                fuse_flags: 0,
            }
            .as_slice(),
        );
        let read = ReadIn {
            fh: o.fh,
            offset: 0,
            size: 4096,
            ..Default::default()
        };
        let (err, listing) = d.call(Opcode::Readdirplus, ROOT_ID, read.as_slice());
        assert_eq!(err, 0, "readdirplus");
        let listing = String::from_utf8_lossy(&listing);
        for name in ["hello.txt", "sub", "renamed"] {
            assert!(listing.contains(name), "{name} listed");
        }
        let (err, _) = d.call(Opcode::Statfs, ROOT_ID, &[]);
        assert_eq!(err, 0, "statfs");
    }

    /// Nothing outside the shared directory is reachable: ".." at the root is the root,
    /// a name with "/" is refused, host symlinks are not followed, and device nodes
    /// the guest makes are never opened on the host.
    #[test]
    fn the_guest_cannot_leave_the_share() {
        let parent = tempfile::tempdir().unwrap();
        std::fs::write(parent.path().join("secret"), b"host secret").unwrap();
        let shared = parent.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::os::unix::fs::symlink(parent.path(), shared.join("escape")).unwrap();
        let mut d = Driver::new(&shared);
        d.init();

        assert_eq!(d.lookup(ROOT_ID, "..").unwrap_err(), -libc::EINVAL);
        assert_eq!(d.lookup(ROOT_ID, "../secret").unwrap_err(), -libc::EINVAL);
        assert_eq!(d.lookup(ROOT_ID, "secret").unwrap_err(), -libc::ENOENT);

        let link = d.lookup(ROOT_ID, "escape").unwrap();
        assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        let err = d.lookup(link.nodeid, "secret").unwrap_err();
        assert_eq!(err, -libc::ENOTDIR, "no lookup through a host symlink");
        let (err, _) = d.call(
            Opcode::Open,
            link.nodeid,
            OpenIn {
                flags: libc::O_RDONLY as u32,
                fuse_flags: 0,
            }
            .as_slice(),
        );
        assert_ne!(err, 0, "a symlink is not opened on the host");

        // The guest may not make device nodes...
        for (name, mode, rdev) in [
            ("null", libc::S_IFCHR | 0o666, 0x103),
            ("sda", libc::S_IFBLK | 0o600, 0x800),
        ] {
            let mknod = MknodIn {
                mode,
                rdev,
                umask: 0,
                padding: 0,
            };
            let (err, _) = d.call(Opcode::Mknod, ROOT_ID, &with_name(mknod, name));
            assert_eq!(err, -libc::EPERM, "mknod of {name} refused");
            assert!(std::fs::symlink_metadata(shared.join(name)).is_err());
        }
        // ...but FIFOs and sockets, which the host never opens.
        for (name, mode) in [
            ("fifo", libc::S_IFIFO | 0o600),
            ("sock", libc::S_IFSOCK | 0o600),
        ] {
            let mknod = MknodIn {
                mode,
                rdev: 0,
                umask: 0,
                padding: 0,
            };
            let e: EntryOut = d.ok(Opcode::Mknod, ROOT_ID, &with_name(mknod, name));
            let (err, _) = d.call(
                Opcode::Open,
                e.nodeid,
                OpenIn {
                    flags: libc::O_RDWR as u32,
                    fuse_flags: 0,
                }
                .as_slice(),
            );
            assert_eq!(err, -libc::EPERM, "open of {name} refused");
        }
        assert!(std::fs::metadata(shared.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        // CREATE of the existing FIFO would open it (and block, without a reader).
        let create = CreateIn {
            flags: libc::O_WRONLY as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        let (err, _) = d.call(Opcode::Create, ROOT_ID, &with_name(create, "fifo"));
        assert_eq!(err, -libc::EPERM, "create over a FIFO refused");
        // Refusals are logged at most LINES_PER_INTERVAL times per interval.
        for _ in 0..1000 {
            d.lookup(ROOT_ID, "..").unwrap_err();
        }
        assert!(d.handler.log_limit.suppressed() >= 1000 - u64::from(LINES_PER_INTERVAL));
    }

    /// Every name-carrying request with a hostile name (absolute, "..", "/" inside,
    /// an embedded NUL) is refused, and nothing outside the share is touched: the
    /// canary beside it survives and no new file appears there.
    #[test]
    fn hostile_names_never_reach_outside_the_share() {
        let parent = tempfile::tempdir().unwrap();
        let canary = parent.path().join("canary");
        std::fs::write(&canary, b"canary").unwrap();
        let shared = parent.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("hello"), b"hi").unwrap();
        std::fs::create_dir(shared.join("sub")).unwrap();
        let mut d = Driver::new(&shared);
        d.init();
        let hello = d.lookup(ROOT_ID, "hello").unwrap().nodeid;
        let sub = d.lookup(ROOT_ID, "sub").unwrap().nodeid;
        let absolute = canary.to_str().unwrap().to_string();
        let hostile = [
            "..",
            ".",
            "../canary",
            "sub/../../canary",
            "/etc/shadow",
            absolute.as_str(),
            "",
            "canary\0trailing",
        ];
        let two = |a: &str, b: &str| {
            let mut v = cstr(a);
            v.extend(cstr(b));
            v
        };
        let mut refused = 0;
        let mut expect_refused = |d: &mut Driver, op: Opcode, node: u64, body: Vec<u8>| {
            let (err, _) = d.call(op, node, &body);
            assert!(
                err == -libc::EINVAL || err == -libc::EPERM,
                "{op:?} {:?}: {err}",
                String::from_utf8_lossy(&body)
            );
            refused += 1;
        };
        for name in hostile {
            for node in [ROOT_ID, sub] {
                expect_refused(&mut d, Opcode::Lookup, node, cstr(name));
                expect_refused(&mut d, Opcode::Unlink, node, cstr(name));
                expect_refused(&mut d, Opcode::Rmdir, node, cstr(name));
                let mkdir = MkdirIn {
                    mode: 0o755,
                    umask: 0,
                };
                expect_refused(&mut d, Opcode::Mkdir, node, with_name(mkdir, name));
                let fifo = MknodIn {
                    mode: libc::S_IFIFO | 0o600,
                    ..Default::default()
                };
                expect_refused(&mut d, Opcode::Mknod, node, with_name(fifo, name));
                let create = CreateIn {
                    flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
                    mode: libc::S_IFREG | 0o644,
                    umask: 0,
                    fuse_flags: 0,
                };
                expect_refused(&mut d, Opcode::Create, node, with_name(create, name));
                expect_refused(&mut d, Opcode::Symlink, node, two(name, "target"));
                let link = LinkIn { oldnodeid: hello };
                expect_refused(&mut d, Opcode::Link, node, with_name(link, name));
                for (old, new) in [("hello", name), (name, "stolen")] {
                    let mut rename = RenameIn { newdir: node }.as_slice().to_vec();
                    rename.extend(two(old, new));
                    expect_refused(&mut d, Opcode::Rename, ROOT_ID, rename);
                    let mut rename2 = Rename2In {
                        newdir: node,
                        flags: 0,
                        padding: 0,
                    }
                    .as_slice()
                    .to_vec();
                    rename2.extend(two(old, new));
                    expect_refused(&mut d, Opcode::Rename2, ROOT_ID, rename2);
                }
            }
        }
        // A device node under a harmless name is refused as well.
        let null = MknodIn {
            mode: libc::S_IFCHR | 0o666,
            rdev: 0x103,
            ..Default::default()
        };
        expect_refused(&mut d, Opcode::Mknod, ROOT_ID, with_name(null, "null"));
        assert_eq!(refused, hostile.len() * 2 * 12 + 1);
        // A symlink pointing outside is made (the guest resolves it), never followed.
        let (err, payload) = d.call(Opcode::Symlink, ROOT_ID, &two("out", "../canary"));
        assert_eq!(err, 0);
        let link: EntryOut = obj(&payload);
        assert_eq!(d.lookup(link.nodeid, "x").unwrap_err(), -libc::ENOTDIR);
        let open = OpenIn {
            flags: libc::O_RDWR as u32,
            fuse_flags: 0,
        };
        assert_ne!(d.call(Opcode::Open, link.nodeid, open.as_slice()).0, 0);

        assert_eq!(std::fs::read(&canary).unwrap(), b"canary");
        let listing = |dir: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(listing(parent.path()), ["canary", "shared"]);
        assert_eq!(listing(&shared), ["hello", "out", "sub"]);
        assert!(listing(&shared.join("sub")).is_empty());
        assert_eq!(std::fs::read(shared.join("hello")).unwrap(), b"hi");
    }
}

//! FUSE requests through the virtio-fs request handler (the name checks, the
//! special-file checks and fuse-backend-rs's server over passthrough), on a fresh
//! share per input that lies in a directory holding a canary file. The input is a
//! sequence of requests: opcode, node (the root or one a reply named), credentials,
//! a body of any bytes, a header length that may lie, the message split across
//! readable descriptors and a reply buffer of any size — or a raw descriptor chain.
//! Nothing may panic; afterwards the canary is intact, nothing new exists beside the
//! share, and no character or block device exists in it.
//!
//! FALLOCATE and COPY_FILE_RANGE are not sent: they would let one input allocate
//! gigabytes of real disk on the host running the fuzzer (the guest may fill its
//! share; that is what disk quotas on the share's file system are for).
#![no_main]

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use husk_vmm::config::{FsCache, FsShare};
use husk_vmm::virtio::fs::device::{open_share, FsHandler};
use husk_vmm_fuzz::{Buffer, GuestDriver, Input};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const REQUEST_QUEUE: usize = 1;
const IN_HEADER_LEN: usize = 40;
const OPCODE_INIT: u32 = 26;
const OPCODE_FALLOCATE: u32 = 43;
const OPCODE_COPY_FILE_RANGE: u32 = 47;
const ROOT_ID: u64 = 1;

fn in_header(len: u32, opcode: u32, unique: u64, nodeid: u64, uid: u32, gid: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(IN_HEADER_LEN);
    h.extend(len.to_le_bytes());
    h.extend(opcode.to_le_bytes());
    h.extend(unique.to_le_bytes());
    h.extend(nodeid.to_le_bytes());
    h.extend(uid.to_le_bytes());
    h.extend(gid.to_le_bytes());
    h.extend(1u32.to_le_bytes()); // pid
    h.extend(0u32.to_le_bytes());
    h
}

/// INIT 7.31 with no flags, so later requests are served.
fn init_message() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(7u32.to_le_bytes());
    body.extend(31u32.to_le_bytes());
    body.extend(0x2_0000u32.to_le_bytes());
    body.extend(0u32.to_le_bytes());
    let mut m = in_header((IN_HEADER_LEN + body.len()) as u32, OPCODE_INIT, 1, 0, 0, 0);
    m.extend(body);
    m
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn assert_no_device_nodes(dir: &Path, depth: u32) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        assert!(
            !ft.is_char_device() && !ft.is_block_device(),
            "device node {:?} in the share",
            e.path()
        );
        if ft.is_dir() && depth > 0 {
            assert_no_device_nodes(&e.path(), depth - 1);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let parent = tempfile::tempdir().unwrap();
    let canary = parent.path().join("canary");
    std::fs::write(&canary, b"canary").unwrap();
    let shared = parent.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("file"), b"contents").unwrap();
    std::fs::create_dir(shared.join("dir")).unwrap();
    std::os::unix::fs::symlink("../canary", shared.join("link")).unwrap();
    let share = FsShare {
        tag: "fuzz".into(),
        path: shared.clone(),
        cache: FsCache::Never,
    };
    let Ok(fs) = open_share(&share) else {
        return;
    };
    let mut handler = FsHandler::new(Arc::new(fs));
    let mut drv = GuestDriver::new(&[16, 64]);
    let mut act = drv.activation();
    let mut nodes = vec![ROOT_ID];

    let init = init_message();
    drv.add_chain(
        REQUEST_QUEUE,
        &[
            Buffer {
                data: &init,
                len: init.len() as u32,
                writable: false,
            },
            Buffer {
                data: &[],
                len: 256,
                writable: true,
            },
        ],
    );
    handler.process_queue(&mut act, REQUEST_QUEUE);

    let mut unique = 2u64;
    for _ in 0..32 {
        if input.is_empty() {
            break;
        }
        let sel = input.u8();
        if sel & 0x80 != 0 {
            // A raw chain on either queue.
            let count = usize::from(input.u8() % 4) + 1;
            let q = usize::from(sel & 1);
            drv.add_chain_from(q, &mut input, count);
            handler.process_queue(&mut act, q);
            continue;
        }
        let opcode = u32::from(input.u8() % 52);
        if opcode == OPCODE_FALLOCATE || opcode == OPCODE_COPY_FILE_RANGE {
            continue;
        }
        let node = nodes[usize::from(input.u8()) % nodes.len()];
        let uid = if sel & 1 == 0 { 0 } else { 1000 };
        let body_len = usize::from(input.u16() % 4500);
        let body = input.bytes(body_len);
        let len = if sel & 2 == 0 {
            (IN_HEADER_LEN + body.len()) as u32
        } else {
            input.u32()
        };
        let mut msg = in_header(len, opcode, unique, node, uid, uid);
        unique += 1;
        msg.extend_from_slice(body);
        // Split the message across up to three readable descriptors.
        let cut1 = usize::from(input.u16()) % (msg.len() + 1);
        let cut2 = cut1 + usize::from(input.u16()) % (msg.len() - cut1 + 1);
        let reply_len = u32::from(input.u16() % 9000);
        let mut bufs: Vec<Buffer> = [&msg[..cut1], &msg[cut1..cut2], &msg[cut2..]]
            .into_iter()
            .filter(|part| !part.is_empty() || sel & 4 != 0)
            .map(|part| Buffer {
                data: part,
                len: part.len() as u32,
                writable: false,
            })
            .collect();
        bufs.push(Buffer {
            data: &[],
            len: reply_len,
            writable: true,
        });
        let before = drv.used_idx(REQUEST_QUEUE);
        let addrs = drv.add_chain(REQUEST_QUEUE, &bufs);
        handler.process_queue(&mut act, REQUEST_QUEUE);
        // Remember the node ids entry replies (LOOKUP, SYMLINK, MKNOD, MKDIR, LINK,
        // CREATE) name, so later requests reach them.
        let reply = addrs.last().copied().unwrap_or(0);
        let (_, written) = drv.used(REQUEST_QUEUE, before);
        if drv.used_idx(REQUEST_QUEUE) != before
            && written >= 24
            && [1, 6, 8, 9, 13, 35].contains(&opcode)
            && drv
                .mem
                .read_obj::<i32>(GuestAddress(reply + 4))
                .unwrap_or(-1)
                == 0
            && nodes.len() < 16
        {
            if let Ok(node) = drv.mem.read_obj::<u64>(GuestAddress(reply + 16)) {
                nodes.push(node);
            }
        }
    }
    assert_eq!(std::fs::read(&canary).unwrap(), b"canary", "canary changed");
    assert_eq!(
        entries(parent.path()),
        ["canary", "shared"],
        "new file beside the share"
    );
    assert_no_device_nodes(&shared, 3);
});

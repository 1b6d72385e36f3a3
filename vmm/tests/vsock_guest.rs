//! KVM-layer vsock round trip: a tiny guest written in the test drives the
//! virtio-mmio vsock device like a minimal driver (feature negotiation, queue setup,
//! DRIVER_OK, notifies through ioeventfds) while the test plays the host client on the
//! hybrid Unix socket: `CONNECT 1024` → `OK <port>` → "ping" to the guest, "pong" back.
//! The descriptor tables and the guest's two tx packets (RESPONSE, RW "pong") are laid
//! out by the test; the guest code only touches MMIO registers and ring indices.
//! Needs: /dev/kvm (fails loudly without it).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{console_log, require_kvm, Asm, GuestRing};
use husk_vmm::{ExitReason, ValidatedVm};
use vm_memory::{Bytes, GuestAddress};

const MMIO: u64 = 0xd000_0000;
const GUEST_CID: u64 = 3;
const GUEST_PORT: u32 = 1024;
/// The muxer hands host-initiated connections ports from 2^30 up.
const HOST_PORT: u32 = 1 << 30;
const HDR: u32 = 44;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

fn header(op: u16, len: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(GUEST_CID.to_le_bytes()); // src_cid
    b.extend(2u64.to_le_bytes()); // dst_cid: host
    b.extend(GUEST_PORT.to_le_bytes()); // src_port
    b.extend(HOST_PORT.to_le_bytes()); // dst_port
    b.extend(len.to_le_bytes());
    b.extend(1u16.to_le_bytes()); // stream
    b.extend(op.to_le_bytes());
    b.extend(0u32.to_le_bytes()); // flags
    b.extend(65536u32.to_le_bytes()); // buf_alloc
    b.extend(0u32.to_le_bytes()); // fwd_cnt
    b
}

/// Driver register writes: negotiate VERSION_1, set up `rings`, DRIVER_OK.
fn driver_init(mut a: Asm, rings: &[GuestRing]) -> Asm {
    let r = |off: u64| MMIO + off;
    a = a.store32(r(0x70), 1).store32(r(0x70), 3);
    a = a
        .store32(r(0x24), 1)
        .store32(r(0x20), 1) // feature bit 32: VERSION_1
        .store32(r(0x24), 0)
        .store32(r(0x20), 0)
        .store32(r(0x70), 0xb);
    for (i, ring) in rings.iter().enumerate() {
        a = a
            .store32(r(0x30), i as u32)
            .store32(r(0x38), u32::from(ring.size))
            .store32(r(0x80), ring.desc as u32)
            .store32(r(0x84), 0)
            .store32(r(0x90), ring.avail as u32)
            .store32(r(0x94), 0)
            .store32(r(0xa0), ring.used as u32)
            .store32(r(0xa4), 0)
            .store32(r(0x44), 1);
    }
    a.store32(r(0x70), 0xf)
}

#[test]
fn vsock_round_trip_with_a_tiny_guest_driver() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("v.sock");
    let rx = GuestRing::at(0x20_0000, 8);
    let tx = GuestRing::at(0x30_0000, 8);
    let ev = GuestRing::at(0x40_0000, 8);

    let code = driver_init(Asm::default(), &[rx, tx, ev])
        .serial("driver ok\n")
        // 1. The host's REQUEST lands in rx buffer 0.
        .wait_u16_at_least(rx.used_idx_addr(), 1)
        // 2. Answer with the prepared RESPONSE (tx chain 0), notify the tx queue.
        .store16(tx.avail_idx_addr(), 1)
        .store32(MMIO + 0x50, 1)
        .serial("connected\n")
        // 3. The host's "ping" lands in rx buffer 1.
        .wait_u16_at_least(rx.used_idx_addr(), 2)
        // 4. Send the prepared RW "pong\n" (tx chain 1), wait until it was consumed.
        .store16(tx.avail_idx_addr(), 2)
        .store32(MMIO + 0x50, 1)
        .wait_u16_at_least(tx.used_idx_addr(), 2)
        .serial("done\n")
        .out8(0xf4, 0x2a)
        .hlt()
        .finish();

    let log = dir.path().join("console.log");
    let mut spec = ValidatedVm::raw64(code);
    spec.memory_mib = 16;
    spec.console = Some(log.clone());
    spec.vsock = Some((sock.clone(), GUEST_CID as u32));
    let mut mem_handle = None;
    let vm = husk_vmm::build_with(&spec, |vm| {
        let mem = vm.memory();
        // rx: four device-writable buffers, all offered up front.
        for i in 0..4u16 {
            let buf = 0x50_0000 + u64::from(i) * 0x2000;
            rx.desc(mem, i, buf, HDR + 4096, WRITE, 0);
            rx.offer(mem, i, i);
        }
        mem.write_obj(4u16, GuestAddress(rx.avail_idx_addr()))
            .unwrap();
        // tx chain 0: RESPONSE; chain 1: RW header + "pong\n".
        let resp = header(2, 0);
        mem.write_slice(&resp, GuestAddress(0x60_0000)).unwrap();
        tx.desc(mem, 0, 0x60_0000, HDR, 0, 0);
        tx.offer(mem, 0, 0);
        let rw = header(5, 5);
        mem.write_slice(&rw, GuestAddress(0x60_1000)).unwrap();
        mem.write_slice(b"pong\n", GuestAddress(0x60_2000)).unwrap();
        tx.desc(mem, 1, 0x60_1000, HDR, NEXT, 2);
        tx.desc(mem, 2, 0x60_2000, 5, 0, 0);
        tx.offer(mem, 1, 1);
        mem_handle = Some(mem.clone());
        Ok(())
    })
    .expect("VM builds");
    let mem = mem_handle.unwrap();

    // The host client, on its own thread while the guest runs.
    let client_sock = sock.clone();
    let client = std::thread::spawn(move || -> std::io::Result<(String, Vec<u8>)> {
        let mut s = UnixStream::connect(&client_sock)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        s.write_all(b"CONNECT 1024\n")?;
        let mut r = BufReader::new(s.try_clone()?);
        let mut ok = String::new();
        r.read_line(&mut ok)?;
        s.write_all(b"ping\n")?;
        let mut pong = vec![0u8; 5];
        r.read_exact(&mut pong)?;
        Ok((ok, pong))
    });

    let reason = vm.run().expect("VM runs");
    let console = console_log(&log);
    assert_eq!(reason, ExitReason::DebugExit(0x2a), "console:\n{console}");
    let (ok, pong) = client.join().unwrap().expect("host client");
    assert_eq!(ok, format!("OK {HOST_PORT}\n"));
    assert_eq!(pong, b"pong\n");
    assert_eq!(console, "driver ok\nconnected\ndone\n");

    // What the guest received: REQUEST for port 1024, then RW "ping\n".
    let mut b = vec![0u8; HDR as usize + 5];
    mem.read_slice(&mut b, GuestAddress(0x50_0000)).unwrap();
    assert_eq!(u16::from_le_bytes([b[30], b[31]]), 1, "REQUEST");
    assert_eq!(
        u32::from_le_bytes(b[20..24].try_into().unwrap()),
        GUEST_PORT
    );
    mem.read_slice(&mut b, GuestAddress(0x50_2000)).unwrap();
    assert_eq!(u16::from_le_bytes([b[30], b[31]]), 5, "RW");
    assert_eq!(&b[HDR as usize..], b"ping\n");
}

//! Guest vsock traffic through the real device worker and muxer: tx chains the input
//! describes (well-formed packets with any header, and raw descriptors), rx buffers,
//! packets handed to the muxer directly (any header, any payload), host sockets
//! becoming ready, host clients connecting, and the handshake timeout passing. Host
//! listeners wait at `<sock>_1024` and `<sock>_5000`. After every step the muxer's
//! queues stay within their bounds (`MAX_RX_QUEUE`, `MAX_PENDING_RSTS`,
//! `MAX_CONNECTIONS`), and nothing panics.
#![no_main]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use husk_vmm::virtio::vsock::device::VsockWorker;
use husk_vmm::virtio::vsock::muxer::{
    Header, VsockMuxer, MAX_CONNECTIONS, MAX_PENDING_RSTS, MAX_RX_QUEUE,
};
use husk_vmm::virtio::{ActivateContext, VIRTIO_F_VERSION_1};
use husk_vmm_fuzz::{Buffer, GuestDriver, Input};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const GUEST_CID: u64 = 3;
const RXQ: usize = 0;
const TXQ: usize = 1;
/// A vsock header: 44 bytes.
const HDR_LEN: usize = 44;

fn header(input: &mut Input<'_>) -> Header {
    let sel = input.u8();
    // Mostly the right CIDs and type, so the packets get past the first checks.
    let src_cid = if sel & 1 == 0 { GUEST_CID } else { input.u64() };
    let dst_cid = if sel & 2 == 0 { 2 } else { input.u64() };
    let src_port = u32::from(input.u8());
    let any_port = u32::from(input.u16());
    Header {
        src_cid,
        dst_cid,
        src_port,
        dst_port: [1024, 5000, 1 << 30, any_port][usize::from(sel >> 2 & 3)],
        len: 0,
        type_: if sel & 0x10 == 0 { 1 } else { input.u16() },
        op: u16::from(input.u8() % 9),
        flags: u32::from(input.u8() & 3),
        buf_alloc: input.u32(),
        fwd_cnt: input.u32(),
    }
}

fn encode(h: &Header, len: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(HDR_LEN);
    b.extend(h.src_cid.to_le_bytes());
    b.extend(h.dst_cid.to_le_bytes());
    b.extend(h.src_port.to_le_bytes());
    b.extend(h.dst_port.to_le_bytes());
    b.extend(len.to_le_bytes());
    b.extend(h.type_.to_le_bytes());
    b.extend(h.op.to_le_bytes());
    b.extend(h.flags.to_le_bytes());
    b.extend(h.buf_alloc.to_le_bytes());
    b.extend(h.fwd_cnt.to_le_bytes());
    b
}

fn assert_bounded(m: &mut VsockMuxer) {
    let (out, owing, rsts) = m.pending_counts();
    assert!(out <= MAX_RX_QUEUE, "rx queue {out}");
    assert!(rsts <= MAX_PENDING_RSTS, "pending resets {rsts}");
    assert!(owing <= m.connection_count(), "owing {owing}");
    assert!(m.connection_count() <= MAX_CONNECTIONS);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("v.sock");
    let listeners: Vec<UnixListener> = [1024, 5000]
        .iter()
        .map(|p| {
            let l = UnixListener::bind(format!("{}_{p}", sock.display())).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let mut drv = GuestDriver::new(&[64, 64, 16]);
    let ctx = ActivateContext {
        mem: drv.mem.clone(),
        queues: (0..3).map(|i| drv.queue(i)).collect(),
        queue_evts: (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect(),
        interrupt: drv.interrupt.clone(),
        acked_features: VIRTIO_F_VERSION_1,
    };
    let stop = EventFd::new(EFD_NONBLOCK).unwrap();
    let muxer = VsockMuxer::new(&sock, GUEST_CID).unwrap();
    let Ok(mut w) = VsockWorker::new(ctx, muxer, &stop) else {
        return;
    };
    let mut host_ends: Vec<UnixStream> = Vec::new();
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        match input.u8() % 8 {
            0 => {
                // A well-formed tx packet: header and payload, maybe split.
                let h = header(&mut input);
                let len = usize::from(input.u16() % 8192);
                let payload = input.bytes(len);
                let claimed = if input.u8() & 1 == 0 {
                    payload.len() as u32
                } else {
                    input.u32()
                };
                let hdr = encode(&h, claimed);
                drv.add_chain(
                    TXQ,
                    &[
                        Buffer {
                            data: &hdr,
                            len: HDR_LEN as u32,
                            writable: false,
                        },
                        Buffer {
                            data: payload,
                            len: payload.len() as u32,
                            writable: false,
                        },
                    ],
                );
                w.process_tx();
            }
            1 => {
                let count = usize::from(input.u8() % 4) + 1;
                drv.add_chain_from(TXQ, &mut input, count);
                w.process_tx();
            }
            2 => {
                let count = usize::from(input.u8() % 3) + 1;
                drv.add_chain_from(RXQ, &mut input, count);
                w.process_rx();
            }
            3 => {
                for _ in 0..usize::from(input.u8() % 32) {
                    drv.add_chain(
                        RXQ,
                        &[Buffer {
                            data: &[],
                            len: 4096 + 44,
                            writable: true,
                        }],
                    );
                }
                while w.process_tx() == husk_vmm::virtio::vsock::device::TxState::WaitingForRxRoom
                    && w.process_rx()
                {}
                w.process_rx();
            }
            4 => {
                let h = header(&mut input);
                let len = usize::from(input.u16() % 4096);
                let payload = input.bytes(len);
                w.muxer_mut().handle_guest_packet(
                    &Header {
                        len: payload.len() as u32,
                        ..h
                    },
                    payload,
                );
            }
            5 => {
                // Host side: accept guest-initiated connections, connect host clients,
                // write bytes, and let the muxer see every socket as ready.
                for l in &listeners {
                    while let Ok((s, _)) = l.accept() {
                        s.set_nonblocking(true).unwrap();
                        host_ends.push(s);
                    }
                }
                if input.u8() & 1 == 1 && host_ends.len() < 16 {
                    if let Ok(mut c) = UnixStream::connect(&sock) {
                        let line = format!("CONNECT {}\n", input.u16());
                        let _ = c.write_all(line.as_bytes());
                        c.set_nonblocking(true).unwrap();
                        host_ends.push(c);
                    }
                }
                let n = usize::from(input.u8());
                let bytes = input.bytes(n);
                for s in &mut host_ends {
                    let _ = s.write(bytes);
                }
                let m = w.muxer_mut();
                m.accept();
                for (fd, i) in m.interests() {
                    m.socket_ready(fd, true, i.write, false);
                }
            }
            6 => {
                let n = usize::from(input.u8()) % (host_ends.len() + 1);
                host_ends.truncate(n);
                let m = w.muxer_mut();
                for (fd, _) in m.interests() {
                    m.socket_ready(fd, true, true, true);
                }
            }
            _ => w
                .muxer_mut()
                .expire(Instant::now() + Duration::from_secs(3)),
        }
        assert_bounded(w.muxer_mut());
    }
    drop(stop);
});

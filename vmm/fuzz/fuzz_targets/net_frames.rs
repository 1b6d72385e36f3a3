//! virtio-net through the device's queue handler over a stand-in tap (a
//! SOCK_SEQPACKET pair, which keeps frame boundaries as a tap does): TX chains the
//! input describes (well-formed frames with any vnet header, and raw descriptors),
//! frames the host sends, and RX buffers. Every frame that reaches the "tap" starts
//! with a vnet header of zeros (nothing negotiated lets the guest choose one) and is
//! no larger than `MAX_FRAME`; every used RX length is 0 or a whole frame; nothing
//! panics.
#![no_main]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use husk_vmm::virtio::net::device::{NetQueues, MAX_FRAME, RX_QUEUE, TAP_EVENT, TX_QUEUE};
use husk_vmm::virtio::net::tap::VNET_HDR_LEN;
use husk_vmm::virtio::net::Tap;
use husk_vmm_fuzz::{Buffer, GuestDriver, Input};
use libfuzzer_sys::fuzz_target;

fn tap_pair() -> (Tap, File) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array on success.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair");
    // SAFETY: both fds were just created and are owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (Tap::from_file(File::from(a), "fuzz0"), File::from(b))
}

fn check_host_side(host: &File, buf: &mut [u8]) {
    loop {
        match (&*host).read(buf) {
            Ok(n) => {
                assert!(n > VNET_HDR_LEN && n <= MAX_FRAME, "frame of {n} bytes");
                assert_eq!(
                    &buf[..VNET_HDR_LEN],
                    &[0u8; VNET_HDR_LEN],
                    "guest vnet header"
                );
            }
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let (tap, host) = tap_pair();
    let mut net = NetQueues::new(tap);
    let mut drv = GuestDriver::new(&[64, 64]);
    let mut act = drv.activation();
    let mut host_buf = vec![0u8; MAX_FRAME + 1];
    let mut sent_to_guest: Vec<usize> = Vec::new();
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        match input.u8() % 5 {
            0 => {
                // A frame behind any vnet header, in up to three buffers.
                let len = usize::from(input.u16()) % 9000;
                let frame = input.bytes(len);
                let cut1 = usize::from(input.u16()) % (frame.len() + 1);
                let cut2 = cut1 + usize::from(input.u16()) % (frame.len() - cut1 + 1);
                let bufs: Vec<Buffer> = [&frame[..cut1], &frame[cut1..cut2], &frame[cut2..]]
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .map(|p| Buffer {
                        data: p,
                        len: p.len() as u32,
                        writable: false,
                    })
                    .collect();
                if !bufs.is_empty() {
                    drv.add_chain(TX_QUEUE, &bufs);
                }
                net.handle(&mut act, TX_QUEUE);
            }
            1 => {
                let count = usize::from(input.u8() % 4) + 1;
                drv.add_chain_from(TX_QUEUE, &mut input, count);
                net.handle(&mut act, TX_QUEUE);
            }
            2 => {
                let len = usize::from(input.u16()) % 9000;
                let frame = input.bytes(len);
                if (&host).write(frame).is_ok() && frame.len() > VNET_HDR_LEN {
                    sent_to_guest.push(frame.len());
                }
                net.handle(&mut act, TAP_EVENT);
            }
            3 => {
                let count = usize::from(input.u8() % 3) + 1;
                drv.add_chain_from(RX_QUEUE, &mut input, count);
                net.handle(&mut act, RX_QUEUE);
            }
            _ => {
                let len = u32::from(input.u16());
                drv.add_chain(
                    RX_QUEUE,
                    &[Buffer {
                        data: &[],
                        len,
                        writable: true,
                    }],
                );
                net.handle(&mut act, RX_QUEUE);
            }
        }
        check_host_side(&host, &mut host_buf);
        for i in 0..drv.used_idx(RX_QUEUE) {
            let (_, used) = drv.used(RX_QUEUE, i);
            assert!(
                used == 0 || sent_to_guest.contains(&(used as usize)),
                "rx used length {used} is not a frame the host sent"
            );
        }
    }
});

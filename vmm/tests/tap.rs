//! virtio-net's tap end to end on the host: `Tap::open` creates a real tap through
//! /dev/net/tun (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12-byte header), the test brings
//! it up and exchanges one frame each way with an AF_PACKET socket bound to it.
//! Needs: root (CAP_NET_ADMIN) and /dev/net/tun; fails loudly without them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use husk_vmm::virtio::net::tap::VNET_HDR_LEN;
use husk_vmm::virtio::net::Tap;

/// A local experimental ethertype, so frames the kernel sends on its own (IPv6
/// router solicitations, MLD) are told apart.
const ETHERTYPE: u16 = 0x88b5;

fn frame(src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(src);
    f.extend(ETHERTYPE.to_be_bytes());
    f.extend(payload);
    f
}

/// Sets IFF_UP on `name` and returns its ifindex.
fn bring_up(name: &str) -> i32 {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS/SIOCGIFINDEX read and write the live `req`.
    unsafe {
        assert_eq!(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req),
            0
        );
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req),
            0,
            "SIOCSIFFLAGS: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut req),
            0
        );
        req.ifr_ifru.ifru_ifindex
    }
}

/// An AF_PACKET socket for ETHERTYPE frames on interface `ifindex`.
fn packet_socket(ifindex: i32) -> OwnedFd {
    let proto = ETHERTYPE.to_be();
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            i32::from(proto),
        )
    };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` was just created and is owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex;
    // SAFETY: bind with a valid sockaddr_ll and its size.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    sock
}

/// Polls `read` until it yields `want` at offset `off` (the packet socket also sees
/// its own outgoing frames, and the kernel sends some of its own); returns the whole
/// buffer read.
fn read_until(
    what: &str,
    off: usize,
    want: &[u8],
    mut read: impl FnMut(&mut [u8]) -> Option<usize>,
) -> Vec<u8> {
    let start = Instant::now();
    let mut buf = vec![0u8; 65_600];
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: no frame"
        );
        match read(&mut buf) {
            Some(n) if n >= off && &buf[off..n] == want => return buf[..n].to_vec(),
            Some(_) => continue,
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[test]
fn a_real_tap_carries_frames_both_ways_with_vnet_headers() {
    let tap = Tap::open("husktap%d").expect("opening a tap needs root and /dev/net/tun");
    assert!(tap.name().starts_with("husktap"), "{}", tap.name());
    let ifindex = bring_up(tap.name());
    let pkt = packet_socket(ifindex);

    // Host stack → tap: what the guest would receive, behind a vnet header.
    let out = frame([0x02, 0, 0, 0, 0, 1], b"host to guest");
    // SAFETY: send(2) of a live buffer on our socket.
    let n = unsafe { libc::send(pkt.as_raw_fd(), out.as_ptr().cast(), out.len(), 0) };
    assert_eq!(
        n,
        out.len() as isize,
        "send: {}",
        std::io::Error::last_os_error()
    );
    let got = read_until("tap read", VNET_HDR_LEN, &out, |b| tap.read_frame(b).ok());
    assert_eq!(
        &got[..VNET_HDR_LEN],
        &[0u8; VNET_HDR_LEN],
        "no offload flags"
    );

    // Tap → host stack: what the guest would send, its vnet header consumed.
    let mut sent = vec![0u8; VNET_HDR_LEN];
    let back = frame([0x02, 0, 0, 0, 0, 2], b"guest to host");
    sent.extend(&back);
    assert_eq!(tap.write_frame(&sent).unwrap(), sent.len());
    read_until("packet socket read", 0, &back, |b| {
        // SAFETY: recv(2) into a live buffer on our socket.
        let n = unsafe { libc::recv(pkt.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
        (n > 0).then_some(n as usize)
    });
}

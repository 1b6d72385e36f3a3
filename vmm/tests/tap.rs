//! virtio-net's tap end to end on the host: `Tap::open` creates a real tap through
//! /dev/net/tun (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12-byte header), the test brings
//! it up and exchanges one frame each way with an AF_PACKET socket bound to it; the
//! same through `Tap::from_fd` for a tap attached by someone else (a runtime) and
//! handed over as a descriptor, and the descriptors it refuses.
//! Needs: root (CAP_NET_ADMIN) and /dev/net/tun; fails loudly without them.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use husk_vmm::virtio::net::tap::VNET_HDR_LEN;
use husk_vmm::virtio::net::{NetError, Tap};

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

/// Opens /dev/net/tun and attaches a new tap named from `pattern` with `flags`, as a
/// runtime does before handing the descriptor to husk-vmm; returns the raw fd.
fn attach_tap(pattern: &str, flags: i16) -> RawFd {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("opening /dev/net/tun needs root");
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(pattern.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags;
    // SAFETY: TUNSETIFF reads and writes the live `req`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    file.into_raw_fd()
}

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

#[test]
fn a_real_tap_carries_frames_both_ways_with_vnet_headers() {
    let tap = Tap::open("husktap%d").expect("opening a tap needs root and /dev/net/tun");
    assert!(tap.name().starts_with("husktap"), "{}", tap.name());
    exchange_frames(&tap);
}

#[test]
fn an_inherited_tap_descriptor_is_taken_over() {
    let fd = attach_tap("huskfd%d", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
    let tap = Tap::from_fd(fd).expect("a tap attached with the right flags");
    assert!(tap.name().starts_with("huskfd"), "{}", tap.name());
    // SAFETY: F_GETFL/F_GETFD only read the flags of the tap's descriptor.
    let (fl, fdflags) = unsafe {
        (
            libc::fcntl(tap.as_raw_fd(), libc::F_GETFL),
            libc::fcntl(tap.as_raw_fd(), libc::F_GETFD),
        )
    };
    assert!(fl & libc::O_NONBLOCK != 0, "made non-blocking");
    assert!(fdflags & libc::FD_CLOEXEC != 0, "made close-on-exec");
    exchange_frames(&tap);
}

#[test]
fn descriptors_that_are_not_a_usable_tap_are_refused_with_the_reason() {
    let reason = |fd: RawFd| match Tap::from_fd(fd) {
        Err(NetError::TapFd { reason, .. }) => reason,
        other => panic!("fd {fd}: want TapFd, got {other:?}"),
    };
    assert!(reason(1).contains("standard stream"));
    let closed = attach_tap("huskfd%d", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
    // SAFETY: closes the descriptor this test just opened and owns.
    unsafe { libc::close(closed) };
    assert!(reason(closed).contains("not open"), "{}", reason(closed));
    let mut ends = [0; 2];
    // SAFETY: pipe2(2) writes two descriptors into the live array.
    let rc = unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0);
    // SAFETY: closes the write end this test just opened and owns.
    unsafe { libc::close(ends[1]) };
    let pipe = reason(ends[0]);
    assert!(pipe.contains("not an attached tun/tap"), "{pipe}");
    let without_header = reason(attach_tap("huskfd%d", IFF_TAP | IFF_NO_PI));
    assert!(without_header.contains("IFF_VNET_HDR"), "{without_header}");
}

/// One frame each way between the host stack and `tap`, through an AF_PACKET
/// socket bound to the (brought up) tap.
fn exchange_frames(tap: &Tap) {
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

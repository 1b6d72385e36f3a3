//! Tiny static helper for the nested vsock test (built with plain `rustc`, no crates).
//!   vsock_probe guest <port>        listen on AF_VSOCK <port>, answer one connection:
//!                                   read a line, write back "echo: <line>"
//!   vsock_probe host <uds> <port>   hybrid-vsock client: CONNECT, expect OK, send
//!                                   "ping\n", expect "echo: ping\n"; prints VSOCK-OK

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const AF_VSOCK: i32 = 40;
const SOCK_STREAM: i32 = 1;
const VMADDR_CID_ANY: u32 = u32::MAX;

#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved1: u16,
    port: u32,
    cid: u32,
    zero: [u8; 4],
}

extern "C" {
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn bind(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn listen(fd: i32, backlog: i32) -> i32;
    fn accept(fd: i32, addr: *mut u8, len: *mut u32) -> i32;
    fn read(fd: i32, buf: *mut u8, n: usize) -> isize;
    fn write(fd: i32, buf: *const u8, n: usize) -> isize;
    fn close(fd: i32) -> i32;
}

fn guest(port: u32) -> Result<(), String> {
    // SAFETY: plain socket calls on our own fds and buffers.
    unsafe {
        let fd = socket(AF_VSOCK, SOCK_STREAM, 0);
        if fd < 0 {
            return Err("socket(AF_VSOCK) failed".into());
        }
        let addr = SockaddrVm { family: AF_VSOCK as u16, reserved1: 0, port, cid: VMADDR_CID_ANY, zero: [0; 4] };
        if bind(fd, &addr, std::mem::size_of::<SockaddrVm>() as u32) != 0 {
            return Err("bind failed".into());
        }
        if listen(fd, 1) != 0 {
            return Err("listen failed".into());
        }
        println!("VSOCK-LISTENING {port}");
        let c = accept(fd, std::ptr::null_mut(), std::ptr::null_mut());
        if c < 0 {
            return Err("accept failed".into());
        }
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while read(c, b.as_mut_ptr(), 1) == 1 {
            line.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        }
        let mut reply = b"echo: ".to_vec();
        reply.extend(&line);
        write(c, reply.as_ptr(), reply.len());
        // Wait for the host to hang up before closing.
        while read(c, b.as_mut_ptr(), 1) == 1 {}
        close(c);
        close(fd);
    }
    println!("VSOCK-GUEST-DONE");
    Ok(())
}

fn host(uds: &str, port: u32) -> Result<(), String> {
    let e = |what: &'static str| move |err: std::io::Error| format!("{what}: {err}");
    let mut s = None;
    // The guest needs time to boot and listen: retry while the VMM answers RST.
    for _ in 0..600 {
        if let Ok(mut c) = UnixStream::connect(uds) {
            c.set_read_timeout(Some(Duration::from_secs(60))).map_err(e("timeout"))?;
            c.write_all(format!("CONNECT {port}\n").as_bytes()).map_err(e("write"))?;
            let mut r = BufReader::new(c.try_clone().map_err(e("clone"))?);
            let mut ok = String::new();
            if r.read_line(&mut ok).is_ok() && ok.starts_with("OK ") {
                s = Some((c, r, ok));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (mut c, mut r, ok) = s.ok_or("no OK from the VMM")?;
    print!("host got {ok}");
    c.write_all(b"ping\n").map_err(e("write ping"))?;
    let mut reply = String::new();
    r.read_line(&mut reply).map_err(e("read reply"))?;
    if reply != "echo: ping\n" {
        return Err(format!("unexpected reply {reply:?}"));
    }
    println!("VSOCK-OK");
    // Half-close: the VMM turns our EOF into a SHUTDOWN for the guest, which closes;
    // its close comes back to us as EOF.
    c.shutdown(std::net::Shutdown::Write).map_err(e("shutdown"))?;
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).map_err(e("read to EOF"))?;
    println!("VSOCK-CLOSED");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let res = match args.get(1).map(String::as_str) {
        Some("guest") => guest(args[2].parse().unwrap()),
        Some("host") => host(&args[2], args[3].parse().unwrap()),
        _ => Err("usage: vsock_probe guest <port> | host <uds> <port>".into()),
    };
    if let Err(m) = res {
        println!("VSOCK-FAIL {m}");
        std::process::exit(1);
    }
}

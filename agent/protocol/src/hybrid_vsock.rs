//! Host side of hybrid vsock: the VMM (husk-vmm, Firecracker, Cloud Hypervisor) or
//! vhost-device-vsock exposes the guest's vsock as a Unix socket on the host. A client
//! connects, writes `CONNECT <port>\n`, and reads `OK <port>\n` before the stream is
//! joined to the guest listener on that port.

use std::io::{Read, Write};
use std::os::unix::io::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest handshake reply accepted ("OK " + a u32 + "\n" fits easily).
const MAX_REPLY: usize = 32;

/// Errors of the hybrid vsock handshake.
#[derive(Debug, thiserror::Error)]
pub enum HybridVsockError {
    /// connecting to the host-side vsock socket failed
    #[error("connect to hybrid vsock socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    /// I/O error during the CONNECT/OK handshake
    #[error("hybrid vsock handshake: {0}")]
    Io(#[from] std::io::Error),
    /// the peer did not answer `OK ...` (usually: nothing listens on that guest port yet)
    #[error("hybrid vsock handshake refused for port {port}: {reply:?}")]
    Refused { port: u32, reply: String },
    /// ttrpc client setup failed
    #[error("ttrpc client: {0}")]
    Ttrpc(#[from] ttrpc::Error),
}

/// Connects to guest `port` through the hybrid vsock Unix socket at `path`.
/// `timeout` bounds the handshake read; the returned stream has no timeouts set.
pub fn connect(path: &Path, port: u32, timeout: Duration) -> Result<UnixStream, HybridVsockError> {
    let mut stream = UnixStream::connect(path).map_err(|source| HybridVsockError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Read byte by byte: anything after the newline already belongs to the guest.
    let mut reply = Vec::with_capacity(MAX_REPLY);
    let mut byte = [0u8; 1];
    while reply.len() < MAX_REPLY {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        if byte[0] == b'\n' {
            break;
        }
        reply.push(byte[0]);
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    if !is_ok_reply(&reply) {
        return Err(HybridVsockError::Refused { port, reply });
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

/// Connects and wraps the stream in a synchronous ttrpc client.
pub fn connect_ttrpc(
    path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<ttrpc::Client, HybridVsockError> {
    let stream = connect(path, port, timeout)?;
    // The client takes ownership of the descriptor and closes it on drop.
    Ok(ttrpc::Client::new(stream.into_raw_fd())?)
}

/// `OK <n>` (Firecracker and Cloud Hypervisor send the host-side port number).
fn is_ok_reply(reply: &str) -> bool {
    reply
        .strip_prefix("OK ")
        .is_some_and(|n| n.trim().parse::<u32>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn ok_reply_forms() {
        assert!(is_ok_reply("OK 1024"));
        assert!(is_ok_reply("OK 1073741824"));
        assert!(!is_ok_reply("OK"));
        assert!(!is_ok_reply("ERR"));
        assert!(!is_ok_reply("OK x"));
    }

    fn serve_once(reply: &'static [u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            s.write_all(reply).unwrap();
        });
        (dir, path)
    }

    #[test]
    fn handshake_ok_leaves_payload_in_stream() {
        let (_dir, path) = serve_once(b"OK 1024\nhello");
        let mut s = connect(&path, 1024, Duration::from_secs(5)).unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"hello");
    }

    #[test]
    fn handshake_refused() {
        let (_dir, path) = serve_once(b"");
        match connect(&path, 1024, Duration::from_secs(5)) {
            Err(HybridVsockError::Refused { port: 1024, .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

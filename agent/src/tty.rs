//! Terminal processes. libcontainer opens the PTY inside the container and sends
//! the master end over a "console socket" (SCM_RIGHTS), as runc does; the agent
//! keeps the master for stdio and window resizes.

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Errors of terminal handling.
#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    /// creating or using the console socket failed
    #[error("console socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    /// receiving the PTY master failed
    #[error("receive PTY master: {0}")]
    Receive(nix::Error),
    /// the peer sent no file descriptor
    #[error("console socket message carried no PTY master")]
    NoFd,
    /// TIOCSWINSZ failed
    #[error("resize terminal: {0}")]
    Resize(nix::Error),
}

/// How long to wait for libcontainer's connection and the PTY master. The master
/// is sent before the container's init reports ready, so this only matters when
/// something went wrong.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Socket names are short counters: a sockaddr_un path is at most 107 bytes.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A listening console socket for one terminal process.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind(dir: &Path) -> Result<Self, TtyError> {
        let path = dir.join(format!("c{}.sock", NEXT.fetch_add(1, Ordering::Relaxed)));
        let err = |source| TtyError::Socket {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(err)?;
        Ok(Self { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts libcontainer's connection and returns the PTY master it sent.
    pub fn receive_master(self) -> Result<File, TtyError> {
        let err = |source| TtyError::Socket {
            path: self.path.display().to_string(),
            source,
        };
        self.listener.set_nonblocking(true).map_err(err)?;
        let deadline = std::time::Instant::now() + RECEIVE_TIMEOUT;
        let stream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        return Err(err(e));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(err(e)),
            }
        };
        stream.set_nonblocking(false).map_err(err)?;
        stream
            .set_read_timeout(Some(RECEIVE_TIMEOUT))
            .map_err(err)?;
        let fd = receive_fd(stream.as_raw_fd())?;
        // SAFETY: `fd` was just received through SCM_RIGHTS, so it is a fresh
        // descriptor in this process that nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn receive_fd(socket: RawFd) -> Result<RawFd, TtyError> {
    let mut name = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(TtyError::Receive)?;
    let mut received = None;
    for cmsg in msg.cmsgs().map_err(TtyError::Receive)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                if received.is_none() {
                    received = Some(fd);
                } else {
                    // Only one descriptor is expected; do not leak extras.
                    let _ = nix::unistd::close(fd);
                }
            }
        }
    }
    received.ok_or(TtyError::NoFd)
}

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, libc::winsize);

/// Sets the terminal's window size (rows, columns).
pub fn resize(master: &File, rows: u16, columns: u16) -> Result<(), TtyError> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `master` is an open descriptor for the whole call and `size` is a
    // valid winsize that TIOCSWINSZ only reads.
    unsafe { set_window_size(master.as_raw_fd(), &size) }.map_err(TtyError::Resize)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn receives_a_descriptor_and_resizes_a_pty() {
        let dir = tempfile::tempdir().unwrap();
        let socket = ConsoleSocket::bind(dir.path()).unwrap();
        let path = socket.path().to_path_buf();
        let pty = nix::pty::openpty(None, None).unwrap();
        // Play libcontainer: connect and send the master with a name.
        let client = UnixStream::connect(&path).unwrap();
        let fds = [pty.master.as_raw_fd()];
        nix::sys::socket::sendmsg::<()>(
            client.as_raw_fd(),
            &[std::io::IoSlice::new(b"/dev/ptmx")],
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let master = socket.receive_master().unwrap();
        assert!(!path.exists(), "socket file removed after use");
        resize(&master, 40, 100).unwrap();
        nix::ioctl_read_bad!(get_window_size, libc::TIOCGWINSZ, libc::winsize);
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: the slave is open and `size` is a writable winsize.
        unsafe { get_window_size(pty.slave.as_raw_fd(), &mut size) }.unwrap();
        assert_eq!((size.ws_row, size.ws_col), (40, 100));
        // Resizing something that is not a terminal is an error, not a panic.
        let not_tty = File::open("/dev/null").unwrap();
        assert!(resize(&not_tty, 1, 1).is_err());
    }

    #[test]
    fn message_without_descriptor_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = ConsoleSocket::bind(dir.path()).unwrap();
        let mut client = UnixStream::connect(socket.path()).unwrap();
        std::io::Write::write_all(&mut client, b"/dev/ptmx").unwrap();
        assert!(matches!(socket.receive_master(), Err(TtyError::NoFd)));
    }
}

//! Relaying one guest process (a container's init or an exec'd process) to the host:
//! its stdout/stderr to ours (or to a terminal, or to containerd's fifos), our stdin
//! (or the terminal's input) to it, the terminal's window size, our signals — and
//! its exit status back.
//!
//! Used by the foreground `husk run`/`husk exec`, by the per-sandbox supervisor that
//! stands in for a created container's init, by the supervisor of a detached exec,
//! and (its stream copies, [`copy_input`] and [`spawn_output_copy`]) by the
//! containerd shim, which opens containerd's fifos and keeps its own statuses.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::agent::{Agent, AgentError, OutputStream, ProcessAddr};
use super::signals::ForwardedSignals;

/// How long output still in flight gets after the process exited.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How often the main loop looks at signals, the VM and the window size.
const TICK: Duration = Duration::from_millis(50);
/// The most bytes asked for in one ReadStdout/ReadStderr or sent in one WriteStdin.
const CHUNK: usize = 64 * 1024;

/// Errors while relaying a process.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// An agent call failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The VM went away (the message says how, with the guest console if known).
    #[error("{0}")]
    VmGone(String),
}

/// Where the process's stdio goes on the host.
pub enum HostStdio {
    /// Our own descriptors 0, 1 and 2 (pipes or files an engine handed us).
    Inherited,
    /// A terminal: the guest pty's output is written to `output`, `input` is read
    /// into it, and the guest window follows `size_from`'s window size.
    Terminal {
        input: File,
        output: File,
        size_from: File,
    },
}

/// Relays until the process exits; returns its status (128+N if killed by signal N).
/// `vm_gone` is asked every tick whether the VM died (the supervisor owns the VMM
/// process and can tell; others pass a closure returning `None` and learn it from
/// the agent connection failing).
pub fn relay_process(
    agent: &Arc<dyn Agent>,
    process: &ProcessAddr,
    stdio: HostStdio,
    signals: Option<&ForwardedSignals>,
    vm_gone: &mut dyn FnMut() -> Option<String>,
) -> Result<i32, RelayError> {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut streams_open = 0;
    let mut resize = None;
    match stdio {
        HostStdio::Inherited => {
            streams_open += 2;
            spawn_output_copy(
                agent,
                process,
                OutputStream::Stdout,
                std::io::stdout(),
                done_tx.clone(),
            );
            spawn_output_copy(
                agent,
                process,
                OutputStream::Stderr,
                std::io::stderr(),
                done_tx.clone(),
            );
            // Never joined: it may block reading our stdin after the process exits.
            let (agent, process) = (agent.clone(), process.clone());
            std::thread::spawn(move || copy_input(agent.as_ref(), &process, std::io::stdin()));
        }
        HostStdio::Terminal {
            input,
            output,
            size_from,
        } => {
            streams_open += 1;
            spawn_output_copy(
                agent,
                process,
                OutputStream::Stdout,
                output,
                done_tx.clone(),
            );
            let (agent, process) = (agent.clone(), process.clone());
            std::thread::spawn(move || copy_input(agent.as_ref(), &process, input));
            resize = Some(WindowFollower::new(size_from));
        }
    }
    drop(done_tx);
    let (exit_tx, exit_rx) = mpsc::channel();
    {
        let (agent, process) = (agent.clone(), process.clone());
        std::thread::spawn(move || {
            let _ = exit_tx.send(agent.wait_process(&process));
        });
    }
    let status = loop {
        if let Some(follower) = resize.as_mut() {
            follower.sync(agent.as_ref(), process);
        }
        match exit_rx.recv_timeout(TICK) {
            Ok(Ok(status)) => break status,
            Ok(Err(e)) => {
                // A dead VMM drops the agent connection: name the real cause.
                let deadline = Instant::now() + Duration::from_millis(500);
                while Instant::now() < deadline {
                    if let Some(gone) = vm_gone() {
                        return Err(RelayError::VmGone(gone));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                return Err(e.into());
            }
            Err(_) => {}
        }
        if let Some(gone) = vm_gone() {
            return Err(RelayError::VmGone(gone));
        }
        while let Some(sig) = signals.and_then(ForwardedSignals::pending) {
            tracing::debug!(?sig, "forwarding signal to the container");
            if let Err(e) = agent.signal_process(process, sig as i32, false) {
                tracing::warn!(?sig, error = %e, "cannot forward signal");
            }
        }
    };
    wait_for_streams(&done_rx, streams_open);
    Ok(status)
}

/// Waits up to [`DRAIN_GRACE`] for `streams` output copies to end (the process is
/// gone; its output may still be in flight, or held open by a child it left behind:
/// do not wait for that forever).
pub fn wait_for_streams(done: &mpsc::Receiver<()>, streams: usize) {
    let deadline = Instant::now() + DRAIN_GRACE;
    for _ in 0..streams {
        let left = deadline.saturating_duration_since(Instant::now());
        if done.recv_timeout(left).is_err() {
            break;
        }
    }
}

/// Copies `input` to the process's stdin until end of file, then closes its stdin.
pub fn copy_input(agent: &dyn Agent, process: &ProcessAddr, mut input: impl Read) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: a terminal whose other side hung up. Either way: end of input.
            Err(_) => 0,
        };
        if n == 0 {
            break;
        }
        let mut data = &buf[..n];
        while !data.is_empty() {
            match agent.write_stdin(process, data) {
                Ok(written) if written > 0 => data = &data[written..],
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "stdin relay ended");
                    return;
                }
            }
        }
    }
    if let Err(e) = agent.close_stdin(process) {
        tracing::debug!(error = %e, "CloseStdin");
    }
}

/// Copies one output stream of the process to `sink` on a thread of its own until
/// end of stream, then sends on `done`.
pub fn spawn_output_copy(
    agent: &Arc<dyn Agent>,
    process: &ProcessAddr,
    stream: OutputStream,
    sink: impl Write + Send + 'static,
    done: mpsc::Sender<()>,
) {
    let (agent, process) = (agent.clone(), process.clone());
    std::thread::spawn(move || {
        copy_output(agent.as_ref(), &process, stream, sink);
        let _ = done.send(());
    });
}

fn copy_output(
    agent: &dyn Agent,
    process: &ProcessAddr,
    stream: OutputStream,
    mut sink: impl Write,
) {
    loop {
        let data = match agent.read_output(process, stream, CHUNK as u32) {
            Ok(data) if !data.is_empty() => data,
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(error = %e, ?stream, "stream relay ended");
                return;
            }
        };
        if sink.write_all(&data).and_then(|()| sink.flush()).is_err() {
            return;
        }
    }
}

/// Keeps the guest terminal's size equal to a host terminal's.
struct WindowFollower {
    from: File,
    last: Option<(u16, u16)>,
}

impl WindowFollower {
    fn new(from: File) -> Self {
        Self { from, last: None }
    }

    /// Sends TtyWinResize when the host window size changed since the last call.
    fn sync(&mut self, agent: &dyn Agent, process: &ProcessAddr) {
        let Some(size) = window_size(&self.from) else {
            return;
        };
        if self.last == Some(size) || size.0 == 0 || size.1 == 0 {
            return;
        }
        match agent.resize_tty(process, size.0, size.1) {
            Ok(_) => self.last = Some(size),
            Err(e) => {
                tracing::debug!(error = %e, "TtyWinResize");
                // Do not retry every tick against a process that has no terminal.
                self.last = Some(size);
            }
        }
    }
}

/// (rows, columns) of a terminal.
pub fn window_size(tty: &impl AsRawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain old data; zeroed is a valid value.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into the pointer we pass, which is valid.
    let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (rc == 0).then_some((size.ws_row, size.ws_col))
}

/// A pseudo-terminal made on the host for a guest terminal process: the master goes
/// to the engine's console socket, husk relays between the slave (raw mode: the guest
/// pty does the line discipline) and the guest.
pub struct HostPty {
    pub master: std::os::fd::OwnedFd,
    pub slave: File,
}

impl HostPty {
    pub fn open() -> std::io::Result<Self> {
        let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
        let mut raw = nix::sys::termios::tcgetattr(&pty.slave).map_err(std::io::Error::from)?;
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &raw)
            .map_err(std::io::Error::from)?;
        Ok(Self {
            master: pty.master,
            slave: File::from(pty.slave),
        })
    }

    /// Sends the master over a console socket (runc's protocol: one SCM_RIGHTS
    /// message whose data is the terminal's name).
    pub fn send_master(&self, socket: &std::path::Path) -> std::io::Result<()> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot connect to console socket {}: {e}", socket.display()),
            )
        })?;
        let name = b"/dev/ptmx";
        let iov = [std::io::IoSlice::new(name)];
        let fds = [self.master.as_raw_fd()];
        sendmsg::<()>(
            stream.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(std::io::Error::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_pty_is_raw_and_its_size_is_read() {
        let pty = HostPty::open().unwrap();
        let size = libc::winsize {
            ws_row: 33,
            ws_col: 101,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ only reads the winsize we pass.
        let rc = unsafe { libc::ioctl(pty.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0);
        // The engine resizes the master; the slave (which husk relays) sees it.
        assert_eq!(window_size(&pty.slave), Some((33, 101)));
        let attrs = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
        assert!(!attrs
            .local_flags
            .contains(nix::sys::termios::LocalFlags::ECHO));
        assert_eq!(window_size(&File::open("/dev/null").unwrap()), None);
    }

    #[test]
    fn master_crosses_a_console_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let pty = HostPty::open().unwrap();
        pty.send_master(&path).unwrap();
        let (stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = nix::sys::socket::recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        let got = msg.cmsgs().unwrap().any(
            |c| matches!(c, nix::sys::socket::ControlMessageOwned::ScmRights(f) if f.len() == 1),
        );
        assert!(got);
        let err = pty
            .send_master(&dir.path().join("nope.sock"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.sock"), "{err}");
    }
}

//! Relaying one guest process (a container's init or an exec'd process) to the host:
//! its stdout/stderr to ours (or to a terminal), our stdin (or the terminal's input)
//! to it, the terminal's window size, our signals — and its exit status back.
//!
//! Used by the foreground `husk run`/`husk exec`, by the per-sandbox supervisor that
//! stands in for a created container's init, and by the supervisor of a detached
//! exec. All of them hold an agent connection over hybrid vsock.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use husk_agent_protocol::agent as pb;
use husk_agent_protocol::agent_ttrpc::AgentClient;

use super::sandbox::ForwardedSignals;

/// Timeout of the small agent calls made while relaying.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long output still in flight gets after the process exited.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How often the main loop looks at signals, the VM and the window size.
const TICK: Duration = Duration::from_millis(50);

/// Errors while relaying a process.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// An agent call failed.
    #[error("agent {call} failed: {message}")]
    Agent { call: &'static str, message: String },
    /// The VM went away (the message says how, with the guest console if known).
    #[error("{0}")]
    VmGone(String),
}

/// Maps a ttrpc error to a [`RelayError::Agent`] (also used by other vm modules).
pub fn agent_error(call: &'static str, e: ttrpc::Error) -> RelayError {
    RelayError::Agent {
        call,
        message: match e {
            ttrpc::Error::RpcStatus(s) => format!("{:?}: {}", s.code(), s.message),
            other => other.to_string(),
        },
    }
}

/// A ttrpc context with a timeout, or none (WaitProcess, stream reads).
pub fn ctx(timeout: Option<Duration>) -> ttrpc::context::Context {
    match timeout {
        Some(t) => ttrpc::context::with_timeout(t.as_nanos() as i64),
        None => ttrpc::context::Context::default(),
    }
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

/// One guest process to relay.
pub struct ProcessRef<'a> {
    pub agent: &'a AgentClient,
    pub container_id: &'a str,
    /// Empty for the container's init.
    pub exec_id: &'a str,
}

/// Relays until the process exits; returns its status (128+N if killed by signal N).
/// `vm_gone` is asked every tick whether the VM died (the supervisor owns the VMM
/// process and can tell; others pass a closure returning `None` and learn it from
/// the agent connection failing).
pub fn relay_process(
    process: &ProcessRef<'_>,
    stdio: HostStdio,
    signals: Option<&ForwardedSignals>,
    vm_gone: &mut dyn FnMut() -> Option<String>,
) -> Result<i32, RelayError> {
    enum Event {
        Exited(Result<i32, RelayError>),
        StreamDone,
    }
    let agent = process.agent;
    let (tx, rx) = mpsc::channel();
    let mut streams_open = 0;
    let mut resize = None;
    match stdio {
        HostStdio::Inherited => {
            for stderr in [false, true] {
                let (agent, tx) = (agent.clone(), tx.clone());
                let (id, exec) = (
                    process.container_id.to_string(),
                    process.exec_id.to_string(),
                );
                streams_open += 1;
                std::thread::spawn(move || {
                    let sink: Box<dyn Write> = if stderr {
                        Box::new(std::io::stderr())
                    } else {
                        Box::new(std::io::stdout())
                    };
                    copy_output(&agent, &id, &exec, stderr, sink);
                    let _ = tx.send(Event::StreamDone);
                });
            }
            // Never joined: it may block reading our stdin after the process exits.
            let agent = agent.clone();
            let (id, exec) = (
                process.container_id.to_string(),
                process.exec_id.to_string(),
            );
            std::thread::spawn(move || copy_input(&agent, &id, &exec, std::io::stdin()));
        }
        HostStdio::Terminal {
            input,
            output,
            size_from,
        } => {
            let (agent2, tx2) = (agent.clone(), tx.clone());
            let (id, exec) = (
                process.container_id.to_string(),
                process.exec_id.to_string(),
            );
            streams_open += 1;
            std::thread::spawn(move || {
                copy_output(&agent2, &id, &exec, false, Box::new(output));
                let _ = tx2.send(Event::StreamDone);
            });
            let agent2 = agent.clone();
            let (id, exec) = (
                process.container_id.to_string(),
                process.exec_id.to_string(),
            );
            std::thread::spawn(move || copy_input(&agent2, &id, &exec, input));
            resize = Some(WindowFollower::new(size_from));
        }
    }
    {
        let agent = agent.clone();
        let (id, exec) = (
            process.container_id.to_string(),
            process.exec_id.to_string(),
        );
        std::thread::spawn(move || {
            let mut w = pb::WaitProcessRequest::new();
            w.container_id = id;
            w.exec_id = exec;
            let r = agent
                .wait_process(ctx(None), &w)
                .map(|r| r.status)
                .map_err(|e| agent_error("WaitProcess", e));
            let _ = tx.send(Event::Exited(r));
        });
    }
    let status = loop {
        if let Some(follower) = resize.as_mut() {
            follower.sync(process);
        }
        match rx.recv_timeout(TICK) {
            Ok(Event::Exited(Ok(status))) => break status,
            Ok(Event::Exited(Err(e))) => {
                // A dead VMM drops the agent connection: name the real cause.
                let deadline = Instant::now() + Duration::from_millis(500);
                while Instant::now() < deadline {
                    if let Some(gone) = vm_gone() {
                        return Err(RelayError::VmGone(gone));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                return Err(e);
            }
            Ok(Event::StreamDone) => streams_open -= 1,
            Err(_) => {}
        }
        if let Some(gone) = vm_gone() {
            return Err(RelayError::VmGone(gone));
        }
        while let Some(sig) = signals.and_then(ForwardedSignals::pending) {
            tracing::debug!(?sig, "forwarding signal to the container");
            let mut s = pb::SignalProcessRequest::new();
            s.container_id = process.container_id.into();
            s.exec_id = process.exec_id.into();
            s.signal = sig as u32;
            if let Err(e) = agent.signal_process(ctx(Some(CALL_TIMEOUT)), &s) {
                tracing::warn!(?sig, error = %e, "cannot forward signal");
            }
        }
    };
    // The process is gone; its output may still be in flight (or held open by a
    // child it left behind: do not wait for that forever).
    let deadline = Instant::now() + DRAIN_GRACE;
    while streams_open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::StreamDone) => streams_open -= 1,
            Ok(Event::Exited(_)) => {}
            Err(_) => break,
        }
    }
    Ok(status)
}

/// Copies `input` to the process's stdin until end of file, then closes its stdin.
fn copy_input(agent: &AgentClient, id: &str, exec: &str, mut input: impl Read) {
    let mut buf = vec![0u8; 64 * 1024];
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
            let mut w = pb::WriteStreamRequest::new();
            w.container_id = id.into();
            w.exec_id = exec.into();
            w.data = data.to_vec();
            match agent.write_stdin(ctx(None), &w) {
                Ok(r) if r.len > 0 => data = &data[(r.len as usize).min(data.len())..],
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "stdin relay ended");
                    return;
                }
            }
        }
    }
    let mut c = pb::CloseStdinRequest::new();
    c.container_id = id.into();
    c.exec_id = exec.into();
    if let Err(e) = agent.close_stdin(ctx(Some(CALL_TIMEOUT)), &c) {
        tracing::debug!(error = %e, "CloseStdin");
    }
}

/// Copies one output stream of the process to `sink` until end of stream.
fn copy_output(agent: &AgentClient, id: &str, exec: &str, stderr: bool, mut sink: Box<dyn Write>) {
    loop {
        let mut r = pb::ReadStreamRequest::new();
        r.container_id = id.into();
        r.exec_id = exec.into();
        r.len = 64 * 1024;
        let chunk = if stderr {
            agent.read_stderr(ctx(None), &r)
        } else {
            agent.read_stdout(ctx(None), &r)
        };
        let data = match chunk {
            Ok(c) if !c.data.is_empty() => c.data,
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(error = %e, stderr, "stream relay ended");
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
    fn sync(&mut self, process: &ProcessRef<'_>) {
        let Some(size) = window_size(&self.from) else {
            return;
        };
        if self.last == Some(size) || size.0 == 0 || size.1 == 0 {
            return;
        }
        let mut r = pb::TtyWinResizeRequest::new();
        r.container_id = process.container_id.into();
        r.exec_id = process.exec_id.into();
        r.row = size.0.into();
        r.column = size.1.into();
        match process.agent.tty_win_resize(ctx(Some(CALL_TIMEOUT)), &r) {
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

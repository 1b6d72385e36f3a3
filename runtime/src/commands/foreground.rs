//! Foreground processes (`run` and `exec` without `--detach`): wait for the process,
//! forward signals to it, and bridge its pseudo-terminal to our stdio.

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SigSet;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::termios::{self, SetArg, Termios};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// A Unix socket we listen on to receive the pty master of a foreground terminal, the
/// same way an engine's `--console-socket` does.
pub struct ConsoleListener {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleListener {
    pub fn bind(root: &Path, id: &str) -> Result<Self> {
        let path = root.join(format!(".console-{id}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on console socket {}", path.display()))?;
        Ok(Self { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the container's connection and takes the pty master it sends.
    pub fn receive_master(&self) -> Result<OwnedFd> {
        let (stream, _) = self
            .listener
            .accept()
            .context("no connection on the console socket")?;
        let mut name = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("cannot receive the pty master")?;
        for cmsg in msg.cmsgs().context("malformed console socket message")? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    for &extra in &fds[1..] {
                        // SAFETY: the kernel just gave us this descriptor and nothing else owns it.
                        drop(unsafe { OwnedFd::from_raw_fd(extra) });
                    }
                    // SAFETY: as above; ownership moves into the OwnedFd.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Err(anyhow!(
            "the console socket message carried no file descriptor"
        ))
    }
}

impl Drop for ConsoleListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Puts our terminal in raw mode while a container terminal is attached.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enable() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

fn copy_window_size(from: &impl AsRawFd, to: &impl AsRawFd) {
    // SAFETY: winsize is plain old data; zeroed is a valid value.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into the pointer we pass, which is valid.
    if unsafe { libc::ioctl(from.as_raw_fd(), libc::TIOCGWINSZ, &mut size) } == 0 {
        // SAFETY: TIOCSWINSZ only reads the winsize we pass.
        unsafe { libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    }
}

/// Waits for `init` (our child) and returns its exit code, 128+signal if killed.
/// Signals we receive meanwhile are forwarded to it; with a pty master, our stdio is
/// bridged to the container's terminal.
pub fn wait_for_init(init: Pid, pty: Option<OwnedFd>) -> Result<i32> {
    let signals = SigSet::all();
    signals
        .thread_block()
        .context("cannot block signals for forwarding")?;

    let mut bridge_done = None;
    let mut raw_mode = None;
    let mut resize_target = None;
    if let Some(master) = pty {
        let stdin = std::io::stdin();
        copy_window_size(&stdin, &master);
        raw_mode = RawMode::enable();
        resize_target = Some(master.try_clone().context("cannot duplicate pty master")?);
        let mut writer = File::from(master.try_clone().context("cannot duplicate pty master")?);
        std::thread::spawn(move || {
            // Ends with our stdin or when the pty goes away with the container.
            let _ = std::io::copy(&mut std::io::stdin(), &mut writer);
        });
        let (done_tx, done_rx) = mpsc::channel();
        let mut reader = File::from(master);
        std::thread::spawn(move || {
            let mut stdout = std::io::stdout();
            let mut buf = [0u8; 8192];
            // EIO once every slave end is closed: the normal end of the stream.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                    break;
                }
                let _ = stdout.flush();
            }
            let _ = done_tx.send(());
        });
        bridge_done = Some(done_rx);
    }

    let status = loop {
        if let Some(code) = reap(init)? {
            break code;
        }
        match signals.wait().context("cannot wait for signals")? {
            Signal::SIGCHLD => continue,
            Signal::SIGWINCH => {
                if let Some(master) = &resize_target {
                    copy_window_size(&std::io::stdin(), master);
                }
            }
            Signal::SIGURG => {}
            signal => {
                if let Err(err) = kill(init, signal) {
                    tracing::warn!(%err, ?signal, "cannot forward signal");
                }
            }
        }
    };

    if let Some(done) = bridge_done {
        // Output still queued in the pty is flushed; a descendant holding the terminal
        // open must not keep us waiting forever.
        let _ = done.recv_timeout(Duration::from_secs(2));
    }
    drop(raw_mode);
    Ok(status)
}

/// Reaps exited children; returns the exit code once `init` is among them.
fn reap(init: Pid) -> Result<Option<i32>> {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == init => return Ok(Some(code)),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == init => {
                return Ok(Some(128 + signal as i32))
            }
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) => continue,
            Err(nix::errno::Errno::ECHILD) => {
                return Err(anyhow!("process {init} is not a child of husk"))
            }
            Err(err) => return Err(err).context("waitpid"),
        }
    }
}

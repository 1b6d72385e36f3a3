//! One guest process as containerd sees it (a container's init or an exec): its
//! status, its exit, and the relay between containerd's fifos and the guest agent.

//!
//! The relay itself is the runtime's ([`husk_runtime::vm::relay`]); the shim opens
//! containerd's fifos and keeps the statuses containerd asks for.

use std::fs::File;
use std::sync::{Arc, Condvar, Mutex};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use husk_runtime::vm::agent::{Agent, OutputStream, ProcessAddr};
use husk_runtime::vm::relay;

/// containerd's fifos for one process (empty paths: not connected).
#[derive(Clone, Debug, Default)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

/// How a process ended.
#[derive(Clone, Debug)]
pub struct Exit {
    pub status: u32,
    pub at: Timestamp,
}

struct Inner {
    status: Status,
    exit: Option<Exit>,
}

/// A guest process addressed by its container and exec id (empty for the init).
pub struct Process {
    pub addr: ProcessAddr,
    pub stdio: Stdio,
    /// The OCI process (JSON) of an exec, sent with ExecProcess at start.
    pub exec_spec: Option<Vec<u8>>,
    inner: Mutex<Inner>,
    exited: Condvar,
    /// Our own writer on containerd's stdin fifo (see [`Process::relay`]).
    stdin_holder: Mutex<StdinHolder>,
}

/// The shim's own write end of the stdin fifo, as containerd's runc shim keeps one:
/// while it is open, the relay's reader cannot see end-of-file when the client's
/// writer comes and goes; CloseIO drops it, and the reader then forwards what is
/// still buffered in the fifo before it sees end-of-file and closes the guest
/// process's stdin. Closing the guest's stdin straight from CloseIO would race the
/// data still in the fifo (`echo x | ctr run …` lost its line that way).
enum StdinHolder {
    NotStarted,
    /// Held only to keep the fifo open; never written.
    Open {
        _writer: File,
    },
    Closed,
}

impl Process {
    pub fn new(addr: ProcessAddr, stdio: Stdio, exec_spec: Option<Vec<u8>>) -> Self {
        Self {
            addr,
            stdio,
            exec_spec,
            inner: Mutex::new(Inner {
                status: Status::Created,
                exit: None,
            }),
            exited: Condvar::new(),
            stdin_holder: Mutex::new(StdinHolder::NotStarted),
        }
    }

    /// CloseIO for stdin: the relay closes the guest process's stdin once it has
    /// forwarded everything the client wrote (see [`StdinHolder`]).
    pub fn close_stdin_when_drained(&self) {
        let mut holder = self.stdin_holder.lock().expect("stdin lock");
        *holder = StdinHolder::Closed;
    }

    pub fn status(&self) -> Status {
        self.inner.lock().expect("process lock").status
    }

    pub fn exit(&self) -> Option<Exit> {
        self.inner.lock().expect("process lock").exit.clone()
    }

    pub fn set_running(&self) {
        let mut inner = self.inner.lock().expect("process lock");
        if inner.status == Status::Created {
            inner.status = Status::Running;
        }
    }

    /// Records the exit; false if it was recorded already (the first word wins: the
    /// agent's status, or 137 when the VM died under the process).
    pub fn set_exited(&self, status: i32) -> bool {
        let mut inner = self.inner.lock().expect("process lock");
        if inner.exit.is_some() {
            return false;
        }
        inner.status = Status::Stopped;
        inner.exit = Some(Exit {
            status: status as u32,
            at: Timestamp::now(),
        });
        self.exited.notify_all();
        true
    }

    /// Blocks until the process exited.
    pub fn wait(&self) -> Exit {
        let mut inner = self.inner.lock().expect("process lock");
        loop {
            if let Some(exit) = inner.exit.clone() {
                return exit;
            }
            inner = self.exited.wait(inner).expect("process lock");
        }
    }

    /// Starts copying the process's output to containerd's fifos and containerd's
    /// stdin fifo to it, and a thread that waits for its exit and then calls
    /// `on_exit` with the status (after the output drained, so `ctr run` prints all
    /// of it before it exits).
    pub fn relay(&self, agent: &Arc<dyn Agent>, on_exit: Box<dyn FnOnce(i32) + Send>) {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let mut outputs = 0;
        let streams = [
            (OutputStream::Stdout, &self.stdio.stdout),
            (OutputStream::Stderr, &self.stdio.stderr),
        ];
        for (stream, path) in streams {
            if path.is_empty() || (stream == OutputStream::Stderr && self.stdio.terminal) {
                continue;
            }
            match open_output(path) {
                Ok(sink) => {
                    outputs += 1;
                    relay::spawn_output_copy(agent, &self.addr, stream, sink, done_tx.clone());
                }
                Err(e) => tracing::warn!(path, error = %e, "cannot open the output fifo"),
            }
        }
        drop(done_tx);
        if !self.stdio.stdin.is_empty() {
            match self.open_stdin() {
                Ok(input) => {
                    let (agent, addr) = (agent.clone(), self.addr.clone());
                    // Reads until every writer is gone; never joined.
                    std::thread::spawn(move || relay::copy_input(agent.as_ref(), &addr, input));
                }
                Err(e) => {
                    tracing::warn!(path = self.stdio.stdin, error = %e, "cannot open the stdin fifo")
                }
            }
        }
        let (agent, addr) = (agent.clone(), self.addr.clone());
        std::thread::spawn(move || {
            let status = match agent.wait_process(&addr) {
                Ok(status) => status,
                Err(e) => {
                    tracing::warn!(?addr, error = %e, "WaitProcess failed; reporting the process killed");
                    husk_runtime::vm::supervisor::VM_LOST_STATUS
                }
            };
            relay::wait_for_streams(&done_rx, outputs);
            on_exit(status);
        });
    }
}

impl Process {
    /// Opens the stdin fifo for reading (blocking reads) and, unless CloseIO came
    /// first, keeps a writer of our own on it.
    fn open_stdin(&self) -> std::io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        // Non-blocking open: a reader must not wait for a writer; then our writer's
        // open cannot fail with ENXIO.
        let input = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.stdio.stdin)?;
        let mut holder = self.stdin_holder.lock().expect("stdin lock");
        if matches!(*holder, StdinHolder::NotStarted) {
            let writer = File::options()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.stdio.stdin)?;
            *holder = StdinHolder::Open { _writer: writer };
        }
        drop(holder);
        use std::os::fd::AsRawFd;
        let fd = input.as_raw_fd();
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let mut flags = nix::fcntl::OFlag::from_bits_retain(flags);
        flags.remove(nix::fcntl::OFlag::O_NONBLOCK);
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(input)
    }
}

/// Opens an output fifo without blocking on containerd's reader (read-write: the
/// open never waits, and a reader that went away does not kill us with EPIPE).
fn open_output(path: &str) -> std::io::Result<File> {
    File::options().read(true).write(true).open(path)
}

//! Containers inside the guest, set up by youki's libcontainer. The agent keeps the
//! libcontainer handle, the init pid and the host-facing ends of the stdio pipes.

use crate::oom::OomWatcher;
use crate::reaper::Reaper;
use crate::tty::ConsoleSocket;
use crate::validate::{self, ValidationError};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::Spec;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Errors of container management.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// the request failed validation
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// the OCI document could not be parsed
    #[error("invalid OCI {what} JSON: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    /// the spec asks for something the agent does not support (yet)
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// a container with this id exists already
    #[error("container {0} already exists")]
    Exists(String),
    /// no container with this id
    #[error("container {0} not found")]
    NotFound(String),
    /// the process has no such stream (e.g. stdin not requested)
    #[error("container {id} has no {stream}")]
    NoStream { id: String, stream: &'static str },
    /// the container has no init process (not created or already gone)
    #[error("container {0} has no process")]
    NoProcess(String),
    /// writing the bundle or using a pipe failed
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// setting up or using a terminal failed
    #[error(transparent)]
    Tty(#[from] crate::tty::TtyError),
    /// reading or writing the container's cgroup failed
    #[error("cgroup: {0}")]
    Cgroup(String),
    /// libcontainer refused or failed
    #[error("libcontainer: {0}")]
    Libcontainer(#[from] libcontainer::error::LibcontainerError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError {
    let what = what.into();
    move |source| ContainerError::Io { what, source }
}

/// Which output stream of a process.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One process of a container: its init (exec id "") or an exec'd process.
struct Process {
    pid: i32,
    stdin: Option<File>,
    stdout: Arc<File>,
    stderr: Arc<File>,
    /// PTY master of a terminal process (stdin/stdout go through it too).
    tty: Option<Arc<File>>,
}

struct Entry {
    container: Container,
    /// Relative to the cgroup2 root, e.g. `/husk/<id>`.
    cgroup: PathBuf,
    processes: HashMap<String, Process>,
}

/// Container stats the agent reports (a subset of libcgroups' stats).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub cpu_usage_usec: u64,
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: u64,
    pub pids_current: u64,
}

/// How a new process gets its stdio: pipes, or a PTY whose master arrives on a
/// console socket.
enum ProcessIo {
    Pipes(Stdio),
    Terminal(ConsoleSocket),
}

impl ProcessIo {
    fn new(
        terminal: bool,
        want_stdin: bool,
        consoles: &std::path::Path,
    ) -> Result<Self, ContainerError> {
        Ok(if terminal {
            ProcessIo::Terminal(ConsoleSocket::bind(consoles)?)
        } else {
            ProcessIo::Pipes(Stdio::new(want_stdin)?)
        })
    }

    fn builder(
        &mut self,
        id: &str,
        state: &std::path::Path,
    ) -> Result<ContainerBuilder, ContainerError> {
        match self {
            ProcessIo::Pipes(stdio) => stdio.builder(id, state),
            ProcessIo::Terminal(console) => Ok(ContainerBuilder::new(
                id.to_string(),
                SyscallType::default(),
            )
            .with_root_path(state)?
            .with_console_socket(Some(console.path()))),
        }
    }

    fn into_process(self, pid: i32) -> Result<Process, ContainerError> {
        match self {
            ProcessIo::Pipes(stdio) => Ok(stdio.into_process(pid)),
            ProcessIo::Terminal(console) => {
                let master = console.receive_master()?;
                let dup = |what: &'static str| master.try_clone().map_err(io_err(what));
                Ok(Process {
                    pid,
                    stdin: Some(dup("dup PTY master")?),
                    stdout: Arc::new(dup("dup PTY master")?),
                    // A terminal has one output stream: stderr reads end at once.
                    stderr: Arc::new(File::open("/dev/null").map_err(io_err("open /dev/null"))?),
                    tty: Some(Arc::new(master)),
                })
            }
        }
    }
}

/// Host-side ends of a process's stdio pipes, and the child ends to hand over.
struct Stdio {
    stdin: Option<File>,
    stdout: File,
    stderr: File,
    child_stdin: File,
    child_stdout: File,
    child_stderr: File,
}

impl Stdio {
    fn new(want_stdin: bool) -> Result<Self, ContainerError> {
        let (out_r, out_w) = pipe("stdout")?;
        let (err_r, err_w) = pipe("stderr")?;
        let (stdin, child_stdin) = if want_stdin {
            let (in_r, in_w) = pipe("stdin")?;
            (Some(in_w), in_r)
        } else {
            (
                None,
                File::open("/dev/null").map_err(io_err("open /dev/null"))?,
            )
        };
        Ok(Self {
            stdin,
            stdout: out_r,
            stderr: err_r,
            child_stdin,
            child_stdout: out_w,
            child_stderr: err_w,
        })
    }

    fn builder(
        &mut self,
        id: &str,
        state: &std::path::Path,
    ) -> Result<ContainerBuilder, ContainerError> {
        let dup = |f: &File, what: &'static str| f.try_clone().map_err(io_err(what));
        Ok(
            ContainerBuilder::new(id.to_string(), SyscallType::default())
                .with_root_path(state)?
                .with_stdin(dup(&self.child_stdin, "dup stdin")?)
                .with_stdout(dup(&self.child_stdout, "dup stdout")?)
                .with_stderr(dup(&self.child_stderr, "dup stderr")?),
        )
    }

    fn into_process(self, pid: i32) -> Process {
        // Dropping the child ends here: the container holds its own copies, so
        // the readers see end of stream when the process exits.
        Process {
            pid,
            stdin: self.stdin,
            stdout: Arc::new(self.stdout),
            stderr: Arc::new(self.stderr),
            tty: None,
        }
    }
}

/// Where the agent keeps its state.
#[derive(Debug, Clone)]
pub struct Paths {
    /// libcontainer's state root.
    pub state: PathBuf,
    /// Generated bundles (config.json per container).
    pub bundles: PathBuf,
    /// Host-shared directory that container rootfs paths are relative to.
    pub shared: PathBuf,
    /// Console sockets of terminal processes.
    pub consoles: PathBuf,
    /// Enter the rootfs with MS_MOVE + chroot instead of pivot_root. Needed while
    /// the agent's own root is the initramfs: pivot_root(2) cannot move the
    /// kernel's initial rootfs mount. The VM is the isolation boundary here.
    pub no_pivot: bool,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            state: "/run/husk/containers".into(),
            bundles: "/run/husk/bundles".into(),
            shared: "/run/husk/shared".into(),
            consoles: "/run/husk/console".into(),
            no_pivot: false,
        }
    }
}

/// Whether the spec gives the container a network namespace of its own.
fn has_network_namespace(linux: &oci_spec::runtime::Linux) -> bool {
    linux.namespaces().as_ref().is_some_and(|namespaces| {
        namespaces
            .iter()
            .any(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
    })
}

/// Splits `net.*` sysctls from the others.
fn split_network_sysctls(
    sysctls: HashMap<String, String>,
) -> (Vec<(String, String)>, HashMap<String, String>) {
    let (network, rest): (HashMap<_, _>, HashMap<_, _>) = sysctls
        .into_iter()
        .partition(|(key, _)| key.starts_with("net."));
    let mut network: Vec<_> = network.into_iter().collect();
    network.sort();
    (network, rest)
}

/// The /proc/sys file of a `net.*` sysctl name, if the name is well formed: dot
/// separated parts of `[A-Za-z0-9_-]`, none empty, so it cannot leave /proc/sys/net.
fn network_sysctl_path(key: &str) -> Option<PathBuf> {
    let rest = key.strip_prefix("net.")?;
    let parts: Vec<&str> = rest.split('.').collect();
    let well_formed = key.len() <= 256
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    well_formed.then(|| PathBuf::from("/proc/sys/net").join(parts.join("/")))
}

/// Writes `net.*` sysctls in the agent's (the VM's) network namespace.
fn apply_network_sysctls(sysctls: &[(String, String)]) -> Result<(), ContainerError> {
    for (key, value) in sysctls {
        let path = network_sysctl_path(key).ok_or(ContainerError::Unsupported(
            "a net.* sysctl name outside [A-Za-z0-9_-] parts",
        ))?;
        std::fs::write(&path, value).map_err(io_err(format!("sysctl {key}={value}")))?;
    }
    Ok(())
}

/// A create request after validation.
#[derive(Debug)]
pub struct CreateParams {
    pub id: String,
    pub spec: Spec,
    pub rootfs: PathBuf,
    pub stdin: bool,
}

/// Validates a create request: id, spec JSON size and form, rootfs path inside the
/// shared directory. Pure apart from resolving the rootfs path.
pub fn validate_create(
    paths: &Paths,
    id: &str,
    spec_json: &[u8],
    rootfs: &str,
    stdin: bool,
) -> Result<CreateParams, ContainerError> {
    let id = validate::container_id(id)?.to_string();
    validate::in_range(
        "oci_spec_json length",
        spec_json.len() as u64,
        2,
        validate::MAX_JSON_LEN as u64,
    )?;
    let spec: Spec = serde_json::from_slice(spec_json).map_err(|source| ContainerError::Json {
        what: "spec",
        source,
    })?;
    if spec.process().is_none() {
        return Err(ContainerError::Unsupported("spec without process"));
    }
    let rootfs = validate::resolve_under(&paths.shared, rootfs)?;
    Ok(CreateParams {
        id,
        spec,
        rootfs,
        stdin,
    })
}

/// Where a read-only rootfs gets its writable view, in the container's bundle dir.
const VIEW_DIR: &str = "root";
/// The tmpfs holding the view's upper and work dirs.
const VIEW_RW_DIR: &str = "root-rw";
/// Size of that tmpfs: mount points and the few files libcontainer writes.
const VIEW_RW_SIZE: &str = "size=4m";

/// A read-only rootfs as libcontainer needs it: the host shares a rootfs whose spec
/// says `root.readonly` read-only (the guest's own view of the share says nothing of
/// that: writes fail with EROFS from the host), yet libcontainer creates mount points
/// in it before it remounts the root read-only. An overlay (the shared rootfs below,
/// a small tmpfs above) takes those writes in guest memory; the container still sees
/// a read-only root.
fn writable_view(
    rootfs: &std::path::Path,
    bundle: &std::path::Path,
) -> Result<PathBuf, ContainerError> {
    use nix::mount::{mount, MsFlags};
    let lower = rootfs.to_str().filter(|p| !p.contains([',', ':', '\\']));
    let lower = lower.ok_or(ContainerError::Unsupported(
        "a read-only rootfs path with ',', ':' or '\\'",
    ))?;
    // A rootfs the host bound into the share is a submount there, which the guest
    // kernel mounts on first use (a FUSE automount point): open it now, or overlayfs
    // finds the automount point instead of the rootfs and refuses it.
    std::fs::read_dir(rootfs).map_err(io_err(format!("open {lower}")))?;
    let rw = bundle.join(VIEW_RW_DIR);
    let view = bundle.join(VIEW_DIR);
    for dir in [&rw, &view] {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    let mount_err = |what: String| move |e: nix::Error| io_err(what)(e.into());
    mount(
        Some("tmpfs"),
        &rw,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(VIEW_RW_SIZE),
    )
    .map_err(mount_err(format!("mount a tmpfs on {}", rw.display())))?;
    let (upper, work) = (rw.join("upper"), rw.join("work"));
    for dir in [&upper, &work] {
        std::fs::create_dir(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if let Err(e) = mount(
        Some("overlay"),
        &view,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    ) {
        release_writable_view(bundle);
        return Err(mount_err(format!(
            "mount an overlay of the read-only rootfs {lower}"
        ))(e));
    }
    Ok(view)
}

/// Releases a container's writable view when its create fails.
struct ViewGuard(Option<PathBuf>);

impl Drop for ViewGuard {
    fn drop(&mut self) {
        if let Some(bundle) = self.0.take() {
            release_writable_view(&bundle);
        }
    }
}

/// Unmounts what [`writable_view`] mounted in `bundle`, if anything.
fn release_writable_view(bundle: &std::path::Path) {
    for dir in [VIEW_DIR, VIEW_RW_DIR] {
        let _ = nix::mount::umount2(&bundle.join(dir), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The containers of this sandbox.
pub struct Containers {
    paths: Paths,
    reaper: Arc<Reaper>,
    oom: Arc<OomWatcher>,
    entries: Mutex<HashMap<String, Entry>>,
    /// Serialises creations and execs, so two requests for one id cannot both
    /// pass the "exists" check (and a failure cleanup cannot hit the other's state).
    creating: Mutex<()>,
}

impl Containers {
    pub fn new(paths: Paths, reaper: Arc<Reaper>, oom: Arc<OomWatcher>) -> Self {
        Self {
            paths,
            reaper,
            oom,
            entries: Mutex::new(HashMap::new()),
            creating: Mutex::new(()),
        }
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the container (its init waits for [`Containers::start`]).
    pub fn create(&self, p: CreateParams) -> Result<(), ContainerError> {
        let _creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if self.entries().contains_key(&p.id) {
            return Err(ContainerError::Exists(p.id));
        }
        let paths = self.paths();
        let bundle = paths.bundles.join(&p.id);
        std::fs::create_dir_all(&bundle).map_err(io_err(format!("create {}", bundle.display())))?;
        std::fs::create_dir_all(&paths.state).map_err(io_err("create state dir"))?;
        let mut spec = p.spec;
        let mut root = spec.root().clone().unwrap_or_default();
        let rootfs = if root.readonly().unwrap_or(false) {
            writable_view(&p.rootfs, &bundle)?
        } else {
            p.rootfs.clone()
        };
        // Any failure from here on unmounts the view again (a success disarms it).
        let mut view_guard = ViewGuard(Some(bundle.clone()));
        root.set_path(rootfs);
        spec.set_root(Some(root));
        // The host's cgroupsPath names a host cgroup; in the guest we pick one, so
        // stats, updates and OOM events know where to look.
        let cgroup = PathBuf::from(format!("/husk/{}", p.id));
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_cgroups_path(Some(cgroup.clone()));
        if let Some(resources) = linux.resources().clone() {
            linux.set_resources(Some(guest_resources(resources, guest_has_swap())));
        }
        if !has_network_namespace(&linux) {
            // The container shares the VM's network namespace, which holds exactly
            // its carried interfaces: its net.* sysctls (Docker sets
            // net.ipv4.ping_group_range) apply there, set by us; libcontainer
            // refuses them without a namespace of the container's own.
            let (network, rest) = split_network_sysctls(linux.sysctl().clone().unwrap_or_default());
            apply_network_sysctls(&network)?;
            linux.set_sysctl((!rest.is_empty()).then_some(rest));
        }
        spec.set_linux(Some(linux));
        spec.save(bundle.join("config.json"))
            .map_err(|e| ContainerError::Io {
                what: "write config.json".into(),
                source: std::io::Error::other(e.to_string()),
            })?;

        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let mut io = ProcessIo::new(terminal, p.stdin, &paths.consoles)?;
        let builder = io.builder(&p.id, &paths.state)?;
        let (mut container, pid) = {
            // libcontainer waits for its helper process: keep the reaper out
            // until the new init is tracked.
            let _spawn = self.reaper.spawn_guard();
            let container = builder
                .as_init(&bundle)
                .with_systemd(false)
                .with_no_pivot(paths.no_pivot)
                .with_detach(true)
                .build()
                .inspect_err(|_| {
                    // Leave nothing behind that would make a retry fail with
                    // "already exists".
                    let _ = std::fs::remove_dir_all(paths.state.join(&p.id));
                    let _ = std::fs::remove_dir_all(&bundle);
                })?;
            let pid = container
                .pid()
                .map(|p| p.as_raw())
                .ok_or_else(|| ContainerError::NoProcess(p.id.clone()))?;
            self.reaper.track(pid);
            (container, pid)
        };
        let process = match io.into_process(pid) {
            Ok(process) => process,
            Err(e) => {
                // No terminal, no container: do not leave a half-made one.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                self.reaper.wait(pid, Some(Duration::from_secs(5)));
                self.reaper.forget(pid);
                let _ = container.delete(true);
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(e);
            }
        };
        view_guard.0 = None;
        let mut processes = HashMap::new();
        processes.insert(String::new(), process);
        let id = p.id;
        self.entries().insert(
            id.clone(),
            Entry {
                container,
                cgroup,
                processes,
            },
        );
        // A child that exited while we held the spawn lock sent its SIGCHLD then.
        self.reaper.reap_all();
        if let Some(dir) = self.cgroup_dir(&id) {
            // Without the memory controller there are no OOM events to report.
            if let Err(e) = self.oom.watch(&id, &dir) {
                tracing::warn!("no OOM events for {id}: {e}");
            }
        }
        Ok(())
    }

    /// The OOM event source of this sandbox.
    pub fn oom(&self) -> &OomWatcher {
        &self.oom
    }

    /// Starts a process in a running container (`process_json`: OCI process).
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        want_stdin: bool,
    ) -> Result<(), ContainerError> {
        validate::in_range(
            "process_json length",
            process_json.len() as u64,
            2,
            validate::MAX_JSON_LEN as u64,
        )?;
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(process_json).map_err(|source| ContainerError::Json {
                what: "process",
                source,
            })?;
        let _creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        {
            let entries = self.entries();
            let e = entries
                .get(id)
                .ok_or_else(|| ContainerError::NotFound(id.into()))?;
            if e.processes.contains_key(exec_id) {
                return Err(ContainerError::Exists(format!("{id}/{exec_id}")));
            }
        }
        let paths = self.paths();
        let file = paths.bundles.join(id).join(format!("exec-{exec_id}.json"));
        std::fs::write(
            &file,
            serde_json::to_vec(&process).map_err(|source| ContainerError::Json {
                what: "process",
                source,
            })?,
        )
        .map_err(io_err(format!("write {}", file.display())))?;
        let terminal = process.terminal().unwrap_or(false);
        let mut io = ProcessIo::new(terminal, want_stdin, &paths.consoles)?;
        let builder = io.builder(id, &paths.state)?;
        let pid = {
            let _spawn = self.reaper.spawn_guard();
            let pid = builder
                .as_tenant()
                .with_process(Some(&file))
                .with_detach(true)
                .build()?;
            self.reaper.track(pid.as_raw());
            pid
        };
        let _ = std::fs::remove_file(&file);
        let process = io.into_process(pid.as_raw())?;
        let mut entries = self.entries();
        let e = entries
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        e.processes.insert(exec_id.to_string(), process);
        drop(entries);
        self.reaper.reap_all();
        Ok(())
    }

    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let mut entries = self.entries();
        let e = entries
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        e.container.start()?;
        Ok(())
    }

    fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Process) -> Result<T, ContainerError>,
    ) -> Result<T, ContainerError> {
        let mut entries = self.entries();
        let e = entries
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        let p = e
            .processes
            .get_mut(exec_id)
            .ok_or_else(|| ContainerError::NotFound(format!("{id}/{exec_id}")))?;
        f(p)
    }

    fn pid_of(&self, id: &str, exec_id: &str) -> Result<i32, ContainerError> {
        self.with_process(id, exec_id, |p| Ok(p.pid))
    }

    pub fn signal(&self, id: &str, exec_id: &str, signal: i32) -> Result<(), ContainerError> {
        let pid = self.pid_of(id, exec_id)?;
        let signal = signal_number(signal)?;
        // Signal the pid directly (libcontainer's kill only knows the init). Once
        // reaped, the pid may belong to someone else: refuse instead.
        if self.reaper.wait(pid, Some(Duration::ZERO)).is_some() {
            return Err(ContainerError::NoProcess(format!("{id}/{exec_id}")));
        }
        send_signal(pid, signal).map_err(|e| ContainerError::Io {
            what: format!("kill {pid}"),
            source: e.into(),
        })
    }

    /// Waits for a process to exit; returns its status.
    pub fn wait(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<i32>, ContainerError> {
        let pid = self.pid_of(id, exec_id)?;
        Ok(self.reaper.wait(pid, timeout))
    }

    /// Reads up to `len` bytes of output; empty at end of stream.
    pub fn read(
        &self,
        id: &str,
        exec_id: &str,
        stream: Stream,
        len: usize,
    ) -> Result<Vec<u8>, ContainerError> {
        // Clone the handle out: the read blocks and must not hold the table lock.
        let file = self.with_process(id, exec_id, |p| {
            Ok(match stream {
                Stream::Stdout => Arc::clone(&p.stdout),
                Stream::Stderr => Arc::clone(&p.stderr),
            })
        })?;
        let mut buf = vec![0u8; len];
        let n = match (&*file).read(&mut buf) {
            Ok(n) => n,
            // A PTY master reads EIO once the terminal's last user is gone: EOF.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => 0,
            Err(e) => return Err(io_err(format!("read {stream:?} of {id}"))(e)),
        };
        buf.truncate(n);
        Ok(buf)
    }

    pub fn write_stdin(
        &self,
        id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<usize, ContainerError> {
        let stdin = self.with_process(id, exec_id, |p| {
            p.stdin
                .as_ref()
                .ok_or_else(|| ContainerError::NoStream {
                    id: id.into(),
                    stream: "stdin",
                })?
                .try_clone()
                .map_err(io_err("dup stdin"))
        })?;
        (&stdin)
            .write_all(data)
            .map_err(io_err(format!("write stdin of {id}")))?;
        Ok(data.len())
    }

    /// Sets the window size of a terminal process.
    pub fn resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u16,
        columns: u16,
    ) -> Result<(), ContainerError> {
        let tty = self.with_process(id, exec_id, |p| {
            p.tty.clone().ok_or_else(|| ContainerError::NoStream {
                id: id.into(),
                stream: "terminal",
            })
        })?;
        Ok(crate::tty::resize(&tty, rows, columns)?)
    }

    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        self.with_process(id, exec_id, |p| {
            p.stdin = None;
            Ok(())
        })
    }

    fn cgroup_manager(
        &self,
        id: &str,
    ) -> Result<libcgroups::common::AnyCgroupManager, ContainerError> {
        let cgroup = {
            let entries = self.entries();
            entries
                .get(id)
                .ok_or_else(|| ContainerError::NotFound(id.into()))?
                .cgroup
                .clone()
        };
        libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
            cgroup_path: cgroup,
            systemd_cgroup: false,
            container_name: id.to_string(),
        })
        .map_err(|e| ContainerError::Cgroup(e.to_string()))
    }

    /// CPU, memory and pids figures of the container's cgroup.
    pub fn stats(&self, id: &str) -> Result<Stats, ContainerError> {
        let dir = self
            .cgroup_dir(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        read_stats(&dir)
    }

    /// Applies new resource limits (OCI `linux.resources` JSON).
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), ContainerError> {
        use libcgroups::common::CgroupManager;
        let resources = guest_resources(parse_resources(resources_json)?, guest_has_swap());
        self.cgroup_manager(id)?
            .apply(&libcgroups::common::ControllerOpt {
                resources: &resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| ContainerError::Cgroup(e.to_string()))
    }

    /// Freezes every process of the container (cgroup freezer).
    pub fn pause(&self, id: &str) -> Result<(), ContainerError> {
        let mut entries = self.entries();
        let e = entries
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        e.container.pause()?;
        Ok(())
    }

    /// Thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<(), ContainerError> {
        let mut entries = self.entries();
        let e = entries
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        e.container.resume()?;
        Ok(())
    }

    /// The pids in the container's cgroup (sorted) with their command lines.
    pub fn processes(&self, id: &str) -> Result<Vec<(i32, String)>, ContainerError> {
        let dir = self
            .cgroup_dir(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        let pids = read_cgroup_pids(&dir)?;
        Ok(pids
            .into_iter()
            .map(|pid| (pid, command_line(pid)))
            .collect())
    }

    /// Sends `signal` to every process in the container's cgroup.
    pub fn signal_all(&self, id: &str, signal: i32) -> Result<(), ContainerError> {
        let signal = signal_number(signal)?;
        let dir = self
            .cgroup_dir(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        for pid in read_cgroup_pids(&dir)? {
            // A process may exit between the read and the kill: not an error.
            let _ = send_signal(pid, signal);
        }
        Ok(())
    }

    /// The cgroup directory of a container (for the OOM watcher).
    pub fn cgroup_dir(&self, id: &str) -> Option<PathBuf> {
        let entries = self.entries();
        let rel = entries.get(id)?.cgroup.clone();
        Some(PathBuf::from("/sys/fs/cgroup").join(rel.strip_prefix("/").unwrap_or(&rel)))
    }

    /// Kills what is left and deletes the container and its bundle.
    pub fn remove(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let pids: Vec<i32> = {
            let entries = self.entries();
            let e = entries
                .get(id)
                .ok_or_else(|| ContainerError::NotFound(id.into()))?;
            e.processes.values().map(|p| p.pid).collect()
        };
        for &pid in &pids {
            if self.reaper.wait(pid, Some(Duration::ZERO)).is_none() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                self.reaper.wait(pid, Some(timeout));
            }
        }
        let mut entry = self
            .entries()
            .remove(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        self.oom.unwatch(id);
        entry.container.delete(true)?;
        for pid in pids {
            self.reaper.forget(pid);
        }
        let bundle = self.paths().bundles.join(id);
        release_writable_view(&bundle);
        let _ = std::fs::remove_dir_all(bundle);
        Ok(())
    }

    pub fn ids(&self) -> Vec<String> {
        self.entries().keys().cloned().collect()
    }
}

/// Reads the few cgroup v2 files the stats come from. (libcgroups' full stats
/// read a dozen more files, PSI included, for figures the API does not carry.)
pub fn read_stats(dir: &std::path::Path) -> Result<Stats, ContainerError> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| ContainerError::Cgroup(format!("read {name}: {e}")))
    };
    let number = |name: &str, text: &str| {
        text.trim()
            .parse::<u64>()
            .map_err(|e| ContainerError::Cgroup(format!("parse {name}: {e}")))
    };
    let cpu = read("cpu.stat")?;
    let cpu_usage_usec = cpu
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .ok_or_else(|| ContainerError::Cgroup("cpu.stat has no usage_usec".into()))?;
    let memory_max = read("memory.max")?;
    Ok(Stats {
        cpu_usage_usec: number("cpu.stat", cpu_usage_usec)?,
        memory_usage_bytes: number("memory.current", &read("memory.current")?)?,
        // "max" means no limit.
        memory_limit_bytes: match memory_max.trim() {
            "max" => u64::MAX,
            v => number("memory.max", v)?,
        },
        pids_current: number("pids.current", &read("pids.current")?)?,
    })
}

/// The pids listed in a cgroup's `cgroup.procs`, sorted.
pub fn read_cgroup_pids(dir: &std::path::Path) -> Result<Vec<i32>, ContainerError> {
    let text = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map_err(|e| ContainerError::Cgroup(format!("read cgroup.procs: {e}")))?;
    let mut pids = text
        .lines()
        .map(|l| {
            l.trim()
                .parse::<i32>()
                .map_err(|e| ContainerError::Cgroup(format!("parse cgroup.procs: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    pids.sort_unstable();
    Ok(pids)
}

/// A process's command line, arguments joined by spaces, at most 4 KiB; empty if gone.
fn command_line(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut text: String = String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if text.len() > 4096 {
        let mut end = 4096;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Parses and bounds an OCI `linux.resources` document.
pub fn parse_resources(json: &[u8]) -> Result<oci_spec::runtime::LinuxResources, ContainerError> {
    validate::in_range(
        "resources_json length",
        json.len() as u64,
        2,
        validate::MAX_JSON_LEN as u64,
    )?;
    serde_json::from_slice(json).map_err(|source| ContainerError::Json {
        what: "resources",
        source,
    })
}

/// Resources as the host sends them, made valid for this guest's cgroup v2:
///
/// - a CPU period of 0 means "not given" (Docker's `update` sends period 0 and quota
///   0 when no CPU limit is set; libcgroups would write `max 0`, which the kernel
///   refuses); a quota of 0 or less means no limit, written as `max`;
/// - a swap limit is dropped when the guest has no swap (no `memory.swap.max` to
///   write): memory + swap is then the memory limit alone, which is what it asked.
pub fn guest_resources(
    mut resources: oci_spec::runtime::LinuxResources,
    has_swap: bool,
) -> oci_spec::runtime::LinuxResources {
    if let Some(mut cpu) = resources.cpu().clone() {
        if cpu.period() == Some(0) {
            cpu.set_period(None);
        }
        if cpu.quota().is_some_and(|q| q <= 0) {
            cpu.set_quota(Some(-1));
        }
        resources.set_cpu(Some(cpu));
    }
    if !has_swap {
        if let Some(mut memory) = *resources.memory() {
            if memory.swap().is_some() {
                memory.set_swap(None);
                resources.set_memory(Some(memory));
            }
        }
    }
    resources
}

/// Whether the guest kernel has swap (and so cgroup v2's `memory.swap.max`).
fn guest_has_swap() -> bool {
    std::path::Path::new("/proc/swaps").exists()
}

fn pipe(what: &'static str) -> Result<(File, File), ContainerError> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ContainerError::Io {
            what: format!("{what} pipe"),
            source: e.into(),
        })?;
    Ok((File::from(r), File::from(w)))
}

/// Checks a signal number the host sent: 1..=64, real-time signals included
/// (`docker kill -s RTMIN+1` is valid; nix's `Signal` only names 1..=31).
fn signal_number(signal: i32) -> Result<i32, ValidationError> {
    if (1..=64).contains(&signal) {
        Ok(signal)
    } else {
        Err(ValidationError::Range {
            what: "signal",
            value: u64::from(signal.unsigned_abs()),
            min: 1,
            max: 64,
        })
    }
}

/// kill(2) with a raw signal number, so real-time signals reach the process too.
/// A pid of 0 or below would signal a process group or every process: refused.
fn send_signal(pid: i32, signal: i32) -> nix::Result<()> {
    if pid <= 0 {
        return Err(nix::errno::Errno::ESRCH);
    }
    // SAFETY: kill takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    nix::errno::Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn paths(dir: &Path) -> Paths {
        Paths {
            state: dir.join("state"),
            bundles: dir.join("bundles"),
            shared: dir.join("shared"),
            consoles: dir.join("console"),
            no_pivot: false,
        }
    }

    #[test]
    fn network_sysctls_are_split_and_confined_to_proc_sys_net() {
        let sysctls: HashMap<String, String> = [
            ("net.ipv4.ping_group_range", "0 2147483647"),
            ("kernel.shm_rmid_forced", "1"),
            ("net.ipv4.conf.eth0.rp_filter", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (network, rest) = split_network_sysctls(sysctls);
        assert_eq!(
            network.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["net.ipv4.conf.eth0.rp_filter", "net.ipv4.ping_group_range"]
        );
        assert_eq!(rest.len(), 1);
        assert_eq!(
            network_sysctl_path("net.ipv4.ping_group_range"),
            Some(PathBuf::from("/proc/sys/net/ipv4/ping_group_range"))
        );
        for bad in ["net.", "net..x", "net.ipv4/../../x", "net.a b", "kernel.x"] {
            assert_eq!(network_sysctl_path(bad), None, "{bad}");
        }
    }

    fn spec_json() -> Vec<u8> {
        serde_json::to_vec(&Spec::default()).unwrap()
    }

    #[test]
    fn create_validation() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        std::fs::create_dir_all(p.shared.join("c1/rootfs")).unwrap();
        let ok = validate_create(&p, "c1", &spec_json(), "c1/rootfs", false).unwrap();
        assert_eq!(ok.id, "c1");
        assert!(ok.rootfs.ends_with("shared/c1/rootfs"));

        assert!(matches!(
            validate_create(&p, "../c1", &spec_json(), "c1/rootfs", false),
            Err(ContainerError::Invalid(ValidationError::Id { .. }))
        ));
        assert!(matches!(
            validate_create(&p, "c1", b"{not json", "c1/rootfs", false),
            Err(ContainerError::Json { .. })
        ));
        assert!(matches!(
            validate_create(&p, "c1", b"", "c1/rootfs", false),
            Err(ContainerError::Invalid(ValidationError::Range { .. }))
        ));
        assert!(matches!(
            validate_create(&p, "c1", &spec_json(), "/etc", false),
            Err(ContainerError::Invalid(ValidationError::Path(_)))
        ));
        assert!(matches!(
            validate_create(&p, "c1", &spec_json(), "c1/../../x", false),
            Err(ContainerError::Invalid(ValidationError::Path(_)))
        ));
    }

    #[test]
    fn zero_cpu_limits_and_swap_in_the_guest() {
        let r = |json: &str| parse_resources(json.as_bytes()).unwrap();
        // What `docker update --memory 64m` sends for a container without CPU limits.
        let docker = r(r#"{"cpu":{"shares":0,"quota":0,"period":0},
            "memory":{"limit":67108864,"swap":67108864}}"#);
        let g = guest_resources(docker.clone(), false);
        let cpu = g.cpu().clone().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(-1), None));
        let memory = g.memory().unwrap();
        assert_eq!((memory.limit(), memory.swap()), (Some(64 << 20), None));
        let with_swap = guest_resources(docker, true);
        assert_eq!(with_swap.memory().unwrap().swap(), Some(64 << 20));
        // Real limits pass unchanged.
        let g = guest_resources(r(r#"{"cpu":{"quota":50000,"period":100000}}"#), false);
        let cpu = g.cpu().clone().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(50000), Some(100000)));
        // Quota 0 with a period: unlimited at that period (`max 100000`).
        let g = guest_resources(r(r#"{"cpu":{"quota":0,"period":100000}}"#), false);
        let cpu = g.cpu().clone().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(-1), Some(100000)));
    }

    #[test]
    fn stats_from_cgroup_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("cpu.stat"), "usage_usec 1234\nuser_usec 1000\n").unwrap();
        std::fs::write(d.join("memory.current"), "4096\n").unwrap();
        std::fs::write(d.join("memory.max"), "max\n").unwrap();
        std::fs::write(d.join("pids.current"), "2\n").unwrap();
        assert_eq!(
            read_stats(d).unwrap(),
            Stats {
                cpu_usage_usec: 1234,
                memory_usage_bytes: 4096,
                memory_limit_bytes: u64::MAX,
                pids_current: 2,
            }
        );
        std::fs::write(d.join("memory.max"), "16777216\n").unwrap();
        assert_eq!(read_stats(d).unwrap().memory_limit_bytes, 16 << 20);
        std::fs::write(d.join("pids.current"), "lots\n").unwrap();
        assert!(matches!(read_stats(d), Err(ContainerError::Cgroup(_))));
    }

    #[test]
    fn cgroup_pids_are_sorted_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "42\n7\n100\n").unwrap();
        assert_eq!(read_cgroup_pids(dir.path()).unwrap(), vec![7, 42, 100]);
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        assert!(read_cgroup_pids(dir.path()).unwrap().is_empty());
        std::fs::write(dir.path().join("cgroup.procs"), "7\nx\n").unwrap();
        assert!(matches!(
            read_cgroup_pids(dir.path()),
            Err(ContainerError::Cgroup(_))
        ));
        assert!(!command_line(std::process::id() as i32).is_empty());
        assert_eq!(command_line(-1), "");
    }

    #[test]
    fn resources_json() {
        let r = parse_resources(br#"{"pids":{"limit":64},"memory":{"limit":16777216}}"#).unwrap();
        assert_eq!(r.pids().as_ref().map(|p| p.limit()), Some(64));
        assert!(matches!(
            parse_resources(b"\"x\""),
            Err(ContainerError::Json { .. })
        ));
        assert!(matches!(
            parse_resources(b""),
            Err(ContainerError::Invalid(_))
        ));
    }

    #[test]
    fn boot_test_spec_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        std::fs::create_dir_all(p.shared.join("hello/rootfs")).unwrap();
        let json = include_bytes!("../../tests/guest/hello/config.json");
        let c = validate_create(&p, "hello", json, "hello/rootfs", false).unwrap();
        assert_eq!(c.spec.hostname().as_deref(), Some("hello"));
    }

    #[test]
    fn terminal_spec_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        std::fs::create_dir_all(p.shared.join("r")).unwrap();
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_terminal(Some(true));
        spec.set_process(Some(process));
        let json = serde_json::to_vec(&spec).unwrap();
        assert!(validate_create(&p, "c1", &json, "r", false).is_ok());
    }

    #[test]
    fn unknown_container_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = Containers::new(
            paths(dir.path()),
            Arc::new(Reaper::default()),
            OomWatcher::start().unwrap(),
        );
        assert!(matches!(c.start("nope"), Err(ContainerError::NotFound(_))));
        assert!(matches!(
            c.signal("nope", "", 9),
            Err(ContainerError::NotFound(_))
        ));
        assert!(matches!(
            c.read("nope", "e1", Stream::Stdout, 10),
            Err(ContainerError::NotFound(_))
        ));
        assert!(matches!(
            c.exec(
                "nope",
                "e1",
                br#"{"user":{"uid":0,"gid":0},"args":["true"],"cwd":"/"}"#,
                false
            ),
            Err(ContainerError::NotFound(_))
        ));
        assert!(matches!(
            c.exec("nope", "e1", b"{x", false),
            Err(ContainerError::Json { .. })
        ));
        assert!(matches!(c.stats("nope"), Err(ContainerError::NotFound(_))));
        assert!(matches!(
            c.remove("nope", Duration::ZERO),
            Err(ContainerError::NotFound(_))
        ));
        assert!(c.ids().is_empty());
    }
}

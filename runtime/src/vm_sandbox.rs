//! VM isolation: one sandbox VM per container, booted by a [`Hypervisor`], with the
//! container's rootfs shared over virtio-fs and the container run by husk-agent,
//! driven over ttrpc on hybrid vsock.
//!
//! The sandbox keeps everything of the VM (sockets, logs, the shared directory with
//! the rootfs bind-mounted into it) under one state directory and removes all of it,
//! and every VM process, when dropped — also after errors.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use husk_agent_protocol::agent as pb;
use husk_agent_protocol::agent_ttrpc::{AgentClient, HealthClient};
use husk_agent_protocol::{hybrid_vsock, AGENT_VSOCK_PORT};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde_json::Value;

use crate::hypervisor::{Accel, GuestArtifacts, Hypervisor, RunningVm, VmSpec, SHARED_FS_TAG};

/// How long the agent gets to answer after the VMM starts (TCG boots in ~1.5 s here;
/// a loaded machine can take much longer).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of ordinary agent calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The VMM gets this long to exit by itself after DestroySandbox.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Lines of guest console quoted in errors (the whole log goes to the debug log).
const CONSOLE_LINES: usize = 40;
/// What husk-agent logs on the console once it serves.
const AGENT_READY: &[u8] = b"husk-agent ready on vsock";
/// Name of the rootfs inside the shared directory.
const ROOTFS_NAME: &str = "rootfs";
/// Signals a foreground `run` forwards to the container.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Errors of a VM sandbox.
#[derive(Debug, thiserror::Error)]
pub enum VmSandboxError {
    #[error(transparent)]
    Hypervisor(#[from] crate::hypervisor::HypervisorError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::Error },
    /// The agent never answered.
    #[error("the guest agent did not answer within {timeout:?} ({last}){console}")]
    AgentTimeout {
        timeout: Duration,
        last: String,
        console: String,
    },
    /// The VMM exited while the sandbox still needed it.
    #[error("the VM exited unexpectedly ({status}) {when}{console}")]
    VmExited {
        status: String,
        when: &'static str,
        console: String,
    },
    /// An agent call failed.
    #[error("agent {call} failed: {message}")]
    Agent { call: &'static str, message: String },
    /// The bundle's spec cannot be used in the guest.
    #[error("config.json cannot be used in vm isolation: {0}")]
    Spec(String),
    /// The sandbox is still run by a live husk.
    #[error("{0}")]
    Busy(String),
    /// A signal arrived before the container ran.
    #[error("interrupted by {0} before the container started")]
    Interrupted(Signal),
}

fn agent_err(call: &'static str) -> impl FnOnce(ttrpc::Error) -> VmSandboxError {
    move |e| VmSandboxError::Agent {
        call,
        message: match e {
            ttrpc::Error::RpcStatus(s) => format!("{:?}: {}", s.code(), s.message),
            other => other.to_string(),
        },
    }
}

fn ctx(timeout: Option<Duration>) -> ttrpc::context::Context {
    match timeout {
        Some(t) => ttrpc::context::with_timeout(t.as_nanos() as i64),
        // 0: wait as long as it takes (WaitProcess, stream reads).
        None => ttrpc::context::Context::default(),
    }
}

/// Signals blocked in every thread of husk and read from a signalfd, so they can be
/// forwarded to the container instead of killing husk (and leaking the VM).
pub struct ForwardedSignals {
    fd: SignalFd,
    old: SigSet,
}

impl ForwardedSignals {
    /// Blocks the forwarded signals in this thread (threads spawned later inherit the
    /// mask; child processes get an empty mask from std's `Command`).
    pub fn block() -> Result<Self, VmSandboxError> {
        let mut set = SigSet::empty();
        for s in FORWARDED {
            set.add(s);
        }
        let mut old = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
            .map_err(|source| VmSandboxError::Sys {
                what: "block signals".into(),
                source,
            })?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|source| VmSandboxError::Sys {
                what: "signalfd".into(),
                source,
            })?;
        Ok(Self { fd, old })
    }

    /// A pending signal, if any.
    pub fn pending(&self) -> Option<Signal> {
        let info = self.fd.read_signal().ok()??;
        Signal::try_from(info.ssi_signo as i32).ok()
    }
}

impl Drop for ForwardedSignals {
    fn drop(&mut self) {
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}

/// Rewrites a host OCI spec for the guest: host paths mean nothing there. Returns the
/// spec and warnings about what was dropped.
pub fn guest_spec(mut spec: Value) -> Result<(Value, Vec<String>), VmSandboxError> {
    let mut dropped = Vec::new();
    let obj = spec
        .as_object_mut()
        .ok_or_else(|| VmSandboxError::Spec("not a JSON object".into()))?;
    if obj.remove("hooks").is_some() {
        dropped.push("hooks (they name host programs)".to_string());
    }
    if let Some(Value::Array(mounts)) = obj.get_mut("mounts") {
        mounts.retain(|m| {
            let is_bind = m.get("type").and_then(Value::as_str) == Some("bind")
                || m.get("options")
                    .and_then(Value::as_array)
                    .is_some_and(|o| o.iter().any(|v| v == "bind" || v == "rbind"));
            if is_bind {
                dropped.push(format!(
                    "bind mount of host path {} on {}",
                    m.get("source").and_then(Value::as_str).unwrap_or("?"),
                    m.get("destination").and_then(Value::as_str).unwrap_or("?")
                ));
            }
            !is_bind
        });
    }
    if let Some(process) = obj.get_mut("process").and_then(Value::as_object_mut) {
        process.remove("apparmorProfile");
        process.remove("selinuxLabel");
    }
    if let Some(linux) = obj.get_mut("linux").and_then(Value::as_object_mut) {
        // The agent picks the guest cgroup.
        linux.remove("cgroupsPath");
        linux.remove("mountLabel");
        if let Some(Value::Array(namespaces)) = linux.get_mut("namespaces") {
            for ns in namespaces.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(path) = ns.remove("path") {
                    dropped.push(format!("namespace path {path} (a host namespace)"));
                }
            }
        }
    }
    Ok((spec, dropped))
}

/// One booted sandbox VM with its agent connection.
pub struct VmSandbox {
    dir: PathBuf,
    shared_rootfs: PathBuf,
    mounted: bool,
    console: PathBuf,
    vm: Option<RunningVm>,
    client: Option<ttrpc::Client>,
    destroyed: bool,
    /// VMM start to first health check answered.
    pub boot_time: Duration,
    pub accel: Accel,
}

/// What [`VmSandbox::boot`] needs.
pub struct BootParams<'a> {
    pub hypervisor: &'a dyn Hypervisor,
    pub artifacts: GuestArtifacts,
    /// The sandbox's state directory (created; removed on drop). Must not exist.
    pub dir: PathBuf,
    /// The container's rootfs on the host, shared with the guest.
    pub rootfs: &'a Path,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub signals: Option<&'a ForwardedSignals>,
}

impl VmSandbox {
    /// Boots the VM and waits for its agent.
    pub fn boot(p: BootParams<'_>) -> Result<Self, VmSandboxError> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p.dir)
            .map_err(|source| VmSandboxError::Io {
                what: format!("create sandbox state dir {}", p.dir.display()),
                source,
            })?;
        // The marker first, before anything is mounted: `husk delete` recognises a
        // sandbox by it and never recurses into a directory holding the rootfs.
        write_marker(&p.dir, &[]).map_err(|source| {
            // Nothing is mounted yet: the directory can simply go.
            let _ = std::fs::remove_dir_all(&p.dir);
            VmSandboxError::Io {
                what: format!("write {}", p.dir.join(MARKER).display()),
                source,
            }
        })?;
        let shared = p.dir.join("shared");
        let mut sandbox = Self {
            shared_rootfs: shared.join(ROOTFS_NAME),
            console: p.dir.join("console.log"),
            dir: p.dir,
            mounted: false,
            vm: None,
            client: None,
            destroyed: false,
            boot_time: Duration::ZERO,
            accel: p.hypervisor.accel(),
        };
        let io = |what: String| move |source| VmSandboxError::Io { what, source };
        std::fs::create_dir_all(&sandbox.shared_rootfs)
            .map_err(io(format!("create {}", sandbox.shared_rootfs.display())))?;
        // Share only the rootfs: bind it into an otherwise empty directory.
        nix::mount::mount(
            Some(p.rootfs),
            &sandbox.shared_rootfs,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|source| VmSandboxError::Sys {
            what: format!(
                "bind {} into the shared directory {}",
                p.rootfs.display(),
                shared.display()
            ),
            source,
        })?;
        sandbox.mounted = true;
        let vsock = sandbox.dir.join("vsock.sock");
        let spec = VmSpec {
            artifacts: p.artifacts,
            shared_dir: shared,
            state_dir: sandbox.dir.clone(),
            vsock_socket: vsock.clone(),
            memory_mib: p.memory_mib,
            vcpus: p.vcpus,
        };
        let started = Instant::now();
        let vm = p.hypervisor.start(&spec)?;
        let pids = vm.pids();
        sandbox.vm = Some(vm);
        write_marker(&sandbox.dir, &pids).map_err(|source| VmSandboxError::Io {
            what: format!("write {}", sandbox.dir.join(MARKER).display()),
            source,
        })?;
        let client = sandbox.connect(&vsock, started, p.signals)?;
        sandbox.boot_time = started.elapsed();
        sandbox.client = Some(client);
        tracing::info!(
            hypervisor = p.hypervisor.name(),
            accel = %sandbox.accel,
            boot_ms = sandbox.boot_time.as_millis() as u64,
            "guest agent ready"
        );
        Ok(sandbox)
    }

    /// The pids of the VM's host processes, the VMM first.
    pub fn pids(&self) -> Vec<u32> {
        self.vm.as_ref().map(RunningVm::pids).unwrap_or_default()
    }

    /// The end of the guest console log so far (for error reports).
    pub fn console_log(&self) -> String {
        console_tail(&self.console, CONSOLE_LINES)
    }

    fn vm_gone(&mut self, when: &'static str) -> Option<VmSandboxError> {
        let status = self.vm.as_mut()?.vmm_exited()?;
        Some(VmSandboxError::VmExited {
            status: status.to_string(),
            when,
            console: format!("\n{}", self.console_log()),
        })
    }

    /// Like `vm_gone`, waiting up to `grace` for the VMM to be seen exiting.
    fn vm_gone_within(&mut self, grace: Duration) -> Option<VmSandboxError> {
        let deadline = Instant::now() + grace;
        loop {
            if let Some(err) = self.vm_gone("while the container ran") {
                return Some(err);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the agent has logged that it serves (on the serial console). The first
    /// hybrid-vsock CONNECT waits for this: a connection request that reaches
    /// vhost-device-vsock before the guest driver is up can wedge the device (seen
    /// here under load: every later CONNECT then timed out although the agent ran).
    fn agent_logged_ready(&self) -> bool {
        std::fs::read(&self.console)
            .map(|c| c.windows(AGENT_READY.len()).any(|w| w == AGENT_READY))
            .unwrap_or(false)
    }

    fn connect(
        &mut self,
        vsock: &Path,
        started: Instant,
        signals: Option<&ForwardedSignals>,
    ) -> Result<ttrpc::Client, VmSandboxError> {
        let mut last = String::from("no attempt");
        while started.elapsed() < AGENT_TIMEOUT {
            if let Some(err) = self.vm_gone("while booting") {
                return Err(err);
            }
            if let Some(sig) = signals.and_then(ForwardedSignals::pending) {
                return Err(VmSandboxError::Interrupted(sig));
            }
            if !self.agent_logged_ready() {
                last = "the agent has not logged ready on the console yet".into();
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            match hybrid_vsock::connect_ttrpc(vsock, AGENT_VSOCK_PORT, Duration::from_secs(5)) {
                Ok(client) => {
                    let health = HealthClient::new(client.clone());
                    match health.check(ctx(Some(CALL_TIMEOUT)), &pb::CheckRequest::new()) {
                        Ok(_) => return Ok(client),
                        Err(e) => last = format!("health check: {e}"),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(VmSandboxError::AgentTimeout {
            timeout: AGENT_TIMEOUT,
            last,
            console: format!("\n{}", self.console_log()),
        })
    }

    fn agent(&self) -> AgentClient {
        AgentClient::new(self.client.clone().expect("connected sandbox"))
    }

    /// Creates and starts the container from a guest spec (see [`guest_spec`]).
    pub fn create_and_start(
        &mut self,
        sandbox_id: &str,
        container_id: &str,
        spec: &Value,
    ) -> Result<(), VmSandboxError> {
        let agent = self.agent();
        let mut sb = pb::CreateSandboxRequest::new();
        sb.sandbox_id = sandbox_id.into();
        sb.hostname = spec
            .get("hostname")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into();
        sb.shared_fs_tag = SHARED_FS_TAG.into();
        agent
            .create_sandbox(ctx(Some(CALL_TIMEOUT)), &sb)
            .map_err(agent_err("CreateSandbox"))?;
        let mut req = pb::CreateContainerRequest::new();
        req.container_id = container_id.into();
        req.oci_spec_json =
            serde_json::to_vec(spec).map_err(|e| VmSandboxError::Spec(e.to_string()))?;
        req.rootfs = ROOTFS_NAME.into();
        // The container's stdin is husk's (relayed by `wait_foreground`).
        req.stdin = true;
        agent
            .create_container(ctx(Some(CALL_TIMEOUT)), &req)
            .map_err(agent_err("CreateContainer"))?;
        let mut start = pb::StartContainerRequest::new();
        start.container_id = container_id.into();
        agent
            .start_container(ctx(Some(CALL_TIMEOUT)), &start)
            .map_err(agent_err("StartContainer"))?;
        Ok(())
    }

    /// Relays the container's stdout/stderr to ours, forwards `signals` to it, and
    /// returns its exit status (128+N if killed by signal N). Fails if the VM dies.
    pub fn wait_foreground(
        &mut self,
        container_id: &str,
        signals: Option<&ForwardedSignals>,
    ) -> Result<i32, VmSandboxError> {
        enum Event {
            Exited(Result<i32, VmSandboxError>),
            StreamDone,
        }
        let agent = self.agent();
        let (tx, rx) = mpsc::channel();
        for stderr in [false, true] {
            let agent = agent.clone();
            let tx = tx.clone();
            let id = container_id.to_string();
            std::thread::spawn(move || {
                relay(&agent, &id, stderr);
                let _ = tx.send(Event::StreamDone);
            });
        }
        {
            // Never joined: it may block reading a terminal after the container exits.
            let agent = agent.clone();
            let id = container_id.to_string();
            std::thread::spawn(move || relay_stdin(&agent, &id));
        }
        {
            let agent = agent.clone();
            let id = container_id.to_string();
            std::thread::spawn(move || {
                let mut w = pb::WaitProcessRequest::new();
                w.container_id = id;
                let r = agent
                    .wait_process(ctx(None), &w)
                    .map(|r| r.status)
                    .map_err(agent_err("WaitProcess"));
                let _ = tx.send(Event::Exited(r));
            });
        }
        let mut streams_open = 2;
        let status = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Event::Exited(Ok(status))) => break status,
                Ok(Event::Exited(Err(e))) => {
                    // A dead VMM drops the agent connection: name the real cause.
                    return Err(self.vm_gone_within(Duration::from_millis(500)).unwrap_or(e));
                }
                Ok(Event::StreamDone) => streams_open -= 1,
                Err(_) => {}
            }
            if let Some(err) = self.vm_gone("while the container ran") {
                return Err(err);
            }
            while let Some(sig) = signals.and_then(ForwardedSignals::pending) {
                tracing::debug!(?sig, "forwarding signal to the container");
                let mut s = pb::SignalProcessRequest::new();
                s.container_id = container_id.into();
                s.signal = sig as u32;
                if let Err(e) = agent.signal_process(ctx(Some(CALL_TIMEOUT)), &s) {
                    tracing::warn!(?sig, error = %e, "cannot forward signal");
                }
            }
        };
        // The process is gone; its output may still be in flight (or held open by
        // a child it left behind: do not wait for that forever).
        let deadline = Instant::now() + Duration::from_secs(2);
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

    /// Tears the sandbox down: DestroySandbox (the agent removes the containers and
    /// resets the VM), then stops the VM processes, unmounts and removes the state
    /// directory. Idempotent; also run on drop.
    pub fn destroy(&mut self) {
        if self.destroyed {
            return;
        }
        self.destroyed = true;
        let vm_alive = self.vm.as_mut().is_some_and(|vm| vm.vmm_exited().is_none());
        let mut grace = Duration::ZERO;
        if let (Some(client), true) = (self.client.take(), vm_alive) {
            let agent = AgentClient::new(client);
            let mut d = pb::DestroySandboxRequest::new();
            d.sandbox_id = "husk".into();
            match agent.destroy_sandbox(ctx(Some(Duration::from_secs(10))), &d) {
                Ok(_) => grace = STOP_GRACE,
                Err(e) => tracing::warn!(error = %e, "DestroySandbox failed; killing the VM"),
            }
        }
        if let Some(mut vm) = self.vm.take() {
            vm.stop(grace);
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            for log in [
                "console.log",
                "qemu.log",
                "virtiofsd.log",
                "vhost-device-vsock.log",
            ] {
                let text = std::fs::read(self.dir.join(log)).unwrap_or_default();
                tracing::debug!(
                    text = %String::from_utf8_lossy(&text),
                    "sandbox log {log}"
                );
            }
        }
        if self.mounted {
            if let Err(e) =
                nix::mount::umount2(&self.shared_rootfs, nix::mount::MntFlags::MNT_DETACH)
            {
                tracing::warn!(error = %e, path = %self.shared_rootfs.display(), "cannot unmount the shared rootfs");
            } else {
                self.mounted = false;
            }
        }
        if self.mounted {
            // Never recurse into a still-mounted rootfs.
            tracing::error!(dir = %self.dir.display(), "leaving the sandbox dir: rootfs still mounted");
            return;
        }
        if let Err(e) = remove_sandbox_dir(&self.dir) {
            tracing::warn!(error = %e, dir = %self.dir.display(), "cannot remove the sandbox dir");
        }
    }
}

impl Drop for VmSandbox {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// The file that marks a directory as a VM sandbox's state: `{"husk_pid", "pids"}`.
pub const MARKER: &str = "sandbox.json";

fn write_marker(dir: &Path, pids: &[u32]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{MARKER}.tmp"));
    let body = serde_json::json!({ "husk_pid": std::process::id(), "pids": pids });
    std::fs::write(&tmp, body.to_string())?;
    std::fs::rename(&tmp, dir.join(MARKER))
}

/// Whether `dir` is (or was) a VM sandbox's state directory.
pub fn is_sandbox_dir(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
}

/// Whether `pid` runs and its command line mentions `needle` (guards against pid reuse).
fn alive_mentioning(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// Removes a sandbox state directory without ever recursing into the rootfs bind
/// mount: the shared directory is removed with `remove_dir`, which fails on a
/// non-empty (still mounted) rootfs.
fn remove_sandbox_dir(dir: &Path) -> std::io::Result<()> {
    let shared = dir.join("shared");
    for d in [shared.join(ROOTFS_NAME), shared.clone()] {
        match std::fs::remove_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e} (still mounted?)", d.display()),
                ))
            }
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            return Err(std::io::Error::other(format!(
                "unexpected directory {} in a sandbox dir",
                entry.path().display()
            )));
        }
        std::fs::remove_file(entry.path())?;
    }
    std::fs::remove_dir(dir)
}

/// Cleans up what a sandbox whose husk died (e.g. SIGKILL) left in `dir`: its VM
/// processes, the rootfs bind mount, the state. If the husk running it is alive, that
/// is an error unless `force`, which kills it first.
pub fn remove_stale(dir: &Path, id: &str, force: bool) -> Result<(), VmSandboxError> {
    let io = |what: String| move |source| VmSandboxError::Io { what, source };
    let text = std::fs::read_to_string(dir.join(MARKER))
        .map_err(io(format!("read {}", dir.join(MARKER).display())))?;
    let marker: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let husk_pid = marker["husk_pid"].as_u64().unwrap_or(0) as u32;
    if husk_pid != 0 && husk_pid != std::process::id() && alive_mentioning(husk_pid, id) {
        if !force {
            return Err(VmSandboxError::Busy(format!(
                "it is running in vm isolation under husk pid {husk_pid}; signal that \
                 process or use --force"
            )));
        }
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(husk_pid as i32), Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive_mentioning(husk_pid, id) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let needle = dir.to_string_lossy().into_owned();
    let pids: Vec<u32> = marker["pids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_u64())
                .map(|p| p as u32)
                .collect()
        })
        .unwrap_or_default();
    for &pid in &pids {
        if alive_mentioning(pid, &needle) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| alive_mentioning(p, &needle)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let rootfs = dir.join("shared").join(ROOTFS_NAME);
    if rootfs.exists() {
        // EINVAL: not mounted (any more).
        match nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(source) => {
                return Err(VmSandboxError::Sys {
                    what: format!("unmount {}", rootfs.display()),
                    source,
                })
            }
        }
    }
    remove_sandbox_dir(dir).map_err(io(format!("remove {}", dir.display())))
}

/// Copies our stdin to the container's init until end of file, then closes its stdin.
fn relay_stdin(agent: &AgentClient, id: &str) {
    use std::io::Read;
    let mut buf = vec![0u8; 64 * 1024];
    let mut stdin = std::io::stdin().lock();
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        if n == 0 {
            break;
        }
        let mut data = &buf[..n];
        while !data.is_empty() {
            let mut w = pb::WriteStreamRequest::new();
            w.container_id = id.into();
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
    if let Err(e) = agent.close_stdin(ctx(Some(CALL_TIMEOUT)), &c) {
        tracing::debug!(error = %e, "CloseStdin");
    }
}

/// Copies one stream of the container's init to ours until end of stream.
fn relay(agent: &AgentClient, id: &str, stderr: bool) {
    loop {
        let mut r = pb::ReadStreamRequest::new();
        r.container_id = id.into();
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
        let written = if stderr {
            let mut out = std::io::stderr().lock();
            out.write_all(&data).and_then(|()| out.flush())
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(&data).and_then(|()| out.flush())
        };
        if written.is_err() {
            return;
        }
    }
}

/// The last `lines` lines of the guest console, framed for an error message.
pub fn console_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.trim_end().lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "----- guest console ({}, last {} lines) -----\n{}\n----- end of guest console -----",
        path.display(),
        all.len() - start,
        all[start..].join("\n")
    )
}

impl VmSandboxError {
    /// Whether the message already carries the guest console.
    pub fn has_console(&self) -> bool {
        matches!(
            self,
            VmSandboxError::AgentTimeout { .. } | VmSandboxError::VmExited { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn guest_spec_drops_host_only_parts() {
        let spec = json!({
            "ociVersion": "1.0.2",
            "hooks": {"prestart": [{"path": "/usr/bin/x"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/x/hosts"},
                {"destination": "/data", "source": "/srv", "options": ["rbind", "ro"]}
            ],
            "process": {"args": ["true"], "apparmorProfile": "docker-default"},
            "linux": {
                "cgroupsPath": "/docker/abc",
                "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}]
            }
        });
        let (out, dropped) = guest_spec(spec).unwrap();
        assert!(out.get("hooks").is_none());
        assert_eq!(out["mounts"].as_array().unwrap().len(), 1);
        assert!(out["linux"].get("cgroupsPath").is_none());
        assert!(out["linux"]["namespaces"][1].get("path").is_none());
        assert!(out["process"].get("apparmorProfile").is_none());
        assert_eq!(dropped.len(), 4, "{dropped:?}");
    }
}

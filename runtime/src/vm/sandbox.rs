//! VM isolation: one sandbox VM per container, booted by a [`Hypervisor`], with the
//! container's rootfs (and its bind-mount sources) shared over virtio-fs and the
//! container run by husk-agent, driven over ttrpc on hybrid vsock.
//!
//! The sandbox keeps everything of the VM (sockets, logs, the shared directory with
//! the rootfs bind-mounted into it) under one state directory and removes all of it,
//! and every VM process, when dropped — also after errors. A supervisor that must
//! leave the container's state for `husk state`/`husk delete` tears the VM down with
//! [`VmSandbox::shutdown`] and keeps the state files.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_agent_protocol::agent as pb;
use husk_agent_protocol::agent_ttrpc::{AgentClient, HealthClient};
use husk_agent_protocol::{hybrid_vsock, AGENT_VSOCK_PORT};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde_json::Value;

use super::guest_spec::{SharedMount, MOUNTS_DIR};
use super::network::{self, NetworkPlan};
use super::relay::{self, HostStdio, ProcessRef, RelayError};
use crate::hypervisor::{
    Accel, GuestArtifacts, Hypervisor, NetDevice, RunningVm, VmSpec, SHARED_FS_TAG, VSOCK_SOCKET,
};

/// How long the agent gets to answer after the VMM starts (TCG boots in ~1.5 s here;
/// a loaded machine can take much longer).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of ordinary agent calls.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
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
    /// Relaying the container's process failed.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// Carrying the container's network into the guest failed.
    #[error(transparent)]
    Network(#[from] super::network::NetworkError),
}

fn agent_err(call: &'static str) -> impl FnOnce(ttrpc::Error) -> VmSandboxError {
    move |e| match relay::agent_error(call, e) {
        RelayError::Agent { call, message } => VmSandboxError::Agent { call, message },
        other => VmSandboxError::Relay(other),
    }
}

use relay::ctx;

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

/// A sandbox state dir held open (`O_PATH`) so that its sockets are reached by a
/// short path, `/proc/self/fd/<fd>/<name>`, however long the directory's own path
/// is: a Unix socket path must fit in 107 bytes, and Docker's state dirs alone take
/// more than 100 (see [`crate::hypervisor::VSOCK_SOCKET`]).
pub struct SocketDir {
    fd: OwnedFd,
}

impl SocketDir {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        // std adds O_CLOEXEC; O_PATH ignores the access mode.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)?;
        Ok(Self { fd: file.into() })
    }

    /// The short path of `name` in the directory, valid while `self` lives.
    pub fn path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }
}

/// One booted sandbox VM with its agent connection.
pub struct VmSandbox {
    dir: PathBuf,
    shared_rootfs: PathBuf,
    mounted: bool,
    /// Bind-mount sources bound under `shared/mounts/`, unmounted at teardown.
    shared_mounts: Vec<PathBuf>,
    console: PathBuf,
    vm: Option<RunningVm>,
    client: Option<ttrpc::Client>,
    destroyed: bool,
    /// The container's network namespace wired to the VM's taps.
    network: Option<network::Attachment>,
    /// VMM start to first health check answered.
    pub boot_time: Duration,
    pub accel: Accel,
}

/// What [`VmSandbox::boot`] needs.
pub struct BootParams<'a> {
    pub hypervisor: &'a dyn Hypervisor,
    pub artifacts: GuestArtifacts,
    /// The sandbox's state directory (removed on drop). Must not exist unless
    /// `claimed`.
    pub dir: PathBuf,
    /// The caller made `dir` with [`claim_dir`] (the id is taken atomically before
    /// the boot starts).
    pub claimed: bool,
    /// The container's rootfs on the host, shared with the guest.
    pub rootfs: &'a Path,
    /// Host sources of the container's bind mounts, shared under `shared/mounts/`.
    pub mounts: &'a [SharedMount],
    pub memory_mib: u32,
    pub vcpus: u32,
    pub signals: Option<&'a ForwardedSignals>,
    /// The guest's network (the spec's network namespace).
    pub network: &'a NetworkPlan,
}

impl VmSandbox {
    /// Boots the VM and waits for its agent.
    pub fn boot(p: BootParams<'_>) -> Result<Self, VmSandboxError> {
        if !p.claimed {
            claim_dir(&p.dir)?;
        }
        let shared = p.dir.join("shared");
        let mut sandbox = Self {
            shared_rootfs: shared.join(ROOTFS_NAME),
            console: p.dir.join("console.log"),
            dir: p.dir,
            mounted: false,
            shared_mounts: Vec::new(),
            vm: None,
            client: None,
            destroyed: false,
            network: None,
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
        sandbox.share_mounts(&shared, p.mounts)?;
        match p.network {
            NetworkPlan::Carry(namespace) => {
                sandbox.network = Some(network::attach(namespace, &sandbox.dir)?);
            }
            NetworkPlan::Prepared => {
                // This process's own namespace, which the hooks filled.
                let own = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
                sandbox.network = Some(network::attach(&own, &sandbox.dir)?);
            }
            NetworkPlan::Isolated => {}
        }
        let net = sandbox
            .network
            .as_ref()
            .map(|n| {
                n.taps
                    .iter()
                    .map(|t| NetDevice {
                        tap_fd: t.fd.as_raw_fd(),
                        mac: t.mac,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let sockets =
            SocketDir::open(&sandbox.dir).map_err(io(format!("open {}", sandbox.dir.display())))?;
        let vsock = sockets.path(VSOCK_SOCKET);
        let spec = VmSpec {
            artifacts: p.artifacts,
            shared_dir: shared,
            state_dir: sandbox.dir.clone(),
            memory_mib: p.memory_mib,
            vcpus: p.vcpus,
            net,
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
        drop(sockets);
        sandbox.boot_time = started.elapsed();
        sandbox.client = Some(client);
        if let Some(network) = &sandbox.network {
            sandbox
                .agent()
                .configure_network(ctx(Some(CALL_TIMEOUT)), &network.request)
                .map_err(agent_err("ConfigureNetwork"))?;
        }
        tracing::info!(
            hypervisor = p.hypervisor.name(),
            accel = %sandbox.accel,
            boot_ms = sandbox.boot_time.as_millis() as u64,
            "guest agent ready"
        );
        Ok(sandbox)
    }

    /// Binds each bind-mount source to `shared/mounts/<name>` (read-only on the host
    /// for `ro` mounts: the guest kernel is not trusted to honour it alone).
    fn share_mounts(
        &mut self,
        shared: &Path,
        mounts: &[SharedMount],
    ) -> Result<(), VmSandboxError> {
        if mounts.is_empty() {
            return Ok(());
        }
        let dir = shared.join(MOUNTS_DIR);
        std::fs::create_dir(&dir).map_err(|source| VmSandboxError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
        for m in mounts {
            let target = dir.join(&m.name);
            let made = if m.is_dir {
                std::fs::create_dir(&target)
            } else {
                std::fs::File::create(&target).map(drop)
            };
            made.map_err(|source| VmSandboxError::Io {
                what: format!("create {}", target.display()),
                source,
            })?;
            nix::mount::mount(
                Some(&m.source),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|source| VmSandboxError::Sys {
                what: format!(
                    "share bind-mount source {} with the guest",
                    m.source.display()
                ),
                source,
            })?;
            self.shared_mounts.push(target.clone());
            if m.read_only {
                remount_read_only(&target)?;
            }
        }
        Ok(())
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
                        Ok(_) => {
                            check_protocol(&health)?;
                            return Ok(client);
                        }
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

    /// Whether the VMM has exited: then why, with the end of the guest console (for
    /// a long-lived owner such as the containerd shim, which polls its pod's VM).
    pub fn vmm_exited(&mut self) -> Option<String> {
        self.vm_gone("under its containers").map(|e| e.to_string())
    }

    /// A client of the sandbox's agent.
    pub fn agent(&self) -> AgentClient {
        AgentClient::new(self.client.clone().expect("connected sandbox"))
    }

    /// CreateSandbox (hostname, shared directory) and CreateContainer from a guest
    /// spec (see [`super::guest_spec::plan`]); the container's process waits for
    /// [`VmSandbox::start_container`]. Its stdin is relayed from the host.
    pub fn create_container(
        &mut self,
        container_id: &str,
        spec: &Value,
    ) -> Result<(), VmSandboxError> {
        let agent = self.agent();
        let mut sb = pb::CreateSandboxRequest::new();
        sb.sandbox_id = container_id.into();
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
        req.stdin = true;
        agent
            .create_container(ctx(Some(CALL_TIMEOUT)), &req)
            .map_err(agent_err("CreateContainer"))?;
        Ok(())
    }

    /// Lets a created container's process run.
    pub fn start_container(&mut self, container_id: &str) -> Result<(), VmSandboxError> {
        start_container(&self.agent(), container_id)
    }

    /// Relays a process of the sandbox (see [`relay::relay_process`]) and returns its
    /// exit status; a VMM that dies meanwhile is reported with the guest console.
    pub fn relay(
        &mut self,
        container_id: &str,
        exec_id: &str,
        stdio: HostStdio,
        signals: Option<&ForwardedSignals>,
    ) -> Result<i32, VmSandboxError> {
        let agent = self.agent();
        let process = ProcessRef {
            agent: &agent,
            container_id,
            exec_id,
        };
        let mut vm_gone = || {
            self.vm_gone("while the container ran")
                .map(|e| e.to_string())
        };
        Ok(relay::relay_process(
            &process,
            stdio,
            signals,
            &mut vm_gone,
        )?)
    }

    /// Tears the sandbox down: DestroySandbox (the agent removes the containers and
    /// resets the VM), then stops the VM processes, unmounts and removes the state
    /// directory. Idempotent; also run on drop.
    pub fn destroy(&mut self) {
        self.shutdown(&[]);
    }

    /// Like [`VmSandbox::destroy`], but the files named in `keep` stay in the state
    /// directory (with it): a stopped container's state until `husk delete`.
    pub fn shutdown(&mut self, keep: &[&str]) {
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
        if let Some(network) = self.network.take() {
            network.detach();
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
        self.shared_mounts.retain(|target| {
            match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) => false,
                Err(e) => {
                    tracing::warn!(error = %e, path = %target.display(), "cannot unmount a shared bind-mount source");
                    true
                }
            }
        });
        if self.mounted {
            if let Err(e) =
                nix::mount::umount2(&self.shared_rootfs, nix::mount::MntFlags::MNT_DETACH)
            {
                tracing::warn!(error = %e, path = %self.shared_rootfs.display(), "cannot unmount the shared rootfs");
            } else {
                self.mounted = false;
            }
        }
        if self.mounted || !self.shared_mounts.is_empty() {
            // Never recurse into a still-mounted rootfs or volume.
            tracing::error!(dir = %self.dir.display(), "leaving the sandbox dir: rootfs or a volume still mounted");
            return;
        }
        if let Err(e) = remove_sandbox_dir(&self.dir, keep) {
            tracing::warn!(error = %e, dir = %self.dir.display(), "cannot remove the sandbox dir");
        }
    }
}

impl Drop for VmSandbox {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Refuses an agent older than this husk: an initramfs built from an older agent
/// would fail later, call by call, with "method does not exist".
fn check_protocol(health: &HealthClient) -> Result<(), VmSandboxError> {
    let version = health
        .version(ctx(Some(CALL_TIMEOUT)), &pb::CheckRequest::new())
        .map_err(agent_err("Version"))?;
    if version.protocol_version < husk_agent_protocol::PROTOCOL_VERSION {
        return Err(VmSandboxError::Agent {
            call: "Version",
            message: format!(
                "the guest agent {} speaks protocol {}, this husk needs {}: the initramfs is \
                 stale; rebuild it (make initramfs) or point [vm] initramfs at a current one",
                version.agent_version,
                version.protocol_version,
                husk_agent_protocol::PROTOCOL_VERSION
            ),
        });
    }
    Ok(())
}

/// Creates a sandbox's state directory (mode 0700; failing if it exists, which makes
/// it the atomic claim of a container id) with its marker.
pub fn claim_dir(dir: &Path) -> Result<(), VmSandboxError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|source| VmSandboxError::Io {
            what: format!("create sandbox state dir {}", dir.display()),
            source,
        })?;
    // The marker first, before anything is mounted: `husk delete` recognises a
    // sandbox by it and never recurses into a directory holding the rootfs.
    write_marker(dir, &[]).map_err(|source| {
        // Nothing is mounted yet: the directory can simply go.
        let _ = std::fs::remove_dir_all(dir);
        VmSandboxError::Io {
            what: format!("write {}", dir.join(MARKER).display()),
            source,
        }
    })
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

/// The identity (device, inode) of a directory, to recognise processes working in it.
fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether `pid` is a live VM process of the sandbox in `dir`: VM processes run with
/// the state dir as working directory (their socket names are relative to it), so
/// neither a reused pid nor a process of another sandbox matches. A command line
/// naming the dir also counts (a sandbox booted by an older husk).
fn is_vm_process_of(pid: u32, dir: Option<(u64, u64)>, needle: &str) -> bool {
    let cwd = std::fs::metadata(format!("/proc/{pid}/cwd"))
        .ok()
        .map(|m| (m.dev(), m.ino()));
    (cwd.is_some() && cwd == dir) || alive_mentioning(pid, needle)
}

/// Removes a sandbox state directory without ever recursing into the rootfs bind
/// mount or a shared volume: those are removed with `remove_dir`/`remove_file`, which
/// fail on a still-mounted (non-empty or busy) target. Files named in `keep` stay,
/// and so does the directory then.
fn remove_sandbox_dir(dir: &Path, keep: &[&str]) -> std::io::Result<()> {
    let shared = dir.join("shared");
    let mounts = shared.join(MOUNTS_DIR);
    if let Ok(entries) = std::fs::read_dir(&mounts) {
        for entry in entries {
            let entry = entry?;
            let removed = if entry.file_type()?.is_dir() {
                std::fs::remove_dir(entry.path())
            } else {
                std::fs::remove_file(entry.path())
            };
            removed.map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("{}: {e} (still mounted?)", entry.path().display()),
                )
            })?;
        }
    }
    for d in [shared.join(ROOTFS_NAME), mounts, shared.clone()] {
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
        if keep.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            return Err(std::io::Error::other(format!(
                "unexpected directory {} in a sandbox dir",
                entry.path().display()
            )));
        }
        std::fs::remove_file(entry.path())?;
    }
    if keep.is_empty() {
        std::fs::remove_dir(dir)
    } else {
        Ok(())
    }
}

/// Removes a claimed sandbox directory in which nothing was mounted or started (a
/// create that failed early); like everything here it never recurses into mounts.
pub fn release_dir(dir: &Path) -> std::io::Result<()> {
    remove_sandbox_dir(dir, &[])
}

/// Makes a bind mount read-only (a bind mount takes MS_RDONLY only on remount).
fn remount_read_only(target: &Path) -> Result<(), VmSandboxError> {
    use nix::mount::MsFlags;
    nix::mount::mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|source| VmSandboxError::Sys {
        what: format!("make {} read-only", target.display()),
        source,
    })
}

/// StartContainer through any agent client.
pub fn start_container(agent: &AgentClient, container_id: &str) -> Result<(), VmSandboxError> {
    let mut start = pb::StartContainerRequest::new();
    start.container_id = container_id.into();
    agent
        .start_container(ctx(Some(CALL_TIMEOUT)), &start)
        .map_err(agent_err("StartContainer"))?;
    Ok(())
}

/// Connects to the agent of a running sandbox (from any husk process) through its
/// hybrid vsock socket.
pub fn connect_agent(dir: &Path) -> Result<AgentClient, VmSandboxError> {
    let vsock = dir.join(VSOCK_SOCKET);
    let failed = |e: &dyn std::fmt::Display| VmSandboxError::Agent {
        call: "connect",
        message: format!("{}: {e}", vsock.display()),
    };
    let sockets = SocketDir::open(dir).map_err(|e| failed(&e))?;
    let client = hybrid_vsock::connect_ttrpc(
        &sockets.path(VSOCK_SOCKET),
        AGENT_VSOCK_PORT,
        Duration::from_secs(10),
    )
    .map_err(|e| failed(&e))?;
    Ok(AgentClient::new(client))
}

/// The live host processes of the sandbox in `dir` that run its VM (the VMM and its
/// helpers), as recorded in its marker and still working in `dir`.
pub fn vm_host_pids(dir: &Path) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(dir.join(MARKER)) else {
        return Vec::new();
    };
    let marker: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let identity = dir_identity(dir);
    let needle = dir.to_string_lossy().into_owned();
    marker["pids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| u32::try_from(p.as_u64()?).ok())
                .filter(|&p| is_vm_process_of(p, identity, &needle))
                .collect()
        })
        .unwrap_or_default()
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
    let identity = dir_identity(dir);
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
        if is_vm_process_of(pid, identity, &needle) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| is_vm_process_of(p, identity, &needle)) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("shared").join(MOUNTS_DIR)) {
        for entry in entries.flatten() {
            match nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
                Err(source) => {
                    return Err(VmSandboxError::Sys {
                        what: format!("unmount {}", entry.path().display()),
                        source,
                    })
                }
            }
        }
    }
    network::detach_recorded(dir);
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
    remove_sandbox_dir(dir, &[]).map_err(io(format!("remove {}", dir.display())))
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
            VmSandboxError::AgentTimeout { .. }
                | VmSandboxError::VmExited { .. }
                | VmSandboxError::Relay(RelayError::VmGone(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory whose own path leaves no room in `sun_path` for a socket in it.
    fn long_dir() -> (tempfile::TempDir, PathBuf) {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("d".repeat(64)).join("e".repeat(64));
        std::fs::create_dir_all(&dir).unwrap();
        (base, dir)
    }

    #[test]
    fn sockets_beyond_sun_path_are_reached_through_the_dir() {
        let (_base, dir) = long_dir();
        assert!(std::os::unix::net::UnixListener::bind(dir.join(VSOCK_SOCKET)).is_err());
        let sockets = SocketDir::open(&dir).unwrap();
        let short = sockets.path(VSOCK_SOCKET);
        assert!(short.as_os_str().len() < 40, "{}", short.display());
        let listener = std::os::unix::net::UnixListener::bind(&short).unwrap();
        assert!(dir.join(VSOCK_SOCKET).exists());
        std::os::unix::net::UnixStream::connect(sockets.path(VSOCK_SOCKET)).unwrap();
        listener.accept().unwrap();
    }

    #[test]
    fn vm_processes_are_recognised_by_their_working_dir() {
        let (_base, dir) = long_dir();
        let other = tempfile::tempdir().unwrap();
        let mut inside = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&dir)
            .spawn()
            .unwrap();
        let mut outside = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(other.path())
            .spawn()
            .unwrap();
        write_marker(&dir, &[inside.id(), outside.id()]).unwrap();
        let found = vm_host_pids(&dir);
        for child in [&mut inside, &mut outside] {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(found, vec![inside.id()]);
        assert!(
            vm_host_pids(&dir).is_empty(),
            "dead processes are not listed"
        );
    }
}

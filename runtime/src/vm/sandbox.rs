//! The sandbox: one VM's whole life, for every front end (the CLI's supervisor, a
//! pod of one; the containerd shim, a pod of many).
//!
//! [`Sandbox::boot`] tells the story in order: claim the state directory, prepare
//! the host side (a network namespace for hooks to fill, the `prestart` and
//! `createRuntime` hooks), carry the network namespace (taps), start the VM through a
//! [`Hypervisor`], connect to its agent, configure the guest's network, create the
//! guest sandbox. [`Sandbox::add_container`] shares a container's rootfs and mounts
//! under a folder of its own (see [`super::share`]) and creates it in the guest;
//! [`Sandbox::remove_container`] undoes that. Everything else a front end does with
//! a container goes through [`Sandbox::agent`].
//!
//! One teardown, [`release`], serves a live sandbox ([`Sandbox::shutdown`], also on
//! drop) and one whose owner died ([`teardown_dir`], for `husk delete` and the shim's
//! `delete`). It acts only on what the sandbox recorded in its marker
//! (`sandbox.json`: the owner's pid, the VM's pids, every mount it made), never on
//! what it finds in the guest-writable share.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::agent::{Agent, AgentError, GuestAgent, GuestContainer, ProcessAddr};
use super::guest_spec::{HostHooks, SharedMount};
use super::host_cgroup::{self, HostCgroup, HostCgroupError, HostCgroupSpec};
use super::network::{self, NetworkPlan};
use super::relay::{self, HostStdio, RelayError};
use super::share::{self, ContainerShare, ShareError, StateDir, PRIVATE_DIR, SHARED_DIR};
use super::signals::ForwardedSignals;
use crate::hypervisor::{
    Accel, GuestArtifacts, Hypervisor, TapDevice, VmBootSpec, VmProcesses, SHARED_FS_TAG,
    VSOCK_SOCKET,
};

/// How long the agent gets to answer after the VMM starts (TCG boots in ~1.5 s here;
/// a loaded machine can take much longer).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// The VMM gets this long to exit by itself after DestroySandbox.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Lines of guest console quoted in errors (the whole log goes to the debug log).
const CONSOLE_LINES: usize = 40;
/// What husk-agent logs on the console once it serves.
const AGENT_READY: &[u8] = b"husk-agent ready on vsock";
/// The file that marks a directory as a VM sandbox's state (see [`SandboxRecord`]).
pub const MARKER: &str = "sandbox.json";
/// The logs a debug teardown copies into husk's own log.
const SANDBOX_LOGS: [&str; 5] = [
    "console.log",
    "husk-vmm.log",
    "qemu.log",
    "virtiofsd.log",
    "vhost-device-vsock.log",
];

/// Errors of a VM sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Hypervisor(#[from] crate::hypervisor::HypervisorError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The agent never answered.
    #[error("the guest agent did not answer within {timeout:?} ({last}){console}")]
    AgentTimeout {
        timeout: Duration,
        last: String,
        console: String,
    },
    /// The VMM exited while the sandbox still needed it.
    #[error("the VM exited unexpectedly ({status}) {when}{console}{vmm_log}")]
    VmExited {
        status: String,
        when: &'static str,
        console: String,
        /// The end of the VMM's own log: why it exited, when it says so itself.
        vmm_log: String,
    },
    /// An agent call failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The guest agent is older than this husk.
    #[error(
        "the guest agent {agent} speaks protocol {has}, this husk needs {needs}: the \
         initramfs is stale; rebuild it (make initramfs) or point [vm] initramfs at a \
         current one"
    )]
    StaleAgent { agent: String, has: u32, needs: u32 },
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
    Network(#[from] network::NetworkError),
    /// Sharing a container's files with the guest failed.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// The sandbox's host cgroup could not be made, entered or removed.
    #[error(transparent)]
    HostCgroup(#[from] HostCgroupError),
    /// The guest already has a container of that id.
    #[error("the sandbox already has a container {0}")]
    ContainerExists(String),
    /// A host hook (prestart, createRuntime) failed: the container is not created.
    #[error("{kind} hook {path} failed: {source}")]
    Hook {
        kind: &'static str,
        path: PathBuf,
        source: libcontainer::hooks::HookError,
    },
    /// The sandbox's own network namespace on the host could not be made.
    #[error("cannot give the sandbox its own network namespace on the host: {0}")]
    NetworkNamespace(nix::Error),
}

impl SandboxError {
    /// Whether the message already carries the guest console.
    pub fn has_console(&self) -> bool {
        matches!(
            self,
            SandboxError::AgentTimeout { .. }
                | SandboxError::VmExited { .. }
                | SandboxError::Relay(RelayError::VmGone(_))
        )
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// What a sandbox records about itself, in its marker, for whoever tears it down.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// The husk process that owns the sandbox (supervisor, shim).
    pub husk_pid: u32,
    /// The VM's host processes, the VMM first.
    #[serde(default)]
    pub pids: Vec<u32>,
    /// Every mount made in the share, relative to the state dir, in order.
    #[serde(default)]
    pub mounts: Vec<PathBuf>,
    /// The containers' folders in the share (`c/<guest id>`).
    #[serde(default)]
    pub folders: Vec<String>,
    /// The host cgroup the VM processes run in (removed at teardown).
    #[serde(default)]
    pub cgroup: Option<HostCgroupSpec>,
}

impl SandboxRecord {
    fn store(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!("{MARKER}.tmp"));
        let body = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, dir.join(MARKER))
    }

    /// The record in `dir`, if it has one husk wrote.
    pub fn load(dir: &Path) -> Option<Self> {
        let text = std::fs::read(dir.join(MARKER)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// Connects to a sandbox's agent. The real one is [`GuestAgentConnector`]; tests
/// pass their own.
pub trait AgentConnector {
    fn connect(&self, socket: &Path, timeout: Duration) -> Result<Arc<dyn Agent>, AgentError>;
}

/// Connects to husk-agent over the sandbox's hybrid vsock socket.
pub struct GuestAgentConnector;

impl AgentConnector for GuestAgentConnector {
    fn connect(&self, socket: &Path, timeout: Duration) -> Result<Arc<dyn Agent>, AgentError> {
        Ok(Arc::new(GuestAgent::connect_within(socket, timeout)?))
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

/// What runs on the host before the VM boots, in the runtime's namespaces as runc
/// does it: the spec's `prestart` and `createRuntime` hooks, with the `creating`
/// state of container `id` on stdin.
pub struct HostSetup<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub annotations: Option<&'a HashMap<String, String>>,
    pub hooks: &'a HostHooks,
}

/// What [`Sandbox::boot`] needs.
pub struct BootParams<'a> {
    pub hypervisor: &'a dyn Hypervisor,
    pub connector: &'a dyn AgentConnector,
    pub artifacts: GuestArtifacts,
    /// The sandbox's state directory (removed at teardown). Must not exist unless
    /// `claimed`.
    pub dir: PathBuf,
    /// The caller made `dir` with [`claim_dir`] (the id is taken atomically before
    /// the boot starts).
    pub claimed: bool,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Forwarded signals: one arriving during the boot stops it.
    pub signals: Option<&'a ForwardedSignals>,
    /// The guest's network (the first container's network namespace).
    pub network: &'a NetworkPlan,
    /// Hooks to run on the host first.
    pub host_setup: Option<HostSetup<'a>>,
    /// The guest sandbox's id and hostname (CreateSandbox).
    pub sandbox_id: &'a str,
    pub hostname: &'a str,
    /// The host cgroup that the booting process enters before the VM starts, so that
    /// every VM process is born in it (see [`super::host_cgroup`]).
    pub host_cgroup: Option<HostCgroupSpec>,
}

/// A container to add to a running sandbox.
pub struct NewContainer<'a> {
    /// Its id in the guest (see [`super::guest_spec::guest_container_id`]).
    pub guest_id: &'a str,
    /// Its rootfs on the host.
    pub rootfs: &'a Path,
    /// Host sources of its bind mounts.
    pub mounts: &'a [SharedMount],
    /// The guest spec (see [`super::guest_spec::plan`], made for this guest id).
    pub spec: &'a Value,
    /// Keep its stdin open for the host to write.
    pub stdin: bool,
}

/// One booted sandbox VM with its agent and containers.
pub struct Sandbox {
    dir: PathBuf,
    state_dir: StateDir,
    console: PathBuf,
    vm: Option<VmProcesses>,
    agent: Option<Arc<dyn Agent>>,
    sandbox_id: String,
    /// The container's network namespace wired to the VM's taps.
    network: Option<network::Attachment>,
    containers: HashMap<String, ContainerShare>,
    record: SandboxRecord,
    /// The host cgroup this process entered for the VM.
    cgroup: Option<HostCgroup>,
    destroyed: bool,
    /// VMM start to first health check answered.
    pub boot_time: Duration,
    pub accel: Accel,
}

impl Sandbox {
    /// Boots the VM, waits for its agent and creates the guest sandbox. On failure
    /// everything made is undone (dropping the half-made sandbox tears it down).
    pub fn boot(p: BootParams<'_>) -> Result<Self, SandboxError> {
        if !p.claimed {
            claim_dir(&p.dir)?;
        }
        let state_dir = match StateDir::open(&p.dir) {
            Ok(s) => s,
            Err(e) => {
                let _ = release_dir(&p.dir);
                return Err(e.into());
            }
        };
        let mut sandbox = Self {
            console: p.dir.join("console.log"),
            state_dir,
            dir: p.dir,
            vm: None,
            agent: None,
            sandbox_id: p.sandbox_id.to_string(),
            network: None,
            containers: HashMap::new(),
            record: SandboxRecord {
                husk_pid: std::process::id(),
                ..Default::default()
            },
            cgroup: None,
            destroyed: false,
            boot_time: Duration::ZERO,
            accel: p.hypervisor.accel(),
        };
        share::prepare_share(&sandbox.state_dir)?;
        if let Some(spec) = p.host_cgroup {
            // Recorded first: a crash inside leaves it for the teardown to remove.
            sandbox.record.cgroup = Some(spec.clone());
            sandbox.store_record()?;
            let limits = host_cgroup::sandbox_limits(p.memory_mib, p.vcpus, sandbox.accel);
            sandbox.cgroup = Some(HostCgroup::enter(spec, &limits)?);
        }
        if let Some(setup) = &p.host_setup {
            prepare_host_side(setup, p.network)?;
        }
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
                    .map(|t| TapDevice {
                        tap_fd: t.fd.as_raw_fd(),
                        mac: t.mac,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let sockets =
            SocketDir::open(&sandbox.dir).map_err(io(format!("open {}", sandbox.dir.display())))?;
        let spec = VmBootSpec {
            artifacts: p.artifacts,
            shared_dir: sandbox.dir.join(SHARED_DIR),
            state_dir: sandbox.dir.clone(),
            memory_mib: p.memory_mib,
            vcpus: p.vcpus,
            net,
            cgroup: None,
        };
        let started = Instant::now();
        let vm = p.hypervisor.start(&spec)?;
        sandbox.record.pids = vm.pids();
        sandbox.vm = Some(vm);
        sandbox.store_record()?;
        let agent =
            sandbox.connect(p.connector, &sockets.path(VSOCK_SOCKET), started, p.signals)?;
        drop(sockets);
        sandbox.boot_time = started.elapsed();
        if let Some(network) = &sandbox.network {
            agent.configure_network(&network.guest)?;
        }
        agent.create_sandbox(p.sandbox_id, p.hostname, SHARED_FS_TAG)?;
        sandbox.agent = Some(agent);
        tracing::info!(
            hypervisor = p.hypervisor.name(),
            accel = %sandbox.accel,
            boot_ms = sandbox.boot_time.as_millis() as u64,
            "guest agent ready"
        );
        Ok(sandbox)
    }

    fn store_record(&self) -> Result<(), SandboxError> {
        self.record
            .store(&self.dir)
            .map_err(io(format!("write {}", self.dir.join(MARKER).display())))
    }

    /// Shares a container's rootfs and mounts under its own folder and creates it in
    /// the guest; its process waits for StartContainer. On failure nothing of it is
    /// left.
    pub fn add_container(&mut self, c: NewContainer<'_>) -> Result<(), SandboxError> {
        if self.containers.contains_key(c.guest_id) {
            return Err(SandboxError::ContainerExists(c.guest_id.to_string()));
        }
        let agent = self.agent().clone();
        let before = self.record.mounts.clone();
        self.record
            .folders
            .push(share::container_folder(c.guest_id));
        let (dir, record) = (&self.dir, &mut self.record);
        let mut write_record = |mounts: &[PathBuf]| {
            record.mounts = before.iter().chain(mounts).cloned().collect();
            record.store(dir)
        };
        // `root.readonly` holds on the host side too: the guest kernel is not trusted
        // to honour it.
        let read_only_rootfs = c
            .spec
            .pointer("/root/readonly")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let shared = share::share_container(
            &self.state_dir,
            c.guest_id,
            c.rootfs,
            read_only_rootfs,
            c.mounts,
            &mut write_record,
        );
        let shared = match shared {
            Ok(s) => s,
            Err(e) => {
                self.forget_folder(c.guest_id);
                if let Err(err) = self.store_record() {
                    tracing::warn!(error = %err, "cannot update the sandbox record");
                }
                return Err(e.into());
            }
        };
        let spec_json = serde_json::to_vec(c.spec).map_err(|e| SandboxError::Spec(e.to_string()));
        let created = spec_json.and_then(|json| {
            agent
                .create_container(&GuestContainer {
                    id: c.guest_id,
                    spec_json: &json,
                    rootfs: &shared.guest_rootfs(),
                    stdin: c.stdin,
                })
                .map_err(SandboxError::from)
        });
        self.containers.insert(c.guest_id.to_string(), shared);
        if let Err(e) = created {
            self.unshare(c.guest_id);
            return Err(e);
        }
        Ok(())
    }

    /// Removes a container from the guest and stops sharing its files.
    pub fn remove_container(&mut self, guest_id: &str) {
        if let Some(agent) = &self.agent {
            if let Err(e) = agent.remove_container(guest_id) {
                tracing::debug!(guest_id, error = %e, "RemoveContainer");
            }
        }
        self.unshare(guest_id);
    }

    fn unshare(&mut self, guest_id: &str) {
        let Some(shared) = self.containers.remove(guest_id) else {
            return;
        };
        let left = share::unshare_container(&self.state_dir, &shared);
        self.record
            .mounts
            .retain(|m| !shared.mounts.contains(m) || left.contains(m));
        if left.is_empty() {
            self.forget_folder(guest_id);
        } else {
            tracing::error!(
                guest_id,
                ?left,
                "a container's shared files are still mounted"
            );
        }
        if let Err(e) = self.store_record() {
            tracing::warn!(error = %e, "cannot update the sandbox record");
        }
    }

    fn forget_folder(&mut self, guest_id: &str) {
        let folder = share::container_folder(guest_id);
        self.record.folders.retain(|f| *f != folder);
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The guest agent (the sandbox is booted).
    pub fn agent(&self) -> &Arc<dyn Agent> {
        self.agent.as_ref().expect("a booted sandbox has an agent")
    }

    /// The pids of the VM's host processes, the VMM first.
    pub fn pids(&self) -> Vec<u32> {
        self.vm.as_ref().map(VmProcesses::pids).unwrap_or_default()
    }

    /// The VMM's host pid (0 before boot).
    pub fn vmm_pid(&self) -> u32 {
        self.pids().first().copied().unwrap_or(0)
    }

    /// The end of the guest console log so far (for error reports).
    pub fn console_log(&self) -> String {
        console_tail(&self.console, CONSOLE_LINES)
    }

    fn vm_gone(&mut self, when: &'static str) -> Option<SandboxError> {
        let status = self.vm.as_mut()?.vmm_exited()?;
        Some(SandboxError::VmExited {
            status: status.to_string(),
            when,
            console: format!("\n{}", self.console_log()),
            vmm_log: vmm_log_tails(&self.dir, VMM_LOG_LINES),
        })
    }

    /// Whether the VMM has exited: then why, with the end of the guest console (for
    /// a long-lived owner such as the containerd shim, which polls its pod's VM).
    pub fn vmm_exited(&mut self) -> Option<String> {
        self.vm_gone("under its containers").map(|e| e.to_string())
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
        connector: &dyn AgentConnector,
        vsock: &Path,
        started: Instant,
        signals: Option<&ForwardedSignals>,
    ) -> Result<Arc<dyn Agent>, SandboxError> {
        let mut last = String::from("no attempt");
        while started.elapsed() < AGENT_TIMEOUT {
            if let Some(err) = self.vm_gone("while booting") {
                return Err(err);
            }
            if let Some(sig) = signals.and_then(ForwardedSignals::pending) {
                return Err(SandboxError::Interrupted(sig));
            }
            if !self.agent_logged_ready() {
                last = "the agent has not logged ready on the console yet".into();
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            match connector.connect(vsock, Duration::from_secs(5)) {
                Ok(agent) => match agent.check() {
                    Ok(()) => {
                        check_protocol(agent.as_ref())?;
                        return Ok(agent);
                    }
                    Err(e) => last = format!("health check: {}", e.describe()),
                },
                Err(e) => last = e.describe(),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(SandboxError::AgentTimeout {
            timeout: AGENT_TIMEOUT,
            last,
            console: format!("\n{}", self.console_log()),
        })
    }

    /// Relays a process of the sandbox (see [`relay::relay_process`]) and returns its
    /// exit status; a VMM that dies meanwhile is reported with the guest console.
    pub fn relay(
        &mut self,
        process: &ProcessAddr,
        stdio: HostStdio,
        signals: Option<&ForwardedSignals>,
    ) -> Result<i32, SandboxError> {
        let agent = self.agent().clone();
        let mut vm_gone = || {
            self.vm_gone("while the container ran")
                .map(|e| e.to_string())
        };
        Ok(relay::relay_process(
            &agent,
            process,
            stdio,
            signals,
            &mut vm_gone,
        )?)
    }

    /// Tears the sandbox down: DestroySandbox (the agent removes the containers and
    /// resets the VM), then stops the VM processes, unshares everything and removes
    /// the state directory. Idempotent; also run on drop.
    pub fn destroy(&mut self) {
        self.shutdown(&[]);
    }

    /// Like [`Sandbox::destroy`], but the files named in `keep` stay in the state
    /// directory (with it): a stopped container's state until `husk delete`.
    pub fn shutdown(&mut self, keep: &[&str]) {
        if self.destroyed {
            return;
        }
        self.destroyed = true;
        let vm_alive = self.vm.as_mut().is_some_and(|vm| vm.vmm_exited().is_none());
        let mut grace = Duration::ZERO;
        if let (Some(agent), true) = (self.agent.take(), vm_alive) {
            match agent.destroy_sandbox(&self.sandbox_id) {
                Ok(()) => grace = STOP_GRACE,
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
            for log in SANDBOX_LOGS {
                let text = std::fs::read(self.dir.join(log)).unwrap_or_default();
                tracing::debug!(
                    text = %super::agent::escape_guest_text(&String::from_utf8_lossy(&text)),
                    "sandbox log {log}"
                );
            }
        }
        self.containers.clear();
        if let Some(cgroup) = self.cgroup.take() {
            match cgroup.leave_and_remove() {
                Ok(()) => {
                    self.record.cgroup = None;
                    let _ = self.store_record();
                }
                Err(e) => tracing::warn!(error = %e, "cannot remove the sandbox's host cgroup"),
            }
        }
        if let Err(e) = release(&self.dir, &self.state_dir, &self.record, keep) {
            tracing::warn!(error = %e, dir = %self.dir.display(), "cannot remove the sandbox dir");
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Refuses an agent older than this husk: an initramfs built from an older agent
/// would fail later, call by call, with "method does not exist".
fn check_protocol(agent: &dyn Agent) -> Result<(), SandboxError> {
    let version = agent.version()?;
    if version.protocol_version < husk_agent_protocol::PROTOCOL_VERSION {
        return Err(SandboxError::StaleAgent {
            agent: version.agent_version,
            has: version.protocol_version,
            needs: husk_agent_protocol::PROTOCOL_VERSION,
        });
    }
    Ok(())
}

/// For a network namespace that hooks prepare, this process (the container's
/// stand-in, whose pid the engine and the hooks see) moves into a new network
/// namespace; then the hooks run. Docker's `libnetwork-setkey` prestart hook moves
/// the container's veth into `/proc/<our pid>/ns/net` this way; the boot then
/// carries it. Must run on the main thread, whose namespace `/proc/<pid>/ns/net`
/// names.
fn prepare_host_side(setup: &HostSetup<'_>, network: &NetworkPlan) -> Result<(), SandboxError> {
    use libcontainer::container::{ContainerStatus, State};
    if *network == NetworkPlan::Prepared {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(SandboxError::NetworkNamespace)?;
    }
    if setup.hooks.is_empty() {
        return Ok(());
    }
    let mut state = State::new(
        setup.id,
        ContainerStatus::Creating,
        Some(std::process::id() as i32),
        setup.bundle.to_path_buf(),
    );
    state.annotations = setup.annotations.cloned();
    for (kind, list) in [
        ("prestart", &setup.hooks.prestart),
        ("createRuntime", &setup.hooks.create_runtime),
    ] {
        for hook in list {
            tracing::debug!(id = setup.id, kind, path = %hook.path().display(), "running host hook");
            libcontainer::hooks::run_hooks(
                Some(&vec![hook.clone()]),
                Some(&state),
                Some(setup.bundle),
                None,
                None,
            )
            .map_err(|source| SandboxError::Hook {
                kind,
                path: hook.path().clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Which container a `poststart` or `poststop` hook is told about.
pub struct HookSubject<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub annotations: Option<&'a HashMap<String, String>>,
    /// `running` for poststart, `stopped` for poststop.
    pub status: libcontainer::container::ContainerStatus,
    /// The supervisor, while it lives (the pid engines know the container by).
    pub pid: Option<i32>,
}

/// Runs `poststart` or `poststop` hooks on the host, in the bundle, with the
/// container's state on stdin. As the runtime spec says (and runc does), a failing
/// one is logged as a warning and the rest still run: the start or the delete has
/// happened. Returns the failures, for the caller to show.
pub fn run_post_hooks(
    kind: &'static str,
    hooks: &[oci_spec::runtime::Hook],
    subject: &HookSubject<'_>,
) -> Vec<String> {
    let mut state = libcontainer::container::State::new(
        subject.id,
        subject.status,
        subject.pid,
        subject.bundle.to_path_buf(),
    );
    state.annotations = subject.annotations.cloned();
    let mut failures = Vec::new();
    for hook in hooks {
        tracing::debug!(id = subject.id, kind, path = %hook.path().display(), "running host hook");
        if let Err(e) = libcontainer::hooks::run_hooks(
            Some(&vec![hook.clone()]),
            Some(&state),
            Some(subject.bundle),
            None,
            None,
        ) {
            let failure = format!("{kind} hook {}: {e}", hook.path().display());
            tracing::warn!(id = subject.id, "{failure}");
            failures.push(failure);
        }
    }
    failures
}

/// Creates a sandbox's state directory (mode 0700; failing if it exists, which makes
/// it the atomic claim of a container id) with its marker.
pub fn claim_dir(dir: &Path) -> Result<(), SandboxError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("create sandbox state dir {}", dir.display())))?;
    // The marker first, before anything is mounted: `husk delete` recognises a
    // sandbox by it.
    let record = SandboxRecord {
        husk_pid: std::process::id(),
        ..Default::default()
    };
    record.store(dir).map_err(|source| {
        // Nothing is mounted yet: the directory can simply go.
        let _ = std::fs::remove_dir_all(dir);
        SandboxError::Io {
            what: format!("write {}", dir.join(MARKER).display()),
            source,
        }
    })
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

/// The live host processes of the sandbox in `dir` that run its VM (the VMM and its
/// helpers), as recorded in its marker and still working in `dir`.
pub fn vm_host_pids(dir: &Path) -> Vec<u32> {
    let Some(record) = SandboxRecord::load(dir) else {
        return Vec::new();
    };
    let identity = dir_identity(dir);
    let needle = dir.to_string_lossy().into_owned();
    record
        .pids
        .into_iter()
        .filter(|&p| is_vm_process_of(p, identity, &needle))
        .collect()
}

/// The one teardown of a sandbox's host side, after its VM processes are gone:
/// unmounts and removes every recorded mount, the containers' folders and the share,
/// then the state files but those in `keep` (the directory goes too when `keep` is
/// empty). A mount that cannot be removed keeps the directory (never a recursive
/// delete into a mounted tree).
fn release(
    dir: &Path,
    state_dir: &StateDir,
    record: &SandboxRecord,
    keep: &[&str],
) -> Result<(), SandboxError> {
    let left = share::release_mounts(state_dir, &record.mounts);
    if !left.is_empty() {
        return Err(SandboxError::Busy(format!(
            "leaving the sandbox dir {}: still mounted: {left:?}",
            dir.display()
        )));
    }
    for folder in &record.folders {
        let base = Path::new(PRIVATE_DIR).join(folder);
        for d in [base.join(super::guest_spec::MOUNTS_DIR), base] {
            state_dir.remove(&d)?;
        }
    }
    share::release_share(state_dir, &record.folders)?;
    // husk-vmm's jail: mount points only (its mounts went with the VMM's namespace).
    crate::hypervisor::jail::remove(dir).map_err(io(format!(
        "remove {}",
        dir.join(crate::hypervisor::jail::JAIL_DIR).display()
    )))?;
    remove_state_files(dir, keep).map_err(io(format!("remove {}", dir.display())))
}

/// Removes the files of a state directory (host-only: the guest cannot write there)
/// but those named in `keep`, and the directory itself when `keep` is empty.
fn remove_state_files(dir: &Path, keep: &[&str]) -> std::io::Result<()> {
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
/// create that failed early).
pub fn release_dir(dir: &Path) -> Result<(), SandboxError> {
    let state_dir = StateDir::open(dir)?;
    let record = SandboxRecord::load(dir).unwrap_or_default();
    release(dir, &state_dir, &record, &[])
}

/// Connects to the agent of a running sandbox (from any husk process) through its
/// hybrid vsock socket.
pub fn connect_agent(dir: &Path) -> Result<Arc<dyn Agent>, SandboxError> {
    let sockets = SocketDir::open(dir).map_err(|e| {
        AgentError::local(
            super::agent::AgentCall::Connect,
            format!("{}: {e}", dir.join(VSOCK_SOCKET).display()),
        )
    })?;
    let agent = GuestAgent::connect(&sockets.path(VSOCK_SOCKET)).map_err(|mut e| {
        // Name the real path, not the descriptor's.
        e.message = e.message.replace(
            &sockets.path(VSOCK_SOCKET).display().to_string(),
            &dir.join(VSOCK_SOCKET).display().to_string(),
        );
        e
    })?;
    Ok(Arc::new(agent))
}

/// Tears down a sandbox whose owner is gone (a supervisor or shim that died, or a
/// stopped container's state): its VM processes, its network carrying, every
/// recorded mount, the state. If the husk owning it is alive (its pid recorded, its
/// command line naming `id`), that is an error unless `force`, which kills it first.
pub fn teardown_dir(dir: &Path, id: &str, force: bool) -> Result<(), SandboxError> {
    let record = SandboxRecord::load(dir).ok_or_else(|| SandboxError::Io {
        what: format!("read {}", dir.join(MARKER).display()),
        source: std::io::Error::other("missing or not written by husk"),
    })?;
    let owner = record.husk_pid;
    if owner != 0 && owner != std::process::id() && alive_mentioning(owner, id) {
        if !force {
            return Err(SandboxError::Busy(format!(
                "it is running in vm isolation under husk pid {owner}; signal that \
                 process or use --force"
            )));
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(owner as i32), Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive_mentioning(owner, id) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let needle = dir.to_string_lossy().into_owned();
    let identity = dir_identity(dir);
    for &pid in &record.pids {
        if is_vm_process_of(pid, identity, &needle) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while record
        .pids
        .iter()
        .any(|&p| is_vm_process_of(p, identity, &needle))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    network::detach_recorded(dir);
    // The owner may have recorded more since we read it.
    let record = SandboxRecord::load(dir).unwrap_or(record);
    if let Some(cgroup) = &record.cgroup {
        // Before the record goes: a cgroup still busy keeps it for a retry.
        remove_cgroup_when_empty(cgroup)?;
    }
    let state_dir = StateDir::open(dir)?;
    release(dir, &state_dir, &record, &[])
}

/// Removes a dead sandbox's host cgroup, giving its last processes a moment to go.
fn remove_cgroup_when_empty(cgroup: &HostCgroupSpec) -> Result<(), SandboxError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cgroup.remove() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The last `lines` lines of the guest console, framed for an error message (guest
/// text, escaped).
pub fn console_tail(path: &Path, lines: usize) -> String {
    let (shown, text) = last_lines(path, lines);
    format!(
        "----- guest console ({}, last {shown} lines) -----\n{text}\n----- end of guest console -----",
        path.display(),
    )
}

/// The VMM logs a state dir may hold (one per backend), quoted when the VMM dies.
const VMM_LOGS: [&str; 2] = ["husk-vmm.log", "qemu.log"];
/// Lines of the VMM's own log quoted in errors.
const VMM_LOG_LINES: usize = 20;
/// How much of the end of a log is read to quote its last lines.
const TAIL_BYTES: u64 = 64 * 1024;

/// The end of each non-empty VMM log in `dir`, each in its own frame, preceded by a
/// newline ("" when there is none): a VMM that refuses to start says why there
/// (a jail step, a missing device), not on the guest console.
fn vmm_log_tails(dir: &Path, lines: usize) -> String {
    let mut out = String::new();
    for name in VMM_LOGS {
        let path = dir.join(name);
        let (shown, text) = last_lines(&path, lines);
        if shown > 0 {
            out.push_str(&format!(
                "\n----- {name} ({}, last {shown} lines) -----\n{text}\n----- end of {name} -----",
                path.display()
            ));
        }
    }
    out
}

/// The last `lines` lines of the file at `path` (read from at most its last
/// [`TAIL_BYTES`]), escaped as guest text, and how many there are. The logs quoted
/// carry what the guest printed or made the VMM print.
fn last_lines(path: &Path, lines: usize) -> (usize, String) {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let from = len.saturating_sub(TAIL_BYTES);
        if file.seek(SeekFrom::Start(from)).is_ok() {
            let _ = file.take(TAIL_BYTES).read_to_end(&mut bytes);
        }
    }
    let text = super::agent::escape_guest_text(&String::from_utf8_lossy(&bytes));
    let all: Vec<&str> = text.trim_end().lines().collect();
    let start = all.len().saturating_sub(lines);
    (all.len() - start, all[start..].join("\n"))
}

#[cfg(test)]
mod tests;

//! The supervisor: the host process that stands in for a vm-isolated container's
//! init. It boots the sandbox VM, creates the container in the guest, relays the
//! container's stdio (or terminal) and signals, records its state, and exits with its
//! exit status — which is what engines wait for on the pid in the pid file.
//!
//! `husk create` claims the id, spawns a supervisor (`husk vm-supervise`, a hidden
//! subcommand) with the caller's stdio, and returns once the supervisor reports that
//! the container exists (or why it could not). A foreground `husk run` supervises
//! in-process. Other commands (`start`, `kill`, `exec`, …) talk to the guest agent
//! directly over the sandbox's hybrid vsock socket and to the state file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::container::ContainerStatus;

use super::agent::{Agent, ProcessAddr};
use super::guest_spec::{self, GuestPlan, GuestSpecError, VmSize};
use super::host_cgroup::HostCgroupSpec;
use super::relay::{HostPty, HostStdio};
use super::sandbox::{
    self, BootParams, GuestAgentConnector, HostSetup, NewContainer, Sandbox, SandboxError, MARKER,
};
use super::signals::ForwardedSignals;
use super::state::{self, VmContainerState, VmStateError, VmStatus, STATE_FILE};
use crate::bundle::Bundle;
use crate::config::Config;
use crate::hypervisor::{self, Backend, GuestArtifacts, Hypervisor, HypervisorError};

/// Exit status reported when the VM dies under a running container (as if killed).
pub const VM_LOST_STATUS: i32 = 137;
/// What the supervisor leaves in the state directory after the container stopped,
/// for `husk state` and for debugging until `husk delete`.
const KEPT_AFTER_STOP: [&str; 4] = [STATE_FILE, MARKER, "console.log", "supervisor.log"];

/// Errors of supervising a vm-isolated container.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Spec(#[from] GuestSpecError),
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    State(#[from] VmStateError),
    /// The bundle cannot be read or used.
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    /// The id names an existing container.
    #[error("container id {0} is already in use")]
    InUse(String),
    /// Stdio or terminal setup failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The supervisor process failed before the container existed.
    #[error("{0}")]
    Supervisor(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SupervisorError {
    let what = what.into();
    move |source| SupervisorError::Io { what, source }
}

/// Everything decided about a vm-isolated container before anything starts: the
/// guest plan, the VM's size, the backend and guest artifacts. Made the same way by
/// `husk create` (to fail early, with nothing created) and by the supervisor.
pub struct VmLaunch {
    pub id: String,
    pub guest_id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub plan: GuestPlan,
    pub size: VmSize,
    pub artifacts: GuestArtifacts,
    pub hypervisor: Box<dyn Hypervisor>,
    /// Why this backend (for logs and `--debug`).
    pub why: String,
    pub annotations: Option<HashMap<String, String>>,
    /// `process.terminal` of the spec.
    pub terminal: bool,
    /// The host cgroup the VM's processes run in (the spec's `cgroupsPath`).
    pub host_cgroup: HostCgroupSpec,
}

impl VmLaunch {
    /// Decides the rest from a loaded bundle.
    pub fn prepare(
        id: &str,
        bundle: &Bundle,
        config: &Config,
        backend: Backend,
        systemd_cgroup: bool,
    ) -> Result<Self, SupervisorError> {
        let size = guest_spec::vm_size(
            &bundle.json,
            config
                .vm
                .memory_mib
                .unwrap_or(hypervisor::DEFAULT_MEMORY_MIB),
            config.vm.vcpus.unwrap_or(hypervisor::DEFAULT_VCPUS),
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
        )?;
        let guest_id = guest_spec::guest_container_id(id);
        let plan = guest_spec::plan(bundle.json.clone(), &guest_id)?;
        let (hypervisor, why) = hypervisor::select(backend, &config.vm)?;
        let artifacts = GuestArtifacts::find(&config.vm)?;
        Ok(Self {
            guest_id,
            id: id.to_string(),
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            plan,
            size,
            artifacts,
            hypervisor,
            why,
            annotations: bundle.annotations().cloned(),
            terminal: bundle.terminal(),
            host_cgroup: HostCgroupSpec::for_container(&bundle.json, id, systemd_cgroup),
        })
    }

    /// The spec's hostname (the guest sandbox's).
    pub fn hostname(&self) -> &str {
        self.plan.spec["hostname"].as_str().unwrap_or_default()
    }

    /// The backend as recorded in the state (`qemu/tcg`).
    pub fn hypervisor_label(&self) -> String {
        format!("{}/{}", self.hypervisor.name(), self.hypervisor.accel())
    }

    /// Takes the id: creates `dir` (failing if the id is in use) with the marker and a
    /// `creating` state owned by `owner_pid` (a live husk at every moment).
    pub fn claim(&self, dir: &Path, owner_pid: i32) -> Result<(), SupervisorError> {
        if dir.exists() {
            return Err(SupervisorError::InUse(self.id.clone()));
        }
        sandbox::claim_dir(dir).map_err(|e| match e {
            SandboxError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                SupervisorError::InUse(self.id.clone())
            }
            other => other.into(),
        })?;
        let state = VmContainerState {
            id: self.id.clone(),
            guest_id: self.guest_id.clone(),
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            annotations: self.annotations.clone(),
            status: VmStatus::Creating,
            supervisor_pid: owner_pid,
            supervisor_start: state::process_start_time(owner_pid).unwrap_or(0),
            exit_status: None,
            hypervisor: self.hypervisor_label(),
            post_hooks: self.plan.host_hooks.post.clone(),
        };
        if let Err(e) = state::store(dir, &state) {
            let _ = std::fs::remove_dir_all(dir);
            return Err(e.into());
        }
        Ok(())
    }
}

/// How the supervisor connects the container's stdio.
pub enum SupervisorStdio {
    /// Our descriptors 0/1/2 (what the engine gave `husk create`, or the user's).
    Inherited,
    /// A terminal whose master goes to the engine's console socket.
    ConsoleSocket(PathBuf),
    /// A terminal bridged to our own stdio (a foreground `husk run` from a shell).
    OwnTerminal,
}

/// The pipe on which a supervisor tells `husk create` that the container exists
/// (`ok`) or why not (`error: …`).
pub struct ReadyPipe(File);

impl ReadyPipe {
    /// Takes ownership of an inherited descriptor.
    ///
    /// # Safety
    /// `fd` must be an open descriptor nothing else owns.
    pub unsafe fn from_raw_fd(fd: i32) -> Self {
        // SAFETY: the caller guarantees `fd` is open and unowned.
        Self(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Writes the report (`ok` or `error: …`) and closes the pipe.
    pub fn report(mut self, message: &str) -> std::io::Result<()> {
        self.0.write_all(message.as_bytes())
    }
}

/// `husk create`'s end: reads the supervisor's report.
pub fn read_ready(mut pipe: File) -> Result<(), SupervisorError> {
    let mut text = String::new();
    pipe.read_to_string(&mut text)
        .map_err(io("read the supervisor's report"))?;
    match text.strip_prefix("error: ") {
        None if text == "ok" => Ok(()),
        Some(message) => Err(SupervisorError::Supervisor(message.to_string())),
        None => Err(SupervisorError::Supervisor(
            "the sandbox supervisor exited before the container was created (see the log)".into(),
        )),
    }
}

/// What one supervision does.
pub struct Supervision {
    pub launch: VmLaunch,
    /// The claimed state directory.
    pub dir: PathBuf,
    pub stdio: SupervisorStdio,
    /// Report readiness here (detached create); `None` in a foreground run.
    pub ready: Option<ReadyPipe>,
    /// Start the container at once (foreground run) instead of waiting for `start`.
    pub start_now: bool,
    /// Leave the stopped container's state for `husk state`/`delete` (create/start
    /// lifecycle, `run --keep`) instead of removing everything.
    pub keep_state: bool,
}

/// Boots, creates, relays and tears down; returns the container's exit status.
/// Errors before the container exists go to the ready pipe too (and everything is
/// removed); errors after it are returned (the caller logs them) with the state
/// recorded as stopped.
pub fn supervise(s: Supervision, signals: &ForwardedSignals) -> Result<i32, SupervisorError> {
    let Supervision {
        launch,
        dir,
        stdio,
        ready,
        start_now,
        keep_state,
    } = s;
    let me = std::process::id() as i32;
    let claimed = state::update(&dir, &launch.id, |st| {
        st.supervisor_pid = me;
        st.supervisor_start = state::process_start_time(me).unwrap_or(0);
    });
    let setup = claimed
        .map_err(SupervisorError::from)
        .and_then(|_| boot_and_create(&launch, &dir, stdio, signals));
    let (mut sandbox, host_stdio, _raw_mode) = match setup {
        Ok(parts) => parts,
        Err(e) => {
            // The sandbox (if booted) was dropped: VM gone, dir removed. A bare
            // claimed dir may be left: remove it too.
            if dir.exists() {
                if let Err(err) = sandbox::release_dir(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %err, "cannot remove the sandbox dir");
                }
            }
            if let Some(ready) = ready {
                let _ = ready.report(&format!("error: {e}"));
            }
            return Err(e);
        }
    };
    let recorded = state::update(&dir, &launch.id, |st| st.status = VmStatus::Created);
    if let Err(e) = recorded {
        if let Some(ready) = ready {
            let _ = ready.report(&format!("error: {e}"));
        }
        sandbox.destroy();
        return Err(e.into());
    }
    if let Some(ready) = ready {
        if let Err(e) = ready.report("ok") {
            // Nobody waits for this container any more (the creating husk died).
            tracing::error!(id = %launch.id, error = %e, "cannot report to husk create; tearing down");
            sandbox.destroy();
            return Err(SupervisorError::Io {
                what: "report to husk create".into(),
                source: e,
            });
        }
    }
    tracing::info!(id = %launch.id, pids = ?sandbox.pids(), boot_ms = sandbox.boot_time.as_millis() as u64, "container created in its sandbox VM");

    let mut result = Ok(());
    if start_now {
        result = sandbox
            .agent()
            .start_container(&launch.guest_id)
            .map_err(|e| SupervisorError::Sandbox(e.into()))
            .and_then(|()| {
                state::update(&dir, &launch.id, |st| st.status = VmStatus::Running)
                    .map(drop)
                    .map_err(SupervisorError::from)
            });
        if result.is_ok() {
            sandbox::run_post_hooks(
                "poststart",
                &launch.plan.host_hooks.post.poststart,
                &hook_subject(&launch, ContainerStatus::Running),
            );
        }
    }
    let status = result.and_then(|()| {
        sandbox
            .relay(
                &ProcessAddr::init(&launch.guest_id),
                host_stdio,
                Some(signals),
            )
            .map_err(SupervisorError::from)
    });
    let exit_status = match &status {
        Ok(code) => *code,
        Err(_) => VM_LOST_STATUS,
    };
    if let Err(e) = state::update(&dir, &launch.id, |st| {
        st.status = VmStatus::Stopped;
        st.exit_status = Some(exit_status);
    }) {
        tracing::error!(id = %launch.id, error = %e, "cannot record the stopped state");
    }
    let status = status.map_err(|e| match e {
        // The VM-exited message carries the console already.
        SupervisorError::Sandbox(err) if !err.has_console() => {
            SupervisorError::Supervisor(format!("{err}\n{}", sandbox.console_log()))
        }
        other => other,
    });
    if keep_state {
        sandbox.shutdown(&KEPT_AFTER_STOP);
    } else {
        sandbox.destroy();
        // `run` without --keep deletes the container too: its poststop hooks now.
        sandbox::run_post_hooks(
            "poststop",
            &launch.plan.host_hooks.post.poststop,
            &hook_subject(&launch, ContainerStatus::Stopped),
        );
    }
    status
}

/// The container a post hook of `launch` is told about (the supervisor is this
/// process while it runs).
fn hook_subject(launch: &VmLaunch, status: ContainerStatus) -> sandbox::HookSubject<'_> {
    sandbox::HookSubject {
        id: &launch.id,
        bundle: &launch.bundle,
        annotations: launch.annotations.as_ref(),
        pid: (status == ContainerStatus::Running).then(|| std::process::id() as i32),
        status,
    }
}

/// An exec'd process to supervise (`husk exec`, foreground or detached).
pub struct ExecSupervision<'a> {
    /// The container's sandbox state directory.
    pub dir: &'a Path,
    pub state: &'a VmContainerState,
    pub exec_id: &'a str,
    /// OCI process JSON.
    pub process_json: &'a [u8],
    pub stdio: SupervisorStdio,
    pub ready: Option<ReadyPipe>,
}

/// Starts a process in a running vm container through its agent, relays it, and
/// returns its exit status.
pub fn supervise_exec(
    s: ExecSupervision<'_>,
    signals: &ForwardedSignals,
) -> Result<i32, SupervisorError> {
    let started = start_exec(&s);
    let (agent, host_stdio, _raw_mode) = match started {
        Ok(parts) => parts,
        Err(e) => {
            if let Some(ready) = s.ready {
                let _ = ready.report(&format!("error: {e}"));
            }
            return Err(e);
        }
    };
    if let Some(ready) = s.ready {
        ready.report("ok").map_err(io("report to husk exec"))?;
    }
    let process = ProcessAddr::exec(&s.state.guest_id, s.exec_id);
    let state = s.state.clone();
    let mut vm_gone = || {
        (!state.supervisor_alive())
            .then(|| format!("the sandbox VM of container {} stopped", state.id))
    };
    Ok(
        super::relay::relay_process(&agent, &process, host_stdio, Some(signals), &mut vm_gone)
            .map_err(SandboxError::from)?,
    )
}

type StartedExec = (std::sync::Arc<dyn Agent>, HostStdio, Option<RawMode>);

fn start_exec(s: &ExecSupervision<'_>) -> Result<StartedExec, SupervisorError> {
    let agent = sandbox::connect_agent(s.dir)?;
    // The terminal goes to the engine before the process starts writing to it.
    let (host_stdio, raw, pty) = terminal_stdio(&s.stdio)?;
    agent
        .exec_process(
            &ProcessAddr::exec(&s.state.guest_id, s.exec_id),
            s.process_json,
            true,
        )
        .map_err(SandboxError::from)?;
    drop(pty);
    Ok((agent, host_stdio, raw))
}

/// The host side of a process's stdio; for a console socket, the pty (kept until the
/// process runs so the master reaches the engine first).
fn terminal_stdio(
    stdio: &SupervisorStdio,
) -> Result<(HostStdio, Option<RawMode>, Option<HostPty>), SupervisorError> {
    Ok(match stdio {
        SupervisorStdio::Inherited => (HostStdio::Inherited, None, None),
        SupervisorStdio::ConsoleSocket(socket) => {
            let pty = HostPty::open().map_err(io("open a pseudo-terminal"))?;
            pty.send_master(socket)
                .map_err(io("send the terminal to the console socket"))?;
            let dup = |what| pty.slave.try_clone().map_err(io(what));
            (
                HostStdio::Terminal {
                    input: dup("dup the terminal")?,
                    output: dup("dup the terminal")?,
                    size_from: dup("dup the terminal")?,
                },
                None,
                Some(pty),
            )
        }
        SupervisorStdio::OwnTerminal => {
            let dup = |fd: std::os::fd::BorrowedFd<'_>, what: &'static str| {
                fd.try_clone_to_owned().map(File::from).map_err(io(what))
            };
            let stdin = std::io::stdin();
            let stdout = std::io::stdout();
            let raw = RawMode::enable(stdin.as_fd());
            (
                HostStdio::Terminal {
                    input: dup(stdin.as_fd(), "dup stdin")?,
                    output: dup(stdout.as_fd(), "dup stdout")?,
                    size_from: dup(stdin.as_fd(), "dup stdin")?,
                },
                raw,
                None,
            )
        }
    })
}

type Prepared = (Sandbox, HostStdio, Option<RawMode>);

/// The supervisor's pod of one: boots the sandbox (host hooks first) and adds the
/// container.
fn boot_and_create(
    launch: &VmLaunch,
    dir: &Path,
    stdio: SupervisorStdio,
    signals: &ForwardedSignals,
) -> Result<Prepared, SupervisorError> {
    tracing::info!(id = %launch.id, hypervisor = launch.hypervisor.name(), accel = %launch.hypervisor.accel(),
        reason = %launch.why, memory_mib = launch.size.memory_mib, vcpus = launch.size.vcpus,
        kernel = %launch.artifacts.kernel.display(), initramfs = %launch.artifacts.initramfs.display(),
        "booting sandbox VM");
    for what in &launch.plan.dropped {
        tracing::warn!(id = %launch.id, "vm isolation: dropped {what}");
    }
    let mut sandbox = Sandbox::boot(BootParams {
        hypervisor: launch.hypervisor.as_ref(),
        connector: &GuestAgentConnector,
        artifacts: launch.artifacts.clone(),
        dir: dir.to_path_buf(),
        claimed: true,
        memory_mib: launch.size.memory_mib,
        vcpus: launch.size.vcpus,
        signals: Some(signals),
        network: &launch.plan.network,
        host_setup: Some(HostSetup {
            id: &launch.id,
            bundle: &launch.bundle,
            annotations: launch.annotations.as_ref(),
            hooks: &launch.plan.host_hooks,
        }),
        sandbox_id: &launch.guest_id,
        hostname: launch.hostname(),
        host_cgroup: Some(launch.host_cgroup.clone()),
    })?;
    sandbox.add_container(NewContainer {
        guest_id: &launch.guest_id,
        rootfs: &launch.rootfs,
        mounts: &launch.plan.mounts,
        spec: &launch.plan.spec,
        stdin: true,
    })?;
    let (host_stdio, raw_mode, _pty) = terminal_stdio(&stdio)?;
    Ok((sandbox, host_stdio, raw_mode))
}

/// Our terminal in raw mode while a container terminal is bridged to it.
pub struct RawMode {
    fd: OwnedFd,
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    /// `None` when `fd` is not a terminal.
    pub fn enable(fd: std::os::fd::BorrowedFd<'_>) -> Option<Self> {
        use nix::sys::termios;
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, termios::SetArg::TCSANOW, &raw).ok()?;
        Some(Self {
            fd: fd.try_clone_to_owned().ok()?,
            saved,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ =
            nix::sys::termios::tcsetattr(&self.fd, nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reports() {
        let report = |text: &[u8]| {
            let (r, w) = nix::unistd::pipe().unwrap();
            let mut w = File::from(w);
            w.write_all(text).unwrap();
            drop(w);
            read_ready(File::from(r))
        };
        assert!(report(b"ok").is_ok());
        let err = report(b"error: no kernel").unwrap_err().to_string();
        assert_eq!(err, "no kernel");
        let err = report(b"").unwrap_err().to_string();
        assert!(
            err.contains("exited before the container was created"),
            "{err}"
        );
    }
}

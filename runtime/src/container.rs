//! A container whatever its isolation: the handle every `husk` command acts on, and
//! the lifecycle rules ("only a created container can be started") written once.
//!
//! Container isolation is libcontainer's container under husk's lock; vm isolation
//! is the container's state file in its sandbox directory plus the guest agent
//! reached over the sandbox's vsock socket (the supervisor owns the VM itself).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcgroups::common::{CgroupManager, ControllerOpt};
use libcontainer::container::ContainerStatus;
use nix::sys::signal::Signal;
use oci_spec::runtime::LinuxResources;

use crate::shared_kernel::{self, Access, LockedContainer, RuntimeState, SharedKernelError};
use crate::vm::agent::{Agent, ProcessAddr};
use crate::vm::sandbox::{self, SandboxError};
use crate::vm::state::{self, VmContainerState, VmStateError, VmStatus};

/// Lifecycle of a container, as the runtime spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }

    pub fn of_vm(status: VmStatus) -> Self {
        match status {
            VmStatus::Creating => Status::Creating,
            VmStatus::Created => Status::Created,
            VmStatus::Running => Status::Running,
            VmStatus::Paused => Status::Paused,
            VmStatus::Stopped => Status::Stopped,
        }
    }

    pub fn of_shared_kernel(status: ContainerStatus) -> Self {
        match status {
            ContainerStatus::Creating => Status::Creating,
            ContainerStatus::Created => Status::Created,
            ContainerStatus::Running => Status::Running,
            ContainerStatus::Paused => Status::Paused,
            ContainerStatus::Stopped => Status::Stopped,
        }
    }
}

/// What a command wants to do to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Start,
    /// `all`: every process of the container.
    Signal {
        all: bool,
    },
    Delete {
        force: bool,
    },
    Pause,
    Resume,
    Update,
    /// `ignore_paused`: exec into a paused container too (runc's flag).
    Exec {
        ignore_paused: bool,
    },
    Stats,
}

/// What the rules say about an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Do it.
    Proceed,
    /// Nothing to do, and no error (`kill --all` of a stopped container).
    Nothing,
}

/// Errors acting on a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The lifecycle rules refuse the operation in the container's status.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    SharedKernel(#[from] SharedKernelError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    State(#[from] VmStateError),
    #[error(transparent)]
    InvalidId(#[from] crate::container_id::ContainerIdError),
    #[error("cannot encode the resources: {0}")]
    Encode(serde_json::Error),
}

/// The lifecycle rules: whether `op` may act on container `id` in `status`. The
/// messages are the ones engines recognise (containerd treats "container not
/// running" from a kill as done).
pub fn check(id: &str, op: Operation, status: Status) -> Result<Verdict, ContainerError> {
    let refuse = |message: String| Err(ContainerError::Refused(message));
    let name = status.name();
    match op {
        Operation::Start if status != Status::Created => refuse(format!(
            "cannot start container {id}: it is {name}; only a created container can be started"
        )),
        Operation::Signal { all: true } if status == Status::Stopped => Ok(Verdict::Nothing),
        Operation::Signal { .. } if status == Status::Stopped => refuse(format!(
            "cannot signal container {id}: container not running"
        )),
        Operation::Delete { force: false }
            if !matches!(status, Status::Stopped | Status::Created) =>
        {
            refuse(format!(
                "cannot delete container {id}: it is {name}; stop it first or use --force"
            ))
        }
        Operation::Pause if status != Status::Running => {
            refuse(format!("cannot pause container {id}: it is {name}"))
        }
        Operation::Resume if status != Status::Paused => {
            refuse(format!("cannot resume container {id}: it is {name}"))
        }
        Operation::Update if status == Status::Stopped => {
            refuse(format!("cannot update container {id}: it is stopped"))
        }
        Operation::Exec { ignore_paused } => match status {
            Status::Created | Status::Running => Ok(Verdict::Proceed),
            Status::Paused if ignore_paused => Ok(Verdict::Proceed),
            _ => refuse(format!("cannot exec in container {id}: it is {name}")),
        },
        Operation::Stats if status == Status::Stopped => {
            refuse(format!("container {id} is not running"))
        }
        _ => Ok(Verdict::Proceed),
    }
}

/// A vm-isolated container: its sandbox directory and recorded state.
pub struct VmContainer {
    pub dir: PathBuf,
    pub state: VmContainerState,
}

impl VmContainer {
    pub fn status(&self) -> Status {
        Status::of_vm(self.state.effective_status())
    }

    fn agent(&self) -> Result<std::sync::Arc<dyn Agent>, ContainerError> {
        Ok(sandbox::connect_agent(&self.dir)?)
    }

    /// Waits up to `limit` for the supervisor to record the container stopped. A
    /// SIGKILL cannot be caught, but in vm isolation its effect reaches the host
    /// through the agent a moment later; runc's `kill` then `delete` works at once,
    /// and so must ours. Past the limit the kill has still been delivered.
    fn wait_stopped(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match state::load(&self.dir, &self.state.id) {
                Ok(now) => {
                    self.state = now;
                    if self.state.effective_status() == VmStatus::Stopped {
                        return;
                    }
                }
                // Deleted meanwhile (an engine's delete): nothing to wait for.
                Err(_) => return,
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(id = %self.state.id, ?limit, "killed, but not yet recorded stopped");
    }
}

/// How long `kill -s KILL` of a running vm container waits for it to be stopped.
const KILL_SETTLE: Duration = Duration::from_secs(10);

/// A container of either isolation.
pub enum Container {
    SharedKernel(LockedContainer),
    Vm(VmContainer),
}

/// The vm-isolated container `id` under `root`, if there is one.
pub fn lookup_vm(root: &Path, id: &str) -> Result<Option<VmContainer>, ContainerError> {
    crate::container_id::validate(id)?;
    let dir = shared_kernel::container_dir(root, id);
    if !state::exists(&dir) {
        return Ok(None);
    }
    let state = state::load(&dir, id)?;
    Ok(Some(VmContainer { dir, state }))
}

impl Container {
    /// The container `id` under `root` (a vm container's state file is looked for
    /// first); `access` is the lock a shared-kernel container is held with.
    pub fn open(root: &Path, id: &str, access: Access) -> Result<Self, ContainerError> {
        if let Some(vm) = lookup_vm(root, id)? {
            return Ok(Container::Vm(vm));
        }
        Ok(Container::SharedKernel(shared_kernel::open(
            root, id, access,
        )?))
    }

    pub fn id(&self) -> &str {
        match self {
            Container::SharedKernel(c) => c.id(),
            Container::Vm(vm) => &vm.state.id,
        }
    }

    pub fn status(&self) -> Status {
        match self {
            Container::SharedKernel(c) => Status::of_shared_kernel(c.status()),
            Container::Vm(vm) => Status::of_vm(vm.state.effective_status()),
        }
    }

    /// The state as `runc state` prints it.
    pub fn state(&self) -> RuntimeState {
        match self {
            Container::SharedKernel(c) => shared_kernel::runtime_state(c),
            Container::Vm(vm) => vm.state.runtime_state(),
        }
    }

    fn check(&self, op: Operation) -> Result<Verdict, ContainerError> {
        check(self.id(), op, self.status())
    }

    /// Lets a created container's process run.
    pub fn start(&mut self) -> Result<(), ContainerError> {
        self.check(Operation::Start)?;
        match self {
            Container::SharedKernel(c) => {
                let id = c.id().to_string();
                c.start()
                    .map_err(|e| SharedKernelError::libcontainer(&id, &e))?;
            }
            Container::Vm(vm) => {
                vm.agent()?
                    .start_container(&vm.state.guest_id)
                    .map_err(SandboxError::from)?;
                state::update(&vm.dir, &vm.state.id, |s| {
                    if s.status == VmStatus::Created {
                        s.status = VmStatus::Running;
                    }
                })?;
                let st = &vm.state;
                sandbox::run_post_hooks(
                    "poststart",
                    &st.post_hooks.poststart,
                    &sandbox::HookSubject {
                        id: &st.id,
                        bundle: &st.bundle,
                        annotations: st.annotations.as_ref(),
                        status: ContainerStatus::Running,
                        pid: Some(st.supervisor_pid),
                    },
                );
            }
        }
        Ok(())
    }

    /// Signals the container's init, or with `all` every process of it.
    pub fn kill(&mut self, signal: Signal, all: bool) -> Result<(), ContainerError> {
        if self.check(Operation::Signal { all })? == Verdict::Nothing {
            return Ok(());
        }
        match self {
            Container::SharedKernel(c) => {
                let id = c.id().to_string();
                c.kill(signal, all)
                    .map_err(|e| SharedKernelError::libcontainer(&id, &e))?;
            }
            Container::Vm(vm) => {
                vm.agent()?
                    .signal_process(&ProcessAddr::init(&vm.state.guest_id), signal as i32, all)
                    .map_err(SandboxError::from)?;
                if signal == Signal::SIGKILL && vm.status() == Status::Running {
                    vm.wait_stopped(KILL_SETTLE);
                }
            }
        }
        Ok(())
    }

    /// Deletes a stopped (or created) container; with `force` a running one too.
    pub fn delete(self, force: bool) -> Result<(), ContainerError> {
        let status = self.status();
        check(self.id(), Operation::Delete { force }, status)?;
        match self {
            Container::SharedKernel(mut c) => {
                let id = c.id().to_string();
                c.delete(force || status == Status::Created)
                    .map_err(|e| SharedKernelError::libcontainer(&id, &e))?;
            }
            // A created container has nothing to lose; a running one only with --force.
            Container::Vm(vm) => {
                sandbox::teardown_dir(&vm.dir, &vm.state.id, true)?;
                let st = &vm.state;
                sandbox::run_post_hooks(
                    "poststop",
                    &st.post_hooks.poststop,
                    &sandbox::HookSubject {
                        id: &st.id,
                        bundle: &st.bundle,
                        annotations: st.annotations.as_ref(),
                        status: ContainerStatus::Stopped,
                        pid: None,
                    },
                );
            }
        }
        Ok(())
    }

    /// Freezes every process of the container.
    pub fn pause(&mut self) -> Result<(), ContainerError> {
        self.set_paused(true)
    }

    /// Thaws a paused container.
    pub fn resume(&mut self) -> Result<(), ContainerError> {
        self.set_paused(false)
    }

    fn set_paused(&mut self, paused: bool) -> Result<(), ContainerError> {
        self.check(if paused {
            Operation::Pause
        } else {
            Operation::Resume
        })?;
        match self {
            Container::SharedKernel(c) => {
                let id = c.id().to_string();
                let done = if paused { c.pause() } else { c.resume() };
                done.map_err(|e| SharedKernelError::libcontainer(&id, &e))?;
            }
            Container::Vm(vm) => {
                let agent = vm.agent()?;
                let guest_id = &vm.state.guest_id;
                if paused {
                    agent.pause_container(guest_id)
                } else {
                    agent.resume_container(guest_id)
                }
                .map_err(SandboxError::from)?;
                state::update(&vm.dir, &vm.state.id, |s| {
                    s.status = if paused {
                        VmStatus::Paused
                    } else {
                        VmStatus::Running
                    }
                })?;
            }
        }
        Ok(())
    }

    /// Applies new resource limits (the container's cgroup on the host, or the
    /// guest's).
    pub fn update(&self, resources: &LinuxResources) -> Result<(), ContainerError> {
        self.check(Operation::Update)?;
        match self {
            Container::SharedKernel(c) => {
                let cgroup = shared_kernel::cgroup_manager(c)?;
                cgroup
                    .apply(&ControllerOpt {
                        resources,
                        disable_oom_killer: false,
                        oom_score_adj: None,
                        freezer_state: None,
                    })
                    .map_err(|err| SharedKernelError::Cgroup {
                        id: c.id().to_string(),
                        message: err.to_string(),
                    })?;
            }
            Container::Vm(vm) => {
                let json = serde_json::to_vec(resources).map_err(ContainerError::Encode)?;
                vm.agent()?
                    .update_resources(&vm.state.guest_id, &json)
                    .map_err(SandboxError::from)?;
            }
        }
        Ok(())
    }

    /// Resource statistics in libcgroups' shape (what `husk events --stats` prints
    /// and containerd's runc shim parses).
    pub fn stats(&self) -> Result<libcgroups::stats::Stats, ContainerError> {
        self.check(Operation::Stats)?;
        match self {
            Container::SharedKernel(c) => {
                let cgroup = shared_kernel::cgroup_manager(c)?;
                Ok(cgroup.stats().map_err(|err| SharedKernelError::Cgroup {
                    id: c.id().to_string(),
                    message: err.to_string(),
                })?)
            }
            Container::Vm(vm) => {
                let s = vm
                    .agent()?
                    .stats(&vm.state.guest_id)
                    .map_err(SandboxError::from)?;
                let mut stats = libcgroups::stats::Stats::default();
                stats.cpu.usage.usage_total = s.cpu_usage_usec.saturating_mul(1000);
                stats.memory.memory.usage = s.memory_usage_bytes;
                stats.memory.memory.limit = s.memory_limit_bytes;
                stats.pids.current = s.pids_current;
                Ok(stats)
            }
        }
    }

    /// The host processes that stand for the container: its cgroup's processes, or
    /// for a vm container its supervisor and VM processes (VMM, helpers). What `ps
    /// --format json` returns: its consumers (`docker top`) look the pids up among
    /// host processes and may signal them, so guest pids, which name unrelated host
    /// processes, are never returned.
    pub fn host_pids(&self) -> Result<Vec<i32>, ContainerError> {
        let mut pids = match self {
            Container::SharedKernel(c) => {
                let cgroup = shared_kernel::cgroup_manager(c)?;
                cgroup
                    .get_all_pids()
                    .map_err(|err| SharedKernelError::Cgroup {
                        id: c.id().to_string(),
                        message: err.to_string(),
                    })?
                    .iter()
                    .map(|pid| pid.as_raw())
                    .collect()
            }
            Container::Vm(_) if self.status() == Status::Stopped => Vec::new(),
            Container::Vm(vm) => std::iter::once(vm.state.supervisor_pid)
                .chain(
                    sandbox::vm_host_pids(&vm.dir)
                        .into_iter()
                        .filter_map(|p| i32::try_from(p).ok()),
                )
                .collect(),
        };
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Status; 5] = [
        Status::Creating,
        Status::Created,
        Status::Running,
        Status::Paused,
        Status::Stopped,
    ];

    fn allowed(op: Operation) -> Vec<Status> {
        ALL.into_iter()
            .filter(|&s| check("c1", op, s).is_ok())
            .collect()
    }

    #[test]
    fn each_operation_is_allowed_exactly_where_runc_allows_it() {
        use Status::*;
        assert_eq!(allowed(Operation::Start), [Created]);
        assert_eq!(
            allowed(Operation::Exec {
                ignore_paused: false
            }),
            [Created, Running]
        );
        assert_eq!(
            allowed(Operation::Exec {
                ignore_paused: true
            }),
            [Created, Running, Paused]
        );
        assert_eq!(allowed(Operation::Pause), [Running]);
        assert_eq!(allowed(Operation::Resume), [Paused]);
        assert_eq!(
            allowed(Operation::Delete { force: false }),
            [Created, Stopped]
        );
        assert_eq!(allowed(Operation::Delete { force: true }), ALL);
        assert_eq!(
            allowed(Operation::Update),
            [Creating, Created, Running, Paused]
        );
        assert_eq!(
            allowed(Operation::Stats),
            [Creating, Created, Running, Paused]
        );
        assert_eq!(
            allowed(Operation::Signal { all: false }),
            [Creating, Created, Running, Paused]
        );
        assert_eq!(allowed(Operation::Signal { all: true }), ALL);
        assert_eq!(
            check("c1", Operation::Signal { all: true }, Stopped).unwrap(),
            Verdict::Nothing
        );
    }

    #[test]
    fn refusals_say_what_engines_look_for() {
        let message = |op, status| check("web", op, status).unwrap_err().to_string();
        assert_eq!(
            message(Operation::Start, Status::Running),
            "cannot start container web: it is running; only a created container can be started"
        );
        assert_eq!(
            message(Operation::Signal { all: false }, Status::Stopped),
            "cannot signal container web: container not running"
        );
        assert_eq!(
            message(Operation::Delete { force: false }, Status::Running),
            "cannot delete container web: it is running; stop it first or use --force"
        );
        assert_eq!(
            message(
                Operation::Exec {
                    ignore_paused: false
                },
                Status::Paused
            ),
            "cannot exec in container web: it is paused"
        );
    }
}

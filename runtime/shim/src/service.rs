//! The containerd task service (shim API v2/v3) for one pod: each call is logged and
//! mapped onto the guest agent of the pod's VM.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse,
    StateRequest, StateResponse, StatsRequest, StatsResponse, Status as TaskStatus,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api::Empty, ExitSignal, Task, TtrpcContext};
use husk_runtime::vm::agent::{Agent, AgentError, ProcessAddr};
use husk_runtime::vm::guest_spec::guest_container_id;
use husk_runtime::vm::supervisor::VM_LOST_STATUS;
use ttrpc::Code;

use crate::pod::{NewContainer, PodVm};
use crate::process::{Process, Status, Stdio};

/// How often the service checks that the pod's VMM is still alive.
const VM_WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// The type containerd's `ctr task metrics` decodes.
const METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

/// A failed agent call as the task API's answer (INTERNAL: containerd shows the
/// message).
fn agent_failed(e: AgentError) -> ttrpc::Error {
    status(Code::INTERNAL, e.to_string())
}

/// Publishes task events to containerd.
pub struct Events {
    publisher: RemotePublisher,
    namespace: String,
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: String) -> Self {
        Self {
            publisher,
            namespace,
        }
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let context = ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64);
        if let Err(e) = self
            .publisher
            .publish(context, topic, &self.namespace, event)
        {
            tracing::warn!(topic, error = %e, "cannot publish the event");
        }
    }
}

struct Container {
    bundle: PathBuf,
    guest_id: String,
    agent: Arc<dyn Agent>,
    vmm_pid: u32,
    /// The VM's host processes (see [`crate::pod::Created::vm_pids`]).
    vm_pids: Vec<u32>,
    init: Arc<Process>,
    execs: HashMap<String, Arc<Process>>,
    paused: bool,
    /// containerd's rootfs mounts, mounted by us on `<bundle>/rootfs`.
    rootfs_mounted: bool,
}

impl Container {
    fn process(&self, exec_id: &str) -> ttrpc::Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| status(Code::NOT_FOUND, format!("exec {exec_id} does not exist")))
    }
}

/// The task service of one shim (one pod).
pub struct TaskService {
    events: Arc<Events>,
    pod: PodVm,
    containers: Arc<Mutex<HashMap<String, Container>>>,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    pub fn new(events: Events, pod: PodVm, exit: Arc<ExitSignal>) -> Self {
        let service = Self {
            events: Arc::new(events),
            pod,
            containers: Arc::default(),
            exit,
        };
        service.watch_vm();
        service
    }

    /// A VMM that dies takes every process of the pod with it: report them stopped
    /// (137) instead of waiting on an agent that will never answer.
    fn watch_vm(&self) {
        let (pod, containers, events) = (
            self.pod.clone(),
            self.containers.clone(),
            self.events.clone(),
        );
        std::thread::spawn(move || loop {
            std::thread::sleep(VM_WATCH_INTERVAL);
            if containers.lock().expect("containers lock").is_empty() {
                continue;
            }
            let Some(why) = pod.vmm_exited() else {
                continue;
            };
            let list = containers.lock().expect("containers lock");
            let mut reported = false;
            for (id, c) in list.iter() {
                let processes = std::iter::once((String::new(), &c.init))
                    .chain(c.execs.iter().map(|(e, p)| (e.clone(), p)));
                for (exec_id, p) in processes {
                    if p.status() == Status::Running && p.set_exited(VM_LOST_STATUS) {
                        reported = true;
                        publish_exit(&events, id, &exec_id, c.vmm_pid, p);
                    }
                }
            }
            if reported {
                tracing::error!("{why}");
            }
        });
    }

    fn with_container<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Container) -> ttrpc::Result<T>,
    ) -> ttrpc::Result<T> {
        let mut list = self.containers.lock().expect("containers lock");
        let c = list
            .get_mut(id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("container {id} does not exist")))?;
        f(c)
    }

    fn do_create(&self, req: &CreateTaskRequest) -> ttrpc::Result<CreateTaskResponse> {
        if self
            .containers
            .lock()
            .expect("containers lock")
            .contains_key(&req.id)
        {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let rootfs_mounted = mount_rootfs(req, &bundle)?;
        let created = self.pod.create(NewContainer {
            id: req.id.clone(),
            bundle: bundle.clone(),
            stdin: !req.stdin.is_empty(),
        });
        let created = match created {
            Ok(c) => c,
            Err(e) => {
                if rootfs_mounted {
                    unmount_rootfs(&bundle);
                }
                tracing::error!(id = %req.id, "create failed: {e}");
                return Err(status(Code::FAILED_PRECONDITION, e.to_string()));
            }
        };
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let init = Arc::new(Process::new(
            ProcessAddr::init(&created.guest_id),
            stdio,
            None,
        ));
        let pid = created.vmm_pid;
        self.containers.lock().expect("containers lock").insert(
            req.id.clone(),
            Container {
                bundle,
                guest_id: created.guest_id,
                agent: created.agent,
                vmm_pid: pid,
                vm_pids: created.vm_pids,
                init,
                execs: HashMap::new(),
                paused: false,
                rootfs_mounted,
            },
        );
        self.events.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        );
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn do_start(&self, req: &StartRequest) -> ttrpc::Result<StartResponse> {
        let (agent, process, pid) = self.with_container(&req.id, |c| {
            Ok((c.agent.clone(), c.process(&req.exec_id)?, c.vmm_pid))
        })?;
        if process.status() != Status::Created {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("process {} {} was started already", req.id, req.exec_id),
            ));
        }
        match &process.exec_spec {
            None => agent.start_container(&process.addr.container_id),
            Some(spec) => agent.exec_process(&process.addr, spec, !process.stdio.stdin.is_empty()),
        }
        .map_err(agent_failed)?;
        process.set_running();
        let (events, id, exec_id, p) = (
            self.events.clone(),
            req.id.clone(),
            req.exec_id.clone(),
            process.clone(),
        );
        process.relay(
            &agent,
            Box::new(move |code| {
                if p.set_exited(code) {
                    publish_exit(&events, &id, &exec_id, pid, &p);
                }
            }),
        );
        if req.exec_id.is_empty() {
            self.events.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
        } else {
            self.events.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
        }
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn do_delete(&self, req: &DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        if !req.exec_id.is_empty() {
            return self.with_container(&req.id, |c| {
                let p = c.process(&req.exec_id)?;
                if p.status() == Status::Running {
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("exec {} is still running", req.exec_id),
                    ));
                }
                c.execs.remove(&req.exec_id);
                Ok(delete_response(c.vmm_pid, &p))
            });
        }
        let c = {
            let mut list = self.containers.lock().expect("containers lock");
            let c = list.get(&req.id).ok_or_else(|| {
                status(
                    Code::NOT_FOUND,
                    format!("container {} does not exist", req.id),
                )
            })?;
            if c.init.status() == Status::Running {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is still running; kill it first", req.id),
                ));
            }
            list.remove(&req.id).expect("present")
        };
        self.pod.remove(&c.guest_id);
        if c.rootfs_mounted {
            unmount_rootfs(&c.bundle);
        }
        let last = self.containers.lock().expect("containers lock").is_empty();
        if last {
            // Nothing is left in the pod: the VM goes now, not at Shutdown.
            self.pod.shutdown();
        }
        let response = delete_response(c.vmm_pid, &c.init);
        self.events.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                pid: response.pid,
                exit_status: response.exit_status,
                exited_at: response.exited_at.clone(),
                id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(response)
    }

    fn do_exec(&self, req: &ExecProcessRequest) -> ttrpc::Result<()> {
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "exec without a process spec"))?;
        self.with_container(&req.id, |c| {
            if c.init.status() != Status::Running {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is not running", req.id),
                ));
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            let stdio = Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            let p = Process::new(
                ProcessAddr::exec(&c.guest_id, &guest_container_id(&req.exec_id)),
                stdio,
                Some(spec),
            );
            c.execs.insert(req.exec_id.clone(), Arc::new(p));
            Ok(())
        })?;
        self.events.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(())
    }

    fn do_stats(&self, req: &StatsRequest) -> ttrpc::Result<StatsResponse> {
        let (agent, guest_id) = self.agent_of(&req.id)?;
        let stats = agent.stats(&guest_id).map_err(agent_failed)?;
        let metrics = Metrics {
            pids: MessageField::some(PidsStat {
                current: stats.pids_current,
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage: MessageField::some(CPUUsage {
                    total: stats.cpu_usage_usec.saturating_mul(1000),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                usage: MessageField::some(MemoryEntry {
                    usage: stats.memory_usage_bytes,
                    limit: stats.memory_limit_bytes,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = metrics
            .write_to_bytes()
            .map_err(|e| status(Code::INTERNAL, format!("encode metrics: {e}")))?;
        Ok(StatsResponse {
            stats: MessageField::some(Any {
                type_url: METRICS_TYPE.into(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// The agent and guest id of a container.
    fn agent_of(&self, id: &str) -> ttrpc::Result<(Arc<dyn Agent>, String)> {
        self.with_container(id, |c| Ok((c.agent.clone(), c.guest_id.clone())))
    }
}

fn publish_exit(events: &Events, id: &str, exec_id: &str, pid: u32, p: &Process) {
    let exit = p.exit().expect("exited");
    events.publish(
        topics::TASK_EXIT_EVENT_TOPIC,
        Box::new(TaskExit {
            container_id: id.into(),
            id: if exec_id.is_empty() { id } else { exec_id }.into(),
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        }),
    );
}

fn delete_response(pid: u32, p: &Process) -> DeleteResponse {
    let exit = p.exit();
    DeleteResponse {
        pid,
        exit_status: exit.as_ref().map_or(0, |e| e.status),
        exited_at: MessageField::from_option(exit.map(|e| e.at)),
        ..Default::default()
    }
}

/// Mounts containerd's rootfs mounts (a snapshot) on `<bundle>/rootfs`, as the runc
/// shim does; returns whether anything was mounted.
fn mount_rootfs(req: &CreateTaskRequest, bundle: &Path) -> ttrpc::Result<bool> {
    if req.rootfs.is_empty() {
        return Ok(false);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target)
        .map_err(|e| status(Code::INTERNAL, format!("create {}: {e}", target.display())))?;
    for m in &req.rootfs {
        let fs_type = (!m.type_.is_empty()).then_some(m.type_.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        if let Err(e) = mount_one(fs_type, source, &m.options, &target) {
            unmount_rootfs(bundle);
            return Err(status(
                Code::INTERNAL,
                format!("mount the rootfs on {}: {e}", target.display()),
            ));
        }
    }
    Ok(true)
}

/// One of containerd's mounts, in this process. (The `containerd-shim` crate's
/// `mount_rootfs` forks and waits for the child through the crate's own reaper, which
/// this shim does not run: it would wait forever.)
fn mount_one(
    fs_type: Option<&str>,
    source: Option<&str>,
    options: &[String],
    target: &Path,
) -> nix::Result<()> {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        let (set, clear) = match option.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "suid" | "dev" | "exec" | "atime" | "defaults" => continue,
            other => {
                data.push(other);
                continue;
            }
        };
        flags = (flags | set) & !clear;
    }
    let data = (!data.is_empty()).then(|| data.join(","));
    nix::mount::mount(source, target, fs_type, flags, data.as_deref())?;
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        // A bind mount ignores MS_RDONLY until remounted.
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )?;
    }
    Ok(())
}

fn unmount_rootfs(bundle: &Path) {
    let target = bundle.join("rootfs");
    if let Err(e) = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(path = %target.display(), error = %e, "cannot unmount the rootfs");
    }
}

fn map_status(p: &Process, paused: bool) -> TaskStatus {
    match p.status() {
        Status::Created => TaskStatus::CREATED,
        Status::Running if paused => TaskStatus::PAUSED,
        Status::Running => TaskStatus::RUNNING,
        Status::Stopped => TaskStatus::STOPPED,
    }
}

fn log_call(ctx: &TtrpcContext, call: &str, id: &str) {
    tracing::info!(call, id, timeout_ns = ctx.timeout_nano, "task call");
}

impl Task for TaskService {
    fn state(&self, ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        log_call(ctx, "State", &req.id);
        self.with_container(&req.id, |c| {
            let p = c.process(&req.exec_id)?;
            let exit = p.exit();
            Ok(StateResponse {
                id: req.id.clone(),
                bundle: c.bundle.to_string_lossy().into_owned(),
                pid: c.vmm_pid,
                status: map_status(&p, c.paused).into(),
                stdin: p.stdio.stdin.clone(),
                stdout: p.stdio.stdout.clone(),
                stderr: p.stdio.stderr.clone(),
                terminal: p.stdio.terminal,
                exit_status: exit.as_ref().map_or(0, |e| e.status),
                exited_at: MessageField::from_option(exit.map(|e| e.at)),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            })
        })
    }

    fn create(
        &self,
        ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        log_call(ctx, "Create", &req.id);
        self.do_create(&req)
    }

    fn start(&self, ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        log_call(ctx, "Start", &req.id);
        self.do_start(&req)
    }

    fn delete(&self, ctx: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        log_call(ctx, "Delete", &req.id);
        self.do_delete(&req)
    }

    fn pids(&self, ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        log_call(ctx, "Pids", &req.id);
        // containerd reads these as host pids (it may signal them): the VM's live host
        // processes stand for the container, never the guest's pids (`husk ps` and
        // the agent list those).
        let pids = self.with_container(&req.id, |c| Ok(c.vm_pids.clone()))?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        log_call(ctx, "Pause", &req.id);
        let (agent, guest_id) = self.agent_of(&req.id)?;
        agent.pause_container(&guest_id).map_err(agent_failed)?;
        self.with_container(&req.id, |c| {
            c.paused = true;
            Ok(())
        })?;
        self.events.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn resume(&self, ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        log_call(ctx, "Resume", &req.id);
        let (agent, guest_id) = self.agent_of(&req.id)?;
        agent.resume_container(&guest_id).map_err(agent_failed)?;
        self.with_container(&req.id, |c| {
            c.paused = false;
            Ok(())
        })?;
        self.events.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn kill(&self, ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        log_call(ctx, "Kill", &req.id);
        let (agent, p) =
            self.with_container(&req.id, |c| Ok((c.agent.clone(), c.process(&req.exec_id)?)))?;
        if p.status() == Status::Stopped {
            return Err(status(Code::NOT_FOUND, "process already finished"));
        }
        let signal = i32::try_from(req.signal).map_err(|_| {
            status(
                Code::INVALID_ARGUMENT,
                format!("invalid signal {}", req.signal),
            )
        })?;
        agent
            .signal_process(&p.addr, signal, req.all)
            .map_err(agent_failed)?;
        Ok(Empty::new())
    }

    fn exec(&self, ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        log_call(ctx, "Exec", &req.id);
        self.do_exec(&req)?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        log_call(ctx, "ResizePty", &req.id);
        let (agent, p) =
            self.with_container(&req.id, |c| Ok((c.agent.clone(), c.process(&req.exec_id)?)))?;
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        agent
            .resize_tty(&p.addr, clamp(req.height), clamp(req.width))
            .map_err(agent_failed)?;
        Ok(Empty::new())
    }

    fn close_io(&self, ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        log_call(ctx, "CloseIO", &req.id);
        if req.stdin {
            let (agent, p) =
                self.with_container(&req.id, |c| Ok((c.agent.clone(), c.process(&req.exec_id)?)))?;
            if p.stdio.stdin.is_empty() {
                if p.status() != Status::Stopped {
                    agent.close_stdin(&p.addr).map_err(agent_failed)?;
                }
            } else {
                // The relay closes it once the fifo is drained.
                p.close_stdin_when_drained();
            }
        }
        Ok(Empty::new())
    }

    fn update(&self, ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        log_call(ctx, "Update", &req.id);
        let resources = req
            .resources
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "update without resources"))?;
        let (agent, guest_id) = self.agent_of(&req.id)?;
        agent
            .update_resources(&guest_id, &resources)
            .map_err(agent_failed)?;
        Ok(Empty::new())
    }

    fn wait(&self, ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        log_call(ctx, "Wait", &req.id);
        let p = self.with_container(&req.id, |c| c.process(&req.exec_id))?;
        let exit = p.wait();
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn stats(&self, ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        log_call(ctx, "Stats", &req.id);
        self.do_stats(&req)
    }

    fn connect(&self, ctx: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        log_call(ctx, "Connect", &req.id);
        let task_pid = self.with_container(&req.id, |c| Ok(c.vmm_pid)).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    fn shutdown(&self, ctx: &TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<Empty> {
        log_call(ctx, "Shutdown", &req.id);
        let empty = self.containers.lock().expect("containers lock").is_empty();
        if !empty && !req.now {
            return Ok(Empty::new());
        }
        self.pod.shutdown();
        self.exit.signal();
        Ok(Empty::new())
    }
}

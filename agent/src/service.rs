//! The ttrpc services. Each RPC method is a thin wrapper: log, validate, call a
//! `do_*` function that holds the logic (and is unit-tested without ttrpc), and map
//! its typed error to a ttrpc status.

use crate::container::{self, ContainerError, Containers, Stream};
use crate::validate::{self, ValidationError};
use husk_agent_protocol::agent::{self as pb, health_check_response::ServingStatus};
use husk_agent_protocol::agent_ttrpc;
use std::sync::Arc;
use std::time::Duration;
use ttrpc::{Code, TtrpcContext};

/// Default time RemoveContainer waits for a killed container.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

fn status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

/// The status code for a container error.
fn container_error_code(e: &ContainerError) -> Code {
    match e {
        ContainerError::Invalid(_) | ContainerError::Json { .. } => Code::INVALID_ARGUMENT,
        ContainerError::Unsupported(_) => Code::UNIMPLEMENTED,
        ContainerError::Exists(_) => Code::ALREADY_EXISTS,
        ContainerError::NotFound(_) => Code::NOT_FOUND,
        ContainerError::NoStream { .. } | ContainerError::NoProcess(_) => Code::FAILED_PRECONDITION,
        ContainerError::Io { .. }
        | ContainerError::Tty(_)
        | ContainerError::Cgroup(_)
        | ContainerError::Libcontainer(_) => Code::INTERNAL,
    }
}

impl From<ContainerError> for ttrpc::Error {
    fn from(e: ContainerError) -> Self {
        status(container_error_code(&e), e)
    }
}

impl From<crate::network::NetworkError> for ttrpc::Error {
    fn from(e: crate::network::NetworkError) -> Self {
        use crate::network::NetworkError;
        let code = match &e {
            NetworkError::Invalid(_) => Code::INVALID_ARGUMENT,
            NetworkError::NoDevice(_) => Code::FAILED_PRECONDITION,
            NetworkError::Netlink(_) => Code::INTERNAL,
        };
        status(code, e)
    }
}

fn invalid(e: ValidationError) -> ttrpc::Error {
    status(Code::INVALID_ARGUMENT, e)
}

/// Health and version.
pub struct HealthService;

impl HealthService {
    pub fn do_check() -> pb::HealthCheckResponse {
        let mut r = pb::HealthCheckResponse::new();
        r.status = ServingStatus::SERVING.into();
        r
    }

    pub fn do_version() -> pb::VersionCheckResponse {
        let mut r = pb::VersionCheckResponse::new();
        r.agent_version = env!("CARGO_PKG_VERSION").to_string();
        r.protocol_version = husk_agent_protocol::PROTOCOL_VERSION;
        r.kernel_release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        r
    }
}

impl agent_ttrpc::Health for HealthService {
    fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: pb::CheckRequest,
    ) -> ttrpc::Result<pb::HealthCheckResponse> {
        Ok(Self::do_check())
    }

    fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: pb::CheckRequest,
    ) -> ttrpc::Result<pb::VersionCheckResponse> {
        tracing::info!("version check");
        Ok(Self::do_version())
    }
}

/// Sandbox, containers, processes, stdio.
pub struct AgentService {
    containers: Arc<Containers>,
}

impl AgentService {
    pub fn new(containers: Arc<Containers>) -> Self {
        Self { containers }
    }

    /// Validates a (container id, exec id) process address.
    fn process_ids<'a>(
        container_id: &'a str,
        exec_id: &'a str,
    ) -> ttrpc::Result<(&'a str, &'a str)> {
        let id = validate::container_id(container_id).map_err(invalid)?;
        let exec = validate::exec_id(exec_id).map_err(invalid)?;
        Ok((id, exec))
    }

    pub fn do_create_container(&self, req: &pb::CreateContainerRequest) -> ttrpc::Result<()> {
        let params = container::validate_create(
            self.containers.paths(),
            &req.container_id,
            &req.oci_spec_json,
            &req.rootfs,
            req.stdin,
        )?;
        // libcontainer's init logs the cause of a failed create and returns only a
        // summary: the error carries what the guest logged meanwhile.
        let mark = crate::error_log::mark();
        self.containers.create(params).map_err(|e| {
            let message = crate::error_log::with_cause(crate::error_log::chain(&e), mark);
            status(container_error_code(&e), message)
        })?;
        Ok(())
    }

    pub fn do_read(&self, req: &pb::ReadStreamRequest, stream: Stream) -> ttrpc::Result<Vec<u8>> {
        let (id, exec) = Self::process_ids(&req.container_id, &req.exec_id)?;
        let len = validate::in_range("len", req.len.into(), 1, validate::MAX_IO_LEN as u64)
            .map_err(invalid)?;
        Ok(self.containers.read(id, exec, stream, len as usize)?)
    }

    pub fn do_signal(&self, req: &pb::SignalProcessRequest) -> ttrpc::Result<()> {
        let (id, exec) = Self::process_ids(&req.container_id, &req.exec_id)?;
        let sig = validate::in_range("signal", req.signal.into(), 1, 64).map_err(invalid)?;
        if req.all {
            return Ok(self.containers.signal_all(id, sig as i32)?);
        }
        Ok(self.containers.signal(id, exec, sig as i32)?)
    }

    pub fn do_list_processes(
        &self,
        req: &pb::ContainerRequest,
    ) -> ttrpc::Result<pb::ListProcessesResponse> {
        let id = validate::container_id(&req.container_id).map_err(invalid)?;
        let mut r = pb::ListProcessesResponse::new();
        for (pid, command) in self.containers.processes(id)? {
            let mut p = pb::ProcessInfo::new();
            p.pid = pid;
            p.command = command;
            r.processes.push(p);
        }
        Ok(r)
    }

    pub fn do_exec(&self, req: &pb::ExecProcessRequest) -> ttrpc::Result<()> {
        let id = validate::container_id(&req.container_id).map_err(invalid)?;
        if req.exec_id.is_empty() {
            return Err(status(Code::INVALID_ARGUMENT, "exec_id must not be empty"));
        }
        let exec = validate::exec_id(&req.exec_id).map_err(invalid)?;
        Ok(self
            .containers
            .exec(id, exec, &req.process_json, req.stdin)?)
    }
}

fn empty() -> pb::Empty {
    pb::Empty::new()
}

impl agent_ttrpc::Agent for AgentService {
    fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: pb::CreateSandboxRequest,
    ) -> ttrpc::Result<pb::Empty> {
        tracing::info!("CreateSandbox {:?}", req.sandbox_id);
        validate::container_id(&req.sandbox_id).map_err(invalid)?;
        if !req.hostname.is_empty() {
            if req.hostname.len() > 64 || validate::container_id(&req.hostname).is_err() {
                return Err(status(Code::INVALID_ARGUMENT, "invalid hostname"));
            }
            nix::unistd::sethostname(&req.hostname)
                .map_err(|e| status(Code::INTERNAL, format!("sethostname: {e}")))?;
        }
        if !req.shared_fs_tag.is_empty() {
            validate::container_id(&req.shared_fs_tag).map_err(invalid)?;
            let dir = self.containers.paths().shared.clone();
            std::fs::create_dir_all(&dir)
                .map_err(|e| status(Code::INTERNAL, format!("mkdir {}: {e}", dir.display())))?;
            // No nosuid or nodev here: the containers' volumes are binds of this
            // mount and must carry only the flags their spec asks for, as in
            // container isolation. (The host's side of the share is nosuid and
            // nodev: that is what protects the host.)
            nix::mount::mount(
                Some(req.shared_fs_tag.as_str()),
                &dir,
                Some("virtiofs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|e| {
                status(
                    Code::INTERNAL,
                    format!("mount virtiofs {}: {e}", req.shared_fs_tag),
                )
            })?;
        }
        Ok(empty())
    }

    fn configure_network(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ConfigureNetworkRequest,
    ) -> ttrpc::Result<pb::Empty> {
        let plan = crate::network::plan(&req)?;
        tracing::info!(
            "ConfigureNetwork: {} interfaces, {} routes",
            plan.interfaces.len(),
            plan.routes.len()
        );
        crate::network::apply(&plan)?;
        Ok(empty())
    }

    fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: pb::DestroySandboxRequest,
    ) -> ttrpc::Result<pb::Empty> {
        tracing::info!("DestroySandbox {:?}", req.sandbox_id);
        for id in self.containers.ids() {
            if let Err(e) = self.containers.remove(&id, REMOVE_TIMEOUT) {
                tracing::warn!("remove {id}: {e}");
            }
        }
        if std::process::id() == 1 {
            // Reply first, then leave the VM.
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                crate::init::leave_vm();
            });
        }
        Ok(empty())
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::CreateContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        tracing::info!("CreateContainer {:?}", req.container_id);
        self.do_create_container(&req)
            .inspect_err(|e| tracing::warn!("CreateContainer: {e:?}"))?;
        Ok(empty())
    }

    fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::StartContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        tracing::info!("StartContainer {:?}", req.container_id);
        let id = validate::container_id(&req.container_id).map_err(invalid)?;
        self.containers.start(id)?;
        Ok(empty())
    }

    fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::RemoveContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        tracing::info!("RemoveContainer {:?}", req.container_id);
        let id = validate::container_id(&req.container_id).map_err(invalid)?;
        let timeout = match validate::in_range("timeout_secs", req.timeout_secs.into(), 0, 3600)
            .map_err(invalid)?
        {
            0 => REMOVE_TIMEOUT,
            s => Duration::from_secs(s),
        };
        self.containers.remove(id, timeout)?;
        Ok(empty())
    }

    fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: pb::SignalProcessRequest,
    ) -> ttrpc::Result<pb::Empty> {
        tracing::info!("SignalProcess {:?} {}", req.container_id, req.signal);
        self.do_signal(&req)?;
        Ok(empty())
    }

    fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: pb::WaitProcessRequest,
    ) -> ttrpc::Result<pb::WaitProcessResponse> {
        let (id, exec) = Self::process_ids(&req.container_id, &req.exec_id)?;
        let code = self
            .containers
            .wait(id, exec, None)?
            .ok_or_else(|| status(Code::INTERNAL, "wait ended without status"))?;
        tracing::info!("WaitProcess {id}/{exec}: exited {code}");
        let mut r = pb::WaitProcessResponse::new();
        r.status = code;
        Ok(r)
    }

    fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ReadStreamRequest,
    ) -> ttrpc::Result<pb::ReadStreamResponse> {
        let mut r = pb::ReadStreamResponse::new();
        r.data = self.do_read(&req, Stream::Stdout)?;
        Ok(r)
    }

    fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ReadStreamRequest,
    ) -> ttrpc::Result<pb::ReadStreamResponse> {
        let mut r = pb::ReadStreamResponse::new();
        r.data = self.do_read(&req, Stream::Stderr)?;
        Ok(r)
    }

    fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: pb::WriteStreamRequest,
    ) -> ttrpc::Result<pb::WriteStreamResponse> {
        let (id, exec) = Self::process_ids(&req.container_id, &req.exec_id)?;
        validate::in_range(
            "data length",
            req.data.len() as u64,
            0,
            validate::MAX_IO_LEN as u64,
        )
        .map_err(invalid)?;
        let n = self.containers.write_stdin(id, exec, &req.data)?;
        let mut r = pb::WriteStreamResponse::new();
        r.len = n as u32;
        Ok(r)
    }

    fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: pb::CloseStdinRequest,
    ) -> ttrpc::Result<pb::Empty> {
        let (id, exec) = Self::process_ids(&req.container_id, &req.exec_id)?;
        self.containers.close_stdin(id, exec)?;
        Ok(empty())
    }

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ExecProcessRequest,
    ) -> ttrpc::Result<pb::Empty> {
        tracing::info!("ExecProcess {:?}/{:?}", req.container_id, req.exec_id);
        self.do_exec(&req)
            .inspect_err(|e| tracing::warn!("ExecProcess: {e:?}"))?;
        Ok(empty())
    }

    fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: pb::TtyWinResizeRequest,
    ) -> ttrpc::Result<pb::Empty> {
        let (id, exec) = Self::process_ids(&req.container_id, &req.exec_id)?;
        let rows =
            validate::in_range("row", req.row.into(), 1, u16::MAX.into()).map_err(invalid)?;
        let columns =
            validate::in_range("column", req.column.into(), 1, u16::MAX.into()).map_err(invalid)?;
        self.containers
            .resize(id, exec, rows as u16, columns as u16)?;
        Ok(empty())
    }

    fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::StatsContainerRequest,
    ) -> ttrpc::Result<pb::StatsContainerResponse> {
        let id = validate::container_id(&req.container_id).map_err(invalid)?;
        let s = self.containers.stats(id)?;
        let mut r = pb::StatsContainerResponse::new();
        r.cpu_usage_usec = s.cpu_usage_usec;
        r.memory_usage_bytes = s.memory_usage_bytes;
        r.memory_limit_bytes = s.memory_limit_bytes;
        r.pids_current = s.pids_current;
        Ok(r)
    }

    fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::UpdateContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        tracing::info!("UpdateContainer {:?}", req.container_id);
        let id = validate::container_id(&req.container_id).map_err(invalid)?;
        self.containers.update(id, &req.resources_json)?;
        Ok(empty())
    }

    fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        tracing::info!("PauseContainer {:?}", req.container_id);
        let id = validate::container_id(&req.container_id).map_err(invalid)?;
        self.containers.pause(id)?;
        Ok(empty())
    }

    fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        tracing::info!("ResumeContainer {:?}", req.container_id);
        let id = validate::container_id(&req.container_id).map_err(invalid)?;
        self.containers.resume(id)?;
        Ok(empty())
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ContainerRequest,
    ) -> ttrpc::Result<pb::ListProcessesResponse> {
        self.do_list_processes(&req)
    }

    fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        _req: pb::GetOomEventRequest,
    ) -> ttrpc::Result<pb::OomEvent> {
        let mut r = pb::OomEvent::new();
        r.container_id = self.containers.oom().next_event();
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::Paths;
    use crate::reaper::Reaper;

    fn service(dir: &std::path::Path) -> AgentService {
        let paths = Paths {
            state: dir.join("state"),
            bundles: dir.join("bundles"),
            shared: dir.join("shared"),
            consoles: dir.join("console"),
            no_pivot: false,
        };
        AgentService::new(Arc::new(Containers::new(
            paths,
            Arc::new(Reaper::default()),
            crate::oom::OomWatcher::start().unwrap(),
        )))
    }

    fn code(e: ttrpc::Error) -> Code {
        match e {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn health_and_version() {
        assert_eq!(
            HealthService::do_check().status.enum_value(),
            Ok(ServingStatus::SERVING)
        );
        let v = HealthService::do_version();
        assert_eq!(v.protocol_version, husk_agent_protocol::PROTOCOL_VERSION);
        assert!(!v.agent_version.is_empty());
    }

    #[test]
    fn malformed_requests_are_error_replies() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path());

        let mut req = pb::CreateContainerRequest::new();
        req.container_id = "bad/id".into();
        assert_eq!(
            code(s.do_create_container(&req).unwrap_err()),
            Code::INVALID_ARGUMENT
        );
        req.container_id = "c1".into();
        req.oci_spec_json = b"[1,2".to_vec();
        assert_eq!(
            code(s.do_create_container(&req).unwrap_err()),
            Code::INVALID_ARGUMENT
        );

        let mut read = pb::ReadStreamRequest::new();
        read.container_id = "c1".into();
        read.len = 0;
        assert_eq!(
            code(s.do_read(&read, Stream::Stdout).unwrap_err()),
            Code::INVALID_ARGUMENT
        );
        read.len = 2 << 20;
        assert_eq!(
            code(s.do_read(&read, Stream::Stdout).unwrap_err()),
            Code::INVALID_ARGUMENT
        );
        read.len = 10;
        assert_eq!(
            code(s.do_read(&read, Stream::Stdout).unwrap_err()),
            Code::NOT_FOUND
        );
        read.exec_id = "e/1".into();
        assert_eq!(
            code(s.do_read(&read, Stream::Stdout).unwrap_err()),
            Code::INVALID_ARGUMENT
        );

        let mut exec = pb::ExecProcessRequest::new();
        exec.container_id = "c1".into();
        assert_eq!(code(s.do_exec(&exec).unwrap_err()), Code::INVALID_ARGUMENT);
        exec.exec_id = "e1".into();
        exec.process_json = br#"{"user":{"uid":0,"gid":0},"args":["true"],"cwd":"/"}"#.to_vec();
        assert_eq!(code(s.do_exec(&exec).unwrap_err()), Code::NOT_FOUND);

        let mut sig = pb::SignalProcessRequest::new();
        sig.container_id = "c1".into();
        sig.signal = 0;
        assert_eq!(code(s.do_signal(&sig).unwrap_err()), Code::INVALID_ARGUMENT);
        sig.signal = 15;
        assert_eq!(code(s.do_signal(&sig).unwrap_err()), Code::NOT_FOUND);
        sig.all = true;
        assert_eq!(code(s.do_signal(&sig).unwrap_err()), Code::NOT_FOUND);
        sig.container_id = "../x".into();
        assert_eq!(code(s.do_signal(&sig).unwrap_err()), Code::INVALID_ARGUMENT);

        let mut list = pb::ContainerRequest::new();
        list.container_id = "c1".into();
        assert_eq!(
            code(s.do_list_processes(&list).unwrap_err()),
            Code::NOT_FOUND
        );
        list.container_id = String::new();
        assert_eq!(
            code(s.do_list_processes(&list).unwrap_err()),
            Code::INVALID_ARGUMENT
        );
    }
}

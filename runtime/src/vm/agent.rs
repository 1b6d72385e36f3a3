//! The host's client of husk-agent: one method per agent call, each call's timeout in
//! one table ([`AgentCall::timeout`]), one error type carrying the call, the status
//! code and the message. Protobuf requests are built here and nowhere else.
//!
//! Everything the agent answers comes from the guest, which may be hostile: replies
//! are plain values checked by their users, and guest text reaches the host's
//! terminals and logs only through [`escape_guest_text`].
//!
//! [`Agent`] is the seam the sandbox, the supervisor and the shim are written
//! against, so they can be unit-tested with a fake agent; [`GuestAgent`] is the real
//! one, over ttrpc on hybrid vsock.

use std::path::Path;
use std::time::Duration;

use husk_agent_protocol::agent as pb;
use husk_agent_protocol::agent_ttrpc::{AgentClient, HealthClient};
use husk_agent_protocol::{hybrid_vsock, AGENT_VSOCK_PORT};

/// Every agent call husk makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCall {
    Connect,
    Check,
    Version,
    CreateSandbox,
    DestroySandbox,
    ConfigureNetwork,
    CreateContainer,
    StartContainer,
    RemoveContainer,
    ExecProcess,
    SignalProcess,
    WaitProcess,
    ReadStdout,
    ReadStderr,
    WriteStdin,
    CloseStdin,
    TtyWinResize,
    StatsContainer,
    UpdateContainer,
    PauseContainer,
    ResumeContainer,
    ListProcesses,
}

/// Ordinary calls: the guest answers in milliseconds; a loaded TCG guest in seconds.
const ORDINARY: Duration = Duration::from_secs(30);

impl AgentCall {
    /// The call's name in agent.proto (and in error messages).
    pub fn name(self) -> &'static str {
        match self {
            AgentCall::Connect => "connect",
            AgentCall::Check => "Check",
            AgentCall::Version => "Version",
            AgentCall::CreateSandbox => "CreateSandbox",
            AgentCall::DestroySandbox => "DestroySandbox",
            AgentCall::ConfigureNetwork => "ConfigureNetwork",
            AgentCall::CreateContainer => "CreateContainer",
            AgentCall::StartContainer => "StartContainer",
            AgentCall::RemoveContainer => "RemoveContainer",
            AgentCall::ExecProcess => "ExecProcess",
            AgentCall::SignalProcess => "SignalProcess",
            AgentCall::WaitProcess => "WaitProcess",
            AgentCall::ReadStdout => "ReadStdout",
            AgentCall::ReadStderr => "ReadStderr",
            AgentCall::WriteStdin => "WriteStdin",
            AgentCall::CloseStdin => "CloseStdin",
            AgentCall::TtyWinResize => "TtyWinResize",
            AgentCall::StatsContainer => "StatsContainer",
            AgentCall::UpdateContainer => "UpdateContainer",
            AgentCall::PauseContainer => "PauseContainer",
            AgentCall::ResumeContainer => "ResumeContainer",
            AgentCall::ListProcesses => "ListProcesses",
        }
    }

    /// How long the host waits for the call's answer; `None`: as long as it takes
    /// (a process's exit, a stream's next bytes, stdin accepted by a slow reader).
    pub fn timeout(self) -> Option<Duration> {
        match self {
            AgentCall::WaitProcess
            | AgentCall::ReadStdout
            | AgentCall::ReadStderr
            | AgentCall::WriteStdin => None,
            AgentCall::Connect => Some(Duration::from_secs(10)),
            // The agent stops every container first.
            AgentCall::DestroySandbox => Some(Duration::from_secs(10)),
            AgentCall::Check
            | AgentCall::Version
            | AgentCall::CreateSandbox
            | AgentCall::ConfigureNetwork
            | AgentCall::CreateContainer
            | AgentCall::StartContainer
            | AgentCall::RemoveContainer
            | AgentCall::ExecProcess
            | AgentCall::SignalProcess
            | AgentCall::CloseStdin
            | AgentCall::TtyWinResize
            | AgentCall::StatsContainer
            | AgentCall::UpdateContainer
            | AgentCall::PauseContainer
            | AgentCall::ResumeContainer
            | AgentCall::ListProcesses => Some(ORDINARY),
        }
    }

    fn context(self) -> ttrpc::context::Context {
        match self.timeout() {
            Some(t) => ttrpc::context::with_timeout(t.as_nanos() as i64),
            None => ttrpc::context::Context::default(),
        }
    }
}

impl std::fmt::Display for AgentCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed agent call: which, the ttrpc status code (none when the call never got
/// an answer: connection lost, timeout), and the message (escaped guest text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent {call} failed: {}", self.describe())]
pub struct AgentError {
    pub call: AgentCall,
    pub code: Option<ttrpc::Code>,
    pub message: String,
}

impl AgentError {
    /// An error of `call` from ttrpc.
    pub fn from_ttrpc(call: AgentCall, e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(s) => Self {
                call,
                code: Some(s.code()),
                message: escape_guest_text(&s.message),
            },
            other => Self {
                call,
                code: None,
                message: escape_guest_text(&other.to_string()),
            },
        }
    }

    /// An error of `call` that happened on the host side.
    pub fn local(call: AgentCall, message: impl Into<String>) -> Self {
        Self {
            call,
            code: None,
            message: message.into(),
        }
    }

    /// `CODE: message`, or the message alone without a status.
    pub fn describe(&self) -> String {
        match self.code {
            Some(code) => format!("{code:?}: {}", self.message),
            None => self.message.clone(),
        }
    }

    /// Whether the guest answered that the thing addressed does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code == Some(ttrpc::Code::NOT_FOUND)
    }
}

/// Guest-written text made safe for a host terminal or log: control characters
/// (escape sequences, carriage returns, NULs) become `\u{..}` escapes; newlines and
/// tabs stay, so multi-line errors read as such.
pub fn escape_guest_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// What the agent says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentVersion {
    pub agent_version: String,
    pub protocol_version: u32,
}

/// A container's resource figures as the guest's cgroup reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStats {
    pub cpu_usage_usec: u64,
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: u64,
    pub pids_current: u64,
}

/// A process of a container, as the guest lists it (guest pid: never a host pid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestProcess {
    pub pid: i32,
    /// Guest text, escaped.
    pub command: String,
}

/// One of a process's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A process in the guest: its container and exec id (empty for the container's
/// init).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessAddr {
    pub container_id: String,
    pub exec_id: String,
}

impl ProcessAddr {
    /// A container's init process.
    pub fn init(container_id: &str) -> Self {
        Self {
            container_id: container_id.into(),
            exec_id: String::new(),
        }
    }

    /// An exec'd process of a container.
    pub fn exec(container_id: &str, exec_id: &str) -> Self {
        Self {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
        }
    }
}

/// A container to create in the guest.
#[derive(Debug, Clone)]
pub struct GuestContainer<'a> {
    pub id: &'a str,
    /// The guest spec (config.json rewritten for the guest), JSON.
    pub spec_json: &'a [u8],
    /// Its rootfs, relative to the shared directory.
    pub rootfs: &'a str,
    /// Keep its stdin open for [`Agent::write_stdin`].
    pub stdin: bool,
}

/// An interface of the carried network namespace, as the guest must configure it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestInterface {
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`: finds the guest's virtio-net device.
    pub mac: String,
    pub mtu: u32,
    /// (address, prefix length).
    pub addresses: Vec<(String, u32)>,
}

/// A route of the carried namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestRoute {
    /// `a.b.c.d/n` or an IPv6 prefix; empty for a default route.
    pub destination: String,
    /// Empty for a link route.
    pub gateway: String,
    pub interface: String,
    pub ipv6: bool,
}

/// The network the guest configures (ConfigureNetwork).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestNetwork {
    pub interfaces: Vec<GuestInterface>,
    pub routes: Vec<GuestRoute>,
}

/// The agent API as the host uses it. Implemented by [`GuestAgent`]; tests pass a
/// fake.
pub trait Agent: Send + Sync {
    fn check(&self) -> Result<(), AgentError>;
    fn version(&self) -> Result<AgentVersion, AgentError>;
    fn create_sandbox(
        &self,
        sandbox_id: &str,
        hostname: &str,
        shared_fs_tag: &str,
    ) -> Result<(), AgentError>;
    fn destroy_sandbox(&self, sandbox_id: &str) -> Result<(), AgentError>;
    fn configure_network(&self, network: &GuestNetwork) -> Result<(), AgentError>;
    fn create_container(&self, container: &GuestContainer<'_>) -> Result<(), AgentError>;
    fn start_container(&self, container_id: &str) -> Result<(), AgentError>;
    fn remove_container(&self, container_id: &str) -> Result<(), AgentError>;
    fn exec_process(
        &self,
        process: &ProcessAddr,
        process_json: &[u8],
        stdin: bool,
    ) -> Result<(), AgentError>;
    /// `all`: every process of the container (the exec id is then ignored).
    fn signal_process(
        &self,
        process: &ProcessAddr,
        signal: i32,
        all: bool,
    ) -> Result<(), AgentError>;
    /// Blocks until the process exits: its status (128+N when killed by signal N).
    fn wait_process(&self, process: &ProcessAddr) -> Result<i32, AgentError>;
    /// The next bytes of a stream (at most `max`); empty at end of stream.
    fn read_output(
        &self,
        process: &ProcessAddr,
        stream: OutputStream,
        max: u32,
    ) -> Result<Vec<u8>, AgentError>;
    /// How many bytes of `data` the process's stdin took; 0: it is closed.
    fn write_stdin(&self, process: &ProcessAddr, data: &[u8]) -> Result<usize, AgentError>;
    fn close_stdin(&self, process: &ProcessAddr) -> Result<(), AgentError>;
    fn resize_tty(&self, process: &ProcessAddr, rows: u16, columns: u16) -> Result<(), AgentError>;
    fn stats(&self, container_id: &str) -> Result<ContainerStats, AgentError>;
    /// `resources_json`: an OCI `linux.resources` object.
    fn update_resources(&self, container_id: &str, resources_json: &[u8])
        -> Result<(), AgentError>;
    fn pause_container(&self, container_id: &str) -> Result<(), AgentError>;
    fn resume_container(&self, container_id: &str) -> Result<(), AgentError>;
    fn list_processes(&self, container_id: &str) -> Result<Vec<GuestProcess>, AgentError>;
}

/// The real agent, over ttrpc on a sandbox's hybrid vsock socket.
#[derive(Clone)]
pub struct GuestAgent {
    agent: AgentClient,
    health: HealthClient,
}

impl GuestAgent {
    /// Connects through the hybrid vsock socket at `socket` (CONNECT to the agent
    /// port).
    pub fn connect(socket: &Path) -> Result<Self, AgentError> {
        let timeout = AgentCall::Connect.timeout().unwrap_or(ORDINARY);
        Self::connect_within(socket, timeout)
    }

    /// Like [`GuestAgent::connect`], with its own timeout (a boot polls with short
    /// ones).
    pub fn connect_within(socket: &Path, timeout: Duration) -> Result<Self, AgentError> {
        let client =
            hybrid_vsock::connect_ttrpc(socket, AGENT_VSOCK_PORT, timeout).map_err(|e| {
                AgentError::local(AgentCall::Connect, format!("{}: {e}", socket.display()))
            })?;
        Ok(Self {
            agent: AgentClient::new(client.clone()),
            health: HealthClient::new(client),
        })
    }
}

fn call<T>(
    call: AgentCall,
    f: impl FnOnce(ttrpc::context::Context) -> ttrpc::Result<T>,
) -> Result<T, AgentError> {
    f(call.context()).map_err(|e| AgentError::from_ttrpc(call, e))
}

fn container_request(container_id: &str) -> pb::ContainerRequest {
    let mut r = pb::ContainerRequest::new();
    r.container_id = container_id.into();
    r
}

impl Agent for GuestAgent {
    fn check(&self) -> Result<(), AgentError> {
        call(AgentCall::Check, |c| {
            self.health.check(c, &pb::CheckRequest::new())
        })
        .map(drop)
    }

    fn version(&self) -> Result<AgentVersion, AgentError> {
        let v = call(AgentCall::Version, |c| {
            self.health.version(c, &pb::CheckRequest::new())
        })?;
        Ok(AgentVersion {
            agent_version: escape_guest_text(&v.agent_version),
            protocol_version: v.protocol_version,
        })
    }

    fn create_sandbox(
        &self,
        sandbox_id: &str,
        hostname: &str,
        shared_fs_tag: &str,
    ) -> Result<(), AgentError> {
        let mut r = pb::CreateSandboxRequest::new();
        r.sandbox_id = sandbox_id.into();
        r.hostname = hostname.into();
        r.shared_fs_tag = shared_fs_tag.into();
        call(AgentCall::CreateSandbox, |c| {
            self.agent.create_sandbox(c, &r)
        })
        .map(drop)
    }

    fn destroy_sandbox(&self, sandbox_id: &str) -> Result<(), AgentError> {
        let mut r = pb::DestroySandboxRequest::new();
        r.sandbox_id = sandbox_id.into();
        call(AgentCall::DestroySandbox, |c| {
            self.agent.destroy_sandbox(c, &r)
        })
        .map(drop)
    }

    fn configure_network(&self, network: &GuestNetwork) -> Result<(), AgentError> {
        let mut r = pb::ConfigureNetworkRequest::new();
        for i in &network.interfaces {
            let mut interface = pb::GuestInterface::new();
            interface.name = i.name.clone();
            interface.mac = i.mac.clone();
            interface.mtu = i.mtu;
            for (address, prefix_len) in &i.addresses {
                let mut a = pb::IPAddress::new();
                a.address = address.clone();
                a.prefix_len = *prefix_len;
                interface.addresses.push(a);
            }
            r.interfaces.push(interface);
        }
        for route in &network.routes {
            let mut g = pb::GuestRoute::new();
            g.destination = route.destination.clone();
            g.gateway = route.gateway.clone();
            g.interface = route.interface.clone();
            g.ipv6 = route.ipv6;
            r.routes.push(g);
        }
        call(AgentCall::ConfigureNetwork, |c| {
            self.agent.configure_network(c, &r)
        })
        .map(drop)
    }

    fn create_container(&self, container: &GuestContainer<'_>) -> Result<(), AgentError> {
        let mut r = pb::CreateContainerRequest::new();
        r.container_id = container.id.into();
        r.oci_spec_json = container.spec_json.to_vec();
        r.rootfs = container.rootfs.into();
        r.stdin = container.stdin;
        call(AgentCall::CreateContainer, |c| {
            self.agent.create_container(c, &r)
        })
        .map(drop)
    }

    fn start_container(&self, container_id: &str) -> Result<(), AgentError> {
        let mut r = pb::StartContainerRequest::new();
        r.container_id = container_id.into();
        call(AgentCall::StartContainer, |c| {
            self.agent.start_container(c, &r)
        })
        .map(drop)
    }

    fn remove_container(&self, container_id: &str) -> Result<(), AgentError> {
        let mut r = pb::RemoveContainerRequest::new();
        r.container_id = container_id.into();
        call(AgentCall::RemoveContainer, |c| {
            self.agent.remove_container(c, &r)
        })
        .map(drop)
    }

    fn exec_process(
        &self,
        process: &ProcessAddr,
        process_json: &[u8],
        stdin: bool,
    ) -> Result<(), AgentError> {
        let mut r = pb::ExecProcessRequest::new();
        r.container_id = process.container_id.clone();
        r.exec_id = process.exec_id.clone();
        r.process_json = process_json.to_vec();
        r.stdin = stdin;
        call(AgentCall::ExecProcess, |c| self.agent.exec_process(c, &r)).map(drop)
    }

    fn signal_process(
        &self,
        process: &ProcessAddr,
        signal: i32,
        all: bool,
    ) -> Result<(), AgentError> {
        let mut r = pb::SignalProcessRequest::new();
        r.container_id = process.container_id.clone();
        r.exec_id = process.exec_id.clone();
        r.signal = u32::try_from(signal).map_err(|_| {
            AgentError::local(AgentCall::SignalProcess, format!("invalid signal {signal}"))
        })?;
        r.all = all;
        call(AgentCall::SignalProcess, |c| {
            self.agent.signal_process(c, &r)
        })
        .map(drop)
    }

    fn wait_process(&self, process: &ProcessAddr) -> Result<i32, AgentError> {
        let mut r = pb::WaitProcessRequest::new();
        r.container_id = process.container_id.clone();
        r.exec_id = process.exec_id.clone();
        call(AgentCall::WaitProcess, |c| self.agent.wait_process(c, &r)).map(|r| r.status)
    }

    fn read_output(
        &self,
        process: &ProcessAddr,
        stream: OutputStream,
        max: u32,
    ) -> Result<Vec<u8>, AgentError> {
        let mut r = pb::ReadStreamRequest::new();
        r.container_id = process.container_id.clone();
        r.exec_id = process.exec_id.clone();
        r.len = max;
        let which = match stream {
            OutputStream::Stdout => AgentCall::ReadStdout,
            OutputStream::Stderr => AgentCall::ReadStderr,
        };
        let chunk = call(which, |c| match stream {
            OutputStream::Stdout => self.agent.read_stdout(c, &r),
            OutputStream::Stderr => self.agent.read_stderr(c, &r),
        })?;
        // The guest's reply is not trusted to respect the size asked for.
        if chunk.data.len() > max as usize {
            return Err(AgentError::local(
                which,
                format!(
                    "the guest sent {} bytes, more than the {max} asked",
                    chunk.data.len()
                ),
            ));
        }
        Ok(chunk.data)
    }

    fn write_stdin(&self, process: &ProcessAddr, data: &[u8]) -> Result<usize, AgentError> {
        let mut r = pb::WriteStreamRequest::new();
        r.container_id = process.container_id.clone();
        r.exec_id = process.exec_id.clone();
        r.data = data.to_vec();
        let written = call(AgentCall::WriteStdin, |c| self.agent.write_stdin(c, &r))?.len;
        // The guest's count is not trusted to stay within what was sent.
        Ok((written as usize).min(data.len()))
    }

    fn close_stdin(&self, process: &ProcessAddr) -> Result<(), AgentError> {
        let mut r = pb::CloseStdinRequest::new();
        r.container_id = process.container_id.clone();
        r.exec_id = process.exec_id.clone();
        call(AgentCall::CloseStdin, |c| self.agent.close_stdin(c, &r)).map(drop)
    }

    fn resize_tty(&self, process: &ProcessAddr, rows: u16, columns: u16) -> Result<(), AgentError> {
        let mut r = pb::TtyWinResizeRequest::new();
        r.container_id = process.container_id.clone();
        r.exec_id = process.exec_id.clone();
        r.row = rows.into();
        r.column = columns.into();
        call(AgentCall::TtyWinResize, |c| {
            self.agent.tty_win_resize(c, &r)
        })
        .map(drop)
    }

    fn stats(&self, container_id: &str) -> Result<ContainerStats, AgentError> {
        let mut r = pb::StatsContainerRequest::new();
        r.container_id = container_id.into();
        let s = call(AgentCall::StatsContainer, |c| {
            self.agent.stats_container(c, &r)
        })?;
        Ok(ContainerStats {
            cpu_usage_usec: s.cpu_usage_usec,
            memory_usage_bytes: s.memory_usage_bytes,
            memory_limit_bytes: s.memory_limit_bytes,
            pids_current: s.pids_current,
        })
    }

    fn update_resources(
        &self,
        container_id: &str,
        resources_json: &[u8],
    ) -> Result<(), AgentError> {
        let mut r = pb::UpdateContainerRequest::new();
        r.container_id = container_id.into();
        r.resources_json = resources_json.to_vec();
        call(AgentCall::UpdateContainer, |c| {
            self.agent.update_container(c, &r)
        })
        .map(drop)
    }

    fn pause_container(&self, container_id: &str) -> Result<(), AgentError> {
        let r = container_request(container_id);
        call(AgentCall::PauseContainer, |c| {
            self.agent.pause_container(c, &r)
        })
        .map(drop)
    }

    fn resume_container(&self, container_id: &str) -> Result<(), AgentError> {
        let r = container_request(container_id);
        call(AgentCall::ResumeContainer, |c| {
            self.agent.resume_container(c, &r)
        })
        .map(drop)
    }

    fn list_processes(&self, container_id: &str) -> Result<Vec<GuestProcess>, AgentError> {
        let r = container_request(container_id);
        let list = call(AgentCall::ListProcesses, |c| {
            self.agent.list_processes(c, &r)
        })?;
        Ok(list
            .processes
            .into_iter()
            .map(|p| GuestProcess {
                pid: p.pid,
                command: escape_guest_text(&p.command),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_wait_forever_and_everything_else_has_a_timeout() {
        for c in [
            AgentCall::WaitProcess,
            AgentCall::ReadStdout,
            AgentCall::ReadStderr,
            AgentCall::WriteStdin,
        ] {
            assert_eq!(c.timeout(), None, "{c}");
        }
        for c in [
            AgentCall::Check,
            AgentCall::CreateContainer,
            AgentCall::SignalProcess,
            AgentCall::DestroySandbox,
            AgentCall::Connect,
        ] {
            assert!(c.timeout().is_some(), "{c}");
        }
    }

    #[test]
    fn errors_name_the_call_the_code_and_the_message() {
        let status = ttrpc::get_status(ttrpc::Code::NOT_FOUND, "no container web".to_string());
        let e = AgentError::from_ttrpc(AgentCall::StartContainer, ttrpc::Error::RpcStatus(status));
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "agent StartContainer failed: NOT_FOUND: no container web"
        );
        let e = AgentError::local(AgentCall::Connect, "/run/x.sock: refused");
        assert_eq!(e.to_string(), "agent connect failed: /run/x.sock: refused");
    }

    #[test]
    fn guest_text_cannot_drive_the_host_terminal() {
        let hostile = "bad\x1b]0;owned\x07\r\nnext\tline\0";
        let escaped = escape_guest_text(hostile);
        assert!(!escaped
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'));
        assert_eq!(escaped, "bad\\u{1b}]0;owned\\u{7}\\u{d}\nnext\tline\\u{0}");
        let status = ttrpc::get_status(ttrpc::Code::INTERNAL, hostile.to_string());
        let e = AgentError::from_ttrpc(AgentCall::CreateContainer, ttrpc::Error::RpcStatus(status));
        assert!(!e.to_string().contains('\x1b'));
    }
}

//! Runs the real husk-agent binary outside a VM, serving on a Unix socket, and talks
//! to it with the generated ttrpc client: health, version, and malformed requests
//! that must come back as error replies without killing the agent.

use husk_agent_protocol::agent::{self as pb, health_check_response::ServingStatus};
use husk_agent_protocol::agent_ttrpc::{AgentClient, HealthClient};
use husk_agent_protocol::hybrid_vsock;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64)
}

fn start_agent(dir: &std::path::Path) -> (Agent, ttrpc::Client) {
    let sock = dir.join("agent.sock");
    let addr = format!("unix://{}", sock.display());
    let child = Command::new(env!("CARGO_BIN_EXE_husk-agent"))
        .args(["--listen", &addr])
        .spawn()
        .expect("spawn husk-agent");
    let agent = Agent(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if sock.exists() {
            if let Ok(c) = ttrpc::Client::connect(&addr) {
                return (agent, c);
            }
        }
        assert!(Instant::now() < deadline, "agent did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn code(e: ttrpc::Error) -> ttrpc::Code {
    match e {
        ttrpc::Error::RpcStatus(s) => s.code(),
        other => panic!("not an rpc status: {other:?}"),
    }
}

#[test]
fn health_version_and_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, client) = start_agent(dir.path());
    let health = HealthClient::new(client.clone());
    let r = health.check(ctx(), &pb::CheckRequest::new()).unwrap();
    assert_eq!(r.status.enum_value(), Ok(ServingStatus::SERVING));
    let v = health.version(ctx(), &pb::CheckRequest::new()).unwrap();
    assert_eq!(v.protocol_version, husk_agent_protocol::PROTOCOL_VERSION);
    assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));

    let agent = AgentClient::new(client);
    let mut create = pb::CreateContainerRequest::new();
    create.container_id = "../../etc".into();
    assert_eq!(
        code(agent.create_container(ctx(), &create).unwrap_err()),
        ttrpc::Code::INVALID_ARGUMENT
    );
    create.container_id = "ok".into();
    create.oci_spec_json = vec![0xff; 64];
    assert_eq!(
        code(agent.create_container(ctx(), &create).unwrap_err()),
        ttrpc::Code::INVALID_ARGUMENT
    );
    create.oci_spec_json = vec![b' '; 2 << 20];
    assert_eq!(
        code(agent.create_container(ctx(), &create).unwrap_err()),
        ttrpc::Code::INVALID_ARGUMENT
    );
    let mut wait = pb::WaitProcessRequest::new();
    wait.container_id = "missing".into();
    assert_eq!(
        code(agent.wait_process(ctx(), &wait).unwrap_err()),
        ttrpc::Code::NOT_FOUND
    );
    // Not implemented yet: a clean error, not a hang or a crash.
    let mut stats = pb::StatsContainerRequest::new();
    stats.container_id = "x".into();
    assert!(agent.stats_container(ctx(), &stats).is_err());
    // Still alive after all that.
    let r = health.check(ctx(), &pb::CheckRequest::new()).unwrap();
    assert_eq!(r.status.enum_value(), Ok(ServingStatus::SERVING));
}

/// Plays the VMM's hybrid vsock device: accepts one host connection, checks the
/// `CONNECT <port>` line, answers `OK <port>`, then splices the stream to the
/// agent's Unix socket (standing in for the guest's vsock listener).
fn hybrid_vsock_device(host_sock: &std::path::Path, agent_sock: std::path::PathBuf) {
    let listener = UnixListener::bind(host_sock).unwrap();
    std::thread::spawn(move || {
        let (host, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(host.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "CONNECT 1024\n");
        let guest = UnixStream::connect(agent_sock).unwrap();
        (&host).write_all(b"OK 1024\n").unwrap();
        let (mut h2g_src, mut h2g_dst) = (reader, guest.try_clone().unwrap());
        let (mut g2h_src, mut g2h_dst) = (guest, host);
        std::thread::spawn(move || std::io::copy(&mut h2g_src, &mut h2g_dst));
        let _ = std::io::copy(&mut g2h_src, &mut g2h_dst);
    });
}

#[test]
fn health_through_hybrid_vsock_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, _direct) = start_agent(dir.path());
    let host_sock = dir.path().join("vsock.sock");
    hybrid_vsock_device(&host_sock, dir.path().join("agent.sock"));
    let client = hybrid_vsock::connect_ttrpc(
        &host_sock,
        husk_agent_protocol::AGENT_VSOCK_PORT,
        Duration::from_secs(10),
    )
    .unwrap();
    let health = HealthClient::new(client);
    let r = health.check(ctx(), &pb::CheckRequest::new()).unwrap();
    assert_eq!(r.status.enum_value(), Ok(ServingStatus::SERVING));
}

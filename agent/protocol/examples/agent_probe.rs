//! Host-side probe for a booted guest: connects through hybrid vsock (`CONNECT
//! 1024\n` / `OK ...\n`), calls the health check and version, and optionally runs a
//! container and checks its output and exit status. Used by tests/guest/boot_test.sh.
//!
//! usage: agent_probe --socket HOST_UDS [--port 1024] [--timeout SECS]
//!                    [--container-spec config.json --rootfs REL_PATH
//!                     --shared-tag TAG --expect-stdout TEXT --expect-exit N]
//!                    [--destroy]   (DestroySandbox at the end: the VM exits)
//!                    [--vm-pid PID] (give up at once if that process is gone)
//!
//! Exits non-zero with a message on any mismatch.

use husk_agent_protocol::agent::{self as pb, health_check_response::ServingStatus};
use husk_agent_protocol::agent_ttrpc::{AgentClient, HealthClient};
use husk_agent_protocol::hybrid_vsock;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Args {
    socket: PathBuf,
    port: u32,
    timeout: Duration,
    spec: Option<PathBuf>,
    rootfs: String,
    shared_tag: String,
    expect_stdout: Option<String>,
    expect_exit: Option<i32>,
    destroy: bool,
    vm_pid: Option<u32>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        port: husk_agent_protocol::AGENT_VSOCK_PORT,
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--socket" => a.socket = val()?.into(),
            "--port" => a.port = val()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--timeout" => {
                a.timeout =
                    Duration::from_secs(val()?.parse().map_err(|e| format!("--timeout: {e}"))?)
            }
            "--container-spec" => a.spec = Some(val()?.into()),
            "--rootfs" => a.rootfs = val()?,
            "--shared-tag" => a.shared_tag = val()?,
            "--destroy" => a.destroy = true,
            "--vm-pid" => a.vm_pid = Some(val()?.parse().map_err(|e| format!("--vm-pid: {e}"))?),
            "--expect-stdout" => a.expect_stdout = Some(val()?),
            "--expect-exit" => {
                a.expect_exit = Some(val()?.parse().map_err(|e| format!("--expect-exit: {e}"))?)
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.socket.as_os_str().is_empty() {
        return Err("--socket is required".into());
    }
    Ok(a)
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent_probe: FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The guest listener appears only once the agent runs: retry until the deadline.
fn connect(a: &Args, started: Instant) -> Result<ttrpc::Client, String> {
    let mut last = String::new();
    while started.elapsed() < a.timeout {
        if let Some(pid) = a.vm_pid {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(format!(
                    "VM process {pid} is gone before the agent answered"
                ));
            }
        }
        match hybrid_vsock::connect_ttrpc(&a.socket, a.port, Duration::from_secs(5)) {
            Ok(c) => return Ok(c),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("no agent after {:?}: {last}", a.timeout))
}

fn run() -> Result<(), String> {
    let a = parse()?;
    let started = Instant::now();
    let client = connect(&a, started)?;
    let health = HealthClient::new(client.clone());
    let reply = health
        .check(ctx(), &pb::CheckRequest::new())
        .map_err(|e| format!("health check: {e}"))?;
    if reply.status.enum_value() != Ok(ServingStatus::SERVING) {
        return Err(format!("health check status {:?}", reply.status));
    }
    println!(
        "agent_probe: health SERVING after {:.3} s",
        started.elapsed().as_secs_f64()
    );
    let v = health
        .version(ctx(), &pb::CheckRequest::new())
        .map_err(|e| format!("version: {e}"))?;
    println!(
        "agent_probe: agent {} protocol {} kernel {}",
        v.agent_version, v.protocol_version, v.kernel_release
    );
    if v.protocol_version != husk_agent_protocol::PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} != {}",
            v.protocol_version,
            husk_agent_protocol::PROTOCOL_VERSION
        ));
    }
    let agent = AgentClient::new(client);
    // A malformed request must come back as an error reply, and the agent must live on.
    let mut bad = pb::StartContainerRequest::new();
    bad.container_id = "../escape".into();
    if agent.start_container(ctx(), &bad).is_ok() {
        return Err("StartContainer with an invalid id succeeded".into());
    }
    if let Some(spec) = &a.spec {
        run_container(&agent, &a, spec)?;
    }
    if a.destroy {
        let mut d = pb::DestroySandboxRequest::new();
        d.sandbox_id = "probe".into();
        agent
            .destroy_sandbox(ctx(), &d)
            .map_err(|e| format!("DestroySandbox: {e}"))?;
        println!("agent_probe: DestroySandbox ok");
    }
    Ok(())
}

fn run_container(agent: &AgentClient, a: &Args, spec: &PathBuf) -> Result<(), String> {
    let t = Instant::now();
    let mut sb = pb::CreateSandboxRequest::new();
    sb.sandbox_id = "probe".into();
    sb.hostname = "probe-sandbox".into();
    sb.shared_fs_tag = a.shared_tag.clone();
    agent
        .create_sandbox(ctx(), &sb)
        .map_err(|e| format!("CreateSandbox: {e}"))?;
    let mut req = pb::CreateContainerRequest::new();
    req.container_id = "probe1".into();
    req.oci_spec_json = std::fs::read(spec).map_err(|e| format!("read {}: {e}", spec.display()))?;
    req.rootfs = a.rootfs.clone();
    // A create that fails inside libcontainer must leave nothing behind: the
    // same id is used again right after.
    let mut broken: serde_json::Value =
        serde_json::from_slice(&req.oci_spec_json).map_err(|e| format!("spec: {e}"))?;
    broken["mounts"] = serde_json::json!([
        {"destination": "/x", "type": "no-such-fs", "source": "none"}
    ]);
    let mut bad = req.clone();
    bad.oci_spec_json = serde_json::to_vec(&broken).map_err(|e| e.to_string())?;
    match agent.create_container(ctx(), &bad) {
        Ok(_) => return Err("CreateContainer with an unknown mount type succeeded".into()),
        Err(e) => println!("agent_probe: broken spec refused: {}", short(&e)),
    }
    agent
        .create_container(ctx(), &req)
        .map_err(|e| format!("CreateContainer: {e}"))?;
    let mut start = pb::StartContainerRequest::new();
    start.container_id = "probe1".into();
    agent
        .start_container(ctx(), &start)
        .map_err(|e| format!("StartContainer: {e}"))?;
    let mut out = Vec::new();
    loop {
        let mut r = pb::ReadStreamRequest::new();
        r.container_id = "probe1".into();
        r.len = 4096;
        let chunk = agent
            .read_stdout(ctx(), &r)
            .map_err(|e| format!("ReadStdout: {e}"))?;
        if chunk.data.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk.data);
    }
    let mut w = pb::WaitProcessRequest::new();
    w.container_id = "probe1".into();
    let status = agent
        .wait_process(ctx(), &w)
        .map_err(|e| format!("WaitProcess: {e}"))?
        .status;
    let out = String::from_utf8_lossy(&out);
    println!(
        "agent_probe: container stdout {out:?} exit {status} ({:.3} s create..exit)",
        t.elapsed().as_secs_f64()
    );
    if let Some(want) = &a.expect_stdout {
        if out.trim_end() != want {
            return Err(format!("stdout {out:?}, want {want:?}"));
        }
    }
    if let Some(want) = a.expect_exit {
        if status != want {
            return Err(format!("exit status {status}, want {want}"));
        }
    }
    remove(agent, "probe1")?;
    let spec_json: serde_json::Value =
        serde_json::from_slice(&req.oci_spec_json).map_err(|e| format!("spec: {e}"))?;
    run_long_lived(agent, a, &spec_json)?;
    run_oom(agent, a, &spec_json)?;
    run_terminal(agent, a, &spec_json)?;
    Ok(())
}

/// A terminal container: window size set before start, output through the PTY.
fn run_terminal(agent: &AgentClient, a: &Args, base: &serde_json::Value) -> Result<(), String> {
    let id = "probe4";
    let mut spec = base.clone();
    spec["process"]["terminal"] = serde_json::json!(true);
    spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", "stty size; echo tty-ok"]);
    let mut req = pb::CreateContainerRequest::new();
    req.container_id = id.into();
    req.oci_spec_json = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
    req.rootfs = a.rootfs.clone();
    agent
        .create_container(ctx(), &req)
        .map_err(|e| format!("CreateContainer {id}: {e}"))?;
    let mut resize = pb::TtyWinResizeRequest::new();
    resize.container_id = id.into();
    resize.row = 40;
    resize.column = 100;
    agent
        .tty_win_resize(ctx(), &resize)
        .map_err(|e| format!("TtyWinResize: {e}"))?;
    let mut start = pb::StartContainerRequest::new();
    start.container_id = id.into();
    agent
        .start_container(ctx(), &start)
        .map_err(|e| format!("StartContainer {id}: {e}"))?;
    let out = read_all(agent, id, "")?;
    expect("terminal output", out.as_str(), "40 100\r\ntty-ok\r\n")?;
    expect("terminal exit", wait(agent, id, "")?, 0)?;
    remove(agent, id)
}

/// The status message of an rpc error, without the protobuf debug noise.
fn short(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => format!("{:?}: {}", s.code(), s.message),
        other => other.to_string(),
    }
}

fn remove(agent: &AgentClient, id: &str) -> Result<(), String> {
    let mut rm = pb::RemoveContainerRequest::new();
    rm.container_id = id.into();
    agent
        .remove_container(ctx(), &rm)
        .map_err(|e| format!("RemoveContainer {id}: {e}"))?;
    Ok(())
}

fn create_and_start(
    agent: &AgentClient,
    a: &Args,
    id: &str,
    spec: &serde_json::Value,
    stdin: bool,
) -> Result<(), String> {
    let mut req = pb::CreateContainerRequest::new();
    req.container_id = id.into();
    req.oci_spec_json = serde_json::to_vec(spec).map_err(|e| e.to_string())?;
    req.rootfs = a.rootfs.clone();
    req.stdin = stdin;
    agent
        .create_container(ctx(), &req)
        .map_err(|e| format!("CreateContainer {id}: {e}"))?;
    let mut start = pb::StartContainerRequest::new();
    start.container_id = id.into();
    agent
        .start_container(ctx(), &start)
        .map_err(|e| format!("StartContainer {id}: {e}"))?;
    Ok(())
}

/// Reads a process's stdout until end of stream.
fn read_all(agent: &AgentClient, id: &str, exec_id: &str) -> Result<String, String> {
    let mut out = Vec::new();
    loop {
        let mut r = pb::ReadStreamRequest::new();
        r.container_id = id.into();
        r.exec_id = exec_id.into();
        r.len = 4096;
        let chunk = agent
            .read_stdout(ctx(), &r)
            .map_err(|e| format!("ReadStdout {id}/{exec_id}: {e}"))?;
        if chunk.data.is_empty() {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&chunk.data);
    }
}

fn wait(agent: &AgentClient, id: &str, exec_id: &str) -> Result<i32, String> {
    let mut w = pb::WaitProcessRequest::new();
    w.container_id = id.into();
    w.exec_id = exec_id.into();
    Ok(agent
        .wait_process(ctx(), &w)
        .map_err(|e| format!("WaitProcess {id}/{exec_id}: {e}"))?
        .status)
}

fn expect<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        println!("agent_probe: {what}: {got:?} ok");
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

/// A container that waits on stdin: exec, stdin, stats, update, signal.
fn run_long_lived(agent: &AgentClient, a: &Args, base: &serde_json::Value) -> Result<(), String> {
    let id = "probe2";
    let mut spec = base.clone();
    spec["process"]["args"] =
        serde_json::json!(["/bin/sh", "-c", "read line; echo got:$line; exec sleep 600"]);
    create_and_start(agent, a, id, &spec, true)?;

    let mut exec = pb::ExecProcessRequest::new();
    exec.container_id = id.into();
    exec.exec_id = "e1".into();
    exec.process_json = serde_json::to_vec(&serde_json::json!({
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/sh", "-c", "echo exec-ok; exit 5"],
        "env": ["PATH=/bin"],
        "cwd": "/"
    }))
    .map_err(|e| e.to_string())?;
    agent
        .exec_process(ctx(), &exec)
        .map_err(|e| format!("ExecProcess: {e}"))?;
    expect(
        "exec stdout",
        read_all(agent, id, "e1")?,
        "exec-ok\n".to_string(),
    )?;
    expect("exec exit", wait(agent, id, "e1")?, 5)?;

    // An exec'd process with a terminal: output arrives through its PTY.
    let mut exec_tty = exec.clone();
    exec_tty.exec_id = "e2".into();
    exec_tty.process_json = serde_json::to_vec(&serde_json::json!({
        "terminal": true,
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/sh", "-c", "test -t 1 && echo tty-exec-ok"],
        "env": ["PATH=/bin"],
        "cwd": "/"
    }))
    .map_err(|e| e.to_string())?;
    agent
        .exec_process(ctx(), &exec_tty)
        .map_err(|e| format!("ExecProcess (terminal): {e}"))?;
    expect(
        "terminal exec stdout",
        read_all(agent, id, "e2")?,
        "tty-exec-ok\r\n".to_string(),
    )?;
    expect("terminal exec exit", wait(agent, id, "e2")?, 0)?;

    let mut st = pb::StatsContainerRequest::new();
    st.container_id = id.into();
    let stats = agent
        .stats_container(ctx(), &st)
        .map_err(|e| format!("StatsContainer: {e}"))?;
    println!(
        "agent_probe: stats cpu {} us, memory {} / {} bytes, pids {}",
        stats.cpu_usage_usec,
        stats.memory_usage_bytes,
        stats.memory_limit_bytes,
        stats.pids_current
    );
    if stats.pids_current < 1 || stats.memory_usage_bytes == 0 {
        return Err("stats show no process or no memory".into());
    }
    let mut up = pb::UpdateContainerRequest::new();
    up.container_id = id.into();
    up.resources_json = br#"{"memory":{"limit":67108864},"pids":{"limit":32}}"#.to_vec();
    agent
        .update_container(ctx(), &up)
        .map_err(|e| format!("UpdateContainer: {e}"))?;
    let stats = agent
        .stats_container(ctx(), &st)
        .map_err(|e| format!("StatsContainer: {e}"))?;
    expect(
        "memory limit after update",
        stats.memory_limit_bytes,
        64 << 20,
    )?;

    let mut w = pb::WriteStreamRequest::new();
    w.container_id = id.into();
    w.data = b"hi\n".to_vec();
    agent
        .write_stdin(ctx(), &w)
        .map_err(|e| format!("WriteStdin: {e}"))?;
    let mut c = pb::CloseStdinRequest::new();
    c.container_id = id.into();
    agent
        .close_stdin(ctx(), &c)
        .map_err(|e| format!("CloseStdin: {e}"))?;
    let mut r = pb::ReadStreamRequest::new();
    r.container_id = id.into();
    r.len = 4096;
    let got = agent
        .read_stdout(ctx(), &r)
        .map_err(|e| format!("ReadStdout: {e}"))?;
    expect(
        "stdin echoed",
        String::from_utf8_lossy(&got.data).into_owned(),
        "got:hi\n".to_string(),
    )?;

    let mut sig = pb::SignalProcessRequest::new();
    sig.container_id = id.into();
    sig.signal = 9;
    agent
        .signal_process(ctx(), &sig)
        .map_err(|e| format!("SignalProcess: {e}"))?;
    expect("exit after SIGKILL", wait(agent, id, "")?, 137)?;
    remove(agent, id)
}

/// A container over its memory limit: OOM event and exit by SIGKILL.
fn run_oom(agent: &AgentClient, a: &Args, base: &serde_json::Value) -> Result<(), String> {
    let id = "probe3";
    let mut spec = base.clone();
    spec["process"]["args"] = serde_json::json!([
        "/bin/sh",
        "-c",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"
    ]);
    spec["linux"]["resources"] = serde_json::json!({"memory": {"limit": 16777216}});
    // Ask for the event first: GetOomEvent blocks until one arrives.
    let watcher = {
        let agent = agent.clone();
        std::thread::spawn(move || agent.get_oom_event(ctx(), &pb::GetOomEventRequest::new()))
    };
    create_and_start(agent, a, id, &spec, false)?;
    let status = wait(agent, id, "")?;
    let event = watcher
        .join()
        .map_err(|_| "OOM watcher thread panicked".to_string())?
        .map_err(|e| format!("GetOomEvent: {e}"))?;
    expect("OOM event container", event.container_id.as_str(), id)?;
    // Usually 137 (the shell holding the memory is killed); any failure will do.
    if status == 0 {
        return Err("container over its memory limit exited 0".into());
    }
    println!("agent_probe: exit after OOM kill: {status}");
    remove(agent, id)
}

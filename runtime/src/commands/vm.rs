//! The vm-isolation side of each subcommand: the container runs in a sandbox VM, a
//! supervisor process stands in for its init (see `husk_runtime::vm::supervisor`),
//! and the commands act through the guest agent and the state file.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context as _, Result};
use husk_runtime::bundle::Bundle;
use husk_runtime::container::VmContainer;
use husk_runtime::isolation::IsolationDecision;
use husk_runtime::pidfile::write_pid_file;
use husk_runtime::shared_kernel;
use husk_runtime::vm::sandbox;
use husk_runtime::vm::signals::ForwardedSignals;
use husk_runtime::vm::state::{VmContainerState, VmStatus};
use husk_runtime::vm::supervisor::{
    self, ExecSupervision, ReadyPipe, Supervision, SupervisorStdio, VmLaunch,
};

use super::GlobalOpts;

/// The descriptor on which a spawned supervisor reports readiness.
const READY_FD: i32 = 3;

fn refusal(id: &str, decision: &IsolationDecision, what: impl std::fmt::Display) -> String {
    format!(
        "container {id}: vm isolation (requested by {}) {what}; refusing to fall back to the \
         shared kernel",
        decision.source
    )
}

/// Decides everything for a vm container before anything is created.
fn prepare(
    id: &str,
    bundle: &Bundle,
    global: &GlobalOpts,
    decision: &IsolationDecision,
) -> Result<VmLaunch> {
    let config = global.load_config()?;
    let launch = VmLaunch::prepare(
        id,
        bundle,
        &config,
        global.hypervisor.backend(),
        global.systemd_cgroup,
    )
    .map_err(|e| {
        anyhow!(refusal(
            id,
            decision,
            format_args!("cannot be provided: {e}")
        ))
    })?;
    if global.debug {
        eprintln!(
            "husk: vm isolation with {} ({}), {} MiB, {} vCPU",
            launch.hypervisor.name(),
            launch.why,
            launch.size.memory_mib,
            launch.size.vcpus
        );
    }
    Ok(launch)
}

/// `husk run` in the foreground: supervise in this process.
pub fn run_foreground(
    args: &super::run::RunArgs,
    global: &GlobalOpts,
    bundle: &Bundle,
    decision: IsolationDecision,
) -> Result<i32> {
    let id = args.opts.container_id.as_str();
    if args.opts.preserve_fds > 0 {
        bail!(refusal(
            id,
            &decision,
            "cannot pass --preserve-fds into a VM"
        ));
    }
    let launch = prepare(id, bundle, global, &decision)?;
    let stdio = match (&args.opts.console_socket, launch.terminal) {
        (Some(socket), true) => SupervisorStdio::ConsoleSocket(socket.clone()),
        (None, true) => SupervisorStdio::OwnTerminal,
        (Some(_), false) => bail!("--console-socket given but config.json has no process.terminal"),
        (None, false) => SupervisorStdio::Inherited,
    };
    global.ensure_root()?;
    // Blocked before anything starts: a SIGTERM during boot must tear the sandbox
    // down, not kill husk and leak the VM.
    let signals = ForwardedSignals::block()?;
    let dir = shared_kernel::container_dir(&global.root, id);
    launch.claim(&dir, std::process::id() as i32)?;
    if let Some(pid_file) = &args.opts.pid_file {
        if let Err(e) = write_pid_file(pid_file, std::process::id() as i32) {
            let _ = sandbox::release_dir(&dir);
            return Err(e.into());
        }
    }
    let result = supervisor::supervise(
        Supervision {
            launch,
            dir,
            stdio,
            ready: None,
            start_now: true,
            keep_state: args.keep,
        },
        &signals,
    );
    drop(signals);
    result.with_context(|| format!("container {id} in vm isolation failed"))
}

/// `husk create` (and `run --detach`): claim the id, spawn the supervisor with our
/// stdio, wait for its report, write its pid to the pid file.
pub fn create(
    opts: &super::create::CreateOpts,
    global: &GlobalOpts,
    bundle: &Bundle,
    decision: IsolationDecision,
) -> Result<()> {
    let id = opts.container_id.as_str();
    if opts.preserve_fds > 0 {
        bail!(refusal(
            id,
            &decision,
            "cannot pass --preserve-fds into a VM"
        ));
    }
    let launch = prepare(id, bundle, global, &decision)?;
    match (&opts.console_socket, launch.terminal) {
        (None, true) => bail!(
            "container {id}: config.json asks for a terminal but no --console-socket was given \
             (a detached container's terminal goes to the console socket)"
        ),
        (Some(_), false) => bail!("--console-socket given but config.json has no process.terminal"),
        _ => {}
    }
    global.ensure_root()?;
    let dir = shared_kernel::container_dir(&global.root, id);
    launch.claim(&dir, std::process::id() as i32)?;
    drop(launch);

    let mut args = supervisor_global_args(global, &dir);
    args.push("vm-supervise".into());
    args.push("--bundle".into());
    args.push(bundle.dir.display().to_string());
    if let Some(socket) = &opts.console_socket {
        args.push("--console-socket".into());
        args.push(absolute(socket)?.display().to_string());
    }
    args.push(id.to_string());
    // With a terminal, the container's stdio is the console: the supervisor gets
    // /dev/null, not ours (see spawn_with_ready_pipe).
    let child = spawn_with_ready_pipe(&args, opts.console_socket.is_some());
    let (mut child, ready) = match child {
        Ok(parts) => parts,
        Err(e) => {
            let _ = sandbox::release_dir(&dir);
            return Err(e);
        }
    };
    if let Err(e) = supervisor::read_ready(ready) {
        // The supervisor removed what it made; if it died instead, clean up after it.
        let _ = child.wait();
        if dir.exists() {
            if let Err(err) = sandbox::teardown_dir(&dir, id, true) {
                tracing::warn!(id, error = %err, "cleanup after a failed create");
            }
        }
        return Err(anyhow!(e).context(refusal(id, &decision, "could not create the container")));
    }
    let pid = child.id() as i32;
    // Not waited for: it is the container's stand-in init and outlives us (the
    // engine, a subreaper, reaps it). Dropping a Child neither waits nor kills.
    drop(child);
    if let Some(pid_file) = &opts.pid_file {
        write_pid_file(pid_file, pid)?;
    }
    Ok(())
}

/// Global flags for a spawned husk helper: same root, config, backend and logging;
/// without a log file of the caller's, a log in the sandbox dir.
fn supervisor_global_args(global: &GlobalOpts, dir: &Path) -> Vec<String> {
    let mut args = vec![
        "--root".to_string(),
        global.root.display().to_string(),
        "--hypervisor".into(),
        format!("{:?}", global.hypervisor).to_lowercase(),
        "--log-format".into(),
        format!("{:?}", global.log_format).to_lowercase(),
        "--log".into(),
    ];
    args.push(match &global.log {
        Some(log) => log.display().to_string(),
        None => dir.join("supervisor.log").display().to_string(),
    });
    if global.debug {
        args.push("--debug".into());
    }
    if global.systemd_cgroup {
        args.push("--systemd-cgroup".into());
    }
    if let Some(config) = &global.config {
        args.push("--config".into());
        args.push(config.display().to_string());
    }
    args
}

fn absolute(path: &Path) -> Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

/// Spawns `husk <args>` as a new session with a pipe on fd 3 for its readiness
/// report, and our stdio — or /dev/null when `null_stdio` (the process has a
/// terminal, which goes to the console socket). The supervisor outlives us, and an
/// engine may read our stdout and stderr until end of file (containerd's runc shim
/// does for a `create` with a console socket): a supervisor holding them would make
/// it wait for the container's exit.
fn spawn_with_ready_pipe(
    args: &[String],
    null_stdio: bool,
) -> Result<(std::process::Child, std::fs::File)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .context("cannot make the supervisor's report pipe")?;
    let write_fd = write.as_raw_fd();
    let mut command = Command::new("/proc/self/exe");
    command.arg0("husk").args(args);
    if null_stdio {
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    }
    // SAFETY: runs in the forked child before exec; dup2, fcntl and setsid are
    // async-signal-safe and touch no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself keeps O_CLOEXEC: clear it then, or exec closes fd 3.
            let placed = if write_fd == READY_FD {
                libc::fcntl(READY_FD, libc::F_SETFD, 0)
            } else {
                libc::dup2(write_fd, READY_FD)
            };
            if placed < 0 || libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .context("cannot start the sandbox supervisor")?;
    drop(write);
    Ok((child, std::fs::File::from(read)))
}

/// The readiness pipe a spawned supervisor inherited, if any.
pub fn inherited_ready_pipe() -> Option<ReadyPipe> {
    // SAFETY: fcntl(F_GETFD) only queries the descriptor.
    let open = unsafe { libc::fcntl(READY_FD, libc::F_GETFD) } >= 0;
    if open {
        // Not inherited further: a VM process holding it would keep `husk create`
        // waiting for end of file after our report.
        // SAFETY: sets a descriptor flag; no memory is passed.
        unsafe { libc::fcntl(READY_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: fd 3 was set up by our parent (spawn_with_ready_pipe) and nothing else
    // in this process owns it.
    open.then(|| unsafe { ReadyPipe::from_raw_fd(READY_FD) })
}

/// A vm container's processes as the guest sees them (guest pids).
pub fn processes(vm: &VmContainer) -> Result<Vec<(i32, String)>> {
    if vm.state.effective_status() == VmStatus::Stopped {
        return Ok(Vec::new());
    }
    let list = sandbox::connect_agent(&vm.dir)?.list_processes(&vm.state.guest_id)?;
    Ok(list.into_iter().map(|p| (p.pid, p.command)).collect())
}

/// `husk exec` into a vm container: foreground in this process, or (`--detach`) in a
/// spawned exec supervisor whose pid goes into the pid file.
pub struct VmExec<'a> {
    pub dir: &'a Path,
    pub state: &'a VmContainerState,
    pub process: &'a oci_spec::runtime::Process,
    pub detach: bool,
    pub console_socket: Option<&'a Path>,
    pub pid_file: Option<&'a Path>,
    pub global: &'a GlobalOpts,
}

pub fn exec(e: VmExec<'_>) -> Result<i32> {
    let id = &e.state.id;
    let terminal = e.process.terminal().unwrap_or(false);
    let stdio = match (e.console_socket, terminal) {
        (Some(socket), true) => SupervisorStdio::ConsoleSocket(absolute(socket)?),
        (None, true) if e.detach => {
            bail!("exec with a terminal and --detach needs --console-socket")
        }
        (None, true) => SupervisorStdio::OwnTerminal,
        (Some(_), false) => bail!("--console-socket given but the process has no terminal"),
        (None, false) => SupervisorStdio::Inherited,
    };
    let exec_id = format!(
        "exec-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let process_json = serde_json::to_vec(e.process)?;
    if !e.detach {
        let signals = ForwardedSignals::block()?;
        if let Some(pid_file) = e.pid_file {
            write_pid_file(pid_file, std::process::id() as i32)?;
        }
        let status = supervisor::supervise_exec(
            ExecSupervision {
                dir: e.dir,
                state: e.state,
                exec_id: &exec_id,
                process_json: &process_json,
                stdio,
                ready: None,
            },
            &signals,
        )
        .with_context(|| format!("exec in container {id} failed"))?;
        return Ok(status);
    }
    let process_file = e.dir.join(format!("{exec_id}.json"));
    std::fs::write(&process_file, &process_json)
        .with_context(|| format!("cannot write {}", process_file.display()))?;
    let mut args = supervisor_global_args(e.global, e.dir);
    args.extend([
        "vm-exec-supervise".to_string(),
        "--process".into(),
        process_file.display().to_string(),
        "--exec-id".into(),
        exec_id.clone(),
    ]);
    if let SupervisorStdio::ConsoleSocket(socket) = &stdio {
        args.push("--console-socket".into());
        args.push(socket.display().to_string());
    }
    args.push(id.clone());
    let spawned = spawn_with_ready_pipe(&args, matches!(stdio, SupervisorStdio::ConsoleSocket(_)));
    let (mut child, ready) = match spawned {
        Ok(parts) => parts,
        Err(err) => {
            let _ = std::fs::remove_file(&process_file);
            return Err(err);
        }
    };
    let reported = supervisor::read_ready(ready);
    let _ = std::fs::remove_file(&process_file);
    if let Err(err) = reported {
        let _ = child.wait();
        return Err(anyhow!(err).context(format!("exec in container {id} failed")));
    }
    let pid = child.id() as i32;
    drop(child);
    if let Some(pid_file) = e.pid_file {
        write_pid_file(pid_file, pid)?;
    }
    Ok(0)
}

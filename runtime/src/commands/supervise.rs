//! Hidden subcommands: the supervisors `husk create` and `husk exec --detach` spawn
//! for a container (or exec'd process) in vm isolation. Not for users: they expect
//! the id claimed and a readiness pipe on fd 3.

use std::path::PathBuf;

use anyhow::{anyhow, Context as _, Result};
use clap::Args;
use husk_runtime::bundle::Bundle;
use husk_runtime::shared_kernel;
use husk_runtime::vm::signals::ForwardedSignals;
use husk_runtime::vm::state;
use husk_runtime::vm::supervisor::{
    self, ExecSupervision, Supervision, SupervisorError, SupervisorStdio, VmLaunch,
};

use super::{vm, GlobalOpts};

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    #[arg(long)]
    pub bundle: PathBuf,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    pub container_id: String,
}

#[derive(Debug, Args)]
pub struct ExecSuperviseArgs {
    /// OCI process JSON (removed once read).
    #[arg(long)]
    pub process: PathBuf,
    #[arg(long)]
    pub exec_id: String,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    pub container_id: String,
}

/// The container's supervisor: boots, creates, reports, relays; exits with the
/// container's status.
pub fn run(args: SuperviseArgs, global: &GlobalOpts) -> Result<i32> {
    let id = args.container_id.as_str();
    let ready = vm::inherited_ready_pipe()
        .ok_or_else(|| anyhow!("vm-supervise is started by husk create, not by hand"))?;
    let signals = ForwardedSignals::block()?;
    let dir = shared_kernel::container_dir(&global.root, id);
    let config = global.load_config()?;
    let launch = Bundle::load(&args.bundle)
        .map_err(SupervisorError::from)
        .and_then(|bundle| {
            VmLaunch::prepare(
                id,
                &bundle,
                &config,
                global.hypervisor.backend(),
                global.systemd_cgroup,
            )
        });
    let launch = match launch {
        Ok(launch) => launch,
        Err(e) => {
            let _ = husk_runtime::vm::sandbox::release_dir(&dir);
            // husk create prints the error; our stderr is the container's.
            tracing::error!(id, "container supervisor: {e}");
            drop(ready_report(ready, &format!("error: {e}")));
            return Ok(1);
        }
    };
    let stdio = match args.console_socket {
        Some(socket) => SupervisorStdio::ConsoleSocket(socket),
        None => SupervisorStdio::Inherited,
    };
    let status = supervisor::supervise(
        Supervision {
            launch,
            dir,
            stdio,
            ready: Some(ready),
            start_now: false,
            keep_state: true,
        },
        &signals,
    );
    match status {
        Ok(code) => Ok(code),
        Err(e) => {
            tracing::error!(id, "container supervisor: {e:#}");
            Ok(supervisor::VM_LOST_STATUS)
        }
    }
}

fn ready_report(ready: supervisor::ReadyPipe, message: &str) -> Result<()> {
    ready.report(message).context("report to husk create")
}

/// A detached exec's supervisor: starts the process, reports, relays; exits with
/// the process's status.
pub fn run_exec(args: ExecSuperviseArgs, global: &GlobalOpts) -> Result<i32> {
    let id = args.container_id.as_str();
    let ready = vm::inherited_ready_pipe()
        .ok_or_else(|| anyhow!("vm-exec-supervise is started by husk exec, not by hand"))?;
    let signals = ForwardedSignals::block()?;
    let dir = shared_kernel::container_dir(&global.root, id);
    let process_json = std::fs::read(&args.process);
    let _ = std::fs::remove_file(&args.process);
    let loaded = state::load(&dir, id)
        .map_err(anyhow::Error::from)
        .and_then(|st| {
            process_json
                .map(|json| (st, json))
                .with_context(|| format!("cannot read {}", args.process.display()))
        });
    let (st, process_json) = match loaded {
        Ok(parts) => parts,
        Err(e) => {
            tracing::error!(id, "exec supervisor: {e:#}");
            drop(ready_report(ready, &format!("error: {e:#}")));
            return Ok(1);
        }
    };
    let stdio = match args.console_socket {
        Some(socket) => SupervisorStdio::ConsoleSocket(socket),
        None => SupervisorStdio::Inherited,
    };
    let status = supervisor::supervise_exec(
        ExecSupervision {
            dir: &dir,
            state: &st,
            exec_id: &args.exec_id,
            process_json: &process_json,
            stdio,
            ready: Some(ready),
        },
        &signals,
    );
    match status {
        Ok(code) => Ok(code),
        Err(e) => {
            tracing::error!(id, exec_id = %args.exec_id, "exec supervisor: {e:#}");
            Ok(supervisor::VM_LOST_STATUS)
        }
    }
}

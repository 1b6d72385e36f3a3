//! `containerd-shim-husk-v2`: the containerd runtime v2 shim for husk
//! (`io.containerd.husk.v2`). One shim process per pod serves containerd's task API
//! and runs the pod's containers in one microVM through husk's runtime library.
//!
//! containerd runs `start` (find or spawn the pod's shim, print its address) and
//! `delete` (cleanup after a dead shim); `serve` is the long-lived shim that `start`
//! spawns. See docs/shim.md.

mod launch;
mod pod;
mod process;
mod service;

use std::collections::HashMap;
use std::fs::File;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use containerd_shim::protos::shim::shim_ttrpc::create_task;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Flags, Task};

use crate::pod::PodVm;
use crate::service::{Events, TaskService};

/// The runtime name containerd knows us by (`ctr run --runtime io.containerd.husk.v2`).
pub const RUNTIME_NAME: &str = "io.containerd.husk.v2";
/// containerd 2.x speaks `containerd.task.v3.Task`, 1.6/1.7 `containerd.task.v2.Task`;
/// the messages are the same, so the one service is registered under both names.
const TASK_V3: &str = "containerd.task.v3.";
const TASK_V2: &str = "containerd.task.v2.";
/// How long calls still in flight get once the shim shuts down.
const SERVER_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-husk-v2: {e}");
            return ExitCode::FAILURE;
        }
    };
    if flags.version {
        println!(
            "containerd-shim-husk-v2 ({RUNTIME_NAME}) {}",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let result = match flags.action.as_str() {
        "start" => launch::start(&flags),
        "delete" => launch::delete(&flags),
        launch::SERVE_ACTION => serve(&flags),
        other => Err(anyhow::anyhow!(
            "unknown action {other:?}: containerd runs `start` and `delete`"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("containerd-shim-husk-v2: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to the `log` fifo containerd opens in the bundle (it copies it to its own
/// log), or nowhere if there is none.
fn init_logging(flags: &Flags) {
    let Ok(log) = File::options().read(true).write(true).open("log") else {
        return;
    };
    let level = if flags.debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    tracing_subscriber::fmt()
        .with_writer(Mutex::new(log))
        .with_ansi(false)
        .with_max_level(level)
        .with_target(false)
        .init();
}

/// The long-lived shim of one pod: serves the task API until containerd shuts it
/// down after the pod's last container is deleted.
fn serve(flags: &Flags) -> anyhow::Result<()> {
    init_logging(flags);
    let bundle = launch::bundle_dir(flags)?;
    let pod_id = launch::pod_id(&bundle, &flags.id)?;
    let state_dir = launch::state_dir(&flags.address, &flags.namespace, &pod_id);
    tracing::info!(pod = %pod_id, state = %state_dir.display(), pid = std::process::id(), "shim serving");
    let ttrpc_address =
        std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS (containerd's event address)")?;
    let publisher = RemotePublisher::new(&ttrpc_address)
        .with_context(|| format!("connect to containerd's events at {ttrpc_address}"))?;
    let exit = Arc::new(ExitSignal::default());
    let pod = PodVm::spawn(state_dir);
    let service = TaskService::new(
        Events::new(publisher, flags.namespace.clone()),
        pod.clone(),
        exit.clone(),
    );
    let task: Arc<dyn Task + Send + Sync> = Arc::new(service);
    let v3 = create_task(task.clone());
    let v2: HashMap<_, _> = create_task(task)
        .into_iter()
        .map(|(name, s)| (name.replacen(TASK_V3, TASK_V2, 1), s))
        .collect();
    let mut server = ttrpc::Server::new()
        .add_listener(launch::LISTEN_FD)
        .context("serve on the listening socket")?
        .register_service(v3)
        .register_service(v2);
    server.start().context("start the ttrpc server")?;
    exit.wait();
    tracing::info!("shutting down");
    pod.shutdown();
    let socket = flags.socket.trim_start_matches("unix://");
    let _ = std::fs::remove_file(socket);
    // The server waits for calls in flight; a Wait that can never end must not keep
    // the shim alive after containerd asked it to go.
    let (done, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        server.shutdown();
        let _ = done.send(());
    });
    let _ = stopped.recv_timeout(SERVER_STOP_GRACE);
    Ok(())
}

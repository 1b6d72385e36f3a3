//! `husk run`: create and start a container; unless `--detach`, wait for it, relay
//! signals and its terminal, delete it, and exit with its exit status.

use anyhow::Result;
use clap::Args;
use husk_runtime::container::Container;
use husk_runtime::isolation::Isolation;
use husk_runtime::shared_kernel::{self, Access, SharedKernelError};

use super::create::{self, CreateOpts};
use super::foreground::{self, ConsoleListener};
use super::{vm, GlobalOpts};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Return once the container has started instead of waiting for it.
    #[arg(long, short)]
    pub detach: bool,
    /// Keep the container's state after it exits (foreground only).
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub opts: CreateOpts,
}

pub fn run(args: RunArgs, global: &GlobalOpts) -> Result<i32> {
    let id = args.opts.container_id.clone();
    // A foreground run in vm isolation supervises the sandbox VM in this process; a
    // detached one is create (a supervisor process) + start.
    husk_runtime::container_id::validate(&id)?;
    let bundle = create::load_bundle(&args.opts.bundle)?;
    let decision = create::decide_isolation(&id, &bundle, global)?;
    if decision.isolation == Isolation::Vm {
        if !args.detach {
            return vm::run_foreground(&args, global, &bundle, decision);
        }
        create::create_container(&args.opts, global, &bundle, decision, None)?;
        let mut container = Container::open(&global.root, &id, Access::Exclusive)?;
        if let Err(err) = container.start() {
            let _ = container.delete(true);
            return Err(err.into());
        }
        return Ok(0);
    }
    // A foreground terminal with no console socket is bridged to our own stdio.
    let wants_terminal = !args.detach && args.opts.console_socket.is_none() && bundle.terminal();
    let console = if wants_terminal {
        global.ensure_root()?;
        Some(ConsoleListener::bind(&global.root, &id)?)
    } else {
        None
    };

    let container = create::create_container(
        &args.opts,
        global,
        &bundle,
        decision,
        console.as_ref().map(|c| c.path()),
    )?
    .ok_or_else(|| anyhow::anyhow!("container {id}: isolation changed during create"))?;
    let pty = match &console {
        Some(console) => match console.receive_master() {
            Ok(fd) => Some(fd),
            Err(err) => {
                create::remove_failed_container(&global.root, &id);
                return Err(err);
            }
        },
        None => None,
    };
    drop(console);

    drop(container);
    let init = {
        let mut container = shared_kernel::open(&global.root, &id, Access::Exclusive)?;
        if let Err(err) = container.start() {
            let failure = SharedKernelError::libcontainer(&id, &err);
            drop(container);
            create::remove_failed_container(&global.root, &id);
            return Err(failure.into());
        }
        container.pid()
    };
    if args.detach {
        return Ok(0);
    }
    let init = init.ok_or_else(|| anyhow::anyhow!("container {id} started without an init pid"))?;
    let status = foreground::wait_for_init(init, pty);
    if !args.keep {
        match shared_kernel::open(&global.root, &id, Access::Exclusive) {
            Ok(mut container) => {
                if let Err(err) = container.delete(true) {
                    // The workload's exit status matters more than a cleanup failure.
                    tracing::error!(id, error = %shared_kernel::describe(&err), "delete after run");
                }
            }
            Err(err) => tracing::error!(id, %err, "delete after run"),
        }
    }
    status
}

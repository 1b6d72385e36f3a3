//! `husk kill`: signal a container's init, or with `--all` every process in it.

use anyhow::{bail, Result};
use clap::Args;
use husk_runtime::shared_kernel::{self, Access, SharedKernelError};
use husk_runtime::signal::parse_signal;
use libcontainer::container::ContainerStatus;

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Send the signal to every process of the container, not only its init.
    #[arg(long, short)]
    pub all: bool,
    pub container_id: String,
    /// Signal name (TERM, SIGKILL) or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

pub fn run(args: KillArgs, global: &GlobalOpts) -> Result<()> {
    let id = &args.container_id;
    let signal = parse_signal(&args.signal)?;
    if let Some((dir, st)) = super::vm::lookup(global, id)? {
        return super::vm::kill(&dir, &st, signal as i32, args.all);
    }
    let mut container = shared_kernel::open(&global.root, id, Access::Exclusive)?;
    // containerd recognises "container not running" and treats the kill as done.
    if container.status() == ContainerStatus::Stopped && !args.all {
        bail!("cannot signal container {id}: container not running");
    }
    container
        .kill(signal, args.all)
        .map_err(|err| SharedKernelError::libcontainer(id, &err))?;
    Ok(())
}

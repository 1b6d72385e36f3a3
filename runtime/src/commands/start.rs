//! `husk start`: let a created container's process run.

use anyhow::{bail, Result};
use clap::Args;
use husk_runtime::shared_kernel::{self, Access, SharedKernelError};
use libcontainer::container::ContainerStatus;

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct StartArgs {
    pub container_id: String,
}

pub fn run(args: StartArgs, global: &GlobalOpts) -> Result<()> {
    let id = &args.container_id;
    if let Some((dir, st)) = super::vm::lookup(global, id)? {
        return super::vm::start(&dir, &st);
    }
    let mut container = shared_kernel::open(&global.root, id, Access::Exclusive)?;
    let status = container.status();
    if status != ContainerStatus::Created {
        bail!(
            "cannot start container {id}: it is {}; only a created container can be started",
            shared_kernel::status_name(status)
        );
    }
    container
        .start()
        .map_err(|err| SharedKernelError::libcontainer(id, &err))?;
    Ok(())
}

//! `husk pause`: freeze every process of a container.

use anyhow::Result;
use clap::Args;
use husk_runtime::shared_kernel::{self, Access, SharedKernelError};

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct PauseArgs {
    pub container_id: String,
}

pub fn run(args: PauseArgs, global: &GlobalOpts) -> Result<()> {
    let id = &args.container_id;
    if let Some((dir, st)) = super::vm::lookup(global, id)? {
        return super::vm::pause(&dir, &st, true);
    }
    let mut container = shared_kernel::open(&global.root, id, Access::Exclusive)?;
    container
        .pause()
        .map_err(|err| SharedKernelError::libcontainer(id, &err))?;
    Ok(())
}

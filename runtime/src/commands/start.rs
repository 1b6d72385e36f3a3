//! `husk start`: let a created container's process run.

use anyhow::Result;
use clap::Args;
use husk_runtime::container::Container;
use husk_runtime::shared_kernel::Access;

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct StartArgs {
    pub container_id: String,
}

pub fn run(args: StartArgs, global: &GlobalOpts) -> Result<()> {
    let mut container = Container::open(&global.root, &args.container_id, Access::Exclusive)?;
    container.start()?;
    Ok(())
}

//! `husk pause`: freeze every process of a container.

use anyhow::Result;
use clap::Args;
use husk_runtime::container::Container;
use husk_runtime::shared_kernel::Access;

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct PauseArgs {
    pub container_id: String,
}

pub fn run(args: PauseArgs, global: &GlobalOpts) -> Result<()> {
    let mut container = Container::open(&global.root, &args.container_id, Access::Exclusive)?;
    container.pause()?;
    Ok(())
}

//! `husk state`: the container's state as runc prints it.

use anyhow::Result;
use clap::Args;
use husk_runtime::container::Container;
use husk_runtime::shared_kernel::Access;

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct StateArgs {
    pub container_id: String,
}

pub fn run(args: StateArgs, global: &GlobalOpts) -> Result<()> {
    let container = Container::open(&global.root, &args.container_id, Access::Shared)?;
    println!("{}", serde_json::to_string_pretty(&container.state())?);
    Ok(())
}

//! `husk state`: the container's state as runc prints it.

use anyhow::Result;
use clap::Args;
use husk_runtime::shared_kernel::{self, Access};

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct StateArgs {
    pub container_id: String,
}

pub fn run(args: StateArgs, global: &GlobalOpts) -> Result<()> {
    if let Some((_, st)) = super::vm::lookup(global, &args.container_id)? {
        println!(
            "{}",
            serde_json::to_string_pretty(&super::vm::runtime_state(&st))?
        );
        return Ok(());
    }
    let container = shared_kernel::open(&global.root, &args.container_id, Access::Shared)?;
    let state = shared_kernel::runtime_state(&container);
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(())
}

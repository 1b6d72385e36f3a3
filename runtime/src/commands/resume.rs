//! `husk resume`: thaw a paused container.

use anyhow::Result;
use clap::Args;
use husk_runtime::shared_kernel::{self, Access, SharedKernelError};

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct ResumeArgs {
    pub container_id: String,
}

pub fn run(args: ResumeArgs, global: &GlobalOpts) -> Result<()> {
    let id = &args.container_id;
    if let Some((dir, st)) = super::vm::lookup(global, id)? {
        return super::vm::pause(&dir, &st, false);
    }
    let mut container = shared_kernel::open(&global.root, id, Access::Exclusive)?;
    container
        .resume()
        .map_err(|err| SharedKernelError::libcontainer(id, &err))?;
    Ok(())
}

//! `husk kill`: signal a container's init, or with `--all` every process in it.

use anyhow::Result;
use clap::Args;
use husk_runtime::container::Container;
use husk_runtime::shared_kernel::Access;
use husk_runtime::signal::parse_signal;

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
    let signal = parse_signal(&args.signal)?;
    let mut container = Container::open(&global.root, &args.container_id, Access::Exclusive)?;
    container.kill(signal, args.all)?;
    Ok(())
}

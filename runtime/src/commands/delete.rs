//! `husk delete`: remove a stopped container (any container with `--force`).

use anyhow::{Context as _, Result};
use clap::Args;
use husk_runtime::container::{Container, ContainerError};
use husk_runtime::shared_kernel::{self, Access, SharedKernelError};
use husk_runtime::vm::sandbox;

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kill the container first if it is still running.
    #[arg(long, short)]
    pub force: bool,
    pub container_id: String,
}

pub fn run(args: DeleteArgs, global: &GlobalOpts) -> Result<()> {
    let id = &args.container_id;
    match Container::open(&global.root, id, Access::Exclusive) {
        Ok(container) => container
            .delete(args.force)
            .with_context(|| format!("cannot delete container {id}")),
        Err(ContainerError::SharedKernel(SharedKernelError::NotFound(_))) => {
            remove_leftover(global, id, args.force)
        }
        Err(err) => Err(err.into()),
    }
}

/// What a create that died early leaves: a vm sandbox without a container state (its
/// husk was killed while booting), or a bare directory.
fn remove_leftover(global: &GlobalOpts, id: &str, force: bool) -> Result<()> {
    let dir = shared_kernel::container_dir(&global.root, id);
    if sandbox::is_sandbox_dir(&dir) {
        return sandbox::teardown_dir(&dir, id, force)
            .with_context(|| format!("cannot delete container {id}"));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    if force {
        return Ok(());
    }
    Err(SharedKernelError::NotFound(id.to_string()).into())
}

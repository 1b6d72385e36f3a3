//! `husk delete`: remove a stopped container (any container with `--force`).

use anyhow::{bail, Context as _, Result};
use clap::Args;
use husk_runtime::container_id;
use husk_runtime::shared_kernel::{self, Access, SharedKernelError};
use husk_runtime::vm::sandbox as vm_sandbox;
use libcontainer::container::ContainerStatus;

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
    container_id::validate(id)?;
    // What a vm-isolation `run` left (its husk was killed), or one still running.
    if let Some((dir, st)) = super::vm::lookup(global, id)? {
        return super::vm::delete(&dir, &st, args.force);
    }
    let dir = shared_kernel::container_dir(&global.root, id);
    if vm_sandbox::is_sandbox_dir(&dir) {
        return vm_sandbox::remove_stale(&dir, id, args.force)
            .with_context(|| format!("cannot delete container {id}"));
    }
    let mut container = match shared_kernel::open(&global.root, id, Access::Exclusive) {
        Ok(container) => container,
        Err(SharedKernelError::NotFound(_)) => {
            // A create that died before writing its state can leave a bare directory.
            let dir = shared_kernel::container_dir(&global.root, id);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot remove {}", dir.display()))?;
            }
            if args.force {
                return Ok(());
            }
            return Err(SharedKernelError::NotFound(id.clone()).into());
        }
        Err(err) => return Err(err.into()),
    };
    let status = container.status();
    if !args.force && !matches!(status, ContainerStatus::Stopped | ContainerStatus::Created) {
        bail!(
            "cannot delete container {id}: it is {}; stop it first or use --force",
            shared_kernel::status_name(status)
        );
    }
    container
        .delete(args.force || status == ContainerStatus::Created)
        .map_err(|err| SharedKernelError::libcontainer(id, &err))?;
    Ok(())
}

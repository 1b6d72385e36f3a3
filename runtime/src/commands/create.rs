//! `husk create`: set a container up from its bundle; its process waits for `start`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use husk_runtime::bundle::Bundle;
use husk_runtime::container_id;
use husk_runtime::isolation::{Isolation, IsolationDecision, IsolationPolicy};
use husk_runtime::pidfile::write_pid_file;
use husk_runtime::shared_kernel::{self, Access, SharedKernelError};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;

use super::GlobalOpts;

/// Options shared by `create` and `run`.
#[derive(Debug, Args)]
pub struct CreateOpts {
    /// The bundle directory, holding config.json.
    #[arg(long, short, default_value = ".")]
    pub bundle: PathBuf,
    /// Write the container's init pid to this file.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master when the process has a terminal.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Do not use pivot_root to enter the rootfs (for ramdisk roots).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility: husk never creates a session keyring.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass this many file descriptors after stdio (3, 4, …) to the process.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    /// The container id.
    pub container_id: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub opts: CreateOpts,
}

pub fn run(args: CreateArgs, global: &GlobalOpts) -> Result<()> {
    let id = args.opts.container_id.as_str();
    container_id::validate(id)?;
    let bundle = load_bundle(&args.opts.bundle)?;
    let decision = decide_isolation(id, &bundle, global)?;
    create_container(&args.opts, global, &bundle, decision, None).map(|_| ())
}

/// What `create_container` made.
pub type Created = Option<Container>;

/// Loads and checks the bundle (config.json and the rootfs) with errors a user can
/// act on.
pub fn load_bundle(bundle: &Path) -> Result<Bundle> {
    let bundle = Bundle::load(bundle)?;
    bundle.check_rootfs()?;
    Ok(bundle)
}

/// Decides (and logs) the isolation of a workload.
pub fn decide_isolation(
    id: &str,
    bundle: &Bundle,
    global: &GlobalOpts,
) -> Result<IsolationDecision> {
    let config = global.load_config()?;
    let decision = IsolationPolicy {
        config: &config,
        flag: global.isolation,
    }
    .decide(bundle.annotations())?;
    tracing::info!(
        id,
        isolation = %decision.isolation,
        source = %decision.source,
        "isolation chosen"
    );
    Ok(decision)
}

/// Creates the container in the `created` state: in container isolation returns it,
/// in vm isolation (a supervisor holds it) `None`. `foreground_console` is the socket
/// `run` listens on for the pty master of a foreground terminal.
pub fn create_container(
    opts: &CreateOpts,
    global: &GlobalOpts,
    bundle: &Bundle,
    decision: IsolationDecision,
    foreground_console: Option<&Path>,
) -> Result<Created> {
    let id = opts.container_id.as_str();
    if decision.isolation == Isolation::Vm {
        super::vm::create(opts, global, bundle, decision)?;
        return Ok(None);
    }

    if shared_kernel::exists(&global.root, id) {
        bail!("container id {id} is already in use");
    }
    global.ensure_root()?;

    let console_socket = opts.console_socket.as_deref().or(foreground_console);
    let built = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(&global.root)
        .and_then(|b| b.with_pid_file::<PathBuf>(None))
        .map(|b| {
            b.with_console_socket(console_socket)
                .with_preserved_fds(opts.preserve_fds)
                .as_init(&bundle.dir)
                .with_systemd(global.systemd_cgroup)
                // libcontainer only uses `detach` to demand a console socket for a
                // terminal; `run` in the foreground supplies its own socket.
                .with_detach(opts.console_socket.is_some() || foreground_console.is_some())
                .with_no_pivot(opts.no_pivot)
        })
        .and_then(|b| b.build());
    let container = match built {
        Ok(container) => container,
        Err(err) => {
            let failure = SharedKernelError::libcontainer(id, &err);
            remove_failed_container(&global.root, id);
            return Err(failure.into());
        }
    };

    if let Some(pid_file) = &opts.pid_file {
        let pid = container
            .pid()
            .ok_or_else(|| anyhow!("container {id} was created without an init pid"))?;
        if let Err(err) = write_pid_file(pid_file, pid.as_raw()) {
            remove_failed_container(&global.root, id);
            return Err(err.into());
        }
    }
    Ok(Some(container))
}

/// Removes whatever a failed create left: the init process, its cgroup, the state dir.
pub fn remove_failed_container(root: &Path, id: &str) {
    let dir = shared_kernel::container_dir(root, id);
    // Another husk's VM sandbox of the same id (it won a race for the id): never
    // touch it, its rootfs is bind-mounted inside.
    if !dir.exists() || husk_runtime::vm::sandbox::is_sandbox_dir(&dir) {
        return;
    }
    if let Ok(mut container) = shared_kernel::open(root, id, Access::Exclusive) {
        if let Err(err) = container.delete(true) {
            tracing::warn!(id, error = %shared_kernel::describe(&err), "cleanup after failed create");
        }
    }
    if dir.exists() {
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(id, %err, "cannot remove state dir after failed create");
        }
    }
}

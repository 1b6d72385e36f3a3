//! `husk create`: set a container up from its bundle; its process waits for `start`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use husk_runtime::container_id;
use husk_runtime::isolation::{Isolation, IsolationDecision, IsolationPolicy};
use husk_runtime::pidfile::write_pid_file;
use husk_runtime::shared_kernel::{self, Access, SharedKernelError};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::Spec;

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
    create_container(&args.opts, global, None).map(|_| ())
}

/// What `create_container` made.
pub type Created = Option<Container>;

/// Loads and checks the bundle's config.json with errors a user can act on.
pub fn load_bundle_spec(bundle: &Path) -> Result<(PathBuf, Spec)> {
    let bundle = std::fs::canonicalize(bundle)
        .with_context(|| format!("bundle directory {} cannot be used", bundle.display()))?;
    let config_path = bundle.join("config.json");
    let text = match std::fs::read_to_string(&config_path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            bail!("bundle {} has no config.json", bundle.display())
        }
        Err(err) => {
            return Err(err).with_context(|| format!("cannot read {}", config_path.display()))
        }
    };
    let spec: Spec = serde_json::from_str(&text)
        .with_context(|| format!("malformed config.json in bundle {}", bundle.display()))?;
    if !spec.version().starts_with("1.") {
        bail!(
            "config.json in bundle {} has ociVersion {:?}; husk supports 1.x",
            bundle.display(),
            spec.version()
        );
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| anyhow!("config.json in bundle {} has no root", bundle.display()))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    if !rootfs.is_dir() {
        bail!(
            "rootfs {} named by config.json in bundle {} does not exist or is not a directory",
            rootfs.display(),
            bundle.display()
        );
    }
    if spec.process().is_none() {
        bail!("config.json in bundle {} has no process", bundle.display());
    }
    Ok((bundle, spec))
}

/// Decides (and logs) the isolation of a workload.
pub fn decide_isolation(id: &str, spec: &Spec, global: &GlobalOpts) -> Result<IsolationDecision> {
    let config = global.load_config()?;
    let decision = IsolationPolicy {
        config: &config,
        flag: global.isolation,
    }
    .decide(spec.annotations().as_ref())?;
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
    foreground_console: Option<&Path>,
) -> Result<Created> {
    let id = opts.container_id.as_str();
    container_id::validate(id)?;
    let (bundle, spec) = load_bundle_spec(&opts.bundle)?;

    let decision = decide_isolation(id, &spec, global)?;
    if decision.isolation == Isolation::Vm {
        super::vm::create(opts, global, &bundle, decision)?;
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
                .as_init(&bundle)
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

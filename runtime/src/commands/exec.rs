//! `husk exec`: run another process inside a running container.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use husk_runtime::container::{check, lookup_vm, Operation, Status};
use husk_runtime::pidfile::write_pid_file;
use husk_runtime::shared_kernel::{self, Access, SharedKernelError};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::{Process, Spec, UserBuilder};

use super::foreground::{self, ConsoleListener};
use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// A process.json describing the process (instead of the command and flags).
    #[arg(long, short)]
    pub process: Option<PathBuf>,
    /// Return once the process has started.
    #[arg(long, short)]
    pub detach: bool,
    /// Write the process's pid to this file.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Give the process a terminal.
    #[arg(long, short)]
    pub tty: bool,
    /// Working directory inside the container.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Set an environment variable (KEY=VALUE); repeatable.
    #[arg(long, short)]
    pub env: Vec<String>,
    /// Run as UID[:GID].
    #[arg(long, short)]
    pub user: Option<String>,
    /// Additional group ids; repeatable.
    #[arg(long = "additional-gids", short = 'g')]
    pub additional_gids: Vec<u32>,
    /// Add a capability (CAP_…); repeatable.
    #[arg(long)]
    pub cap: Vec<String>,
    /// Set no_new_privs for the process.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Pass this many file descriptors after stdio to the process.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    /// Allow exec in a paused container.
    #[arg(long)]
    pub ignore_paused: bool,
    /// SELinux label for the process.
    #[arg(long)]
    pub process_label: Option<String>,
    /// AppArmor profile for the process.
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Sub-cgroup to run the process in.
    #[arg(long)]
    pub cgroup: Option<String>,
    pub container_id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// A process.json we wrote for this exec; removed when dropped.
struct ProcessFile(PathBuf);

impl Drop for ProcessFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn run(args: ExecArgs, global: &GlobalOpts) -> Result<i32> {
    let id = args.container_id.clone();
    let exec = Operation::Exec {
        ignore_paused: args.ignore_paused,
    };
    if let Some(vm) = lookup_vm(&global.root, &id)? {
        check(&id, exec, vm.status())?;
        let (dir, st) = (&vm.dir, &vm.state);
        if args.preserve_fds > 0 {
            bail!(
                "cannot exec in container {id}: --preserve-fds cannot pass descriptors into a VM"
            );
        }
        let process = match &args.process {
            Some(path) => read_process(path)?,
            None => process_from_flags(&args, &load_spec(&st.bundle, &id)?)?,
        };
        return super::vm::exec(super::vm::VmExec {
            dir,
            state: st,
            process: &process,
            detach: args.detach,
            console_socket: args.console_socket.as_deref(),
            pid_file: args.pid_file.as_deref(),
            global,
        });
    }
    let container = shared_kernel::open(&global.root, &id, Access::Shared)?;
    check(&id, exec, Status::of_shared_kernel(container.status()))?;

    let (process_path, _written) = match &args.process {
        Some(path) => (path.clone(), None),
        None => {
            let process =
                process_from_flags(&args, &load_spec(container.bundle(), container.id())?)?;
            let path = shared_kernel::container_dir(&global.root, &id)
                .join(format!("exec-{}.json", std::process::id()));
            std::fs::write(&path, serde_json::to_vec(&process)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            (path.clone(), Some(ProcessFile(path)))
        }
    };
    let terminal = read_process(&process_path)?.terminal().unwrap_or(false);

    let console = if terminal && args.console_socket.is_none() && !args.detach {
        Some(ConsoleListener::bind(&global.root, &format!("{id}-exec"))?)
    } else {
        None
    };
    let console_socket = args
        .console_socket
        .as_deref()
        .or(console.as_ref().map(|c| c.path()));

    let pid = ContainerBuilder::new(id.clone(), SyscallType::default())
        .with_root_path(&global.root)
        .and_then(|b| b.with_pid_file::<PathBuf>(None))
        .and_then(|b| {
            b.with_console_socket(console_socket)
                .with_preserved_fds(args.preserve_fds)
                .as_tenant()
                .with_detach(console_socket.is_some())
                .with_process(Some(&process_path))
                .with_ignore_paused(args.ignore_paused)
                .with_sub_cgroup(args.cgroup.clone())
                .build()
        })
        .map_err(|err| SharedKernelError::libcontainer(&id, &err))?;

    // Others may act on the container while this process runs.
    drop(container);
    if let Some(pid_file) = &args.pid_file {
        write_pid_file(pid_file, pid.as_raw())?;
    }
    let pty = match &console {
        Some(console) => Some(console.receive_master()?),
        None => None,
    };
    drop(console);
    if args.detach {
        return Ok(0);
    }
    foreground::wait_for_init(pid, pty)
}

fn read_process(path: &Path) -> Result<Process> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("malformed process file {}", path.display()))
}

/// The config.json of a container's bundle.
fn load_spec(bundle: &Path, id: &str) -> Result<Spec> {
    Spec::load(bundle.join("config.json"))
        .with_context(|| format!("cannot read the config.json of container {id}"))
}

/// Builds the exec process from the container's own process and the command-line flags.
fn process_from_flags(args: &ExecArgs, spec: &Spec) -> Result<Process> {
    if args.command.is_empty() {
        bail!("exec needs a command (or --process FILE)");
    }
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args.command.clone()));
    process.set_terminal(Some(args.tty));
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.clone());
    }
    if !args.env.is_empty() {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let mut order = Vec::new();
        for entry in process
            .env()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .chain(args.env.clone())
        {
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| anyhow!("environment entry {entry:?} is not KEY=VALUE"))?;
            if env.insert(key.to_string(), value.to_string()).is_none() {
                order.push(key.to_string());
            }
        }
        process.set_env(Some(
            order.iter().map(|k| format!("{k}={}", env[k])).collect(),
        ));
    }
    if let Some(user) = &args.user {
        let (uid, gid) = match user.split_once(':') {
            Some((uid, gid)) => (uid, Some(gid)),
            None => (user.as_str(), None),
        };
        let uid: u32 = uid
            .parse()
            .map_err(|_| anyhow!("--user {user:?}: expected UID[:GID] as numbers"))?;
        let gid: u32 = match gid {
            Some(gid) => gid
                .parse()
                .map_err(|_| anyhow!("--user {user:?}: expected UID[:GID] as numbers"))?,
            None => 0,
        };
        let mut builder = UserBuilder::default().uid(uid).gid(gid);
        if !args.additional_gids.is_empty() {
            builder = builder.additional_gids(args.additional_gids.clone());
        }
        process.set_user(builder.build()?);
    } else if !args.additional_gids.is_empty() {
        let mut user = process.user().clone();
        user.set_additional_gids(Some(args.additional_gids.clone()));
        process.set_user(user);
    }
    if args.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    if let Some(profile) = &args.apparmor {
        process.set_apparmor_profile(Some(profile.clone()));
    }
    if let Some(label) = &args.process_label {
        process.set_selinux_label(Some(label.clone()));
    }
    if !args.cap.is_empty() {
        add_capabilities(&mut process, &args.cap)?;
    }
    Ok(process)
}

fn add_capabilities(process: &mut Process, caps: &[String]) -> Result<()> {
    use oci_spec::runtime::Capability;
    use std::str::FromStr;
    let mut set = process.capabilities().clone().unwrap_or_default();
    for name in caps {
        let cap = Capability::from_str(name).map_err(|_| anyhow!("unknown capability {name:?}"))?;
        let add = |existing: &Option<oci_spec::runtime::Capabilities>| {
            let mut caps = existing.clone().unwrap_or_default();
            caps.insert(cap);
            Some(caps)
        };
        let (b, e, p) = (
            add(set.bounding()),
            add(set.effective()),
            add(set.permitted()),
        );
        set.set_bounding(b);
        set.set_effective(e);
        set.set_permitted(p);
    }
    process.set_capabilities(Some(set));
    Ok(())
}

//! One file per subcommand, as in runc and youki: a reader finds `kill` in `kill.rs`.

mod check;
mod create;
mod delete;
mod events;
mod exec;
mod features;
mod foreground;
mod kill;
mod list;
mod pause;
mod ps;
mod resume;
mod run;
mod spec;
mod start;
mod state;
mod supervise;
mod update;
mod vm;

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use husk_runtime::config::Config;
use husk_runtime::isolation::Isolation;
use husk_runtime::logging::LogFormat;

/// The VM backends a workload in `vm` isolation can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HypervisorChoice {
    /// builtin where /dev/kvm has hardware virtualization (and husk-vmm is installed),
    /// else QEMU.
    Auto,
    /// husk-vmm, the built-in microVM monitor.
    Builtin,
    /// QEMU, with KVM where usable, else TCG emulation.
    Qemu,
}

impl HypervisorChoice {
    pub fn backend(self) -> husk_runtime::hypervisor::Backend {
        use husk_runtime::hypervisor::Backend;
        match self {
            HypervisorChoice::Auto => Backend::Auto,
            HypervisorChoice::Builtin => Backend::Builtin,
            HypervisorChoice::Qemu => Backend::Qemu,
        }
    }
}

/// husk runs OCI containers behind their own guest kernel (vm isolation) or, for trusted
/// workloads, in host namespaces (container isolation). Its commands follow runc's.
#[derive(Debug, Parser)]
#[command(name = "husk", version = concat!(env!("CARGO_PKG_VERSION"), "\nspec: ", "1.2.0"))]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after the subcommand.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Directory for container state (keep it on tmpfs).
    #[arg(long, global = true, default_value = "/run/husk")]
    pub root: PathBuf,
    /// Append log lines to this file instead of discarding them.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Format of log lines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log debug detail.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Manage cgroups through systemd (cgroupsPath as slice:prefix:name).
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Isolation for new workloads: vm (own guest kernel) or container (shared kernel).
    #[arg(long, global = true, value_enum)]
    pub isolation: Option<Isolation>,
    /// VM backend for vm isolation.
    #[arg(long, global = true, value_enum, default_value_t = HypervisorChoice::Auto)]
    pub hypervisor: HypervisorChoice,
    /// Operator config file [default: /etc/husk/config.toml].
    #[arg(long, global = true, env = "HUSK_CONFIG")]
    pub config: Option<PathBuf>,
}

impl GlobalOpts {
    /// Loads the operator config named by `--config`, or the default one if present.
    pub fn load_config(&self) -> Result<Config> {
        Ok(Config::load(self.config.as_deref())?)
    }

    /// Creates the state root if needed; only root may read it.
    pub fn ensure_root(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .with_context(|| format!("cannot create state root {}", self.root.display()))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container from a bundle (it waits for `start`).
    Create(create::CreateArgs),
    /// Start a created container's process.
    Start(start::StartArgs),
    /// Create and start a container, then wait for it unless --detach.
    Run(run::RunArgs),
    /// Print a container's state as JSON.
    State(state::StateArgs),
    /// Send a signal to a container's init (or all its processes).
    Kill(kill::KillArgs),
    /// Delete a container and everything it holds.
    Delete(delete::DeleteArgs),
    /// Run a new process inside a running container.
    Exec(exec::ExecArgs),
    /// List the processes of a container.
    Ps(ps::PsArgs),
    /// List containers.
    List(list::ListArgs),
    /// Write a template config.json.
    Spec(spec::SpecArgs),
    /// Print the features this runtime supports, as JSON.
    Features(features::FeaturesArgs),
    /// Freeze all processes of a container.
    Pause(pause::PauseArgs),
    /// Thaw a paused container.
    Resume(resume::ResumeArgs),
    /// Change a container's resource limits.
    Update(update::UpdateArgs),
    /// Print container events and resource statistics.
    Events(events::EventsArgs),
    /// Report what this host can do (KVM, QEMU, guest artifacts, cgroups) and whether
    /// vm isolation is usable; exit 1 if not.
    Check(check::CheckArgs),
    /// (internal) The supervisor of a container in vm isolation.
    #[command(hide = true)]
    VmSupervise(supervise::SuperviseArgs),
    /// (internal) The supervisor of a detached exec in vm isolation.
    #[command(hide = true)]
    VmExecSupervise(supervise::ExecSuperviseArgs),
}

impl Command {
    /// Whether this command forks a process that joins a container (and so runs this
    /// binary inside it until the workload is exec'd).
    pub fn enters_container(&self) -> bool {
        matches!(
            self,
            Command::Create(_) | Command::Run(_) | Command::Exec(_)
        )
    }
}

/// Runs one subcommand and returns the process exit code.
pub fn dispatch(command: Command, global: &GlobalOpts) -> Result<i32> {
    match command {
        Command::Create(args) => create::run(args, global).map(|()| 0),
        Command::Start(args) => start::run(args, global).map(|()| 0),
        Command::Run(args) => run::run(args, global),
        Command::State(args) => state::run(args, global).map(|()| 0),
        Command::Kill(args) => kill::run(args, global).map(|()| 0),
        Command::Delete(args) => delete::run(args, global).map(|()| 0),
        Command::Exec(args) => exec::run(args, global),
        Command::Ps(args) => ps::run(args, global).map(|()| 0),
        Command::List(args) => list::run(args, global).map(|()| 0),
        Command::Spec(args) => spec::run(args).map(|()| 0),
        Command::Features(args) => features::run(args).map(|()| 0),
        Command::Pause(args) => pause::run(args, global).map(|()| 0),
        Command::Resume(args) => resume::run(args, global).map(|()| 0),
        Command::Update(args) => update::run(args, global).map(|()| 0),
        Command::Events(args) => events::run(args, global).map(|()| 0),
        Command::Check(args) => check::run(args, global),
        Command::VmSupervise(args) => supervise::run(args, global),
        Command::VmExecSupervise(args) => supervise::run_exec(args, global),
    }
}

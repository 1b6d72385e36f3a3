//! `husk update`: change a running container's resource limits (`docker update`).

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use husk_runtime::container::Container;
use husk_runtime::shared_kernel::Access;
use husk_runtime::units::parse_size;
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// LinuxResources JSON from a file, or `-` for stdin; other flags then are ignored.
    #[arg(long, short)]
    pub resources: Option<PathBuf>,
    /// Memory limit (e.g. 64m); -1 for none.
    #[arg(long, short, value_parser = parse_size)]
    pub memory: Option<i64>,
    /// Memory plus swap limit; -1 for none.
    #[arg(long, value_parser = parse_size)]
    pub memory_swap: Option<i64>,
    /// Soft memory limit.
    #[arg(long, value_parser = parse_size)]
    pub memory_reservation: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long)]
    pub cpu_shares: Option<u64>,
    /// CFS period in microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CFS quota in microseconds; -1 for none.
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// Realtime period in microseconds.
    #[arg(long)]
    pub cpu_rt_period: Option<u64>,
    /// Realtime runtime in microseconds.
    #[arg(long)]
    pub cpu_rt_runtime: Option<i64>,
    /// CPUs the container may use (0-3, 0,1).
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the container may use.
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Maximum number of processes; -1 for none.
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Block IO weight (10-1000).
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    pub container_id: String,
}

pub fn run(args: UpdateArgs, global: &GlobalOpts) -> Result<()> {
    let container = Container::open(&global.root, &args.container_id, Access::Exclusive)?;
    let resources = match &args.resources {
        Some(path) => read_resources(path)?,
        None => resources_from_flags(&args),
    };
    container
        .update(&resources)
        .with_context(|| format!("cannot update container {}", args.container_id))?;
    Ok(())
}

fn read_resources(path: &std::path::Path) -> Result<LinuxResources> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read resources from stdin")?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    serde_json::from_str(&text)
        .context("malformed resources JSON (expected a LinuxResources object)")
}

fn resources_from_flags(args: &UpdateArgs) -> LinuxResources {
    let mut resources = LinuxResources::default();
    if args.memory.is_some() || args.memory_swap.is_some() || args.memory_reservation.is_some() {
        let mut memory = LinuxMemory::default();
        memory.set_limit(args.memory);
        memory.set_swap(args.memory_swap);
        memory.set_reservation(args.memory_reservation);
        resources.set_memory(Some(memory));
    }
    let cpu_given = args.cpu_shares.is_some()
        || args.cpu_period.is_some()
        || args.cpu_quota.is_some()
        || args.cpu_rt_period.is_some()
        || args.cpu_rt_runtime.is_some()
        || args.cpuset_cpus.is_some()
        || args.cpuset_mems.is_some();
    if cpu_given {
        let mut cpu = LinuxCpu::default();
        cpu.set_shares(args.cpu_shares);
        cpu.set_period(args.cpu_period);
        cpu.set_quota(args.cpu_quota);
        cpu.set_realtime_period(args.cpu_rt_period);
        cpu.set_realtime_runtime(args.cpu_rt_runtime);
        cpu.set_cpus(args.cpuset_cpus.clone());
        cpu.set_mems(args.cpuset_mems.clone());
        resources.set_cpu(Some(cpu));
    }
    if let Some(limit) = args.pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(limit);
        resources.set_pids(Some(pids));
    }
    if let Some(weight) = args.blkio_weight {
        let mut blkio = LinuxBlockIo::default();
        blkio.set_weight(Some(weight));
        resources.set_block_io(Some(blkio));
    }
    resources
}

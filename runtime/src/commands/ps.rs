//! `husk ps`: the processes of a container (`docker top` calls this with --format json).
//! In vm isolation the json form lists the host processes standing for the container
//! (supervisor, VMM, helpers) and the table the guest's processes (docs/runtime.md).

use std::process::Command;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use husk_runtime::container::Container;
use husk_runtime::shared_kernel::Access;

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct PsArgs {
    /// table (ps -ef style, filtered to the container) or json (a list of pids).
    #[arg(long, short, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    pub container_id: String,
    /// Options for ps(1) in table format [default: -ef].
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_options: Vec<String>,
}

pub fn run(args: PsArgs, global: &GlobalOpts) -> Result<()> {
    let container = Container::open(&global.root, &args.container_id, Access::Shared)?;
    // Consumers read the json list as host pids (docker top looks them up in the
    // host's ps): the host processes that stand for the container.
    let pids = container.host_pids()?;
    if args.format == "json" {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(());
    }
    if let Container::Vm(vm) = &container {
        // The table shows a vm container's processes in the VM's pid space.
        println!("{:>7} CMD (guest pids)", "PID");
        for (pid, command) in super::vm::processes(vm)? {
            println!("{pid:>7} {command}");
        }
        return Ok(());
    }
    let options = if args.ps_options.is_empty() {
        vec!["-ef".to_string()]
    } else {
        args.ps_options.clone()
    };
    let output = Command::new("ps")
        .args(&options)
        .output()
        .context("cannot run ps")?;
    if !output.status.success() {
        bail!(
            "ps {}: {}",
            options.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let header = lines.next().ok_or_else(|| anyhow!("ps printed nothing"))?;
    let pid_column = header
        .split_whitespace()
        .position(|name| name == "PID")
        .ok_or_else(|| anyhow!("ps output has no PID column"))?;
    println!("{header}");
    for line in lines {
        let pid = line
            .split_whitespace()
            .nth(pid_column)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|pid| pids.contains(&pid)) {
            println!("{line}");
        }
    }
    Ok(())
}

//! `husk list`: every container under the runtime root.

use anyhow::{Context as _, Result};
use clap::Args;
use husk_runtime::container::Container;
use husk_runtime::shared_kernel::{Access, RuntimeState};

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// table or json.
    #[arg(long, short, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Print only the ids.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: ListArgs, global: &GlobalOpts) -> Result<()> {
    let states = collect(global)?;
    if args.quiet {
        for state in &states {
            println!("{}", state.id);
        }
    } else if args.format == "json" {
        println!("{}", serde_json::to_string(&states)?);
    } else {
        println!(
            "{:<24} {:<8} {:<8} {:<40} {:<32} OWNER",
            "ID", "PID", "STATUS", "BUNDLE", "CREATED"
        );
        for s in &states {
            println!(
                "{:<24} {:<8} {:<8} {:<40} {:<32} {}",
                s.id,
                s.pid,
                s.status,
                s.bundle.display(),
                s.created,
                s.owner
            );
        }
    }
    Ok(())
}

fn collect(global: &GlobalOpts) -> Result<Vec<RuntimeState>> {
    let entries = match std::fs::read_dir(&global.root) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => {
            return Err(err).with_context(|| format!("cannot read {}", global.root.display()))
        }
    };
    let mut states = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str() else { continue };
        if !entry.path().is_dir() {
            continue;
        }
        // A container being created or deleted right now may vanish under us.
        if let Ok(container) = Container::open(&global.root, id, Access::Shared) {
            states.push(container.state());
        }
    }
    states.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    Ok(states)
}

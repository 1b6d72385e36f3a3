//! `husk check`: what this host can do for vm isolation, which backend `--hypervisor`
//! (default `auto`) picks, and whether what that backend needs is here. Programs only
//! the other backend needs are listed as such and never make vm isolation unusable.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use husk_runtime::hypervisor::{self, builtin, qemu, GuestArtifacts};

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct CheckArgs {}

/// A program a backend runs, where it was found.
struct Program {
    name: &'static str,
    path: Option<PathBuf>,
    backend: &'static str,
}

/// Every program of both backends.
fn programs() -> Vec<Program> {
    let mut all = vec![Program {
        name: builtin::HUSK_VMM,
        path: builtin::find_vmm(),
        backend: "builtin",
    }];
    all.extend(qemu::programs().into_iter().map(|(name, path)| Program {
        name,
        path,
        backend: "qemu",
    }));
    all
}

/// One program's line; `needed` says whether the chosen backend runs it.
fn program_line(p: &Program, needed: bool) -> String {
    let label = format!("{}:", p.name);
    let found = match &p.path {
        Some(path) => {
            let version = if p.name == "qemu-system-x86_64" {
                qemu::Qemu::version(path)
                    .map(|v| format!(" ({v})"))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            format!("{}{version}", path.display())
        }
        None => "not found".to_string(),
    };
    if needed {
        format!("{label:<20}{found}")
    } else {
        format!(
            "{label:<20}{found} (only the {} backend needs it)",
            p.backend
        )
    }
}

pub fn run(_args: CheckArgs, global: &GlobalOpts) -> Result<i32> {
    let config = global.load_config()?;
    let mut problems: Vec<String> = Vec::new();
    let kvm = hypervisor::detect_kvm();
    println!("kvm:                {kvm}");
    let chosen = hypervisor::select(global.hypervisor.backend(), &config.vm);
    // With no backend chosen, every program counts: the reason may be one of them.
    let backend = chosen.as_ref().ok().map(|(hv, _)| hv.name());
    for p in programs() {
        let needed = backend.is_none_or(|b| b == p.backend);
        println!("{}", program_line(&p, needed));
        if needed && p.path.is_none() && backend.is_some() {
            problems.push(format!("{} not found", p.name));
        }
    }
    match GuestArtifacts::find(&config.vm) {
        Ok(a) => {
            println!("guest kernel:       {}", a.kernel.display());
            println!("guest initramfs:    {}", a.initramfs.display());
        }
        Err(e) => {
            println!("guest artifacts:    not found");
            problems.push(e.to_string());
        }
    }
    println!("cgroups:            {}", hypervisor::cgroup_version());
    match &chosen {
        Ok((hv, why)) => println!(
            "backend:            {} with {} ({why})",
            hv.name(),
            hv.accel()
        ),
        Err(e) => {
            println!("backend:            none ({e})");
            problems.push(e.to_string());
        }
    }
    if problems.is_empty() {
        println!("vm isolation:       usable");
        Ok(0)
    } else {
        println!("vm isolation:       NOT usable: {}", problems.join("; "));
        Ok(1)
    }
}

//! `husk check`: what this host can do for vm isolation, and which backend `auto` picks.

use anyhow::Result;
use clap::Args;
use husk_runtime::hypervisor::{self, qemu, GuestArtifacts};

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct CheckArgs {}

pub fn run(_args: CheckArgs, global: &GlobalOpts) -> Result<i32> {
    let config = global.load_config()?;
    let mut problems: Vec<String> = Vec::new();
    let kvm = hypervisor::detect_kvm();
    println!("kvm:                {kvm}");
    for (name, path) in qemu::programs() {
        let label = format!("{name}:");
        match path {
            Some(path) => {
                let version = if name == "qemu-system-x86_64" {
                    qemu::Qemu::version(&path)
                        .map(|v| format!(" ({v})"))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                println!("{label:<20}{}{version}", path.display());
            }
            None => {
                println!("{label:<20}not found");
                problems.push(format!("{name} not found"));
            }
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
    match hypervisor::select(global.hypervisor.backend(), &config.vm) {
        Ok((hv, why)) => println!(
            "backend:            {} with {} ({why})",
            hv.name(),
            hv.accel()
        ),
        Err(e) => {
            println!("backend:            none ({e})");
            // A missing program is already listed above.
            if !matches!(e, hypervisor::HypervisorError::MissingProgram { .. }) {
                problems.push(e.to_string());
            }
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

//! `husk spec`: write a template config.json to start a bundle from.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use oci_spec::runtime::Spec;

#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Directory to write config.json into.
    #[arg(long, short, default_value = ".")]
    pub bundle: PathBuf,
    /// A template for a rootless container (user namespace mapped to the caller).
    #[arg(long)]
    pub rootless: bool,
}

pub fn run(args: SpecArgs) -> Result<()> {
    let path = args.bundle.join("config.json");
    let mut spec = if args.rootless {
        Spec::rootless(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    } else {
        Spec::default()
    };
    spec.set_hostname(Some("husk".to_string()));
    let text = serde_json::to_string_pretty(&spec)?;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("{} already exists; remove it first", path.display())
        }
        Err(err) => return Err(err).with_context(|| format!("cannot create {}", path.display())),
    };
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

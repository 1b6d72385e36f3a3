//! husk-agent: the guest's PID 1. Mounts the basics, reaps orphans, and serves the
//! agent API (ttrpc) on vsock port 1024. Outside a VM (not PID 1) it can serve on a
//! Unix socket for tests: `husk-agent --listen unix:///path/agent.sock`.

use anyhow::Context;
use husk_agent::{container, error_log, init, oom, reaper, service};
use husk_agent_protocol::agent_ttrpc;
use std::path::Path;
use std::sync::Arc;
use tracing_subscriber::fmt::writer::MakeWriterExt;

const USAGE: &str = "usage: husk-agent [--listen vsock://-1:1024 | unix:///path]";

fn main() {
    let pid1 = std::process::id() == 1;
    if pid1 {
        if let Err(e) = init::mount_basics() {
            eprintln!("husk-agent: {e}");
            init::leave_vm();
        }
        if let Err(e) = init::console_stdio() {
            eprintln!("husk-agent: {e}");
        }
    }
    // ERROR lines also go to the error log, which a failed call quotes (error_log.rs);
    // without it (no writable /run) they only reach the console.
    let errors = error_log::open(Path::new(error_log::ERROR_LOG));
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_target(false);
    match &errors {
        Ok(file) => builder
            .with_writer(
                std::io::stderr.and(Arc::clone(file).with_max_level(tracing::Level::ERROR)),
            )
            .init(),
        Err(_) => builder.with_writer(std::io::stderr).init(),
    }
    if let Err(e) = errors {
        tracing::warn!("{e}: failed calls will not quote the guest's error log");
    }

    let listen = match parse_args(std::env::args().skip(1)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("husk-agent: {e}\n{USAGE}");
            if pid1 {
                init::leave_vm();
            }
            std::process::exit(2);
        }
    };
    if let Err(e) = run(pid1, &listen) {
        tracing::error!("husk-agent: {e:#}");
        if pid1 {
            init::leave_vm();
        }
        std::process::exit(1);
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<String> {
    let mut listen = format!("vsock://-1:{}", husk_agent_protocol::AGENT_VSOCK_PORT);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().context("--listen needs an address")?,
            "--version" => {
                println!("husk-agent {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            // The kernel passes unknown cmdline words to init as arguments: ignore.
            other if std::process::id() == 1 => tracing::debug!("ignoring argument {other}"),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    if !(listen.starts_with("vsock://") || listen.starts_with("unix://")) {
        anyhow::bail!("--listen must be vsock://CID:PORT or unix:///path, got {listen}");
    }
    Ok(listen)
}

fn run(pid1: bool, listen: &str) -> anyhow::Result<()> {
    if pid1 {
        init::basics("husk");
        init::enable_cgroup_controllers(Path::new("/sys/fs/cgroup"));
    } else {
        // Orphans of our containers come back to us, as they would to PID 1.
        nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    }
    let reaper = reaper::Reaper::start()?;
    let paths = container::Paths {
        // As PID 1 our root is the initramfs (see Paths::no_pivot).
        no_pivot: pid1,
        ..Default::default()
    };
    let oom = oom::OomWatcher::start()?;
    let containers = Arc::new(container::Containers::new(paths, reaper, oom));
    if let Some(path) = listen.strip_prefix("unix://") {
        // A stale socket from an earlier run would make bind fail.
        let _ = std::fs::remove_file(path);
    }
    let mut server = ttrpc::Server::new()
        .bind(listen)
        .with_context(|| format!("bind {listen}"))?
        .register_service(agent_ttrpc::create_health(Arc::new(service::HealthService)))
        .register_service(agent_ttrpc::create_agent(Arc::new(
            service::AgentService::new(containers),
        )));
    server.start().context("start ttrpc server")?;
    match init::uptime_secs() {
        Some(up) => tracing::info!("husk-agent ready on {listen} (guest uptime {up:.3} s)"),
        None => tracing::info!("husk-agent ready on {listen}"),
    }
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> impl Iterator<Item = String> {
        a.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn listen_address() {
        assert_eq!(parse_args(args(&[])).unwrap(), "vsock://-1:1024");
        assert_eq!(
            parse_args(args(&["--listen", "unix:///tmp/a.sock"])).unwrap(),
            "unix:///tmp/a.sock"
        );
        assert!(parse_args(args(&["--listen", "tcp://1.2.3.4:5"])).is_err());
        assert!(parse_args(args(&["--listen"])).is_err());
        assert!(parse_args(args(&["--bogus"])).is_err());
    }
}

//! `husk`: the runc-compatible command line of the husk runtime.

mod commands;

use clap::Parser;
use husk_runtime::logging::{self, LogSettings};

use crate::commands::Cli;

fn main() {
    let cli = Cli::parse();
    // A process that enters a container runs this binary until it execs the workload; if
    // the container could write to the binary through /proc/<pid>/exe it could take
    // over the host the next time the runtime runs (CVE-2019-5736). Commands that put a
    // process into a container therefore run from a sealed in-memory copy. The others
    // never share a process with a container and skip the copy's cost.
    if cli.command.enters_container() {
        if let Err(err) = pentacle::ensure_sealed() {
            eprintln!("husk: cannot re-execute from a sealed copy of itself: {err}");
            std::process::exit(1);
        }
    }
    let settings = LogSettings {
        file: cli.global.log.as_deref(),
        format: cli.global.log_format,
        debug: cli.global.debug,
    };
    if let Err(err) = logging::init(&settings) {
        eprintln!("husk: {err}");
        std::process::exit(1);
    }
    tracing::debug!(args = ?std::env::args().collect::<Vec<_>>(), "husk invoked");

    let code = match commands::dispatch(cli.command, &cli.global) {
        Ok(code) => code,
        Err(err) => {
            logging::report_error(&settings, &format!("{err:#}"));
            1
        }
    };
    std::process::exit(code);
}

//! `husk`: the runc-compatible command line of the husk runtime.

mod commands;

use clap::Parser;
use husk_runtime::logging::{self, LogSettings};
use husk_runtime::protected_exe;

use crate::commands::Cli;

fn main() {
    let cli = Cli::parse();
    // Commands that put a process into a container run from a copy of this binary
    // the container cannot write (CVE-2019-5736; see protected_exe). The others never
    // share a process with a container and skip the cost.
    if cli.command.enters_container() {
        let scratch = match cli.global.ensure_root() {
            Ok(()) => cli.global.root.clone(),
            Err(_) => std::env::temp_dir(),
        };
        if let Err(err) = protected_exe::ensure_protected(&scratch) {
            eprintln!("husk: {err}");
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

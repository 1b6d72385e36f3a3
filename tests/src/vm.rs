//! One vm-isolation test's private husk: a temp dir holding its runtime root, its
//! operator config (the guest artifacts) and husk's debug log, which holds the
//! guest console. Failures carry that log, so a failing case explains itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use libtest_mimic::Failed;

use crate::cmd::{self, Background, Output};

/// TCG boots in ~1.2 s here; a loaded CI machine can take far longer.
pub const TIMEOUT: Duration = Duration::from_secs(180);

/// A test's runtime root, config and log (removed with the temp dir).
pub struct HuskRoot {
    pub dir: tempfile::TempDir,
    /// `--root`: `<dir>/state` unless a test moves it.
    pub root: PathBuf,
    pub config: PathBuf,
}

impl HuskRoot {
    /// A new temp dir named `<prefix>…` with `config` as the operator config.
    pub fn new(prefix: &str, config: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let root = dir.path().join("state");
        std::fs::create_dir(&root).unwrap();
        Self {
            dir,
            root,
            config: config_path,
        }
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("husk.log")
    }

    /// `husk --root … --config … --debug --log …`.
    pub fn command(&self) -> Command {
        let mut command = Command::new(crate::husk_bin());
        command
            .arg("--root")
            .arg(&self.root)
            .arg("--config")
            .arg(&self.config)
            .arg("--debug")
            .arg("--log")
            .arg(self.log());
        command
    }

    pub fn husk(&self, args: &[&str]) -> Output {
        cmd::run(self.command().args(args), TIMEOUT)
    }

    /// Spawns `command` with stdout to `stdout` and stderr to `stderr`, and waits
    /// until the container printed `ready` on stdout.
    pub fn spawn_until_ready(
        &self,
        mut command: Command,
        stdout: &Path,
        stderr: &Path,
    ) -> Result<Background, Failed> {
        command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(stdout).unwrap())
            .stderr(std::fs::File::create(stderr).unwrap());
        let child = Background::spawn(&mut command);
        let ready = cmd::wait_until(TIMEOUT, || {
            std::fs::read_to_string(stdout).is_ok_and(|s| s.contains("ready"))
        });
        let text = std::fs::read_to_string(stdout).unwrap_or_default();
        self.expect(ready, || {
            format!("the container never printed ready; stdout: {text}")
        })?;
        Ok(child)
    }

    /// A failure carrying husk's debug log (with the guest console).
    pub fn fail(&self, what: String) -> Failed {
        let log = std::fs::read_to_string(self.log()).unwrap_or_else(|_| "(no log)".into());
        format!("{what}\n----- husk debug log (with the guest console) -----\n{log}").into()
    }

    pub fn expect(&self, condition: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
        if condition {
            Ok(())
        } else {
            Err(self.fail(what()))
        }
    }
}

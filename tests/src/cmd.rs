//! Running commands with a deadline and readable failures.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

/// What a finished command left.
#[derive(Debug, Clone)]
pub struct Output {
    pub command: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics, showing everything, unless the command exited 0.
    pub fn ok(self) -> Self {
        if self.code != 0 {
            panic!(
                "{} exited {}\nstdout:\n{}\nstderr:\n{}",
                self.command, self.code, self.stdout, self.stderr
            );
        }
        self
    }

    /// Panics unless the command exited with `code`.
    pub fn code(self, code: i32) -> Self {
        if self.code != code {
            panic!(
                "{} exited {} instead of {code}\nstdout:\n{}\nstderr:\n{}",
                self.command, self.code, self.stdout, self.stderr
            );
        }
        self
    }

    /// Panics unless the command failed and its stderr mentions `needle`.
    pub fn fails_with(self, needle: &str) -> Self {
        if self.code == 0 || !self.stderr.contains(needle) {
            panic!(
                "expected {} to fail mentioning {needle:?}; it exited {}\nstdout:\n{}\nstderr:\n{}",
                self.command, self.code, self.stdout, self.stderr
            );
        }
        self
    }

    pub fn stdout_trimmed(&self) -> &str {
        self.stdout.trim()
    }
}

/// Runs `command` with stdin closed, killing it after `timeout`.
pub fn run(command: &mut Command, timeout: Duration) -> Output {
    run_with_stdin(command, None, timeout)
}

/// Runs `command`, feeding it `stdin` if given, killing it after `timeout`.
pub fn run_with_stdin(command: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let description = format!("{command:?}");
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {description}: {err}"));
    if let Some(bytes) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin piped");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    // A container may inherit our pipes and outlive the command (`create`, `run -d`):
    // collect output until the command exits and its pipes go quiet, not until EOF.
    let (tx, rx) = std::sync::mpsc::channel::<(bool, Vec<u8>)>();
    for (is_stdout, mut pipe) in [
        (
            true,
            Box::new(child.stdout.take().expect("stdout piped")) as Box<dyn Read + Send>,
        ),
        (false, Box::new(child.stderr.take().expect("stderr piped"))),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 || tx.send((is_stdout, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let status = match child.wait_timeout(timeout).expect("wait for child") {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{description} did not finish within {timeout:?}");
        }
    };
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    loop {
        match rx.recv_timeout(Duration::from_millis(300)) {
            Ok((true, bytes)) => stdout.extend(bytes),
            Ok((false, bytes)) => stderr.extend(bytes),
            Err(_) => break,
        }
    }
    Output {
        command: description,
        code,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// A command running in the background; killed and reaped if dropped unfinished, so a
/// failing test leaves no process behind.
pub struct Background {
    child: Option<std::process::Child>,
}

impl Background {
    pub fn spawn(command: &mut Command) -> Self {
        let description = format!("{command:?}");
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {description}: {err}"));
        Self { child: Some(child) }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Waits up to `timeout` for the exit status.
    pub fn wait(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        match child.wait_timeout(timeout) {
            Ok(Some(status)) => Some(status),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

//! Child reaping. As PID 1 the agent inherits every orphan in the guest and must
//! reap them; it also needs the exit status of container processes for WaitProcess.
//!
//! A thread wakes on SIGCHLD (signal-hook's self-pipe: the signal is not blocked, so
//! children do not inherit a blocked SIGCHLD) and reaps everything with WNOHANG,
//! recording statuses. libcontainer waits for its own short-lived helper process
//! while creating a container, so creation holds the `spawn` lock and the reaper
//! takes the same lock, so it cannot steal that status.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Errors of the reaper.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    /// installing the SIGCHLD handler failed
    #[error("register SIGCHLD handler: {0}")]
    Signal(std::io::Error),
    /// spawning the reaper thread failed
    #[error("spawn reaper thread: {0}")]
    Thread(std::io::Error),
}

/// Exit statuses of reaped children, and the lock that keeps the reaper away while
/// libcontainer waits for its own helpers.
#[derive(Default)]
pub struct Reaper {
    spawn: Mutex<()>,
    /// Tracked pids (container processes) and, once reaped, their statuses.
    /// Untracked children (orphans) are reaped and dropped, so this stays as
    /// large as the number of processes the host knows about.
    exited: Mutex<HashMap<i32, Option<i32>>>,
    changed: Condvar,
}

impl Reaper {
    /// Starts the reaper thread and returns the shared registry.
    pub fn start() -> Result<Arc<Self>, ReaperError> {
        let reaper = Arc::new(Self::default());
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGCHLD])
            .map_err(ReaperError::Signal)?;
        let r = Arc::clone(&reaper);
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                // Reap once at start: children may have exited before the handler.
                r.reap_all();
                for _ in signals.forever() {
                    r.reap_all();
                }
            })
            .map_err(ReaperError::Thread)?;
        Ok(reaper)
    }

    /// Held while libcontainer creates a container (it waits for its own helpers).
    pub fn spawn_guard(&self) -> MutexGuard<'_, ()> {
        self.spawn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reaps every exited child and wakes waiters.
    pub fn reap_all(&self) {
        let _spawn = self.spawn_guard();
        let mut reaped = false;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if let (Some(pid), Some(code)) = (status.pid(), exit_code(&status)) {
                        tracing::debug!("reaped pid {pid}: {code}");
                        self.record(pid.as_raw(), code);
                        reaped = true;
                    }
                }
            }
        }
        if reaped {
            self.changed.notify_all();
        }
    }

    /// Keeps the exit status of `pid` for [`Reaper::wait`]. Call it while holding
    /// the [`Reaper::spawn_guard`] that covered the process's creation, so the
    /// status cannot be reaped before it is tracked.
    pub fn track(&self, pid: i32) {
        self.exited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pid)
            .or_insert(None);
    }

    /// Records an exit status if the pid is tracked (used by the reaper, and by tests).
    pub fn record(&self, pid: i32, code: i32) {
        let mut exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        match exited.get_mut(&pid) {
            Some(slot) => *slot = Some(code),
            None => tracing::debug!("reaped orphan {pid} ({code})"),
        }
        self.changed.notify_all();
    }

    /// Waits for tracked `pid` to exit and returns its status (see [`exit_code`]);
    /// None on timeout or for an untracked pid. Does not remove the record, so
    /// several waiters get the same answer.
    pub fn wait(&self, pid: i32, timeout: Option<Duration>) -> Option<i32> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match exited.get(&pid) {
                Some(Some(code)) => return Some(*code),
                Some(None) => {}
                // Not tracked: nothing will ever be recorded for it.
                None => return None,
            }
            exited = match deadline {
                None => self.changed.wait(exited).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        return None;
                    }
                    self.changed
                        .wait_timeout(exited, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Forgets a pid (when its container is removed).
    pub fn forget(&self, pid: i32) {
        self.exited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
    }
}

/// Exit code, or 128 + signal when killed by a signal; None for stop/continue.
pub fn exit_code(status: &WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(*code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + *sig as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn exit_codes() {
        let pid = Pid::from_raw(5);
        assert_eq!(exit_code(&WaitStatus::Exited(pid, 3)), Some(3));
        assert_eq!(
            exit_code(&WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(exit_code(&WaitStatus::StillAlive), None);
    }

    #[test]
    fn wait_sees_recorded_status_and_times_out() {
        let r = Arc::new(Reaper::default());
        r.record(41, 1);
        assert_eq!(r.wait(41, None), None, "untracked pids are not kept");
        r.track(42);
        assert_eq!(r.wait(42, Some(Duration::from_millis(10))), None);
        let r2 = Arc::clone(&r);
        let t = std::thread::spawn(move || r2.wait(42, Some(Duration::from_secs(10))));
        std::thread::sleep(Duration::from_millis(20));
        r.record(42, 7);
        assert_eq!(t.join().unwrap(), Some(7));
        assert_eq!(r.wait(42, None), Some(7));
        r.forget(42);
        assert_eq!(r.wait(42, Some(Duration::ZERO)), None);
    }
}

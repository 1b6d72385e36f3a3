//! The state of a container in vm isolation, kept in its sandbox directory
//! (`<root>/<id>/vm-state.json`) so that every `husk` invocation — `state`, `start`,
//! `kill`, `delete`, … — sees the same thing the supervisor process does.
//!
//! The supervisor is the container's stand-in init on the host: while it lives the
//! container is `created`, `running` or `paused` as the file says; once it is gone
//! (exited, killed, or a zombie awaiting its reaper) the container is `stopped`,
//! whatever the file says. A recorded start time guards against pid reuse.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::shared_kernel::RuntimeState;

/// The state file inside the sandbox directory.
pub const STATE_FILE: &str = "vm-state.json";

/// Errors reading or writing the state of a vm-isolated container.
#[derive(Debug, thiserror::Error)]
pub enum VmStateError {
    /// The container has no state file (not a vm container, or being created).
    #[error("container {0} does not exist")]
    NotFound(String),
    /// Reading, writing or locking the state failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The state file is not what husk writes.
    #[error("corrupt state file {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// Lifecycle of a vm-isolated container, as the runtime spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmStatus {
    /// The sandbox VM is booting; the container does not exist yet.
    Creating,
    /// The container exists in the guest; its process waits for `start`.
    Created,
    Running,
    Paused,
    Stopped,
}

impl VmStatus {
    /// The runtime-spec word (`creating`, `created`, …).
    pub fn name(self) -> &'static str {
        match self {
            VmStatus::Creating => "creating",
            VmStatus::Created => "created",
            VmStatus::Running => "running",
            VmStatus::Paused => "paused",
            VmStatus::Stopped => "stopped",
        }
    }
}

/// What `vm-state.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmContainerState {
    pub id: String,
    /// The container's id inside the guest (the agent accepts a narrower alphabet).
    pub guest_id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
    /// As last recorded; see [`VmContainerState::effective_status`].
    pub status: VmStatus,
    /// The supervisor: the pid engines wait on (pid file), 0 before it runs.
    pub supervisor_pid: i32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub supervisor_start: u64,
    /// The container's exit status once known (128+N for signal N).
    #[serde(default)]
    pub exit_status: Option<i32>,
    /// Backend and accel the sandbox runs on (`qemu/tcg`, `builtin/kvm`).
    #[serde(default)]
    pub hypervisor: String,
    /// The spec's `poststart` and `poststop` hooks, run on the host by whichever
    /// husk process starts or deletes the container.
    #[serde(default)]
    pub post_hooks: super::guest_spec::PostHooks,
}

impl VmContainerState {
    /// Whether the supervisor recorded here is still running (not exited, not a
    /// zombie, and not a new process that reused its pid).
    pub fn supervisor_alive(&self) -> bool {
        self.supervisor_pid > 0
            && process_start_time(self.supervisor_pid)
                .is_some_and(|start| start == self.supervisor_start)
    }

    /// The status to report: `stopped` once the supervisor is gone.
    pub fn effective_status(&self) -> VmStatus {
        match self.status {
            // Creating: the supervisor is booting the VM; if it died, so did the create.
            _ if !self.supervisor_alive() => VmStatus::Stopped,
            status => status,
        }
    }

    /// The state in the shape `runc state` prints it; `pid` is the supervisor's
    /// (0 once stopped), as engines wait on it.
    pub fn runtime_state(&self) -> RuntimeState {
        let status = self.effective_status();
        RuntimeState {
            oci_version: crate::shared_kernel::OCI_VERSION.to_string(),
            id: self.id.clone(),
            pid: if status == VmStatus::Stopped {
                0
            } else {
                self.supervisor_pid
            },
            status: status.name().to_string(),
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            owner: String::new(),
            annotations: self.annotations.clone(),
        }
    }
}

/// Start time (clock ticks since boot) of a live, non-zombie process.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // Field 22 overall; after the name we stand at field 3.
    fields.nth(22 - 4)?.parse().ok()
}

/// Whether `dir` holds a vm-isolated container's state.
pub fn exists(dir: &Path) -> bool {
    dir.join(STATE_FILE).is_file()
}

/// Reads the state without locking (writers replace the file atomically).
pub fn load(dir: &Path, id: &str) -> Result<VmContainerState, VmStateError> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VmStateError::NotFound(id.to_string()))
        }
        Err(source) => {
            return Err(VmStateError::Io {
                what: format!("read {}", path.display()),
                source,
            })
        }
    };
    serde_json::from_str(&text).map_err(|e| VmStateError::Corrupt {
        path,
        message: e.to_string(),
    })
}

/// Writes the state atomically (temporary file + rename).
pub fn store(dir: &Path, state: &VmContainerState) -> Result<(), VmStateError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp{}", std::process::id()));
    let body = serde_json::to_vec_pretty(state).map_err(|e| VmStateError::Corrupt {
        path: path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&tmp, body)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            VmStateError::Io {
                what: format!("write {}", path.display()),
                source,
            }
        })
}

/// An exclusive `flock` on the sandbox directory: serialises read-modify-write of the
/// state between husk invocations (e.g. `start` racing the supervisor's `stopped`).
pub struct StateLock {
    _dir: File,
}

impl StateLock {
    pub fn acquire(dir: &Path) -> Result<Self, VmStateError> {
        let file = File::open(dir).map_err(|source| VmStateError::Io {
            what: format!("open {}", dir.display()),
            source,
        })?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Self { _dir: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(VmStateError::Io {
                    what: format!("lock {}", dir.display()),
                    source: err,
                });
            }
        }
    }
}

/// Locks, loads, lets `change` modify, stores; returns the new state.
pub fn update(
    dir: &Path,
    id: &str,
    change: impl FnOnce(&mut VmContainerState),
) -> Result<VmContainerState, VmStateError> {
    let _lock = StateLock::acquire(dir)?;
    let mut state = load(dir, id)?;
    change(&mut state);
    store(dir, &state)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: i32, start: u64) -> VmContainerState {
        VmContainerState {
            id: "c1".into(),
            guest_id: "c1".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "2026-01-01T00:00:00Z".into(),
            annotations: None,
            status: VmStatus::Running,
            supervisor_pid: pid,
            supervisor_start: start,
            exit_status: None,
            hypervisor: "qemu/tcg".into(),
            post_hooks: Default::default(),
        }
    }

    #[test]
    fn own_start_time_is_read() {
        let me = std::process::id() as i32;
        let start = process_start_time(me).expect("our own stat");
        assert!(start > 0);
        assert_eq!(process_start_time(me), Some(start));
        assert_eq!(process_start_time(-5), None);
    }

    #[test]
    fn status_follows_the_supervisor() {
        let me = std::process::id() as i32;
        let start = process_start_time(me).unwrap();
        let alive = sample(me, start);
        assert_eq!(alive.effective_status(), VmStatus::Running);
        assert_eq!(alive.runtime_state().pid, me);
        assert_eq!(alive.runtime_state().status, "running");
        // Same pid, other start time: a reused pid is not our supervisor.
        let reused = sample(me, start + 1);
        assert_eq!(reused.effective_status(), VmStatus::Stopped);
        let gone = sample(0, 0);
        let state = gone.runtime_state();
        assert_eq!((state.pid, state.status.as_str()), (0, "stopped"));
    }

    #[test]
    fn zombie_is_not_alive() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Not reaped: a zombie once it exits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while process_start_time(pid).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(process_start_time(pid), None);
        drop(child);
    }

    #[test]
    fn store_load_update_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!exists(dir.path()));
        assert!(matches!(
            load(dir.path(), "c1"),
            Err(VmStateError::NotFound(_))
        ));
        store(dir.path(), &sample(1, 2)).unwrap();
        assert!(exists(dir.path()));
        let updated = update(dir.path(), "c1", |s| {
            s.status = VmStatus::Stopped;
            s.exit_status = Some(3);
        })
        .unwrap();
        assert_eq!(load(dir.path(), "c1").unwrap(), updated);
        assert_eq!(updated.exit_status, Some(3));
        std::fs::write(dir.path().join(STATE_FILE), "{").unwrap();
        assert!(matches!(
            load(dir.path(), "c1"),
            Err(VmStateError::Corrupt { .. })
        ));
    }
}

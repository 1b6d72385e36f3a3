//! Shared-kernel isolation: containers in host namespaces and cgroups, set up by youki's
//! `libcontainer`. This module adds what the CLI needs on top of it: lookups that say
//! which container is missing, runc-shaped state, and the container's cgroup.

use std::collections::HashMap;
use std::error::Error as _;
use std::fs::File;
use std::path::{Path, PathBuf};

use libcgroups::common::{AnyCgroupManager, CgroupConfig};
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::error::LibcontainerError;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use crate::container_id::{self, ContainerIdError};

/// The runtime-spec version husk implements (oci-spec 0.10).
pub const OCI_VERSION: &str = "1.2.0";

/// File libcontainer keeps each container's state in.
const STATE_FILE: &str = "state.json";

/// Errors of shared-kernel container operations.
#[derive(Debug, thiserror::Error)]
pub enum SharedKernelError {
    /// The id is not a valid container id.
    #[error(transparent)]
    InvalidId(#[from] ContainerIdError),
    /// No container with this id exists under the runtime root.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// libcontainer failed; the message holds its whole cause chain.
    #[error("container {id}: {message}")]
    Libcontainer { id: String, message: String },
    /// The container's state could not be locked.
    #[error("container {id}: cannot lock its state: {source}")]
    Lock { id: String, source: std::io::Error },
    /// The container's cgroup could not be opened.
    #[error("container {id}: cannot open its cgroup: {message}")]
    Cgroup { id: String, message: String },
}

impl SharedKernelError {
    pub fn libcontainer(id: &str, err: &LibcontainerError) -> Self {
        SharedKernelError::Libcontainer {
            id: id.to_string(),
            message: describe(err),
        }
    }
}

/// Renders a libcontainer error with its causes; some variants keep their detail in a
/// field their `Display` omits.
pub fn describe(err: &LibcontainerError) -> String {
    let mut text = match err {
        LibcontainerError::InvalidInput(detail) => format!("invalid input: {detail}"),
        LibcontainerError::OtherCgroup(detail) => format!("cgroup error: {detail}"),
        LibcontainerError::IncorrectStatus(status) => {
            format!(
                "the container is {}, which does not allow this operation",
                status_name(*status)
            )
        }
        other => other.to_string(),
    };
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The runtime-spec name of a status (`created`, `running`, …), as engines compare it.
pub fn status_name(status: ContainerStatus) -> &'static str {
    match status {
        ContainerStatus::Creating => "creating",
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Stopped => "stopped",
        ContainerStatus::Paused => "paused",
    }
}

/// Where the container's state lives.
pub fn container_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// Whether a container with this id has state under the root (even a broken one).
pub fn exists(root: &Path, id: &str) -> bool {
    container_dir(root, id).exists()
}

/// How a command uses a container's state while it holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads state only (`state`, `ps`, `events`).
    Shared,
    /// May rewrite or remove state (`start`, `kill`, `delete`, …).
    Exclusive,
}

/// A loaded container and the lock that keeps other husk processes from rewriting its
/// state meanwhile. libcontainer rewrites state.json in place, so a concurrent reader
/// could otherwise see it empty; every husk command goes through this lock.
pub struct LockedContainer {
    pub container: Container,
    _lock: Flock<File>,
}

impl std::ops::Deref for LockedContainer {
    type Target = Container;
    fn deref(&self) -> &Container {
        &self.container
    }
}

impl std::ops::DerefMut for LockedContainer {
    fn deref_mut(&mut self) -> &mut Container {
        &mut self.container
    }
}

/// Locks the container's directory and loads its state, refreshing its status from
/// the live process.
pub fn open(root: &Path, id: &str, access: Access) -> Result<LockedContainer, SharedKernelError> {
    container_id::validate(id)?;
    let dir = container_dir(root, id);
    let handle = match File::open(&dir) {
        Ok(handle) => handle,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(SharedKernelError::NotFound(id.to_string()))
        }
        Err(err) => {
            return Err(SharedKernelError::Lock {
                id: id.to_string(),
                source: err,
            })
        }
    };
    let mode = match access {
        Access::Shared => FlockArg::LockShared,
        Access::Exclusive => FlockArg::LockExclusive,
    };
    let lock = Flock::lock(handle, mode).map_err(|(_, errno)| SharedKernelError::Lock {
        id: id.to_string(),
        source: errno.into(),
    })?;
    // A delete may have removed the directory while we waited for the lock.
    if !dir.join(STATE_FILE).is_file() {
        return Err(SharedKernelError::NotFound(id.to_string()));
    }
    let container =
        Container::load(dir).map_err(|err| SharedKernelError::libcontainer(id, &err))?;
    Ok(LockedContainer {
        container,
        _lock: lock,
    })
}

/// Opens the cgroup the container's processes live in.
pub fn cgroup_manager(container: &Container) -> Result<AnyCgroupManager, SharedKernelError> {
    let id = container.id().to_string();
    let spec = container
        .spec()
        .map_err(|err| SharedKernelError::libcontainer(&id, &err))?;
    libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: spec.cgroup_path,
        systemd_cgroup: container.systemd(),
        container_name: id.clone(),
    })
    .map_err(|err| SharedKernelError::Cgroup {
        id,
        message: err.to_string(),
    })
}

/// A container's state in the shape `runc state` prints it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeState {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

/// Builds the runc-shaped state of a loaded container.
pub fn runtime_state(container: &Container) -> RuntimeState {
    let status = container.status();
    // A stopped container has no process; runc reports pid 0 then.
    let pid = match status {
        ContainerStatus::Stopped => 0,
        _ => container.pid().map(|p| p.as_raw()).unwrap_or(0),
    };
    let bundle = container.bundle().clone();
    RuntimeState {
        oci_version: OCI_VERSION.to_string(),
        id: container.id().to_string(),
        pid,
        status: status_name(status).to_string(),
        rootfs: rootfs_of(&bundle).unwrap_or_default(),
        bundle,
        created: container
            .created()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
            .unwrap_or_default(),
        owner: container
            .creator()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        annotations: container.state.annotations.clone(),
    }
}

/// The absolute rootfs path the bundle's config.json names.
fn rootfs_of(bundle: &Path) -> Option<PathBuf> {
    let spec = oci_spec::runtime::Spec::load(bundle.join("config.json")).ok()?;
    let root = spec.root().as_ref()?.path().clone();
    Some(if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_reports_missing_and_invalid_ids() {
        let root = tempfile::tempdir().unwrap();
        let err = open(root.path(), "ghost", Access::Shared).err().unwrap();
        assert_eq!(err.to_string(), "container ghost does not exist");
        // A directory without state (a create in progress) is not a container yet.
        std::fs::create_dir(root.path().join("half")).unwrap();
        assert!(matches!(
            open(root.path(), "half", Access::Exclusive),
            Err(SharedKernelError::NotFound(_))
        ));
        assert!(matches!(
            open(root.path(), "../etc", Access::Shared),
            Err(SharedKernelError::InvalidId(_))
        ));
    }

    #[test]
    fn status_names_are_lowercase_runtime_spec_names() {
        assert_eq!(status_name(ContainerStatus::Created), "created");
        assert_eq!(status_name(ContainerStatus::Paused), "paused");
    }

    #[test]
    fn describe_keeps_hidden_details() {
        let err = LibcontainerError::InvalidInput("bad pid file".into());
        assert_eq!(describe(&err), "invalid input: bad pid file");
    }
}

//! Containers inside the guest, set up by youki's libcontainer. The agent keeps the
//! libcontainer handle, the init pid and the host-facing ends of the stdio pipes.

use crate::reaper::Reaper;
use crate::validate::{self, ValidationError};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::Spec;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Errors of container management.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// the request failed validation
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// the OCI document could not be parsed
    #[error("invalid OCI {what} JSON: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    /// the spec asks for something the agent does not support (yet)
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// a container with this id exists already
    #[error("container {0} already exists")]
    Exists(String),
    /// no container with this id
    #[error("container {0} not found")]
    NotFound(String),
    /// the process has no such stream (e.g. stdin not requested)
    #[error("container {id} has no {stream}")]
    NoStream { id: String, stream: &'static str },
    /// the container has no init process (not created or already gone)
    #[error("container {0} has no process")]
    NoProcess(String),
    /// writing the bundle or using a pipe failed
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// libcontainer refused or failed
    #[error("libcontainer: {0}")]
    Libcontainer(#[from] libcontainer::error::LibcontainerError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError {
    let what = what.into();
    move |source| ContainerError::Io { what, source }
}

/// Which output stream of a process.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

struct Entry {
    container: Container,
    stdin: Option<File>,
    stdout: Arc<File>,
    stderr: Arc<File>,
}

/// Where the agent keeps its state.
#[derive(Debug, Clone)]
pub struct Paths {
    /// libcontainer's state root.
    pub state: PathBuf,
    /// Generated bundles (config.json per container).
    pub bundles: PathBuf,
    /// Host-shared directory that container rootfs paths are relative to.
    pub shared: PathBuf,
    /// Enter the rootfs with MS_MOVE + chroot instead of pivot_root. Needed while
    /// the agent's own root is the initramfs: pivot_root(2) cannot move the
    /// kernel's initial rootfs mount. The VM is the isolation boundary here.
    pub no_pivot: bool,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            state: "/run/husk/containers".into(),
            bundles: "/run/husk/bundles".into(),
            shared: "/run/husk/shared".into(),
            no_pivot: false,
        }
    }
}

/// A create request after validation.
#[derive(Debug)]
pub struct CreateParams {
    pub id: String,
    pub spec: Spec,
    pub rootfs: PathBuf,
    pub stdin: bool,
}

/// Validates a create request: id, spec JSON size and form, rootfs path inside the
/// shared directory. Pure apart from resolving the rootfs path.
pub fn validate_create(
    paths: &Paths,
    id: &str,
    spec_json: &[u8],
    rootfs: &str,
    stdin: bool,
) -> Result<CreateParams, ContainerError> {
    let id = validate::container_id(id)?.to_string();
    validate::in_range(
        "oci_spec_json length",
        spec_json.len() as u64,
        2,
        validate::MAX_JSON_LEN as u64,
    )?;
    let spec: Spec = serde_json::from_slice(spec_json).map_err(|source| ContainerError::Json {
        what: "spec",
        source,
    })?;
    if spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
    {
        return Err(ContainerError::Unsupported(
            "process.terminal (tty) containers",
        ));
    }
    if spec.process().is_none() {
        return Err(ContainerError::Unsupported("spec without process"));
    }
    let rootfs = validate::resolve_under(&paths.shared, rootfs)?;
    Ok(CreateParams {
        id,
        spec,
        rootfs,
        stdin,
    })
}

/// The containers of this sandbox.
pub struct Containers {
    paths: Mutex<Paths>,
    reaper: Arc<Reaper>,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Containers {
    pub fn new(paths: Paths, reaper: Arc<Reaper>) -> Self {
        Self {
            paths: Mutex::new(paths),
            reaper,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn paths(&self) -> Paths {
        self.paths.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the container (its init waits for [`Containers::start`]).
    pub fn create(&self, p: CreateParams) -> Result<(), ContainerError> {
        if self.entries().contains_key(&p.id) {
            return Err(ContainerError::Exists(p.id));
        }
        let paths = self.paths();
        let bundle = paths.bundles.join(&p.id);
        std::fs::create_dir_all(&bundle).map_err(io_err(format!("create {}", bundle.display())))?;
        std::fs::create_dir_all(&paths.state).map_err(io_err("create state dir"))?;
        let mut spec = p.spec;
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path(p.rootfs.clone());
        spec.set_root(Some(root));
        spec.save(bundle.join("config.json"))
            .map_err(|e| ContainerError::Io {
                what: "write config.json".into(),
                source: std::io::Error::other(e.to_string()),
            })?;

        let (out_r, out_w) = pipe("stdout")?;
        let (err_r, err_w) = pipe("stderr")?;
        let mut builder = ContainerBuilder::new(p.id.clone(), SyscallType::default())
            .with_root_path(&paths.state)?
            .with_stdout(out_w)
            .with_stderr(err_w);
        let stdin = if p.stdin {
            let (in_r, in_w) = pipe("stdin")?;
            builder = builder.with_stdin(in_r);
            Some(in_w)
        } else {
            let null = File::open("/dev/null").map_err(io_err("open /dev/null"))?;
            builder = builder.with_stdin(null);
            None
        };
        let container = {
            // libcontainer waits for its helper process: keep the reaper out.
            let _spawn = self.reaper.spawn_guard();
            builder
                .as_init(&bundle)
                .with_systemd(false)
                .with_no_pivot(paths.no_pivot)
                .with_detach(true)
                .build()?
        };
        // The builder consumed (and closed) our copies of the child ends.
        self.entries().insert(
            p.id,
            Entry {
                container,
                stdin,
                stdout: Arc::new(out_r),
                stderr: Arc::new(err_r),
            },
        );
        // A child that exited while we held the spawn lock sent its SIGCHLD then.
        self.reaper.reap_all();
        Ok(())
    }

    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let mut entries = self.entries();
        let e = entries
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        e.container.start()?;
        Ok(())
    }

    fn init_pid(&self, id: &str) -> Result<i32, ContainerError> {
        let entries = self.entries();
        let e = entries
            .get(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        e.container
            .pid()
            .map(|p| p.as_raw())
            .ok_or_else(|| ContainerError::NoProcess(id.into()))
    }

    pub fn signal(&self, id: &str, signal: i32) -> Result<(), ContainerError> {
        let pid = self.init_pid(id)?;
        let sig =
            nix::sys::signal::Signal::try_from(signal).map_err(|_| ValidationError::Range {
                what: "signal",
                value: signal as u64,
                min: 1,
                max: 31,
            })?;
        // Signal the init pid directly: libcontainer's kill refuses containers it
        // considers stopped, and the pid is ours (not reaped) until wait sees it.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(|e| {
            ContainerError::Io {
                what: format!("kill {pid}"),
                source: e.into(),
            }
        })
    }

    /// Waits for the container's init to exit; returns its status.
    pub fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<Option<i32>, ContainerError> {
        let pid = self.init_pid(id)?;
        Ok(self.reaper.wait(pid, timeout))
    }

    /// Reads up to `len` bytes of output; empty at end of stream.
    pub fn read(&self, id: &str, stream: Stream, len: usize) -> Result<Vec<u8>, ContainerError> {
        let file = {
            let entries = self.entries();
            let e = entries
                .get(id)
                .ok_or_else(|| ContainerError::NotFound(id.into()))?;
            match stream {
                Stream::Stdout => Arc::clone(&e.stdout),
                Stream::Stderr => Arc::clone(&e.stderr),
            }
        };
        let mut buf = vec![0u8; len];
        let n = (&*file)
            .read(&mut buf)
            .map_err(io_err(format!("read {stream:?} of {id}")))?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn write_stdin(&self, id: &str, data: &[u8]) -> Result<usize, ContainerError> {
        let mut entries = self.entries();
        let e = entries
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        let stdin = e.stdin.as_mut().ok_or_else(|| ContainerError::NoStream {
            id: id.into(),
            stream: "stdin",
        })?;
        stdin
            .write_all(data)
            .map_err(io_err(format!("write stdin of {id}")))?;
        Ok(data.len())
    }

    pub fn close_stdin(&self, id: &str) -> Result<(), ContainerError> {
        let mut entries = self.entries();
        let e = entries
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        e.stdin = None;
        Ok(())
    }

    /// Kills what is left and deletes the container and its bundle.
    pub fn remove(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let pid = self.init_pid(id).ok();
        if let Some(pid) = pid {
            if self.reaper.wait(pid, Some(Duration::ZERO)).is_none() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                self.reaper.wait(pid, Some(timeout));
            }
        }
        let mut entry = self
            .entries()
            .remove(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        entry.container.delete(true)?;
        if let Some(pid) = pid {
            self.reaper.forget(pid);
        }
        let bundle = self.paths().bundles.join(id);
        let _ = std::fs::remove_dir_all(bundle);
        Ok(())
    }

    pub fn ids(&self) -> Vec<String> {
        self.entries().keys().cloned().collect()
    }
}

fn pipe(what: &'static str) -> Result<(File, File), ContainerError> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ContainerError::Io {
            what: format!("{what} pipe"),
            source: e.into(),
        })?;
    Ok((File::from(r), File::from(w)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn paths(dir: &Path) -> Paths {
        Paths {
            state: dir.join("state"),
            bundles: dir.join("bundles"),
            shared: dir.join("shared"),
            no_pivot: false,
        }
    }

    fn spec_json() -> Vec<u8> {
        serde_json::to_vec(&Spec::default()).unwrap()
    }

    #[test]
    fn create_validation() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        std::fs::create_dir_all(p.shared.join("c1/rootfs")).unwrap();
        let ok = validate_create(&p, "c1", &spec_json(), "c1/rootfs", false).unwrap();
        assert_eq!(ok.id, "c1");
        assert!(ok.rootfs.ends_with("shared/c1/rootfs"));

        assert!(matches!(
            validate_create(&p, "../c1", &spec_json(), "c1/rootfs", false),
            Err(ContainerError::Invalid(ValidationError::Id { .. }))
        ));
        assert!(matches!(
            validate_create(&p, "c1", b"{not json", "c1/rootfs", false),
            Err(ContainerError::Json { .. })
        ));
        assert!(matches!(
            validate_create(&p, "c1", b"", "c1/rootfs", false),
            Err(ContainerError::Invalid(ValidationError::Range { .. }))
        ));
        assert!(matches!(
            validate_create(&p, "c1", &spec_json(), "/etc", false),
            Err(ContainerError::Invalid(ValidationError::Path(_)))
        ));
        assert!(matches!(
            validate_create(&p, "c1", &spec_json(), "c1/../../x", false),
            Err(ContainerError::Invalid(ValidationError::Path(_)))
        ));
    }

    #[test]
    fn boot_test_spec_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        std::fs::create_dir_all(p.shared.join("hello/rootfs")).unwrap();
        let json = include_bytes!("../../tests/guest/hello/config.json");
        let c = validate_create(&p, "hello", json, "hello/rootfs", false).unwrap();
        assert_eq!(c.spec.hostname().as_deref(), Some("hello"));
    }

    #[test]
    fn terminal_is_refused_for_now() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        std::fs::create_dir_all(p.shared.join("r")).unwrap();
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_terminal(Some(true));
        spec.set_process(Some(process));
        let json = serde_json::to_vec(&spec).unwrap();
        assert!(matches!(
            validate_create(&p, "c1", &json, "r", false),
            Err(ContainerError::Unsupported(_))
        ));
    }

    #[test]
    fn unknown_container_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = Containers::new(paths(dir.path()), Arc::new(Reaper::default()));
        assert!(matches!(c.start("nope"), Err(ContainerError::NotFound(_))));
        assert!(matches!(
            c.signal("nope", 9),
            Err(ContainerError::NotFound(_))
        ));
        assert!(matches!(
            c.read("nope", Stream::Stdout, 10),
            Err(ContainerError::NotFound(_))
        ));
        assert!(matches!(
            c.remove("nope", Duration::ZERO),
            Err(ContainerError::NotFound(_))
        ));
        assert!(c.ids().is_empty());
    }
}

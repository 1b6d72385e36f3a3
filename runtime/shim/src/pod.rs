//! The pod's VM: booted with the pod's first container, joined by the others, torn
//! down with the last.
//!
//! One long-lived thread owns the VM. `PR_SET_PDEATHSIG` fires when the *thread* that
//! spawned a process exits, not the process: helpers spawned from a ttrpc worker
//! thread would die with that worker. So every spawn (and the teardown) happens on
//! the keeper thread; the task service talks to it over a channel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use husk_agent_protocol::agent as pb;
use husk_agent_protocol::agent_ttrpc::AgentClient;
use husk_runtime::config::Config;
use husk_runtime::hypervisor::{Backend, SHARED_FS_TAG};
use husk_runtime::vm::guest_spec::{SharedMount, GUEST_SHARED_DIR, MOUNTS_DIR};
use husk_runtime::vm::network::NetworkPlan;
use husk_runtime::vm::relay::ctx;
use husk_runtime::vm::sandbox::{BootParams, VmSandbox, CALL_TIMEOUT};
use husk_runtime::vm::supervisor::VmLaunch;
use serde_json::Value;

/// Where the pods' VM state lives (sockets, console, the shared directory).
pub const STATE_ROOT: &str = "/run/husk-shim";
/// The annotation a workload may use to ask for an isolation.
const ISOLATION_ANNOTATION: &str = "io.husk.isolation";
/// Containers joining a pod get `shared/c/<guest id>/` for their rootfs and mounts.
const JOINED_DIR: &str = "c";

/// Errors of the pod VM.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The bundle, the host or the backend cannot give this container a VM.
    #[error("{0}")]
    Launch(#[from] husk_runtime::vm::supervisor::SupervisorError),
    /// Booting the VM or an agent call failed.
    #[error("{0}")]
    Sandbox(#[from] husk_runtime::vm::sandbox::VmSandboxError),
    /// The operator config cannot be read.
    #[error("{0}")]
    Config(#[from] husk_runtime::config::ConfigError),
    /// An agent call failed.
    #[error("agent {call} failed: {}", describe(source))]
    Agent {
        call: &'static str,
        source: ttrpc::Error,
    },
    /// The workload asked for the shared kernel.
    #[error(
        "{ISOLATION_ANNOTATION}={0} is not served by containerd-shim-husk-v2, which always \
         runs containers in a VM; use the runc shim with husk for container isolation"
    )]
    Isolation(String),
    /// Sharing a host path with the guest failed.
    #[error("{what}: {source}")]
    Share { what: String, source: nix::Error },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The spec has prestart/createRuntime hooks, which this shim does not run.
    #[error(
        "containerd-shim-husk-v2 does not run OCI prestart/createRuntime hooks (they \
         would set up the container on the host, e.g. its network); give the container \
         a network namespace path as CRI does, or run it with `husk --isolation vm` \
         through the runc shim, which runs them"
    )]
    HostHooks,
    /// A container of the pod asks for another network than the pod VM carries.
    #[error(
        "the pod VM carries the network namespace {pod}; this container asks for {wanted}: \
         the containers of a pod share one network namespace"
    )]
    Network { pod: String, wanted: String },
    /// The keeper thread is gone (the shim is shutting down).
    #[error("the pod VM is shut down")]
    Gone,
}

/// A container joining the pod VM must use the pod's network: the same carried
/// namespace (CRI gives every container the pod sandbox's), or a new, empty one of
/// its own in the guest.
fn check_joined_network(pod: Option<&NetworkPlan>, wanted: &NetworkPlan) -> Result<(), PodError> {
    let describe = |plan: Option<&NetworkPlan>| match plan {
        Some(NetworkPlan::Carry(path)) => path.display().to_string(),
        Some(NetworkPlan::Isolated) | None => "a new, empty namespace".to_string(),
        Some(NetworkPlan::Prepared) => "a namespace prepared by hooks".to_string(),
    };
    match wanted {
        NetworkPlan::Isolated => Ok(()),
        _ if pod == Some(wanted) => Ok(()),
        _ => Err(PodError::Network {
            pod: describe(pod),
            wanted: describe(Some(wanted)),
        }),
    }
}

/// A ttrpc error as a sentence (the status's message, not its Debug form).
fn describe(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => format!("{:?}: {}", s.code(), s.message),
        other => other.to_string(),
    }
}

/// A container created in the pod's VM (its init process waits for StartContainer).
pub struct Created {
    pub guest_id: String,
    pub agent: AgentClient,
    /// The VMM's host pid: what containerd shows as the task's pid.
    pub vmm_pid: u32,
}

/// What the task service asks for.
pub struct NewContainer {
    pub id: String,
    pub bundle: PathBuf,
    /// Keep the process's stdin open for WriteStdin.
    pub stdin: bool,
}

enum Request {
    Create(NewContainer, mpsc::Sender<Result<Created, PodError>>),
    Remove(String, mpsc::Sender<()>),
    VmmExited(mpsc::Sender<Option<String>>),
    Shutdown(mpsc::Sender<()>),
}

/// A handle on the keeper thread.
#[derive(Clone)]
pub struct PodVm {
    tx: mpsc::Sender<Request>,
}

impl PodVm {
    /// Starts the keeper thread; the VM boots with the first container.
    pub fn spawn(state_dir: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("pod-vm".into())
            .spawn(move || Keeper::new(state_dir).serve(rx))
            .expect("spawn the pod VM thread");
        Self { tx }
    }

    fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Request) -> Option<T> {
        let (reply, answer) = mpsc::channel();
        self.tx.send(make(reply)).ok()?;
        answer.recv().ok()
    }

    /// Creates a container in the pod's VM, booting the VM for the first one.
    pub fn create(&self, c: NewContainer) -> Result<Created, PodError> {
        self.ask(|r| Request::Create(c, r))
            .unwrap_or(Err(PodError::Gone))
    }

    /// Removes a container from the guest and stops sharing its rootfs.
    pub fn remove(&self, guest_id: &str) {
        let id = guest_id.to_string();
        self.ask(|r| Request::Remove(id, r));
    }

    /// Whether the VMM died, with the end of the guest console (for the log).
    pub fn vmm_exited(&self) -> Option<String> {
        self.ask(Request::VmmExited).flatten()
    }

    /// Tears the VM down (idempotent).
    pub fn shutdown(&self) {
        self.ask(Request::Shutdown);
    }
}

struct Keeper {
    state_dir: PathBuf,
    sandbox: Option<VmSandbox>,
    /// Host mounts made for containers that joined the VM, by guest id.
    joined: HashMap<String, Vec<PathBuf>>,
    /// The network namespace the pod VM carries (its first container's).
    network: Option<NetworkPlan>,
}

impl Keeper {
    fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            sandbox: None,
            joined: HashMap::new(),
            network: None,
        }
    }

    fn serve(mut self, rx: mpsc::Receiver<Request>) {
        for request in rx {
            match request {
                Request::Create(c, reply) => {
                    let _ = reply.send(self.create(c));
                }
                Request::Remove(guest_id, reply) => {
                    self.remove(&guest_id);
                    let _ = reply.send(());
                }
                Request::VmmExited(reply) => {
                    let _ = reply.send(self.sandbox.as_mut().and_then(VmSandbox::vmm_exited));
                }
                Request::Shutdown(reply) => {
                    self.shutdown();
                    let _ = reply.send(());
                }
            }
        }
        self.shutdown();
    }

    fn create(&mut self, c: NewContainer) -> Result<Created, PodError> {
        let config = Config::load(std::env::var_os("HUSK_CONFIG").as_deref().map(Path::new))?;
        let launch = VmLaunch::prepare(&c.id, &c.bundle, &config, Backend::Auto)?;
        if let Some(wanted) = launch
            .annotations
            .as_ref()
            .and_then(|a| a.get(ISOLATION_ANNOTATION))
            .filter(|v| v.as_str() != "vm")
        {
            return Err(PodError::Isolation(wanted.clone()));
        }
        if !launch.plan.host_hooks.is_empty() {
            return Err(PodError::HostHooks);
        }
        for what in &launch.plan.dropped {
            tracing::warn!(id = %c.id, "vm isolation: dropped {what}");
        }
        let (rootfs_name, spec) = match self.sandbox.as_ref() {
            None => {
                self.boot(&launch)?;
                self.network = Some(launch.plan.network.clone());
                ("rootfs".to_string(), launch.plan.spec.clone())
            }
            Some(_) => {
                check_joined_network(self.network.as_ref(), &launch.plan.network)?;
                self.share_joined(&launch)?
            }
        };
        let sandbox = self.sandbox.as_ref().expect("booted");
        let agent = sandbox.agent();
        let mut req = pb::CreateContainerRequest::new();
        req.container_id = launch.guest_id.clone();
        req.oci_spec_json = serde_json::to_vec(&spec).expect("a JSON value serializes");
        req.rootfs = rootfs_name;
        req.stdin = c.stdin;
        if let Err(source) = agent.create_container(ctx(Some(CALL_TIMEOUT)), &req) {
            self.unshare(&launch.guest_id);
            return Err(PodError::Agent {
                call: "CreateContainer",
                source,
            });
        }
        Ok(Created {
            guest_id: launch.guest_id,
            vmm_pid: sandbox.pids().first().copied().unwrap_or(0),
            agent,
        })
    }

    /// Boots the VM with the first container's rootfs and mounts shared.
    fn boot(&mut self, launch: &VmLaunch) -> Result<(), PodError> {
        tracing::info!(hypervisor = launch.hypervisor.name(), accel = %launch.hypervisor.accel(),
            reason = %launch.why, memory_mib = launch.size.memory_mib, vcpus = launch.size.vcpus,
            kernel = %launch.artifacts.kernel.display(), "booting the pod VM");
        if let Some(parent) = self.state_dir.parent() {
            std::fs::create_dir_all(parent).map_err(|source| PodError::Io {
                what: format!("create {}", parent.display()),
                source,
            })?;
        }
        let sandbox = VmSandbox::boot(BootParams {
            hypervisor: launch.hypervisor.as_ref(),
            artifacts: launch.artifacts.clone(),
            dir: self.state_dir.clone(),
            claimed: false,
            rootfs: &launch.rootfs,
            mounts: &launch.plan.mounts,
            memory_mib: launch.size.memory_mib,
            vcpus: launch.size.vcpus,
            signals: None,
            // The first container's (the CRI sandbox's) network namespace is the pod's.
            network: &launch.plan.network,
        })?;
        let mut sb = pb::CreateSandboxRequest::new();
        sb.sandbox_id = launch.guest_id.clone();
        sb.hostname = launch.plan.spec["hostname"]
            .as_str()
            .unwrap_or_default()
            .into();
        sb.shared_fs_tag = SHARED_FS_TAG.into();
        sandbox
            .agent()
            .create_sandbox(ctx(Some(CALL_TIMEOUT)), &sb)
            .map_err(|source| PodError::Agent {
                call: "CreateSandbox",
                source,
            })?;
        tracing::info!(
            boot_ms = sandbox.boot_time.as_millis() as u64,
            "pod VM ready"
        );
        self.sandbox = Some(sandbox);
        Ok(())
    }

    /// Shares a joining container's rootfs and bind-mount sources under
    /// `shared/c/<guest id>/` and points its spec there.
    fn share_joined(&mut self, launch: &VmLaunch) -> Result<(String, Value), PodError> {
        let gid = &launch.guest_id;
        let base = self.state_dir.join("shared").join(JOINED_DIR).join(gid);
        let mut made = Vec::new();
        let result = share_container(&base, &launch.rootfs, &launch.plan.mounts, &mut made);
        self.joined.insert(gid.clone(), made);
        if let Err(e) = result {
            self.unshare(gid);
            return Err(e);
        }
        let mut spec = launch.plan.spec.clone();
        relocate_mounts(&mut spec, &format!("{JOINED_DIR}/{gid}"));
        Ok((format!("{JOINED_DIR}/{gid}/rootfs"), spec))
    }

    fn remove(&mut self, guest_id: &str) {
        if let Some(sandbox) = self.sandbox.as_ref() {
            let mut r = pb::RemoveContainerRequest::new();
            r.container_id = guest_id.into();
            if let Err(e) = sandbox
                .agent()
                .remove_container(ctx(Some(CALL_TIMEOUT)), &r)
            {
                tracing::debug!(guest_id, error = %e, "RemoveContainer");
            }
        }
        self.unshare(guest_id);
    }

    /// Unmounts what was shared for a joined container and removes its directory.
    fn unshare(&mut self, guest_id: &str) {
        let Some(mut mounts) = self.joined.remove(guest_id) else {
            return;
        };
        mounts.reverse();
        let mut clean = true;
        for target in &mounts {
            match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => {
                    clean = false;
                    tracing::warn!(error = %e, path = %target.display(), "cannot unmount a shared path");
                }
            }
        }
        let base = self
            .state_dir
            .join("shared")
            .join(JOINED_DIR)
            .join(guest_id);
        if clean {
            // Only now: never recurse into a rootfs that is still mounted.
            let _ = std::fs::remove_dir_all(&base);
            // `shared/c` too once empty: the sandbox's teardown expects only its own
            // entries in the shared directory.
            if let Some(joined) = base.parent() {
                let _ = std::fs::remove_dir(joined);
            }
        } else {
            tracing::error!(dir = %base.display(), "leaving a joined container's dir: still mounted");
        }
    }

    fn shutdown(&mut self) {
        let ids: Vec<String> = self.joined.keys().cloned().collect();
        for id in ids {
            self.unshare(&id);
        }
        if let Some(mut sandbox) = self.sandbox.take() {
            if let Some(console) = sandbox.vmm_exited() {
                tracing::warn!("the pod VM had exited: {console}");
            }
            sandbox.destroy();
        }
    }
}

/// Binds `rootfs` to `base/rootfs` and each mount source to `base/mounts/<name>`,
/// recording every mount made in `made` (so a failure can be undone).
fn share_container(
    base: &Path,
    rootfs: &Path,
    mounts: &[SharedMount],
    made: &mut Vec<PathBuf>,
) -> Result<(), PodError> {
    let io = |what: String| move |source| PodError::Io { what, source };
    let target = base.join("rootfs");
    std::fs::create_dir_all(&target).map_err(io(format!("create {}", target.display())))?;
    bind(rootfs, &target, false)?;
    made.push(target);
    if mounts.is_empty() {
        return Ok(());
    }
    let dir = base.join(MOUNTS_DIR);
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    for m in mounts {
        let target = dir.join(&m.name);
        let created = if m.is_dir {
            std::fs::create_dir(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        };
        created.map_err(io(format!("create {}", target.display())))?;
        bind(&m.source, &target, m.read_only)?;
        made.push(target);
    }
    Ok(())
}

/// Bind-mounts `source` on `target`, read-only on the host too when asked (the guest
/// kernel is not trusted to honour `ro` alone).
fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), PodError> {
    use nix::mount::MsFlags;
    let share_err = |source_err| PodError::Share {
        what: format!(
            "share {} with the guest at {}",
            source.display(),
            target.display()
        ),
        source: source_err,
    };
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(share_err)?;
    if read_only {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(share_err)?;
    }
    Ok(())
}

/// Points the guest spec's shared bind mounts (`/run/husk/shared/mounts/<n>`, as
/// [`husk_runtime::vm::guest_spec::plan`] writes them) at `/run/husk/shared/<sub>/mounts/<n>`.
pub fn relocate_mounts(spec: &mut Value, sub: &str) {
    let from = format!("{GUEST_SHARED_DIR}/{MOUNTS_DIR}/");
    let to = format!("{GUEST_SHARED_DIR}/{sub}/{MOUNTS_DIR}/");
    let Some(Value::Array(mounts)) = spec.get_mut("mounts") else {
        return;
    };
    for m in mounts {
        if let Some(Value::String(source)) = m.get_mut("source") {
            if let Some(rest) = source.strip_prefix(&from) {
                *source = format!("{to}{rest}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_containers_share_the_pods_network() {
        let pod = NetworkPlan::Carry("/var/run/netns/cni-1".into());
        assert!(check_joined_network(Some(&pod), &pod.clone()).is_ok());
        assert!(check_joined_network(Some(&pod), &NetworkPlan::Isolated).is_ok());
        let err = check_joined_network(
            Some(&pod),
            &NetworkPlan::Carry("/var/run/netns/other".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/var/run/netns/cni-1") && err.contains("/var/run/netns/other"),
            "{err}"
        );
        let err = check_joined_network(Some(&NetworkPlan::Isolated), &pod)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a new, empty namespace"), "{err}");
    }
    use serde_json::json;

    #[test]
    fn joined_mounts_point_into_their_own_dir() {
        let mut spec = json!({"mounts": [
            {"destination": "/data", "type": "bind", "source": "/run/husk/shared/mounts/0"},
            {"destination": "/proc", "type": "proc", "source": "proc"},
        ]});
        relocate_mounts(&mut spec, "c/web");
        assert_eq!(
            spec["mounts"][0]["source"],
            "/run/husk/shared/c/web/mounts/0"
        );
        assert_eq!(spec["mounts"][1]["source"], "proc");
    }
}

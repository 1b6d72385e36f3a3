//! The pod's VM: a [`Sandbox`] booted with the pod's first container, joined by the
//! others, torn down with the last.
//!
//! One long-lived thread owns the sandbox. `PR_SET_PDEATHSIG` fires when the
//! *thread* that spawned a process exits, not the process: helpers spawned from a
//! ttrpc worker thread would die with that worker. So every spawn (and the teardown)
//! happens on the pod thread; the task service talks to it over a channel.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use husk_runtime::bundle::Bundle;
use husk_runtime::config::Config;
use husk_runtime::hypervisor::Backend;
use husk_runtime::vm::agent::Agent;
use husk_runtime::vm::network::NetworkPlan;
use husk_runtime::vm::sandbox::{
    BootParams, GuestAgentConnector, NewContainer as SandboxContainer, Sandbox, SandboxError,
};
use husk_runtime::vm::supervisor::{SupervisorError, VmLaunch};

/// Where the pods' VM state lives (sockets, console, the shared directory).
pub const STATE_ROOT: &str = "/run/husk-shim";
/// The annotation a workload may use to ask for an isolation.
const ISOLATION_ANNOTATION: &str = "io.husk.isolation";

/// Errors of the pod VM.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The bundle, the host or the backend cannot give this container a VM.
    #[error("{0}")]
    Launch(#[from] husk_runtime::vm::supervisor::SupervisorError),
    /// Booting the VM, sharing a container or an agent call failed.
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    /// The operator config cannot be read.
    #[error("{0}")]
    Config(#[from] husk_runtime::config::ConfigError),
    /// The workload asked for the shared kernel.
    #[error(
        "{ISOLATION_ANNOTATION}={0} is not served by containerd-shim-husk-v2, which always \
         runs containers in a VM; use the runc shim with husk for container isolation"
    )]
    Isolation(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The spec has host hooks (prestart, createRuntime, poststart, poststop), which
    /// this shim does not run yet.
    #[error(
        "containerd-shim-husk-v2 does not run OCI host hooks (prestart, createRuntime, \
         poststart, poststop) yet; give the container a network namespace path as CRI \
         does, or run it with `husk --isolation vm` through the runc shim, which runs \
         them (createContainer and startContainer hooks run in the guest)"
    )]
    HostHooks,
    /// A container of the pod asks for another network than the pod VM carries.
    #[error(
        "the pod VM carries the network namespace {pod}; this container asks for {wanted}: \
         the containers of a pod share one network namespace"
    )]
    Network { pod: String, wanted: String },
    /// The pod thread is gone (the shim is shutting down).
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

/// A container created in the pod's VM (its init process waits for StartContainer).
pub struct Created {
    pub guest_id: String,
    pub agent: Arc<dyn Agent>,
    /// The VMM's host pid: what containerd shows as the task's pid.
    pub vmm_pid: u32,
    /// The VM's host processes, the VMM first: what stands for the container on the
    /// host (its guest pids mean nothing to containerd).
    pub vm_pids: Vec<u32>,
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

/// A handle on the pod thread.
#[derive(Clone)]
pub struct PodVm {
    tx: mpsc::Sender<Request>,
}

impl PodVm {
    /// Starts the pod thread; the VM boots with the first container.
    pub fn spawn(state_dir: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("pod-vm".into())
            .spawn(move || PodThread::new(state_dir).serve(rx))
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

/// The thread that owns the pod's sandbox.
struct PodThread {
    state_dir: PathBuf,
    sandbox: Option<Sandbox>,
    /// The network namespace the pod VM carries (its first container's).
    network: Option<NetworkPlan>,
}

impl PodThread {
    fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            sandbox: None,
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
                    if let Some(sandbox) = self.sandbox.as_mut() {
                        sandbox.remove_container(&guest_id);
                    }
                    let _ = reply.send(());
                }
                Request::VmmExited(reply) => {
                    let _ = reply.send(self.sandbox.as_mut().and_then(Sandbox::vmm_exited));
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
        let bundle = Bundle::load(&c.bundle).map_err(SupervisorError::from)?;
        // containerd names a systemd cgroup as slice:prefix:name, a cgroupfs one as
        // a path.
        let systemd = bundle
            .json
            .pointer("/linux/cgroupsPath")
            .and_then(|p| p.as_str())
            .is_some_and(|p| !p.starts_with('/') && p.split(':').count() == 3);
        let launch = VmLaunch::prepare(&c.id, &bundle, &config, Backend::Auto, systemd)?;
        if let Some(wanted) = launch
            .annotations
            .as_ref()
            .and_then(|a| a.get(ISOLATION_ANNOTATION))
            .filter(|v| v.as_str() != "vm")
        {
            return Err(PodError::Isolation(wanted.clone()));
        }
        let post = &launch.plan.host_hooks.post;
        if !launch.plan.host_hooks.is_empty()
            || !post.poststart.is_empty()
            || !post.poststop.is_empty()
        {
            return Err(PodError::HostHooks);
        }
        for what in &launch.plan.dropped {
            tracing::warn!(id = %c.id, "vm isolation: dropped {what}");
        }
        match self.sandbox.as_ref() {
            None => {
                self.boot(&launch)?;
                self.network = Some(launch.plan.network.clone());
            }
            Some(_) => check_joined_network(self.network.as_ref(), &launch.plan.network)?,
        }
        let sandbox = self.sandbox.as_mut().expect("booted");
        sandbox.add_container(SandboxContainer {
            guest_id: &launch.guest_id,
            rootfs: &launch.rootfs,
            mounts: &launch.plan.mounts,
            spec: &launch.plan.spec,
            stdin: c.stdin,
        })?;
        Ok(Created {
            guest_id: launch.guest_id,
            vmm_pid: sandbox.vmm_pid(),
            vm_pids: sandbox.pids(),
            agent: sandbox.agent().clone(),
        })
    }

    /// Boots the pod's VM for its first container.
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
        let sandbox = Sandbox::boot(BootParams {
            hypervisor: launch.hypervisor.as_ref(),
            connector: &GuestAgentConnector,
            artifacts: launch.artifacts.clone(),
            dir: self.state_dir.clone(),
            claimed: false,
            memory_mib: launch.size.memory_mib,
            vcpus: launch.size.vcpus,
            signals: None,
            // The first container's (the CRI sandbox's) network namespace is the pod's.
            network: &launch.plan.network,
            host_setup: None,
            sandbox_id: &launch.guest_id,
            hostname: launch.hostname(),
            // The first container's (the CRI sandbox's) cgroup holds the whole pod VM.
            host_cgroup: Some(launch.host_cgroup.clone()),
        })?;
        tracing::info!(
            boot_ms = sandbox.boot_time.as_millis() as u64,
            "pod VM ready"
        );
        self.sandbox = Some(sandbox);
        Ok(())
    }

    fn shutdown(&mut self) {
        if let Some(mut sandbox) = self.sandbox.take() {
            if let Some(console) = sandbox.vmm_exited() {
                tracing::warn!("the pod VM had exited: {console}");
            }
            sandbox.destroy();
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
}

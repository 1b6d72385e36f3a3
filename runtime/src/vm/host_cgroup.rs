//! The host cgroup of a sandbox: where the VMM and every helper of the VM run, so that
//! the engine's accounting and limits cover the whole sandbox, not only the guest.
//!
//! It is the engine's `cgroupsPath` for the container (the CLI, a pod of one) or for
//! the pod's sandbox container (the shim), `/husk/<id>` when the spec names none. The
//! husk process that boots the VM (the supervisor, the shim) enters it before the
//! VMM starts, so every VM process is born inside it, before it could fork out of
//! reach; its limits are derived from the VM's size plus [`VMM_OVERHEAD_MIB`] (or
//! [`TCG_OVERHEAD_MIB`] under QEMU's software emulation). At teardown that process
//! moves back to where it was and removes the cgroup; `husk delete` removes one
//! whose owner died.

use std::path::PathBuf;

use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
};
use nix::unistd::Pid;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};
use serde::{Deserialize, Serialize};

use crate::hypervisor::Accel;

/// Host memory a VM needs beyond its guest memory with KVM: the VMM's own heap,
/// page tables, device buffers, the booting husk process.
pub const VMM_OVERHEAD_MIB: u64 = 192;
/// The same under QEMU TCG, whose translated-code cache grows with the guest's work.
pub const TCG_OVERHEAD_MIB: u64 = 512;
/// Processes and threads of a sandbox on the host: the VMM (a thread per vCPU and
/// per device), its helpers with their thread pools, the booting husk's threads.
pub const SANDBOX_PIDS_MAX: i64 = 512;
/// CPU beyond the vCPUs: device emulation and the helpers, in hundredths of a CPU.
const CPU_OVERHEAD_PERCENT: i64 = 100;
/// The CFS period the CPU limit is expressed in.
const CPU_PERIOD_US: u64 = 100_000;

/// Errors of a sandbox's host cgroup.
#[derive(Debug, thiserror::Error)]
pub enum HostCgroupError {
    #[error("cannot open the sandbox's host cgroup {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("cannot limit the sandbox's host cgroup {path}: {detail}")]
    Limit { path: PathBuf, detail: String },
    #[error("cannot move husk into the sandbox's host cgroup {path}: {detail}")]
    Enter { path: PathBuf, detail: String },
    #[error("cannot remove the sandbox's host cgroup {path}: {detail}")]
    Remove { path: PathBuf, detail: String },
}

/// Which host cgroup, as the engine named it; recorded in the sandbox's marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCgroupSpec {
    /// `cgroupsPath`: a path (cgroupfs) or `slice:prefix:name` (systemd).
    pub path: PathBuf,
    /// Managed through systemd (`--systemd-cgroup`).
    pub systemd: bool,
}

impl HostCgroupSpec {
    /// The cgroup of container `id` from its spec's `linux.cgroupsPath`, or
    /// `/husk/<id>` (`husk:husk:<id>` through systemd) when it names none.
    pub fn for_container(spec: &serde_json::Value, id: &str, systemd: bool) -> Self {
        let named = spec
            .pointer("/linux/cgroupsPath")
            .and_then(|p| p.as_str())
            .filter(|p| !p.is_empty());
        let path = match (named, systemd) {
            (Some(p), _) => PathBuf::from(p),
            (None, false) => PathBuf::from(format!("/husk/{id}")),
            (None, true) => PathBuf::from(format!("system.slice:husk:{id}")),
        };
        Self { path, systemd }
    }

    fn manager(&self) -> Result<AnyCgroupManager, HostCgroupError> {
        create_cgroup_manager(CgroupConfig {
            cgroup_path: self.path.clone(),
            systemd_cgroup: self.systemd,
            container_name: self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        })
        .map_err(|e| HostCgroupError::Open {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }

    /// Removes the cgroup of a sandbox whose processes are gone (`husk delete`).
    pub fn remove(&self) -> Result<(), HostCgroupError> {
        self.manager()?
            .remove()
            .map_err(|e| HostCgroupError::Remove {
                path: self.path.clone(),
                detail: e.to_string(),
            })
    }
}

/// The limits of a sandbox of `memory_mib` and `vcpus` run with `accel`.
pub fn sandbox_limits(memory_mib: u32, vcpus: u32, accel: Accel) -> LinuxResources {
    let overhead = match accel {
        Accel::Kvm => VMM_OVERHEAD_MIB,
        Accel::Tcg => TCG_OVERHEAD_MIB,
    };
    let memory = (u64::from(memory_mib) + overhead) * 1024 * 1024;
    let quota = (i64::from(vcpus) * 100 + CPU_OVERHEAD_PERCENT) * CPU_PERIOD_US as i64 / 100;
    LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(memory as i64)
                .build()
                .expect("a memory limit"),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()
                .expect("a cpu limit"),
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(SANDBOX_PIDS_MAX)
                .build()
                .expect("a pids limit"),
        )
        .build()
        .expect("sandbox limits")
}

/// This process inside a sandbox's host cgroup, and where it was before.
pub struct HostCgroup {
    spec: HostCgroupSpec,
    /// `/proc/self/cgroup` before entering: where [`HostCgroup::leave_and_remove`]
    /// moves back to.
    before: String,
}

impl HostCgroup {
    /// Creates the cgroup with `limits` and moves this process (all its threads) in:
    /// every process it starts from now on is born there.
    pub fn enter(spec: HostCgroupSpec, limits: &LinuxResources) -> Result<Self, HostCgroupError> {
        let before =
            std::fs::read_to_string("/proc/self/cgroup").map_err(|e| HostCgroupError::Enter {
                path: spec.path.clone(),
                detail: format!("read /proc/self/cgroup: {e}"),
            })?;
        let manager = spec.manager()?;
        manager
            .add_task(Pid::this())
            .map_err(|e| HostCgroupError::Enter {
                path: spec.path.clone(),
                detail: e.to_string(),
            })?;
        let entered = Self { spec, before };
        let applied = manager.apply(&ControllerOpt {
            resources: limits,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        });
        if let Err(e) = applied {
            let detail = e.to_string();
            let path = entered.spec.path.clone();
            if let Err(err) = entered.leave_and_remove() {
                tracing::warn!(error = %err, "cannot undo the sandbox's host cgroup");
            }
            return Err(HostCgroupError::Limit { path, detail });
        }
        Ok(entered)
    }

    pub fn spec(&self) -> &HostCgroupSpec {
        &self.spec
    }

    /// Moves this process back to the cgroups it came from, then removes the
    /// sandbox's (its VM processes are gone).
    pub fn leave_and_remove(self) -> Result<(), HostCgroupError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let pid = std::process::id().to_string();
        for (dir, relative) in cgroup_dirs(&self.before, &mountinfo) {
            let procs = dir
                .join(relative.trim_start_matches('/'))
                .join("cgroup.procs");
            if let Err(e) = std::fs::write(&procs, &pid) {
                return Err(HostCgroupError::Remove {
                    path: self.spec.path.clone(),
                    detail: format!("move husk back to {}: {e}", procs.display()),
                });
            }
        }
        self.spec.remove()
    }
}

/// Each hierarchy of a `/proc/<pid>/cgroup` text with its mount point from
/// `mountinfo`: (mount point, the process's path in that hierarchy).
fn cgroup_dirs(cgroups: &str, mountinfo: &str) -> Vec<(PathBuf, String)> {
    let mut dirs = Vec::new();
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let wanted: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
        let mount = mountinfo.lines().find_map(|m| {
            let (left, right) = m.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fs_type = right.next()?;
            let options: Vec<&str> = right.nth(1)?.split(',').collect();
            let matches = match (fs_type, wanted.is_empty()) {
                ("cgroup2", true) => true,
                ("cgroup", false) => wanted.iter().all(|c| options.contains(c)),
                _ => false,
            };
            matches.then(|| PathBuf::from(mount_point))
        });
        if let Some(mount) = mount {
            dirs.push((mount, path.to_string()));
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn limits_follow_the_vm_size_plus_the_overhead() {
        let kvm = sandbox_limits(256, 2, Accel::Kvm);
        let memory = kvm.memory().as_ref().unwrap().limit().unwrap();
        assert_eq!(memory, (256 + VMM_OVERHEAD_MIB as i64) << 20);
        let cpu = kvm.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(300_000), Some(100_000)));
        assert_eq!(kvm.pids().as_ref().unwrap().limit(), SANDBOX_PIDS_MAX);
        let tcg = sandbox_limits(256, 1, Accel::Tcg);
        assert_eq!(
            tcg.memory().as_ref().unwrap().limit().unwrap(),
            (256 + TCG_OVERHEAD_MIB as i64) << 20
        );
    }

    #[test]
    fn the_engines_cgroups_path_or_a_default() {
        let spec = serde_json::json!({"linux": {"cgroupsPath": "/docker/abc"}});
        let named = HostCgroupSpec::for_container(&spec, "abc", false);
        assert_eq!(named.path, Path::new("/docker/abc"));
        let none = HostCgroupSpec::for_container(&serde_json::json!({}), "abc", false);
        assert_eq!(none.path, Path::new("/husk/abc"));
        let systemd = HostCgroupSpec::for_container(&serde_json::json!({}), "abc", true);
        assert_eq!(systemd.path, Path::new("system.slice:husk:abc"));
    }

    #[test]
    fn hierarchies_are_found_by_their_controllers() {
        let cgroups = "9:name=systemd:/\n4:memory:/process_api/e7\n2:cpu,cpuacct:/x\n0::/u\n";
        let mountinfo = "\
35 30 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n\
36 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
37 30 0:32 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n\
38 30 0:33 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let dirs = cgroup_dirs(cgroups, mountinfo);
        assert_eq!(
            dirs,
            [
                (PathBuf::from("/sys/fs/cgroup/systemd"), "/".to_string()),
                (
                    PathBuf::from("/sys/fs/cgroup/memory"),
                    "/process_api/e7".into()
                ),
                (PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"), "/x".into()),
                (PathBuf::from("/sys/fs/cgroup/unified"), "/u".into()),
            ]
        );
    }
}

//! The sandbox's lifecycle with a fake hypervisor (a `sleep` standing for the VMM)
//! and a fake agent (recording the calls it gets).

use std::process::Command;
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};

use super::*;
use crate::vm::agent::{
    AgentVersion, ContainerStats, GuestNetwork, GuestProcess, OutputStream, ProcessAddr,
};
use crate::vm::host_cgroup::HostCgroupSpec;

/// Stands for a VMM: a `sleep` working in the state dir, and the console line the
/// agent prints once it serves.
struct FakeHypervisor {
    vmm_pid: Arc<Mutex<Option<u32>>>,
}

impl Hypervisor for FakeHypervisor {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn accel(&self) -> Accel {
        Accel::Tcg
    }
    fn start(&self, spec: &VmBootSpec) -> Result<VmProcesses, crate::hypervisor::HypervisorError> {
        std::fs::write(spec.console_log(), "boot\nhusk-agent ready on vsock 1024\n").unwrap();
        let child = Command::new("sleep")
            .arg("60")
            .current_dir(&spec.state_dir)
            .spawn()
            .unwrap();
        *self.vmm_pid.lock().unwrap() = Some(child.id());
        Ok(VmProcesses::new(child, "fake-vmm", Vec::new()))
    }
}

/// Records every call; DestroySandbox "resets the guest" by killing the fake VMM.
struct FakeAgent {
    calls: Mutex<Vec<String>>,
    protocol: u32,
    vmm_pid: Arc<Mutex<Option<u32>>>,
}

impl FakeAgent {
    fn log(&self, call: impl Into<String>) {
        self.calls.lock().unwrap().push(call.into());
    }
}

impl Agent for FakeAgent {
    fn check(&self) -> Result<(), AgentError> {
        self.log("Check");
        Ok(())
    }
    fn version(&self) -> Result<AgentVersion, AgentError> {
        self.log("Version");
        Ok(AgentVersion {
            agent_version: "fake".into(),
            protocol_version: self.protocol,
        })
    }
    fn create_sandbox(&self, id: &str, hostname: &str, tag: &str) -> Result<(), AgentError> {
        self.log(format!("CreateSandbox {id} {hostname} {tag}"));
        Ok(())
    }
    fn destroy_sandbox(&self, id: &str) -> Result<(), AgentError> {
        self.log(format!("DestroySandbox {id}"));
        if let Some(pid) = *self.vmm_pid.lock().unwrap() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        Ok(())
    }
    fn configure_network(&self, _: &GuestNetwork) -> Result<(), AgentError> {
        self.log("ConfigureNetwork");
        Ok(())
    }
    fn create_container(&self, c: &GuestContainer<'_>) -> Result<(), AgentError> {
        self.log(format!("CreateContainer {} {}", c.id, c.rootfs));
        Ok(())
    }
    fn start_container(&self, id: &str) -> Result<(), AgentError> {
        self.log(format!("StartContainer {id}"));
        Ok(())
    }
    fn remove_container(&self, id: &str) -> Result<(), AgentError> {
        self.log(format!("RemoveContainer {id}"));
        Ok(())
    }
    fn exec_process(&self, _: &ProcessAddr, _: &[u8], _: bool) -> Result<(), AgentError> {
        unimplemented!()
    }
    fn signal_process(&self, _: &ProcessAddr, _: i32, _: bool) -> Result<(), AgentError> {
        unimplemented!()
    }
    fn wait_process(&self, _: &ProcessAddr) -> Result<i32, AgentError> {
        unimplemented!()
    }
    fn read_output(&self, _: &ProcessAddr, _: OutputStream, _: u32) -> Result<Vec<u8>, AgentError> {
        unimplemented!()
    }
    fn write_stdin(&self, _: &ProcessAddr, _: &[u8]) -> Result<usize, AgentError> {
        unimplemented!()
    }
    fn close_stdin(&self, _: &ProcessAddr) -> Result<(), AgentError> {
        unimplemented!()
    }
    fn resize_tty(&self, _: &ProcessAddr, _: u16, _: u16) -> Result<(), AgentError> {
        unimplemented!()
    }
    fn stats(&self, _: &str) -> Result<ContainerStats, AgentError> {
        unimplemented!()
    }
    fn update_resources(&self, _: &str, _: &[u8]) -> Result<(), AgentError> {
        unimplemented!()
    }
    fn pause_container(&self, _: &str) -> Result<(), AgentError> {
        unimplemented!()
    }
    fn resume_container(&self, _: &str) -> Result<(), AgentError> {
        unimplemented!()
    }
    fn list_processes(&self, _: &str) -> Result<Vec<GuestProcess>, AgentError> {
        unimplemented!()
    }
}

struct FakeConnector(Arc<FakeAgent>);

impl AgentConnector for FakeConnector {
    fn connect(&self, _: &Path, _: Duration) -> Result<Arc<dyn Agent>, AgentError> {
        Ok(self.0.clone())
    }
}

fn fakes(protocol: u32) -> (FakeHypervisor, Arc<FakeAgent>) {
    let vmm_pid = Arc::new(Mutex::new(None));
    (
        FakeHypervisor {
            vmm_pid: vmm_pid.clone(),
        },
        Arc::new(FakeAgent {
            calls: Mutex::new(Vec::new()),
            protocol,
            vmm_pid,
        }),
    )
}

fn boot(
    hypervisor: &FakeHypervisor,
    agent: &Arc<FakeAgent>,
    dir: &Path,
) -> Result<Sandbox, SandboxError> {
    boot_in(hypervisor, agent, dir, None)
}

fn boot_in(
    hypervisor: &FakeHypervisor,
    agent: &Arc<FakeAgent>,
    dir: &Path,
    host_cgroup: Option<HostCgroupSpec>,
) -> Result<Sandbox, SandboxError> {
    Sandbox::boot(BootParams {
        hypervisor,
        connector: &FakeConnector(agent.clone()),
        artifacts: GuestArtifacts {
            kernel: "/nonexistent/vmlinux".into(),
            initramfs: "/nonexistent/initramfs".into(),
        },
        dir: dir.to_path_buf(),
        claimed: false,
        memory_mib: 256,
        vcpus: 1,
        signals: None,
        network: &NetworkPlan::Isolated,
        host_setup: None,
        sandbox_id: "pod",
        hostname: "web",
        host_cgroup,
    })
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn boot_then_destroy_calls_the_agent_in_order_and_leaves_nothing() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("sb");
    let (hypervisor, agent) = fakes(husk_agent_protocol::PROTOCOL_VERSION);
    let mut sandbox = boot(&hypervisor, &agent, &dir).unwrap();
    let vmm = sandbox.vmm_pid();
    assert!(alive(vmm));
    let record = SandboxRecord::load(&dir).unwrap();
    assert_eq!(record.pids, vec![vmm]);
    assert_eq!(record.husk_pid, std::process::id());
    assert_eq!(
        vm_host_pids(&dir),
        vec![vmm],
        "the VMM works in the state dir"
    );
    sandbox.destroy();
    assert_eq!(
        *agent.calls.lock().unwrap(),
        [
            "Check",
            "Version",
            "CreateSandbox pod web husk-shared",
            "DestroySandbox pod"
        ]
    );
    assert!(!alive(vmm));
    assert!(!dir.exists(), "the state dir is gone");
}

#[test]
fn a_stale_agent_is_refused_and_the_half_booted_sandbox_removed() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("sb");
    let (hypervisor, agent) = fakes(1);
    let err = match boot(&hypervisor, &agent, &dir) {
        Ok(_) => panic!("booted with a protocol-1 agent"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("speaks protocol 1") && err.contains("make initramfs"),
        "{err}"
    );
    let vmm = hypervisor.vmm_pid.lock().unwrap().unwrap();
    assert!(!alive(vmm), "the VMM was stopped");
    assert!(!dir.exists());
}

#[test]
fn a_container_that_cannot_be_shared_leaves_nothing_and_is_not_created() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("sb");
    let (hypervisor, agent) = fakes(husk_agent_protocol::PROTOCOL_VERSION);
    let mut sandbox = boot(&hypervisor, &agent, &dir).unwrap();
    let err = sandbox
        .add_container(NewContainer {
            guest_id: "web",
            rootfs: Path::new("/nonexistent/rootfs"),
            mounts: &[],
            spec: &serde_json::json!({}),
            stdin: false,
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/rootfs"), "{err}");
    assert!(!dir.join("private/c/web").exists(), "its folder is removed");
    let record = SandboxRecord::load(&dir).unwrap();
    assert!(
        record.mounts.is_empty() && record.folders.is_empty(),
        "{record:?}"
    );
    assert!(!agent
        .calls
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.starts_with("CreateContainer")));
    drop(sandbox);
    assert!(!dir.exists());
}

#[test]
fn a_dead_owners_sandbox_is_torn_down_from_its_record() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("sb");
    claim_dir(&dir).unwrap();
    std::fs::create_dir_all(dir.join("shared/c/web/rootfs")).unwrap();
    std::fs::write(dir.join("console.log"), "guest output").unwrap();
    let mut vmm = Command::new("sleep")
        .arg("60")
        .current_dir(&dir)
        .spawn()
        .unwrap();
    SandboxRecord {
        husk_pid: 0,
        pids: vec![vmm.id()],
        mounts: vec![PathBuf::from("shared/c/web/rootfs")],
        folders: vec!["c/web".into()],
        cgroup: None,
    }
    .store(&dir)
    .unwrap();
    teardown_dir(&dir, "web", false).unwrap();
    assert!(vmm.try_wait().unwrap().is_some(), "the VMM was killed");
    assert!(!dir.exists());
}

#[test]
fn a_guest_planted_symlink_keeps_the_teardown_out_of_the_host() {
    let base = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(outside.path().join("rootfs")).unwrap();
    std::fs::write(outside.path().join("keep"), "host").unwrap();
    let dir = base.path().join("sb");
    claim_dir(&dir).unwrap();
    std::fs::create_dir_all(dir.join("shared/c")).unwrap();
    // The guest replaced its folder with a link to a host directory.
    std::os::unix::fs::symlink(outside.path(), dir.join("shared/c/web")).unwrap();
    SandboxRecord {
        husk_pid: 0,
        pids: vec![],
        mounts: vec![PathBuf::from("shared/c/web/rootfs")],
        folders: vec!["c/web".into()],
        cgroup: None,
    }
    .store(&dir)
    .unwrap();
    assert!(teardown_dir(&dir, "web", false).is_err());
    assert!(
        outside.path().join("rootfs").is_dir(),
        "nothing removed through the link"
    );
    assert!(outside.path().join("keep").exists());
}

/// A directory whose own path leaves no room in `sun_path` for a socket in it.
fn long_dir() -> (tempfile::TempDir, PathBuf) {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("d".repeat(64)).join("e".repeat(64));
    std::fs::create_dir_all(&dir).unwrap();
    (base, dir)
}

#[test]
fn sockets_beyond_sun_path_are_reached_through_the_dir() {
    let (_base, dir) = long_dir();
    assert!(std::os::unix::net::UnixListener::bind(dir.join(VSOCK_SOCKET)).is_err());
    let sockets = SocketDir::open(&dir).unwrap();
    let short = sockets.path(VSOCK_SOCKET);
    assert!(short.as_os_str().len() < 40, "{}", short.display());
    let listener = std::os::unix::net::UnixListener::bind(&short).unwrap();
    assert!(dir.join(VSOCK_SOCKET).exists());
    std::os::unix::net::UnixStream::connect(sockets.path(VSOCK_SOCKET)).unwrap();
    listener.accept().unwrap();
}

#[test]
fn vm_processes_are_recognised_by_their_working_dir() {
    let (_base, dir) = long_dir();
    let other = tempfile::tempdir().unwrap();
    let mut inside = Command::new("sleep")
        .arg("30")
        .current_dir(&dir)
        .spawn()
        .unwrap();
    let mut outside = Command::new("sleep")
        .arg("30")
        .current_dir(other.path())
        .spawn()
        .unwrap();
    SandboxRecord {
        husk_pid: 1,
        pids: vec![inside.id(), outside.id()],
        ..Default::default()
    }
    .store(&dir)
    .unwrap();
    let found = vm_host_pids(&dir);
    for child in [&mut inside, &mut outside] {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(found, vec![inside.id()]);
    assert!(
        vm_host_pids(&dir).is_empty(),
        "dead processes are not listed"
    );
}

/// The mount options of the mount at `path` (its mountinfo line's fourth field from
/// the options on), or None if nothing is mounted there.
fn mount_options(path: &Path) -> Option<String> {
    let path = path.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(path))
        .map(|l| l.split(' ').nth(5).unwrap().to_string())
}

fn mounted_below(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

// Needs root (it mounts), as the e2e suites do; CI runs the unit tests as root.
#[test]
fn the_guest_sees_a_read_only_share_with_only_its_mounts_writable() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("sb");
    let host = tempfile::tempdir().unwrap();
    let rootfs = host.path().join("rootfs");
    let volume = host.path().join("volume");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::create_dir_all(volume.join("sub")).unwrap();
    // A submount of the read-only volume: read-only too, recursively.
    nix::mount::mount(
        Some("tmpfs"),
        &volume.join("sub"),
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount a tmpfs (the unit tests need root)");
    let (hypervisor, agent) = fakes(husk_agent_protocol::PROTOCOL_VERSION);
    let mut sandbox = boot(&hypervisor, &agent, &dir).unwrap();
    let shared = dir.join("shared");
    assert!(
        mount_options(&shared)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "the guest's view is read-only"
    );
    let mounts = [SharedMount {
        name: "0".into(),
        source: volume.clone(),
        is_dir: true,
        read_only: true,
    }];
    sandbox
        .add_container(NewContainer {
            guest_id: "web",
            rootfs: &rootfs,
            mounts: &mounts,
            spec: &serde_json::json!({}),
            stdin: false,
        })
        .unwrap();
    let folder = shared.join("c/web");
    // What the host works in is read-only to the guest: it can neither plant nor
    // swap anything there.
    for attempt in [
        std::fs::write(shared.join("planted"), "x"),
        std::fs::write(folder.join("planted"), "x"),
        std::fs::remove_dir(folder.join("mounts")),
        std::os::unix::fs::symlink("/etc", folder.join("link")),
    ] {
        let err = attempt.unwrap_err();
        assert!(
            matches!(err.raw_os_error(), Some(libc::EROFS | libc::EBUSY)),
            "{err}"
        );
    }
    // The container's own rootfs is writable through the share, reaching the host's.
    std::fs::write(folder.join("rootfs/written"), "guest").unwrap();
    assert!(rootfs.join("written").exists());
    // The read-only volume and its submount are read-only from the host side too.
    for ro in [folder.join("mounts/0/x"), folder.join("mounts/0/sub/x")] {
        let err = std::fs::write(&ro, "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{}", ro.display());
    }
    for m in [
        folder.join("rootfs"),
        folder.join("mounts/0"),
        folder.join("mounts/0/sub"),
    ] {
        let options = mount_options(&m).unwrap_or_else(|| panic!("{} not mounted", m.display()));
        let has = |flag: &str| options.split(',').any(|o| o == flag);
        assert!(has("nosuid") && has("nodev"), "{}: {options}", m.display());
    }
    sandbox.remove_container("web");
    assert!(!folder.exists(), "the container's folder is gone");
    drop(sandbox);
    assert!(
        mounted_below(base.path()).is_empty(),
        "{:?}",
        mounted_below(base.path())
    );
    assert!(!dir.exists());
    nix::mount::umount2(&volume.join("sub"), MntFlags::MNT_DETACH).unwrap();
}

// Needs root and a cgroup hierarchy, as the e2e suites do.
#[test]
fn the_vm_processes_are_born_in_the_sandbox_cgroup_which_goes_at_teardown() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("sb");
    let name = format!("husk-unit-{}", std::process::id());
    let spec = HostCgroupSpec {
        path: PathBuf::from(format!("/{name}")),
        systemd: false,
    };
    let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let (hypervisor, agent) = fakes(husk_agent_protocol::PROTOCOL_VERSION);
    let mut sandbox = boot_in(&hypervisor, &agent, &dir, Some(spec.clone())).unwrap();
    let vmm = sandbox.vmm_pid();
    let cgroups = std::fs::read_to_string(format!("/proc/{vmm}/cgroup")).unwrap();
    assert!(
        cgroups.lines().any(|l| l.ends_with(&format!(":/{name}"))),
        "the VMM runs in the sandbox cgroup: {cgroups}"
    );
    assert_eq!(SandboxRecord::load(&dir).unwrap().cgroup, Some(spec));
    sandbox.destroy();
    assert_eq!(
        std::fs::read_to_string("/proc/self/cgroup").unwrap(),
        before,
        "husk moved back"
    );
    let left: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(&name))
        .filter(|p| p.exists())
        .collect();
    assert!(left.is_empty(), "cgroup left: {left:?}");
}

/// A VMM that dies says why in its own log: the error quotes the end of each
/// non-empty VMM log, escaped, bounded, and nothing for logs that are empty or absent.
#[test]
fn a_dead_vmm_error_quotes_the_end_of_its_own_log() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(vmm_log_tails(dir.path(), 3), "");
    std::fs::write(dir.path().join("qemu.log"), b"").unwrap();
    assert_eq!(
        vmm_log_tails(dir.path(), 3),
        "",
        "an empty log is not quoted"
    );
    let mut log: Vec<u8> = (0..100_000).flat_map(|_| b"filler\n".to_vec()).collect();
    log.extend_from_slice(b"one\ntwo\njail: pivot_root: Operation not permitted \x1b[2J\n");
    std::fs::write(dir.path().join("husk-vmm.log"), &log).unwrap();
    let quoted = vmm_log_tails(dir.path(), 3);
    assert!(quoted.starts_with("\n----- husk-vmm.log ("), "{quoted}");
    assert!(quoted.contains("last 3 lines"), "{quoted}");
    assert!(quoted.contains("one\ntwo\njail: pivot_root"), "{quoted}");
    assert!(!quoted.contains("filler"), "{quoted}");
    assert!(
        !quoted.contains('\x1b'),
        "control bytes are escaped: {quoted}"
    );
    assert!(!quoted.contains("qemu.log"), "{quoted}");
}

//! A hostile guest, for real: a container that escaped into the whole guest (no pid
//! namespace of its own, every capability, so it reaches the agent's mounts through
//! `/proc/1/root` and can remount them) attacks the host side of its sandbox through
//! the qemu backend (QEMU TCG here). Each case asserts the host is unharmed, and each
//! makes one attack that succeeds where husk allows it, so a refusal is never
//! vacuous.
//!
//! Needs what the vm suite needs (root, busybox-static, qemu-system-x86, the guest
//! artifacts, virtiofsd and vhost-device-vsock); fails loudly when any is missing.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use husk_e2e::cmd::{self, Output};
use husk_e2e::fixture::{Bundle, Rootfs};
use husk_e2e::vm::{HuskRoot, TIMEOUT};
use libtest_mimic::{Arguments, Failed};
use serde_json::json;

struct Env {
    rootfs: Rootfs,
    kernel: PathBuf,
    initramfs: PathBuf,
    /// Every capability husk can give a container (`husk features`).
    all_capabilities: serde_json::Value,
}

/// Where the agent mounts the share in the guest, seen from a container without a
/// pid namespace of its own.
const GUEST_SHARE: &str = "/proc/1/root/run/husk/shared";

/// A test's husk, a private copy of the rootfs (the guest writes into it) and the
/// bundle of an escaped container running `script`.
struct Attack {
    husk: HuskRoot,
    rootfs: PathBuf,
    bundle: Bundle,
}

impl Attack {
    fn new(env: &Env, script: &str, read_only_root: bool) -> Self {
        let husk = HuskRoot::new(
            "husk-hostile-",
            &format!(
                "[vm]\nkernel = {:?}\ninitramfs = {:?}\n",
                env.kernel, env.initramfs
            ),
        );
        let rootfs = husk.dir.path().join("rootfs");
        let copied = cmd::run(
            Command::new("cp")
                .arg("-a")
                .arg(env.rootfs.path())
                .arg(&rootfs),
            Duration::from_secs(60),
        );
        assert_eq!(copied.code, 0, "copy the rootfs: {copied:?}");
        let mut bundle = Bundle::new(&rootfs, &["sh", "-c", script]);
        let config = &mut bundle.config;
        config["root"] = json!({ "path": rootfs, "readonly": read_only_root });
        // The escape: the guest's pid namespace (so /proc/1 is the agent) and every
        // capability.
        let namespaces = config["linux"]["namespaces"].as_array_mut().unwrap();
        namespaces.retain(|ns| ns["type"] != "pid");
        for set in ["bounding", "effective", "permitted"] {
            config["process"]["capabilities"][set] = env.all_capabilities.clone();
        }
        config["linux"]["maskedPaths"] = json!([]);
        config["linux"]["readonlyPaths"] = json!([]);
        bundle.write();
        Self {
            husk,
            rootfs,
            bundle,
        }
    }

    fn run(&self, id: &str) -> Output {
        self.husk.husk(&[
            "--isolation",
            "vm",
            "run",
            "--bundle",
            self.bundle.path().to_str().unwrap(),
            id,
        ])
    }

    /// The attack's report: every line the script printed, which must include
    /// `done` (the script ran to its end).
    fn report(&self, out: &Output) -> Result<String, Failed> {
        self.husk.expect(out.stdout.contains("done"), || {
            format!("the attack script did not finish: {out:?}")
        })?;
        Ok(out.stdout.clone())
    }

    /// Fails on every line the script marked `ESCAPED:`.
    fn expect_contained(&self, report: &str) -> Result<(), Failed> {
        let escaped: Vec<&str> = report.lines().filter(|l| l.contains("ESCAPED")).collect();
        self.husk.expect(escaped.is_empty(), || {
            format!("the guest changed the host side: {escaped:?}\nfull report:\n{report}")
        })
    }
}

/// Shell that tries `$1` (a command line) and prints `ESCAPED: …` if it succeeded,
/// `refused: …` if it failed.
const TRY: &str = r#"try() { if sh -c "$1" 2>/dev/null; then echo "ESCAPED: $1"; else echo "refused: $1"; fi; }
allowed() { if sh -c "$1" 2>/dev/null; then echo "allowed: $1"; else echo "FAILED-ALLOWED: $1"; fi; }
"#;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:x}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ (nanos >> 16)
}

/// The guest, as root with the share mounted, cannot change the directories the
/// host works in (the share's top level, `c/`, its container's folder and `mounts/`):
/// no file planted, nothing removed or renamed, no symlink swapped in, even after
/// remounting its view read-write. What it may change, its own rootfs, it can.
fn the_share_is_read_only_where_the_host_works(env: &Env) -> Result<(), Failed> {
    let volume = tempfile::tempdir().unwrap();
    std::fs::write(volume.path().join("keep"), "host").unwrap();
    let script = format!(
        r#"{TRY}
S={GUEST_SHARE}
F=$(ls -d $S/c/* | head -n 1)
echo "folder: $F"
[ -d "$F/rootfs" ] || echo "ESCAPED: no container folder found in $S/c"
mount -o remount,rw /proc/1/root/run/husk/shared 2>/dev/null && echo "remounted the guest view rw"
try "touch $S/planted"
try "mkdir $S/c/planted"
try "ln -s / $S/c/evil"
try "ln -s /etc $F/link"
try "mv $F/mounts $F/moved"
try "rmdir $F/mounts/0"
try "mv $F/rootfs $F/moved-rootfs"
try "touch $F/planted"
allowed "echo guest > $F/rootfs/written-by-guest"
allowed "echo guest > /data/written-by-guest"
echo done
"#
    );
    let mut attack = Attack::new(env, &script, false);
    attack.bundle.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "destination": "/data", "type": "bind", "source": volume.path(),
            "options": ["rbind", "rw"]
        }));
    attack.bundle.write();
    let id = unique("share");
    let out = attack.run(&id);
    let report = attack.report(&out)?;
    attack.expect_contained(&report)?;
    attack.husk.expect(!report.contains("FAILED-ALLOWED"), || {
        format!("an allowed write failed, so the refusals prove nothing:\n{report}")
    })?;
    // What the guest may write reached the host; nothing else did.
    attack
        .husk
        .expect(attack.rootfs.join("written-by-guest").exists(), || {
            format!("the rootfs write did not reach the host:\n{report}")
        })?;
    attack.husk.expect(
        volume.path().join("written-by-guest").exists() && volume.path().join("keep").exists(),
        || format!("the volume is not as expected:\n{report}"),
    )?;
    attack.husk.expect(
        std::fs::read_dir(&attack.husk.root).unwrap().count() == 0,
        || "the sandbox left state behind".into(),
    )
}

/// Read-only means read-only from the host side too: the guest remounts its
/// read-only rootfs and a read-only volume (with a submount) read-write and writes,
/// directly and through the raw share; nothing reaches the host.
fn read_only_holds_whatever_the_guest_remounts(env: &Env) -> Result<(), Failed> {
    let volume = tempfile::tempdir().unwrap();
    let sub = volume.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount a tmpfs submount");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(sub.clone());
    let script = format!(
        r#"{TRY}
S={GUEST_SHARE}
F=$(ls -d $S/c/* | head -n 1)
mount -o remount,rw / 2>/dev/null && echo "remounted / rw in the guest"
mount -o remount,rw /data 2>/dev/null && echo "remounted /data rw in the guest"
mount -o remount,rw /data/sub 2>/dev/null && echo "remounted /data/sub rw in the guest"
# After the remount, / is the guest's own overlay (in guest memory): the write may
# succeed there; the host check below says whether it reached the host rootfs.
sh -c "echo x > /root-file" 2>/dev/null; echo "guest-local write to its overlay: $?"
try "echo x > $F/rootfs/root-file"
try "echo x > /data/x"
try "echo x > /data/sub/x"
try "echo x > $F/mounts/0/x"
try "echo x > $F/mounts/0/sub/x"
try "mknod $F/rootfs/dev-zero c 1 5"
allowed "echo x > /tmp/x"
echo done
"#
    );
    let mut attack = Attack::new(env, &script, true);
    attack.bundle.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "destination": "/data", "type": "bind", "source": volume.path(),
            "options": ["rbind", "ro"]
        }));
    attack.bundle.write();
    let id = unique("ro");
    let out = attack.run(&id);
    let report = attack.report(&out)?;
    attack.expect_contained(&report)?;
    for planted in [
        attack.rootfs.join("root-file"),
        attack.rootfs.join("dev-zero"),
        volume.path().join("x"),
        sub.join("x"),
    ] {
        attack.husk.expect(!planted.exists(), || {
            format!("{} was written on the host:\n{report}", planted.display())
        })?;
    }
    Ok(())
}

/// The VM's host processes run in the sandbox's host cgroup (the spec's cgroupsPath)
/// with limits from the VM's size, and it is gone after the run.
fn vm_processes_run_in_the_sandbox_cgroup(env: &Env) -> Result<(), Failed> {
    let marker = unique("cg");
    let cgroup = format!("/husk-hostile/{marker}");
    let mut attack = Attack::new(env, "echo ready; sleep 600", false);
    attack.bundle.config["linux"]["cgroupsPath"] = json!(cgroup);
    attack.bundle.write();
    let id = marker.clone();
    let stdout = attack.husk.dir.path().join("stdout");
    let stderr = attack.husk.dir.path().join("stderr");
    let mut command = attack.husk.command();
    command
        .args(["--isolation", "vm", "run", "--bundle"])
        .arg(attack.bundle.path())
        .arg(&id);
    let child = attack.husk.spawn_until_ready(command, &stdout, &stderr)?;
    let record_path = attack.husk.root.join(&id).join("sandbox.json");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    let pids: Vec<u64> = record["pids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_u64())
        .collect();
    attack.husk.expect(pids.len() == 3, || {
        format!("expected QEMU and its two helpers: {record}")
    })?;
    for pid in pids.iter().copied().chain([child.pid() as u64]) {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        attack.husk.expect(
            cgroups.lines().any(|l| l.ends_with(&format!(":{cgroup}"))),
            || format!("pid {pid} is not in {cgroup}: {cgroups}"),
        )?;
    }
    let memory_limit = [
        format!("/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes"),
        format!("/sys/fs/cgroup{cgroup}/memory.max"),
    ]
    .iter()
    .find_map(|f| std::fs::read_to_string(f).ok())
    .and_then(|v| v.trim().parse::<u64>().ok());
    // 256 MiB of guest memory plus the TCG overhead (runtime/src/vm/host_cgroup.rs).
    attack
        .husk
        .expect(memory_limit == Some((256 + 512) << 20), || {
            format!("the sandbox cgroup's memory limit is {memory_limit:?}")
        })?;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.pid()),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait(TIMEOUT);
    attack.husk.expect(status.is_some(), || {
        "husk run did not end after SIGTERM".into()
    })?;
    let left = husk_e2e::leaks::cgroups_matching(&marker);
    attack
        .husk
        .expect(left.is_empty(), || format!("cgroup left: {left:?}"))
}

fn cases() -> Vec<husk_e2e::Case<Env>> {
    vec![
        (
            "the_share_is_read_only_where_the_host_works",
            the_share_is_read_only_where_the_host_works,
        ),
        (
            "read_only_holds_whatever_the_guest_remounts",
            read_only_holds_whatever_the_guest_remounts,
        ),
        (
            "vm_processes_run_in_the_sandbox_cgroup",
            vm_processes_run_in_the_sandbox_cgroup,
        ),
    ]
}

fn main() {
    let args = Arguments::from_args();
    husk_e2e::require_root("hostile_guest");
    husk_e2e::require_program("qemu-system-x86_64");
    let (kernel, initramfs) = husk_e2e::guest::artifacts();
    husk_e2e::guest::ensure_helpers();
    let features = cmd::run(
        Command::new(husk_e2e::husk_bin()).arg("features"),
        Duration::from_secs(10),
    )
    .ok();
    let features: serde_json::Value =
        serde_json::from_str(&features.stdout).expect("husk features prints JSON");
    let all_capabilities = features["linux"]["capabilities"].clone();
    assert!(
        all_capabilities.as_array().is_some_and(|c| c.len() > 30),
        "husk features lists no capabilities: {features}"
    );
    let env = Arc::new(Env {
        rootfs: Rootfs::busybox(),
        kernel,
        initramfs,
        all_capabilities,
    });
    let trials = husk_e2e::trials(&env, cases());
    let conclusion = libtest_mimic::run(&args, trials);
    drop(env);
    conclusion.exit();
}

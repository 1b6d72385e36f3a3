//! PID 1 duties: mount the filesystems the agent and containers need, point stdio
//! at the console, enable cgroup v2 controllers, and leave the VM when asked.

use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Errors of PID 1 setup.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// creating a mount point failed
    #[error("create mount point {path}: {source}")]
    MountPoint {
        path: &'static str,
        source: std::io::Error,
    },
    /// mounting a filesystem failed
    #[error("mount {fstype} on {path}: {source}")]
    Mount {
        fstype: &'static str,
        path: &'static str,
        source: nix::Error,
    },
    /// reopening the console failed
    #[error("open /dev/console: {0}")]
    Console(std::io::Error),
    /// redirecting stdio failed
    #[error("dup2 onto stdio: {0}")]
    Dup(nix::Error),
}

/// One filesystem PID 1 mounts at boot.
struct BootMount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

/// What the agent mounts, in order (later entries live under earlier ones).
fn boot_mounts() -> [BootMount; 8] {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    [
        BootMount {
            fstype: "proc",
            target: "/proc",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        BootMount {
            fstype: "sysfs",
            target: "/sys",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        BootMount {
            fstype: "devtmpfs",
            target: "/dev",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        BootMount {
            fstype: "devpts",
            target: "/dev/pts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("gid=5,mode=0620,ptmxmode=0666"),
        },
        BootMount {
            fstype: "tmpfs",
            target: "/dev/shm",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
        BootMount {
            fstype: "cgroup2",
            target: "/sys/fs/cgroup",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        BootMount {
            fstype: "tmpfs",
            target: "/run",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
        },
        BootMount {
            fstype: "tmpfs",
            target: "/tmp",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
    ]
}

/// Mounts everything in [`boot_mounts`], creating mount points as needed.
pub fn mount_basics() -> Result<(), InitError> {
    for m in boot_mounts() {
        std::fs::create_dir_all(m.target).map_err(|source| InitError::MountPoint {
            path: m.target,
            source,
        })?;
        mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, m.data).map_err(|source| {
            InitError::Mount {
                fstype: m.fstype,
                path: m.target,
                source,
            }
        })?;
    }
    Ok(())
}

/// Points stdin/stdout/stderr at /dev/console. The kernel only opens the console
/// for init when the initramfs has a /dev/console node; after devtmpfs is mounted
/// it always exists.
pub fn console_stdio() -> Result<(), InitError> {
    let console = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
        .map_err(InitError::Console)?;
    for fd in 0..=2 {
        nix::unistd::dup2(console.as_raw_fd(), fd).map_err(InitError::Dup)?;
    }
    Ok(())
}

/// Enables the cgroup v2 controllers containers are limited by, so that
/// libcontainer can set them in child cgroups. Missing controllers are logged,
/// not fatal: the guest still serves health checks without them.
pub fn enable_cgroup_controllers(root: &Path) {
    let file = root.join("cgroup.subtree_control");
    for controller in ["cpu", "cpuset", "memory", "pids"] {
        if let Err(e) = std::fs::write(&file, format!("+{controller}")) {
            tracing::warn!("cannot enable cgroup controller {controller}: {e}");
        }
    }
}

/// Sets a restrictive default umask and the hostname.
pub fn basics(hostname: &str) {
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    if let Err(e) = nix::unistd::sethostname(hostname) {
        tracing::warn!("sethostname: {e}");
    }
}

/// Guest uptime in seconds, from /proc/uptime (for boot timing logs).
pub fn uptime_secs() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Leaves the VM: flush filesystems and reset. Without ACPI the kernel resets
/// (reboot=t / reboot=k), and the VMM treats a reset as the VM exiting.
pub fn leave_vm() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // reboot(2) only returns on error (e.g. not PID 1): nothing else to do.
    eprintln!("husk-agent: reboot failed: {err:?}");
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_ordered_parents_first() {
        let mounts = boot_mounts();
        for (i, m) in mounts.iter().enumerate() {
            for later in &mounts[i + 1..] {
                assert!(
                    !Path::new(m.target).starts_with(later.target),
                    "{} mounted before its parent {}",
                    m.target,
                    later.target
                );
            }
        }
    }

    #[test]
    fn covers_required_mounts() {
        let targets: Vec<_> = boot_mounts().iter().map(|m| m.target).collect();
        for t in [
            "/proc",
            "/sys",
            "/dev",
            "/dev/pts",
            "/sys/fs/cgroup",
            "/run",
            "/tmp",
        ] {
            assert!(targets.contains(&t), "{t}");
        }
    }
}

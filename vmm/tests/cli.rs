//! The `husk-vmm` binary end to end on KVM with raw test guests: exit status through
//! the debug-exit port, SIGTERM ends it with status 0, errors name what failed, every
//! thread's capabilities are dropped once the VM runs.
//! Needs: /dev/kvm (fails loudly without it); root and /dev/net/tun for the `--net`
//! and capability tests.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{console_log, require_kvm, Asm};

const BIN: &str = env!("CARGO_BIN_EXE_husk-vmm");

#[test]
fn exit_status_comes_from_debug_exit_port_and_console_from_serial() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("guest.bin");
    std::fs::write(
        &code,
        Asm::default()
            .serial("cli ok\n")
            .out8(0xf4, 3)
            .hlt()
            .finish(),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--raw64", code.to_str().unwrap(), "--memory-mib", "16"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "cli ok\n");
}

#[test]
fn json_config_and_console_log() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("guest.bin");
    std::fs::write(
        &code,
        Asm::default()
            .serial("json\n")
            .out8(0x64, 0xfe)
            .hlt()
            .finish(),
    )
    .unwrap();
    let log = dir.path().join("console.log");
    let cfg = dir.path().join("vm.json");
    std::fs::write(
        &cfg,
        serde_json::json!({"raw64": code, "memory_mib": 8, "vcpus": 2, "console": log}).to_string(),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(console_log(&log), "json\n");
}

#[test]
fn sigterm_stops_the_vm_with_status_zero() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("guest.bin");
    let log = dir.path().join("console.log");
    let sock = dir.path().join("v.sock");
    std::fs::write(&code, Asm::default().serial("spin\n").hlt().finish()).unwrap();
    // Seccomp enforced (the default) and a vsock device: teardown runs confined too.
    let mut child = Command::new(BIN)
        .args([
            "--raw64",
            code.to_str().unwrap(),
            "--memory-mib",
            "16",
            "--console",
        ])
        .arg(&log)
        .arg("--vsock")
        .arg(&sock)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while console_log(&log) != "spin\n" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "guest never printed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sock.exists(), "vsock socket while the VM runs");
    // A host client may connect before the guest driver is up; it waits.
    let _early = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    // SAFETY: plain kill(2) on the child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists(), "vsock socket removed on exit");
}

#[test]
fn errors_name_what_failed() {
    let out = Command::new(BIN)
        .args(["--kernel", "/nonexistent/vmlinux"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kernel file missing: /nonexistent/vmlinux"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["--memory-mib", "16"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no kernel given"));
}

#[test]
fn console_input_reaches_the_guest_uart() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("guest.bin");
    // 1: mov dx, 0x3fd; in al, dx; test al, 1; jz 1b   (wait for data ready)
    //    mov dx, 0x3f8; in al, dx; mov dx, 0xf4; out dx, al
    let mut guest = vec![0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01, 0x74, 0xf7];
    guest.extend(Asm::default().in_al(0x3f8).out_al(0xf4).hlt().finish());
    std::fs::write(&code, guest).unwrap();
    let mut child = Command::new(BIN)
        .args(["--raw64", code.to_str().unwrap(), "--memory-mib", "16"])
        .arg("--console-input")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"Z").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(i32::from(b'Z')));
}

/// `--vsock`, `--fs`, `--disk` and `--net` get consecutive virtio-mmio slots (vsock,
/// fs, blk, net): the guest reads each slot's DeviceID and exits with it. Seccomp is
/// enforced, so the fs, blk and net threads install their filters and tear down
/// confined. `--net` creates a tap: needs root.
#[test]
fn fs_disk_and_net_devices_take_the_next_virtio_slots() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    for (slot, device_id) in [(0u64, 19), (1, 26), (2, 2), (3, 1)] {
        let code = dir.path().join(format!("guest{slot}.bin"));
        std::fs::write(
            &code,
            Asm::default()
                .load32(0xd000_0008 + slot * 0x1000)
                .out_al(0xf4)
                .hlt()
                .finish(),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["--raw64", code.to_str().unwrap(), "--memory-mib", "16"])
            .arg("--vsock")
            .arg(dir.path().join("v.sock"))
            .arg("--fs")
            .arg(format!("tag=husk-shared,path={}", shared.display()))
            .arg("--disk")
            .arg(format!("readonly,path={}", disk.display()))
            .args(["--net", "tap=husk-slot%d,mac=02:00:00:00:00:01"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(device_id),
            "slot {slot}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `--net fd=N`: a tap the parent attached (as the runtime does in the container's
/// network namespace) is taken over through the inherited descriptor and becomes
/// the virtio-net device; a descriptor that is not open in husk-vmm is an error
/// that says so. Needs root (/dev/net/tun).
#[test]
fn net_takes_an_inherited_tap_descriptor() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("guest.bin");
    std::fs::write(
        &code,
        Asm::default()
            .load32(0xd000_0008)
            .out_al(0xf4)
            .hlt()
            .finish(),
    )
    .unwrap();
    let tap = husk_vmm::virtio::net::Tap::open("husk-cli%d").expect("a tap (root)");
    let fd = tap.as_raw_fd();
    let mut command = Command::new(BIN);
    command
        .args(["--raw64", code.to_str().unwrap(), "--memory-mib", "16"])
        .args(["--net", &format!("fd={fd},mac=02:00:00:00:00:09")]);
    // SAFETY: the closure runs in the child before exec and only calls fcntl(2),
    // which is async-signal-safe, to let the tap's descriptor survive exec.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = command.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Device id 1 is also husk-vmm's error status: stderr tells them apart.
    assert!(
        out.status.code() == Some(1) && !err.contains("husk-vmm:"),
        "virtio-net (device id 1) in slot 0: {:?}; stderr: {err}",
        out.status
    );

    // Not inherited: the same number is closed in the child (close-on-exec).
    let out = Command::new(BIN)
        .args(["--raw64", code.to_str().unwrap(), "--memory-mib", "16"])
        .args(["--net", &format!("fd={fd}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "tap descriptor {fd}: not open in husk-vmm when it started"
        )),
        "{err}"
    );
}

/// The config the runtime's builtin backend writes (`VmmConfig` as JSON: a vsock
/// socket relative to the working directory, a virtio-fs share, the console log, an
/// inherited tap as a `net` entry with `fd`) gives the devices the same slots as the
/// flags do. Needs root (/dev/net/tun).
#[test]
fn a_typed_config_file_gives_the_devices_their_slots() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    use husk_vmm::config::{FsCache, FsShare, MachineConfig, NetConfig, VsockConfig};
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let tap = husk_vmm::virtio::net::Tap::open("husk-cfg%d").expect("a tap (root)");
    let fd = tap.as_raw_fd();
    for (slot, device_id) in [(0u64, 19), (1, 26), (2, 1)] {
        let code = dir.path().join(format!("guest{slot}.bin"));
        std::fs::write(
            &code,
            Asm::default()
                .load32(0xd000_0008 + slot * 0x1000)
                .out_al(0xf4)
                .hlt()
                .finish(),
        )
        .unwrap();
        let config = husk_vmm::VmmConfig {
            machine: MachineConfig {
                raw64: Some(code),
                memory_mib: 16,
                console: Some(dir.path().join("console.log")),
                ..Default::default()
            },
            vsock: Some(VsockConfig::new("vsock.sock")),
            fs: vec![FsShare {
                tag: "husk-shared".into(),
                path: shared.clone(),
                cache: FsCache::Auto,
            }],
            disks: Vec::new(),
            net: vec![NetConfig::inherited(fd, Some("02:00:00:00:00:0a".into()))],
        };
        let file = dir.path().join("husk-vmm.json");
        std::fs::write(&file, config.to_json().unwrap()).unwrap();
        let mut command = Command::new(BIN);
        command.arg("--config").arg(&file).current_dir(dir.path());
        // SAFETY: the closure runs in the child before exec and only calls fcntl(2),
        // which is async-signal-safe, to let the tap's descriptor survive exec.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = command.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // Device id 1 is also husk-vmm's error status: stderr tells them apart.
        assert!(
            out.status.code() == Some(device_id) && !err.contains("husk-vmm:"),
            "slot {slot}: {:?}; stderr: {err}",
            out.status
        );
    }
}

/// Each thread's (name, CapEff) from /proc/<pid>/task/*.
fn thread_caps(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
        if let Some(eff) = eff {
            out.push((comm.trim().to_string(), eff));
        }
    }
    out
}

/// Started as root with every device (vsock, fs, disk, a tap), 2 vCPUs: once the
/// guest runs, every thread's CapEff is 0 but the virtio-fs thread's, which holds
/// only the file-ownership capabilities it serves the guest with.
#[test]
fn capabilities_are_dropped_on_every_thread_once_the_vm_runs() {
    require_kvm();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("guest.bin");
    let log = dir.path().join("console.log");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&code, Asm::default().serial("up\n").hlt().finish()).unwrap();
    let mut child = Command::new(BIN)
        .args(["--raw64", code.to_str().unwrap(), "--memory-mib", "16"])
        .args(["--vcpus", "2", "--console"])
        .arg(&log)
        .arg("--vsock")
        .arg(dir.path().join("v.sock"))
        .arg("--fs")
        .arg(format!("tag=t,path={}", shared.display()))
        .arg("--disk")
        .arg(format!("path={}", disk.display()))
        .args(["--net", "tap=husk-caps%d"])
        .spawn()
        .unwrap();
    let pid = child.id();
    let fs_caps = husk_vmm::caps::FS_WORKER_CAPS;
    let start = Instant::now();
    let threads = loop {
        let threads = thread_caps(pid);
        let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
        let all_there = [
            "vcpu0",
            "vcpu1",
            "vsock",
            "virtio-fs",
            "virtio-blk",
            "virtio-net",
            "signals",
        ]
        .iter()
        .all(|n| names.contains(n));
        let dropped = threads.iter().all(|(name, eff)| match name.as_str() {
            "virtio-fs" => eff & !fs_caps == 0,
            _ => *eff == 0,
        });
        if console_log(&log) == "up\n" && all_there && dropped {
            break threads;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!(
                "threads (name, CapEff) after 20 s: {threads:x?}; console: {}",
                console_log(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let fs = threads.iter().find(|(n, _)| n == "virtio-fs").unwrap();
    assert_ne!(fs.1, 0, "the fs thread keeps what it needs as root");
    // SAFETY: plain kill(2) on the child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

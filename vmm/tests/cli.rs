//! The `husk-vmm` binary end to end on KVM with raw test guests: exit status through
//! the debug-exit port, SIGTERM ends it with status 0, errors name what failed.
//! Needs: /dev/kvm (fails loudly without it).

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

/// `--vsock`, `--fs` and `--disk` get consecutive virtio-mmio slots (vsock, fs, blk):
/// the guest reads each slot's DeviceID and exits with it. Seccomp is enforced, so the
/// fs and blk threads install their filters and tear down confined.
#[test]
fn fs_and_disk_devices_take_the_next_virtio_slots() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    for (slot, device_id) in [(0u64, 19), (1, 26), (2, 2)] {
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

//! KVM-layer tests: tiny purpose-built guests assembled here as raw machine code run
//! through the public builder on the host's /dev/kvm (PVM here). The VMM sets up long
//! mode and 2 MiB identity pages; the guests do serial writes, MMIO and port I/O.
//! Needs: /dev/kvm (fails loudly without it).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bzimage, console_log, elf_kernel, require_kvm, Asm};
use husk_vmm::config::MachineConfig;
use husk_vmm::devices::BusDevice;
use husk_vmm::{ExitReason, ValidatedVm};

fn spec_with_console(code: Vec<u8>, dir: &tempfile::TempDir) -> (ValidatedVm, std::path::PathBuf) {
    let log = dir.path().join("console.log");
    let mut spec = ValidatedVm::raw64(code);
    spec.console = Some(log.clone());
    (spec, log)
}

#[test]
fn serial_output_and_debug_exit_code() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let code = Asm::default()
        .serial("hello from husk\n")
        .out8(0xf4, 42)
        .hlt()
        .finish();
    let (spec, log) = spec_with_console(code, &dir);
    let reason = husk_vmm::build_and_run(&spec).expect("VM runs");
    let out = console_log(&log);
    assert_eq!(reason, ExitReason::DebugExit(42), "console:\n{out}");
    assert_eq!(reason.exit_code(), 42);
    assert_eq!(out, "hello from husk\n");
}

/// MMIO writes seen: (offset, bytes).
type Writes = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// Records MMIO accesses and answers reads with a fixed value.
struct Recorder {
    writes: Writes,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = 0x1234_5600u32 | offset as u32;
        data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.lock().unwrap().push((offset, data.to_vec()));
    }
}

#[test]
fn mmio_exits_decode_address_length_and_data() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    const BASE: u64 = 0xd800_0000;
    let code = Asm::default()
        .store32(BASE + 0x10, 0xdead_beef)
        .load32(BASE + 0x21) // al = 0x21: the offset the device saw
        .out_al(0xf4)
        .hlt()
        .finish();
    let (spec, log) = spec_with_console(code, &dir);
    let writes = Arc::new(Mutex::new(Vec::new()));
    let w = writes.clone();
    let vm = husk_vmm::build_with(&spec, move |vm| {
        vm.add_mmio_device(BASE, 0x1000, Arc::new(Mutex::new(Recorder { writes: w })))?;
        Ok(())
    })
    .expect("VM builds");
    let reason = vm.run().expect("VM runs");
    assert_eq!(
        reason,
        ExitReason::DebugExit(0x21),
        "console:\n{}",
        console_log(&log)
    );
    assert_eq!(
        *writes.lock().unwrap(),
        vec![(0x10, 0xdead_beefu32.to_le_bytes().to_vec())]
    );
}

#[test]
fn i8042_reset_ends_vm_cleanly() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let code = Asm::default()
        .serial("rebooting\n")
        .out8(0x64, 0xfe)
        .hlt()
        .finish();
    let (spec, log) = spec_with_console(code, &dir);
    let reason = husk_vmm::build_and_run(&spec).expect("VM runs");
    assert_eq!(reason, ExitReason::Reset, "console:\n{}", console_log(&log));
    assert_eq!(reason.exit_code(), 0);
}

#[test]
fn unclaimed_port_reads_all_ones_and_serial_lsr_is_ready() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    // in al, 0x70 (nothing there) -> 0xff -> exit code 255.
    let code = Asm::default().in_al(0x70).out_al(0xf4).hlt().finish();
    let (spec, _log) = spec_with_console(code, &dir);
    assert_eq!(
        husk_vmm::build_and_run(&spec).unwrap(),
        ExitReason::DebugExit(0xff)
    );
    // LSR (0x3fd) reports THR empty + idle: 0x60.
    let code = Asm::default().in_al(0x3fd).out_al(0xf4).hlt().finish();
    let (spec, _log) = spec_with_console(code, &dir);
    assert_eq!(
        husk_vmm::build_and_run(&spec).unwrap(),
        ExitReason::DebugExit(0x60)
    );
}

#[test]
fn stop_request_ends_a_spinning_multi_vcpu_guest() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    // Prints, then spins in hlt (the in-kernel irqchip keeps it inside KVM); APs wait
    // for INIT/SIPI. A stop request must kick every vCPU out.
    let code = Asm::default().serial("up\n").hlt().finish();
    let (mut spec, log) = spec_with_console(code, &dir);
    spec.vcpus = 2;
    let vm = husk_vmm::build(&spec).expect("VM builds");
    let exit = vm.exit_signal();
    let started = Instant::now();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        exit.request(ExitReason::Stopped);
    });
    let reason = vm.run().expect("VM runs");
    stopper.join().unwrap();
    assert_eq!(reason, ExitReason::Stopped);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(console_log(&log), "up\n");
}

#[test]
fn memory_too_small_and_pvm_linux_are_named_errors() {
    require_kvm();
    let mut spec = ValidatedVm::raw64(vec![0xf4]);
    spec.memory_mib = 1;
    let err = husk_vmm::build(&spec).err().expect("must fail");
    assert!(err.to_string().contains("memory too small"), "{err}");

    // A Linux payload on a PVM host is refused up front, naming the reason.
    if husk_vmm::builder::pvm_host() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"\x7fELF").unwrap();
        let spec = husk_vmm::VmmConfig {
            machine: MachineConfig {
                kernel: Some(kernel),
                ..Default::default()
            },
            ..Default::default()
        }
        .validate()
        .unwrap();
        let err = husk_vmm::build(&spec).err().expect("must fail on PVM");
        assert!(err.to_string().contains("PVM host detected"), "{err}");
    }
}

#[test]
fn virtio_vsock_registers_are_visible_to_the_guest() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("v.sock");
    // Guest reads MagicValue's low byte ('v') and DeviceID (19) over MMIO and reports
    // them through the serial port and the debug-exit port.
    let code = Asm::default()
        .load32(0xd000_0000)
        .out_al(0x3f8)
        .load32(0xd000_0008)
        .out_al(0xf4)
        .hlt()
        .finish();
    let (mut spec, log) = spec_with_console(code, &dir);
    spec.vsock = Some((sock.clone(), 3));
    let vm = husk_vmm::build(&spec).expect("VM builds");
    assert!(
        vm.cmdline().contains("virtio_mmio.device=4K@0xd0000000:5"),
        "{}",
        vm.cmdline()
    );
    assert!(sock.exists(), "vsock socket bound at build time");
    let reason = vm.run().expect("VM runs");
    assert_eq!(
        reason,
        ExitReason::DebugExit(19),
        "console:\n{}",
        console_log(&log)
    );
    assert_eq!(console_log(&log), "v");
}

/// Boots a purpose-built "kernel" through the Linux payload path (allowed on PVM
/// because it is not a stock Linux).
fn boot_kernel_image(image: &[u8], initramfs: Option<&[u8]>) -> (ExitReason, String) {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("kernel");
    std::fs::write(&kernel, image).unwrap();
    let initrd = initramfs.map(|data| {
        let p = dir.path().join("initrd");
        std::fs::write(&p, data).unwrap();
        p
    });
    let log = dir.path().join("console.log");
    let spec = husk_vmm::VmmConfig {
        machine: MachineConfig {
            kernel: Some(kernel),
            initramfs: initrd,
            cmdline: Some("husk-test console=ttyS0".into()),
            memory_mib: 64,
            console: Some(log.clone()),
            allow_pvm: true,
            ..Default::default()
        },
        ..Default::default()
    }
    .validate()
    .unwrap();
    let reason = husk_vmm::build_and_run(&spec).expect("VM runs");
    (reason, console_log(&log))
}

#[test]
fn pvh_elf_kernel_starts_in_32bit_mode_with_start_info() {
    require_kvm();
    // 32-bit code at the PVH entry: print "pvh\n", print the low byte of
    // hvm_start_info.magic (0x78 'x') read through ebx, then exit with the first byte
    // of the command line (cmdline_paddr at ebx+24).
    let mut code = Asm::default().serial("pvh\n").finish();
    code.extend([0x8b, 0x03]); // mov eax, [ebx]
    code.extend(Asm::default().out_al(0x3f8).finish());
    code.extend([0x8b, 0x43, 0x18, 0x8a, 0x00]); // mov eax, [ebx+24]; mov al, [eax]
    code.extend(Asm::default().out_al(0xf4).hlt().finish());
    // A 64-bit entry at offset 0 that must not be used: exit 0xee.
    let mut image = Asm::default().out8(0xf4, 0xee).hlt().finish();
    let pvh_off = image.len() as u32;
    image.extend(code);
    let (reason, console) = boot_kernel_image(&elf_kernel(&image, Some(pvh_off)), None);
    assert_eq!(reason, ExitReason::DebugExit(b'h'), "console:\n{console}");
    assert_eq!(console, "pvh\nx");
}

#[test]
fn elf_kernel_without_pvh_note_uses_64bit_entry_and_zero_page() {
    require_kvm();
    // 64-bit entry: rsi = zero page; exit with the first byte of the command line
    // (zero page cmd_line_ptr at +0x228).
    let mut code = Asm::default().serial("elf64\n").finish();
    code.extend([0x8b, 0x86, 0x28, 0x02, 0x00, 0x00, 0x8a, 0x00]); // mov eax,[rsi+0x228]; mov al,[rax]
    code.extend(Asm::default().out_al(0xf4).hlt().finish());
    let (reason, console) = boot_kernel_image(&elf_kernel(&code, None), None);
    assert_eq!(reason, ExitReason::DebugExit(b'h'), "console:\n{console}");
    assert_eq!(console, "elf64\n");
}

#[test]
fn bzimage_uses_linux_boot_protocol_with_initramfs() {
    require_kvm();
    // 64-bit entry at load+0x200: rsi = zero page. Exit with the first byte of the
    // initramfs (ramdisk_image at zero page +0x218).
    let mut code = Asm::default().serial("bz\n").finish();
    code.extend([0x8b, 0x86, 0x18, 0x02, 0x00, 0x00, 0x8a, 0x00]); // mov eax,[rsi+0x218]; mov al,[rax]
    code.extend(Asm::default().out_al(0xf4).hlt().finish());
    let (reason, console) = boot_kernel_image(&bzimage(&code), Some(b"07070100"));
    assert_eq!(reason, ExitReason::DebugExit(b'0'), "console:\n{console}");
    assert_eq!(console, "bz\n");
}

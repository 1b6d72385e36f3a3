//! The one build-and-boot path: KVM → VM → memory → vCPUs → devices → kernel load →
//! run. [`build`] reads top to bottom as the machine's story; [`Vm::run`] starts it.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, kvm_userspace_memory_region, KVM_CAP_PMU_CAPABILITY,
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, KVM_PMU_CAP_DISABLE,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use linux_loader::loader::Cmdline;
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

use crate::arch::boot::{load_linux, load_raw64, BootError};
use crate::arch::cpuid::filter_cpuid;
use crate::arch::e820::{e820_map, ram_regions};
use crate::arch::layout::{
    CMDLINE_MAX_SIZE, KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE,
    VIRTIO_MMIO_SIZE,
};
use crate::arch::mptable::setup_mptable;
use crate::arch::regs::{
    configure_vcpu, gdt_for, set_lint, setup_page_tables, write_gdt, RegsError,
};
use crate::config::{Payload, TapSource, ValidatedVm};
use crate::devices::bus::SharedDevice;
use crate::devices::legacy::{
    DebugExit, SerialDevice, DEBUG_EXIT_PORT, I8042, I8042_PORT, I8042_PORT_LEN, SERIAL_IRQ,
    SERIAL_PORT, SERIAL_PORT_LEN,
};
use crate::devices::{Bus, BusError};
use crate::lifecycle::{ExitReason, ExitSignal, LifecycleError};
use crate::seccomp::{SeccompLevel, ThreadRole};
use crate::vcpu::{install_kick_handler, kick_signal, spawn_vcpu, VcpuError};
use crate::virtio::block::BlockDevice;
use crate::virtio::fs::FsDevice;
use crate::virtio::mmio::{reg, MmioTransport};
use crate::virtio::net::{parse_mac, random_mac, NetDevice, Tap};
use crate::virtio::vsock::VsockDevice;
use crate::virtio::VirtioDevice;

/// Errors from building or running a VM. Each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// /dev/kvm is missing or unusable.
    #[error("cannot open /dev/kvm ({0}): is KVM available and are you allowed to use it?")]
    NoKvm(#[source] kvm_ioctls::Error),
    /// A KVM capability the VMM needs is missing.
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    /// The host KVM is kvm-pvm, which cannot boot a stock Linux guest.
    #[error("PVM host detected (kvm_pvm module loaded): a stock Linux guest cannot boot on it; run under a nested KVM host, or pass --allow-pvm for a PVM-enabled guest kernel")]
    PvmHost,
    /// A KVM VM-level ioctl failed.
    #[error("{ioctl} failed: {source}")]
    Kvm {
        /// Which ioctl.
        ioctl: &'static str,
        /// The underlying error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be allocated.
    #[error("allocating {mib} MiB of guest memory: {source}")]
    Memory {
        /// Requested size.
        mib: u32,
        /// The underlying error.
        source: vm_memory::mmap::FromRangesError,
    },
    /// Configuration invalid.
    #[error(transparent)]
    Config(#[from] crate::config::VmmConfigError),
    /// Loading the guest payload failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The MP table could not be written.
    #[error(transparent)]
    Mptable(#[from] crate::arch::mptable::MptableError),
    /// Setting up vCPU registers failed.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// A device could not be placed on a bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// vCPU threads.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The exit signal.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The console log could not be opened.
    #[error("console log {path}: {source}")]
    Console {
        /// Path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The console input thread could not be spawned.
    #[error("spawning the console input thread: {0}")]
    ConsoleThread(#[source] std::io::Error),
    /// An eventfd could not be created.
    #[error("creating an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The vsock device could not be set up.
    #[error(transparent)]
    Vsock(#[from] crate::virtio::vsock::VsockError),
    /// A virtio-blk disk could not be set up.
    #[error(transparent)]
    Block(#[from] crate::virtio::block::BlockError),
    /// A virtio-net device could not be set up.
    #[error(transparent)]
    Net(#[from] crate::virtio::net::NetError),
    /// A virtio-fs share could not be set up.
    #[error(transparent)]
    Fs(#[from] crate::virtio::fs::FsError),
    /// A virtio device could not be set up.
    #[error(transparent)]
    Virtio(#[from] crate::virtio::VirtioError),
    /// The kernel command line could not be built.
    #[error("kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
}

fn kvm_err(ioctl: &'static str) -> impl Fn(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::Kvm { ioctl, source }
}

/// Turns the VM's vPMU off when KVM offers that (`KVM_CHECK_EXTENSION` of
/// `KVM_CAP_PMU_CAPABILITY` returns the settable bits); true when it did.
fn disable_pmu(vm: &VmFd) -> Result<bool, BuildError> {
    let offered = vm.check_extension_raw(KVM_CAP_PMU_CAPABILITY.into());
    if offered < 0 || offered as u32 & KVM_PMU_CAP_DISABLE == 0 {
        return Ok(false);
    }
    let cap = kvm_enable_cap {
        cap: KVM_CAP_PMU_CAPABILITY,
        args: [u64::from(KVM_PMU_CAP_DISABLE), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap)
        .map_err(kvm_err("KVM_ENABLE_CAP(KVM_CAP_PMU_CAPABILITY)"))?;
    Ok(true)
}

/// True when /dev/kvm is served by kvm-pvm.
pub fn pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// A built VM, ready to [`run`](Vm::run).
pub struct Vm {
    _kvm: Kvm,
    vm: VmFd,
    mem: GuestMemoryMmap,
    vcpus: Vec<VcpuFd>,
    io_bus: Bus,
    mmio_bus: Bus,
    exit: Arc<ExitSignal>,
    cmdline: String,
    next_virtio: u32,
    seccomp: SeccompLevel,
    console_input: Option<Arc<Mutex<SerialDevice>>>,
}

/// A VM whose vCPUs are running; [`wait`](RunningVm::wait) for its end.
pub struct RunningVm {
    threads: Vec<JoinHandle<()>>,
    exit: Arc<ExitSignal>,
    // Devices live until the vCPUs are joined.
    _io: Arc<Bus>,
    _mmio: Arc<Bus>,
    _vm: VmFd,
    _mem: GuestMemoryMmap,
    _kvm: Kvm,
}

/// Builds the VM described by `spec`: KVM → VM → memory → vCPUs → devices → kernel.
pub fn build(spec: &ValidatedVm) -> Result<Vm, BuildError> {
    build_with(spec, |_| Ok(()))
}

/// Like [`build`], with a hook that adds devices (e.g. test MMIO recorders) after the
/// built-in ones and before the kernel command line is written.
pub fn build_with(
    spec: &ValidatedVm,
    add_devices: impl FnOnce(&mut Vm) -> Result<(), BuildError>,
) -> Result<Vm, BuildError> {
    spec.check()?;

    // KVM.
    let kvm = Kvm::new().map_err(BuildError::NoKvm)?;
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(BuildError::MissingCap(name));
        }
    }
    if matches!(spec.payload, Payload::Linux { .. }) && pvm_host() && !spec.allow_pvm {
        return Err(BuildError::PvmHost);
    }

    // VM with in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT.
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    // No vPMU (the CPUID filter announces none either): KVM only takes this before
    // the first vCPU exists. Where KVM has no vPMU to offer (enable_pmu=0, or PVM)
    // it does not list the cap, and there is nothing to turn off.
    if disable_pmu(&vm)? {
        tracing::debug!("vPMU disabled (KVM_CAP_PMU_CAPABILITY)");
    }

    // Memory.
    let mem_size = u64::from(spec.memory_mib) << 20;
    let ranges: Vec<_> = ram_regions(mem_size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| BuildError::Memory {
        mib: spec.memory_mib,
        source,
    })?;
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which the returned `Vm`
        // keeps alive for as long as the VM fd (and so the slot) exists.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }

    // vCPUs, each with its own filtered CPUID.
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpus = Vec::with_capacity(spec.vcpus.into());
    for id in 0..spec.vcpus {
        let vcpu = vm
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let mut cpuid = supported.clone();
        filter_cpuid(cpuid.as_mut_slice(), id, spec.vcpus);
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        vcpus.push(vcpu);
    }

    let mut machine = Vm {
        _kvm: kvm,
        vm,
        mem,
        vcpus,
        io_bus: Bus::new(),
        mmio_bus: Bus::new(),
        exit: Arc::new(ExitSignal::new()?),
        cmdline: String::new(),
        next_virtio: 0,
        seccomp: spec.seccomp,
        console_input: None,
    };

    // Devices: serial (IRQ 4), i8042 (reset), debug exit, then virtio-mmio devices.
    let console: Box<dyn Write + Send> = match &spec.console {
        Some(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| BuildError::Console {
                    path: path.display().to_string(),
                    source,
                })?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let serial_irq = machine.irqfd(SERIAL_IRQ)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, console)));
    machine
        .io_bus
        .insert(SERIAL_PORT, SERIAL_PORT_LEN, serial.clone())?;
    if spec.console_input {
        machine.console_input = Some(serial);
    }
    machine.io_bus.insert(
        I8042_PORT,
        I8042_PORT_LEN,
        Arc::new(Mutex::new(I8042::new(machine.exit.clone()))),
    )?;
    machine.io_bus.insert(
        DEBUG_EXIT_PORT,
        1,
        Arc::new(Mutex::new(DebugExit::new(machine.exit.clone()))),
    )?;
    if let Some((path, cid)) = &spec.vsock {
        let vsock = VsockDevice::new(u64::from(*cid), path.clone(), spec.seccomp)?;
        let (base, irq) = machine.add_virtio_device(Box::new(vsock))?;
        tracing::info!(base, irq, path = %path.display(), "virtio-vsock");
    }
    for share in &spec.fs {
        let fs = FsDevice::new(share, spec.seccomp)?;
        let (base, irq) = machine.add_virtio_device(Box::new(fs))?;
        tracing::info!(base, irq, tag = %share.tag, path = %share.path.display(), "virtio-fs");
    }
    for disk in &spec.disks {
        let blk = BlockDevice::new(disk, spec.seccomp)?;
        let (base, irq) = machine.add_virtio_device(Box::new(blk))?;
        tracing::info!(base, irq, path = %disk.path.display(), read_only = disk.read_only, "virtio-blk");
    }
    for net in &spec.net {
        let mac = match &net.mac {
            Some(m) => parse_mac(m)?,
            None => random_mac()?,
        };
        let tap = match net.source()? {
            TapSource::Name(name) => Tap::open(&name)?,
            TapSource::Fd(fd) => Tap::from_fd(fd)?,
        };
        let tap_name = tap.name().to_string();
        let dev = NetDevice::new(tap, mac, spec.seccomp)?;
        let (base, irq) = machine.add_virtio_device(Box::new(dev))?;
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        tracing::info!(base, irq, tap = %tap_name, %mac, "virtio-net");
    }
    add_devices(&mut machine)?;

    // Kernel (or raw code), boot structures, initial vCPU state.
    let mode = match &spec.payload {
        Payload::Linux {
            kernel,
            initramfs,
            cmdline,
        } => {
            let mut cl = Cmdline::new(CMDLINE_MAX_SIZE)?;
            cl.insert_str(cmdline)?;
            if !machine.cmdline.is_empty() {
                cl.insert_str(machine.cmdline.trim())?;
            }
            machine.cmdline = cl.as_cstring()?.to_string_lossy().into_owned();
            load_linux(
                &machine.mem,
                mem_size,
                kernel,
                initramfs.as_deref(),
                &cl,
                &e820_map(mem_size),
            )?
        }
        Payload::Raw64(code) => load_raw64(&machine.mem, code)?,
    };
    write_gdt(&machine.mem, &gdt_for(&mode))?;
    setup_page_tables(&machine.mem)?;
    setup_mptable(&machine.mem, spec.vcpus)?;
    for vcpu in &machine.vcpus {
        let taken = configure_vcpu(vcpu, &mode)?;
        if taken < crate::arch::regs::boot_msrs().len() {
            tracing::warn!(taken, "KVM accepted only some boot MSRs");
        }
        set_lint(vcpu)?;
    }
    Ok(machine)
}

impl Vm {
    /// A fresh eventfd wired to `gsi` through KVM_IRQFD.
    pub fn irqfd(&self, gsi: u32) -> Result<EventFd, BuildError> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        self.vm
            .register_irqfd(&evt, gsi)
            .map_err(kvm_err("KVM_IRQFD"))?;
        Ok(evt)
    }

    /// The VM fd (for ioeventfds).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Adds a device on the MMIO bus.
    pub fn add_mmio_device(
        &mut self,
        base: u64,
        len: u64,
        dev: SharedDevice,
    ) -> Result<(), BusError> {
        self.mmio_bus.insert(base, len, dev)
    }

    /// Reserves the next virtio-mmio window and IRQ, and announces it on the kernel
    /// command line as `virtio_mmio.device=<size>@<addr>:<irq>`. Returns (base, irq).
    pub fn allocate_virtio_slot(&mut self) -> Result<(u64, u32), BuildError> {
        let n = self.next_virtio;
        self.next_virtio += 1;
        let base = VIRTIO_MMIO_BASE + u64::from(n) * VIRTIO_MMIO_SIZE;
        let irq = VIRTIO_IRQ_BASE + n;
        let mut cl = Cmdline::new(256)?;
        cl.add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(base), irq, None)?;
        self.cmdline.push(' ');
        self.cmdline.push_str(&cl.as_cstring()?.to_string_lossy());
        Ok((base, irq))
    }

    /// Puts `device` behind a virtio-mmio transport in the next MMIO window: irqfd for
    /// its GSI, one ioeventfd per queue at QueueNotify (datamatch = queue index), and a
    /// `virtio_mmio.device=` entry on the kernel command line. Returns (base, irq).
    pub fn add_virtio_device(
        &mut self,
        device: Box<dyn VirtioDevice>,
    ) -> Result<(u64, u32), BuildError> {
        let (base, irq) = self.allocate_virtio_slot()?;
        let irq_evt = self.irqfd(irq)?;
        let transport = MmioTransport::new(device, self.mem.clone(), irq_evt)?;
        for (i, evt) in transport.queue_evts().iter().enumerate() {
            self.vm
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY),
                    i as u32,
                )
                .map_err(kvm_err("KVM_IOEVENTFD"))?;
        }
        self.mmio_bus
            .insert(base, VIRTIO_MMIO_SIZE, Arc::new(Mutex::new(transport)))?;
        Ok((base, irq))
    }

    /// The final kernel command line (empty for raw guests).
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// The signal that stops the VM; `request(ExitReason::Stopped)` from any thread.
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// Starts one thread per vCPU and waits until the VM stops; returns why.
    pub fn run(self) -> Result<ExitReason, BuildError> {
        Ok(self.start()?.wait())
    }

    /// Starts one thread per vCPU (each installs its seccomp filter first).
    pub fn start(self) -> Result<RunningVm, BuildError> {
        install_kick_handler()?;
        let io = Arc::new(self.io_bus);
        let mmio = Arc::new(self.mmio_bus);
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for (id, vcpu) in self.vcpus.into_iter().enumerate() {
            let t = spawn_vcpu(
                id as u8,
                vcpu,
                io.clone(),
                mmio.clone(),
                self.exit.clone(),
                self.seccomp,
            );
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.exit.request(ExitReason::Error(e.to_string()));
                    break;
                }
            }
        }
        if let Some(serial) = self.console_input {
            spawn_console_input(serial, self.exit.clone(), self.seccomp)?;
        }
        Ok(RunningVm {
            threads,
            exit: self.exit,
            _io: io,
            _mmio: mmio,
            _vm: self.vm,
            _mem: self.mem,
            _kvm: self._kvm,
        })
    }
}

impl RunningVm {
    /// The signal that stops the VM.
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// Waits until the VM stops, kicks every vCPU out of KVM_RUN, joins them, tears
    /// the devices down and returns why it stopped.
    pub fn wait(self) -> ExitReason {
        wait_readable(self.exit.eventfd());
        // Kick vCPUs out of KVM_RUN until each thread has seen the stop flag.
        for t in &self.threads {
            while !t.is_finished() {
                let _ = t.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let exit = self.exit.clone();
        for t in self.threads {
            let _ = t.join();
        }
        exit.reason()
            .unwrap_or(ExitReason::Error("VM stopped without a reason".into()))
    }
}

/// Forwards stdin to the UART until stdin ends or the VM stops. Detached: it may sit
/// in read(2) when the VM ends, which is harmless in the VMM process.
fn spawn_console_input(
    serial: Arc<Mutex<SerialDevice>>,
    exit: Arc<ExitSignal>,
    seccomp: SeccompLevel,
) -> Result<(), BuildError> {
    use std::io::Read;
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            if let Err(e) = crate::caps::drop_for(ThreadRole::ConsoleInput) {
                exit.request(ExitReason::Error(e.to_string()));
                return;
            }
            if let Err(e) = crate::seccomp::apply(ThreadRole::ConsoleInput, seccomp) {
                exit.request(ExitReason::Error(e.to_string()));
                return;
            }
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 64];
            while !exit.is_stopping() {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() && !exit.is_stopping() {
                    let taken = serial
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .enqueue_input(rest);
                    rest = &rest[taken..];
                    if taken == 0 {
                        // The guest has not drained the 64-byte FIFO yet.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        })
        .map_err(BuildError::ConsoleThread)?;
    Ok(())
}

/// Blocks until `evt` is readable.
fn wait_readable(evt: &EventFd) {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: evt.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is a valid pollfd for the duration of the call, count 1.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r > 0 {
            return;
        }
    }
}

/// Builds and runs `spec` to completion.
pub fn build_and_run(spec: &ValidatedVm) -> Result<ExitReason, BuildError> {
    build(spec)?.run()
}

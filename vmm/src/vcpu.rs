//! vCPU threads. Exit handling is a pure function of the exit value
//! ([`handle_exit`]), unit-tested with fabricated exits.

use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::Bus;
use crate::lifecycle::{ExitReason, ExitSignal};
use crate::seccomp::{self, SeccompLevel, ThreadRole};

/// KVM_SYSTEM_EVENT_SHUTDOWN.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
/// KVM_SYSTEM_EVENT_RESET.
const SYSTEM_EVENT_RESET: u32 = 2;
/// KVM_SYSTEM_EVENT_CRASH.
const SYSTEM_EVENT_CRASH: u32 = 3;

/// Errors from vCPU threads.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The thread could not be spawned.
    #[error("spawning vCPU {id} thread: {source}")]
    Spawn {
        /// vCPU index.
        id: u8,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The kick signal handler could not be installed.
    #[error("installing the vCPU kick signal handler: {0}")]
    KickHandler(vmm_sys_util::errno::Error),
}

/// What the run loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuAction {
    /// Re-enter the guest.
    Continue,
    /// Stop the VM for this reason.
    Stop(ExitReason),
}

/// Handles one KVM exit: port I/O and MMIO go to the buses (unclaimed reads return
/// all-ones, unclaimed writes are dropped), system events and faults stop the VM.
pub fn handle_exit(exit: VcpuExit<'_>, io: &Bus, mmio: &Bus) -> VcpuAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !io.read(u64::from(port), data) {
                data.fill(0xff);
            }
            VcpuAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if !io.write(u64::from(port), data) {
                tracing::trace!(port, ?data, "unclaimed port write");
            }
            VcpuAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                tracing::debug!(addr, len = data.len(), "unclaimed MMIO read");
                data.fill(0xff);
            }
            VcpuAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                tracing::debug!(addr, ?data, "unclaimed MMIO write");
            }
            VcpuAction::Continue
        }
        VcpuExit::Hlt => VcpuAction::Stop(ExitReason::Halted),
        VcpuExit::Shutdown => VcpuAction::Stop(ExitReason::TripleFault),
        VcpuExit::SystemEvent(kind, _) => match kind {
            SYSTEM_EVENT_SHUTDOWN => VcpuAction::Stop(ExitReason::Poweroff),
            SYSTEM_EVENT_RESET => VcpuAction::Stop(ExitReason::Reset),
            SYSTEM_EVENT_CRASH => VcpuAction::Stop(ExitReason::Error("guest crashed".into())),
            other => VcpuAction::Stop(ExitReason::Error(format!(
                "unknown KVM system event {other}"
            ))),
        },
        VcpuExit::FailEntry(reason, cpu) => VcpuAction::Stop(ExitReason::Error(format!(
            "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on cpu {cpu}"
        ))),
        VcpuExit::InternalError => VcpuAction::Stop(ExitReason::Error(
            "KVM_EXIT_INTERNAL_ERROR (emulation failure)".into(),
        )),
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => VcpuAction::Continue,
        other => VcpuAction::Stop(ExitReason::Error(format!("unexpected KVM exit {other:?}"))),
    }
}

/// The signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler so the kick signal only interrupts KVM_RUN.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
        .map_err(VcpuError::KickHandler)
}

/// Runs `vcpu` on its own thread, confined by `seccomp`, until the VM stops.
pub fn spawn_vcpu(
    id: u8,
    mut vcpu: VcpuFd,
    io: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
    seccomp: SeccompLevel,
) -> Result<JoinHandle<()>, VcpuError> {
    std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            if let Err(e) = crate::caps::drop_for(ThreadRole::Vcpu) {
                exit.request(ExitReason::Error(format!("vCPU {id}: {e}")));
                return;
            }
            if let Err(e) = seccomp::apply(ThreadRole::Vcpu, seccomp) {
                exit.request(ExitReason::Error(format!("vCPU {id}: {e}")));
                return;
            }
            run_loop(id, &mut vcpu, &io, &mmio, &exit)
        })
        .map_err(|source| VcpuError::Spawn { id, source })
}

fn run_loop(id: u8, vcpu: &mut VcpuFd, io: &Bus, mmio: &Bus, exit: &ExitSignal) {
    while !exit.is_stopping() {
        match vcpu.run() {
            Ok(e) => {
                if let VcpuAction::Stop(reason) = handle_exit(e, io, mmio) {
                    tracing::debug!(vcpu = id, ?reason, "vCPU stops the VM");
                    exit.request(reason);
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => exit.request(ExitReason::Error(format!("vCPU {id}: KVM_RUN: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::BusDevice;
    use std::sync::Mutex;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(0x40 + offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    fn buses() -> (Bus, Bus, Arc<Mutex<Echo>>) {
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        let mut io = Bus::new();
        io.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(0xd000_0000, 0x1000, dev.clone()).unwrap();
        (io, mmio, dev)
    }

    #[test]
    fn port_io_routes_and_unclaimed_reads_are_all_ones() {
        let (io, mmio, dev) = buses();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, b"A"), &io, &mmio),
            VcpuAction::Continue
        );
        let mut d = [0u8; 1];
        handle_exit(VcpuExit::IoIn(0x3fd, &mut d), &io, &mmio);
        assert_eq!(d[0], 0x45);
        let mut d = [0u8; 2];
        handle_exit(VcpuExit::IoIn(0x70, &mut d), &io, &mmio);
        assert_eq!(d, [0xff, 0xff]);
        assert_eq!(dev.lock().unwrap().0, vec![(0, b"A".to_vec())]);
    }

    #[test]
    fn mmio_routes_with_offset() {
        let (io, mmio, dev) = buses();
        let data = 0xdead_beefu32.to_le_bytes();
        handle_exit(VcpuExit::MmioWrite(0xd000_0050, &data), &io, &mmio);
        assert_eq!(dev.lock().unwrap().0, vec![(0x50, data.to_vec())]);
        let mut r = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(0xd000_0004, &mut r), &io, &mmio);
        assert_eq!(r, [0x44; 4]);
        handle_exit(VcpuExit::MmioRead(0xe000_0000, &mut r), &io, &mmio);
        assert_eq!(r, [0xff; 4]);
    }

    #[test]
    fn system_events_and_faults_stop() {
        let (io, mmio, _) = buses();
        assert_eq!(
            handle_exit(VcpuExit::Hlt, &io, &mmio),
            VcpuAction::Stop(ExitReason::Halted)
        );
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &io, &mmio),
            VcpuAction::Stop(ExitReason::TripleFault)
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(1, &[]), &io, &mmio),
            VcpuAction::Stop(ExitReason::Poweroff)
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(2, &[]), &io, &mmio),
            VcpuAction::Stop(ExitReason::Reset)
        );
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(0x7, 0), &io, &mmio),
            VcpuAction::Stop(ExitReason::Error(m)) if m.contains("FAIL_ENTRY")
        ));
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &io, &mmio),
            VcpuAction::Stop(ExitReason::Error(_))
        ));
        assert_eq!(
            handle_exit(VcpuExit::Intr, &io, &mmio),
            VcpuAction::Continue
        );
    }
}

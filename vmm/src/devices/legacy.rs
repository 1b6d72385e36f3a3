//! Legacy port-I/O devices: the 8250 UART at 0x3f8 (vm-superio, IRQ 4 via irqfd), the
//! i8042 controller at 0x60/0x64 (only so that a guest reset ends the VM) and the
//! debug-exit port at 0xf4 (a written byte becomes the VMM's exit status; for tests).

use std::io::Write;
use std::sync::Arc;

use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;
use crate::lifecycle::{ExitReason, ExitSignal};

/// COM1 base port.
pub const SERIAL_PORT: u64 = 0x3f8;
/// COM1 port count.
pub const SERIAL_PORT_LEN: u64 = 8;
/// COM1 interrupt (GSI).
pub const SERIAL_IRQ: u32 = 4;
/// i8042 data port; the command port is 0x64 (base + 4).
pub const I8042_PORT: u64 = 0x60;
/// i8042 ports covered (0x60..=0x64).
pub const I8042_PORT_LEN: u64 = 5;
/// Debug-exit port: a byte written here stops the VM with that exit status.
pub const DEBUG_EXIT_PORT: u64 = 0xf4;

/// Errors from legacy devices.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// An eventfd could not be created or cloned.
    #[error("serial interrupt eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// Raises an interrupt by writing an irqfd-registered eventfd.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Ends the VM with [`ExitReason::Reset`] (i8042 reset line).
#[derive(Debug, Clone)]
pub struct ResetTrigger(pub Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reset);
        Ok(())
    }
}

/// Where console bytes go; flushed after every write so a crash loses nothing.
pub struct ConsoleWriter(pub Box<dyn Write + Send>);

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(buf)?;
        self.0.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The 8250 UART on the I/O bus.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleWriter>,
}

impl SerialDevice {
    /// A UART writing to `out`, interrupting through `irq` (an irqfd eventfd).
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            serial: Serial::new(EventFdTrigger(irq), ConsoleWriter(out)),
        }
    }

    /// Queues host input for the guest (raises the receive interrupt).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < SERIAL_PORT_LEN {
            data[0] = self.serial.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < SERIAL_PORT_LEN {
            if let Err(e) = self.serial.write(offset as u8, data[0]) {
                tracing::warn!("serial write: {e:?}");
            }
        }
    }
}

/// The i8042 controller; its reset command (0xfe to port 0x64) ends the VM.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// An i8042 whose reset stops the VM through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 {
            dev: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = self.dev.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 {
            let _ = self.dev.write(offset as u8, data[0]);
        }
    }
}

/// The debug-exit port: the first byte written becomes the VMM's exit status.
pub struct DebugExit {
    exit: Arc<ExitSignal>,
}

impl DebugExit {
    /// A debug-exit port stopping the VM through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        DebugExit { exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(v) = data.first() {
            self.exit.request(ExitReason::DebugExit(*v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn serial_writes_reach_the_console() {
        let out = Shared::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        // Line status: transmitter empty.
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        // Enabling the THR-empty interrupt raises the irq.
        s.write(1, &[0x02]);
        assert_eq!(irq.read().unwrap(), 1);
    }

    #[test]
    fn i8042_reset_and_debug_exit_stop_the_vm() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut kbd = I8042::new(exit.clone());
        kbd.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));

        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dbg = DebugExit::new(exit.clone());
        dbg.write(0, &[42]);
        assert_eq!(exit.reason(), Some(ExitReason::DebugExit(42)));
    }
}

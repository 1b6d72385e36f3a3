//! Devices on the I/O-port and MMIO buses: 8250 serial, i8042 (reset only), the
//! debug-exit port, and the bus that routes vCPU exits to them.

pub mod bus;
pub mod legacy;

pub use bus::{Bus, BusDevice, BusError};

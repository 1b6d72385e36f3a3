//! husk-vmm: the built-in microVM monitor.
//!
//! One linear build-and-boot path ([`builder::build_and_run`]): KVM → VM → memory →
//! vCPUs → devices → kernel load → run. See `docs/vmm.md` for the memory layout, the
//! device list and what is tested where.

pub mod arch;

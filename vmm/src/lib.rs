//! husk-vmm: the built-in microVM monitor.
//!
//! One linear build-and-boot path ([`builder::build_with`]): KVM → VM → memory →
//! vCPUs → devices → kernel load → run. See `docs/vmm.md` for the memory layout, the
//! device list, the seccomp policy and what is tested where.

pub mod arch;
pub mod builder;
pub mod caps;
pub mod config;
pub mod devices;
pub mod jail;
pub mod landlock;
pub mod lifecycle;
pub mod seccomp;
pub mod vcpu;
pub mod virtio;

pub use builder::{build, build_and_run, build_with, BuildError, RunningVm, Vm};
pub use config::{Payload, ValidatedVm, VmmConfig};
pub use lifecycle::{ExitReason, ExitSignal};
pub use seccomp::SeccompLevel;

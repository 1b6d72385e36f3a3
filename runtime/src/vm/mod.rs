//! VM isolation: each container runs behind its own guest kernel in a sandbox VM.
//!
//! - [`guest_spec`]: the bundle's spec rewritten for the guest, shared bind mounts,
//!   the VM's size;
//! - [`network`]: the container's network namespace carried into the guest;
//! - [`sandbox`]: one booted VM with its agent connection, and its teardown;
//! - [`relay`]: a guest process's stdio, terminal, signals and exit status;
//! - [`state`]: the container's state file, read by every `husk` command;
//! - [`supervisor`]: the host process that stands in for the container's init.

pub mod guest_spec;
pub mod network;
pub mod relay;
pub mod sandbox;
pub mod state;
pub mod supervisor;

//! VM isolation: containers run behind their own guest kernel in a sandbox VM.
//!
//! - [`sandbox`]: one VM's whole life (boot, containers, teardown), for the CLI's
//!   supervisor and the containerd shim alike;
//! - [`agent`]: the typed client of the guest agent, every call and its timeout;
//! - [`host_cgroup`]: the host cgroup every VM process of a sandbox runs in;
//! - [`share`]: the host side of the shared directory, guest-proof;
//! - [`guest_spec`]: the bundle's spec rewritten for the guest, shared bind mounts,
//!   the VM's size;
//! - [`network`]: the container's network namespace carried into the guest;
//! - [`relay`]: a guest process's stdio, terminal, signals and exit status;
//! - [`signals`]: the signals a stand-in process forwards to the guest;
//! - [`state`]: the container's state file, read by every `husk` command;
//! - [`supervisor`]: the host process that stands in for the container's init.

pub mod agent;
pub mod guest_spec;
pub mod host_cgroup;
pub mod network;
pub mod relay;
pub mod sandbox;
pub mod share;
pub mod signals;
pub mod state;
pub mod supervisor;

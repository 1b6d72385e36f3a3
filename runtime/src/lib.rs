//! husk: an OCI runtime that runs each workload behind its own guest kernel in a
//! microVM, or — for workloads the operator trusts — directly in host namespaces.
//!
//! This library holds what the `husk` CLI and the containerd shim share: the bundle,
//! the operator config, the isolation policy, input validation, the container handle
//! both isolations answer to, the shared-kernel backend built on youki's
//! `libcontainer` and the VM sandbox (`vm`). See docs/design.md for the layering.

pub mod bundle;
pub mod config;
pub mod container;
pub mod container_id;
pub mod hypervisor;
pub mod isolation;
pub mod logging;
pub mod pidfile;
pub mod protected_exe;
pub mod shared_kernel;
pub mod signal;
pub mod units;
pub mod vm;

//! husk: an OCI runtime that runs each workload behind its own guest kernel in a
//! microVM, or — for workloads the operator trusts — directly in host namespaces.
//!
//! This library holds what the `husk` CLI and, later, the containerd shim share: the
//! operator config, the isolation policy, input validation and the shared-kernel
//! container backend built on youki's `libcontainer`.

pub mod config;
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

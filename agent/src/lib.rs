//! husk-agent's modules, as a library: `main.rs` is the binary (PID 1 setup and
//! the ttrpc server), and the fuzz targets in `agent/fuzz` drive validation and the
//! services through this crate without a VM.

pub mod container;
pub mod error_log;
pub mod init;
pub mod network;
pub mod oom;
pub mod reaper;
pub mod service;
pub mod tty;
pub mod validate;

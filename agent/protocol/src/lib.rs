//! husk agent protocol: the messages and ttrpc services of `proto/agent.proto`
//! (generated at build time), plus the host side of hybrid vsock.
//!
//! The generated code lives in [`agent`] (messages) and [`agent_ttrpc`] (clients,
//! server traits and `create_*` registration functions).

/// Protobuf messages of `agent.proto` (generated).
#[allow(
    clippy::all,
    unknown_lints,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    trivial_casts,
    unused_results,
    unused_mut,
    unused_attributes
)]
#[rustfmt::skip]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// ttrpc clients, server traits and `create_*` registration functions (generated).
#[allow(
    clippy::all,
    unknown_lints,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    unused_imports,
    unused_results
)]
#[rustfmt::skip]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

pub mod hybrid_vsock;

/// Bumped when a change to `agent.proto` needs both sides updated.
pub const PROTOCOL_VERSION: u32 = 4;

/// The guest vsock port the agent serves its API on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

//! husk-vmm's configuration. The types, the flag parsers and every check that needs
//! no KVM live in the `husk-vmm-config` crate (`vmm/config/`), one module per device,
//! so the runtime can build the same config without KVM or FUSE crates; this module
//! re-exports them for the rest of husk-vmm.

pub use husk_vmm_config::*;

use crate::builder::BuildError;

/// The builder resolves each validated network device's tap with
/// `NetConfig::source()?`; its error is a configuration error like the others.
impl From<NetConfigError> for BuildError {
    fn from(e: NetConfigError) -> Self {
        BuildError::Config(e.into())
    }
}

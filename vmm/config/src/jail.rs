//! The layout of husk-vmm's jail, shared by the runtime that builds it and husk-vmm,
//! which checks it after entering (docs/vmm.md, "Jail").

/// Everything the jail's root holds, sorted: mount points and the VM's config.
pub const ROOT_ENTRIES: &[&str] = &[
    "dev",
    "initramfs",
    "kernel",
    "proc",
    "run",
    "shared",
    CONFIG_FILE,
];

/// husk-vmm's config, at the jail's root.
pub const CONFIG_FILE: &str = "vm.json";

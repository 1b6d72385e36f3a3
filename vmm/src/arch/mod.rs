//! x86_64 machine setup: memory layout, e820 map, page tables, GDT, registers, CPUID,
//! and the boot-protocol structures (PVH start info, Linux zero page).

pub mod boot;
pub mod cpuid;
pub mod e820;
pub mod layout;
pub mod mptable;
pub mod regs;

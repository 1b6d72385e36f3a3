//! CPUID for each vCPU: KVM_GET_SUPPORTED_CPUID filtered with the vCPU's APIC id, the
//! vCPU count and the hypervisor bit, and with no performance monitoring announced.
//!
//! The PMU is hidden as Firecracker hides it: husk-vmm also turns the vPMU off per VM
//! (`KVM_CAP_PMU_CAPABILITY`, see the builder), and a guest must not be told about
//! counters it does not have. A vPMU costs an MSR exit per counter access and perf
//! NMIs, and is one more shared-hardware channel to a hostile guest; a microVM for
//! containers needs none of it.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX bit 15: PDCM (IA32_PERF_CAPABILITIES exists).
const ECX_PDCM: u32 = 1 << 15;
/// Leaf 1 ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: HTT (logical processor count in EBX is valid).
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0xa: Intel architectural performance monitoring (version, counters).
const LEAF_ARCH_PERFMON: u32 = 0xa;
/// Leaf 0x23: Intel architectural performance monitoring, extended.
const LEAF_ARCH_PERFMON_EXT: u32 = 0x23;
/// Leaf 0x8000_0001 ECX, AMD: PerfCtrExtCore (bit 23, the six core counters at
/// 0xc001_0200), PerfCtrExtNB/DF (24), PerfTsc (27), PerfCtrExtLLC (28).
const AMD_ECX_PERF: u32 = (1 << 23) | (1 << 24) | (1 << 27) | (1 << 28);
/// Leaf 0x8000_0022, AMD: PerfMonV2 and the number of core/NB/LLC counters.
const LEAF_AMD_PERFMON_V2: u32 = 0x8000_0022;

/// Adjusts `entries` (as returned by KVM_GET_SUPPORTED_CPUID) for vCPU `apic_id` of
/// `vcpu_count`: initial APIC id and logical count in leaf 1, x2APIC id in leaves 0xb
/// and 0x1f, the hypervisor bit set, and no PMU: leaves 0xa, 0x23 and 0x8000_0022
/// zeroed, PDCM and AMD's extended-counter bits cleared.
pub fn filter_cpuid(entries: &mut [kvm_cpuid_entry2], apic_id: u8, vcpu_count: u8) {
    for entry in entries.iter_mut() {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(apic_id) << 24)
                    | (u32::from(vcpu_count) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                entry.ecx &= !ECX_PDCM;
                if vcpu_count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            0xb | 0x1f => entry.edx = u32::from(apic_id),
            LEAF_ARCH_PERFMON | LEAF_ARCH_PERFMON_EXT | LEAF_AMD_PERFMON_V2 => {
                (entry.eax, entry.ebx, entry.ecx, entry.edx) = (0, 0, 0, 0);
            }
            0x8000_0001 => entry.ecx &= !AMD_ECX_PERF,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xdead_beef,
            edx: 0x1234,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_gets_apic_id_count_and_hypervisor_bit() {
        let mut e = vec![leaf(0, 0), leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1)];
        filter_cpuid(&mut e, 3, 4);
        assert_eq!(e[1].ebx >> 24, 3);
        assert_eq!((e[1].ebx >> 16) & 0xff, 4);
        assert_eq!(e[1].ebx & 0xffff, 0xbeef);
        assert_ne!(e[1].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[1].edx & EDX_HTT, 0);
        assert_eq!(e[2].edx, 3);
        assert_eq!(e[3].edx, 3);
        assert_eq!(e[0].ebx, 0xdead_beef, "other leaves untouched");
    }

    #[test]
    fn no_pmu_is_announced() {
        let mut e = vec![
            leaf(1, 0),
            leaf(0xa, 0),
            leaf(0x23, 0),
            leaf(0x23, 1),
            leaf(0x8000_0001, 0),
            leaf(0x8000_0022, 0),
        ];
        for x in e.iter_mut() {
            (x.eax, x.ebx, x.ecx, x.edx) = (!0, !0, !0, !0);
        }
        filter_cpuid(&mut e, 0, 1);
        assert_eq!(e[0].ecx & ECX_PDCM, 0, "PDCM");
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        for x in &e[1..4] {
            assert_eq!(
                (x.eax, x.ebx, x.ecx, x.edx),
                (0, 0, 0, 0),
                "leaf {:#x}",
                x.function
            );
        }
        assert_eq!(
            e[4].ecx, !AMD_ECX_PERF,
            "only the counter bits of 0x8000_0001 ECX"
        );
        assert_eq!(e[4].ecx & (1 << 23), 0, "PerfCtrExtCore");
        assert_eq!(e[4].edx, !0, "0x8000_0001 EDX untouched");
        assert_eq!((e[5].eax, e[5].ebx, e[5].ecx, e[5].edx), (0, 0, 0, 0));
    }

    #[test]
    fn single_vcpu_clears_htt() {
        let mut e = vec![leaf(1, 0)];
        e[0].edx |= EDX_HTT;
        filter_cpuid(&mut e, 0, 1);
        assert_eq!(e[0].edx & EDX_HTT, 0);
    }
}

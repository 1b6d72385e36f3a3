//! CPUID for each vCPU: KVM_GET_SUPPORTED_CPUID filtered with the vCPU's APIC id, the
//! vCPU count and the hypervisor bit.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: HTT (logical processor count in EBX is valid).
const EDX_HTT: u32 = 1 << 28;

/// Adjusts `entries` (as returned by KVM_GET_SUPPORTED_CPUID) for vCPU `apic_id` of
/// `vcpu_count`: initial APIC id and logical count in leaf 1, x2APIC id in leaves 0xb
/// and 0x1f, the hypervisor bit set.
pub fn filter_cpuid(entries: &mut [kvm_cpuid_entry2], apic_id: u8, vcpu_count: u8) {
    for entry in entries.iter_mut() {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(apic_id) << 24)
                    | (u32::from(vcpu_count) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if vcpu_count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            0xb | 0x1f => entry.edx = u32::from(apic_id),
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
    fn single_vcpu_clears_htt() {
        let mut e = vec![leaf(1, 0)];
        e[0].edx |= EDX_HTT;
        filter_cpuid(&mut e, 0, 1);
        assert_eq!(e[0].edx & EDX_HTT, 0);
    }
}

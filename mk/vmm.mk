# husk-vmm: the built-in microVM monitor (vmm/, docs/vmm.md).
#   make test-vmm          unit tests plus the KVM-layer tests (tiny assembled guests
#                          on /dev/kvm; they fail, never skip, when /dev/kvm is
#                          unusable), release build
#   make test-vmm-nested   a real Linux guest under husk-vmm on a nested KVM host
#                          (QEMU TCG + kvm-amd): boot with 2 vCPUs, vsock round trip,
#                          reboot -> exit 0. Uses the project guest kernel from
#                          $(HUSK_CACHE)/kernel when built, else a Debian kernel
#                          (boot-only, said plainly). About 15-90 s.

.PHONY: test-vmm test-vmm-nested
test-vmm:
	$(CARGO) test -p husk-vmm --release --lib --test kvm_guests --test vsock_guest --test cli

test-vmm-nested:
	bash vmm/tests/nested/run.sh

TEST_SUITES += test-vmm test-vmm-nested

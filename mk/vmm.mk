# husk-vmm: the built-in microVM monitor (vmm/, docs/vmm.md).
#   make test-vmm   unit tests plus the KVM-layer tests (tiny assembled guests on
#                   /dev/kvm; they fail, never skip, when /dev/kvm is unusable)

.PHONY: test-vmm
test-vmm:
	$(CARGO) test -p husk-vmm --release --lib --test kvm_guests --test vsock_guest --test cli

TEST_SUITES += test-vmm

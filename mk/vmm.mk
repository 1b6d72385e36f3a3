# husk-vmm: the built-in microVM monitor (vmm/, docs/vmm.md).
#   make test-vmm          unit tests plus the KVM-layer tests (tiny assembled guests
#                          on /dev/kvm; they fail, never skip, when /dev/kvm is
#                          unusable), release build
#   make test-vmm-nested   a real Linux guest under husk-vmm on a nested KVM host
#                          (QEMU TCG + kvm-amd): boot with 2 vCPUs, vsock round trip,
#                          reboot -> exit 0; then the real agent initramfs with the
#                          rootfs over virtio-fs (containers, exec, tty, OOM via
#                          agent_probe) and `husk run` through the builtin backend.
#                          Uses the project guest kernel and agent initramfs from
#                          $(HUSK_CACHE) (the initramfs is built when missing), else
#                          a Debian kernel (boot-only, said plainly). About 2 minutes.

.PHONY: test-vmm test-vmm-nested
test-vmm:
	$(CARGO) test -p husk-vmm --release --lib --test kvm_guests --test vsock_guest --test cli --test tap

test-vmm-nested:
	bash vmm/tests/nested/run.sh

TEST_SUITES += test-vmm test-vmm-nested

# husk-vmm: the built-in microVM monitor (vmm/, docs/vmm.md).
#   make test-vmm          unit tests plus the KVM-layer tests (tiny assembled guests
#                          on /dev/kvm; they fail, never skip, when /dev/kvm is
#                          unusable), the binary's tests and a real tap (root,
#                          /dev/net/tun), release build
#   make test-vmm-nested   a real Linux guest under husk-vmm on a nested KVM host
#                          (QEMU TCG + kvm-amd): boot with 2 vCPUs, vsock round trip,
#                          reboot -> exit 0; then the real agent initramfs with the
#                          rootfs over virtio-fs (containers, exec, tty, OOM via
#                          agent_probe) and `husk run` through the builtin backend.
#                          Uses the project guest kernel and agent initramfs from
#                          $(HUSK_CACHE) (the initramfs is built when missing), else
#                          a Debian kernel (boot-only, said plainly). The first guest
#                          also pings the nested host over a tap (virtio-net) and the
#                          VMM's threads must have no capabilities. About 2 minutes.
#   make bench-vmm-nested  NOT part of `make test`: in the same nested host, process
#                          start -> first console byte and -> "husk-agent ready" for
#                          husk-vmm vs QEMU -M microvm (same kernel, initramfs, vCPUs,
#                          memory; BENCH_RUNS=5, BENCH_VCPUS=1, BENCH_MEMORY_MIB=256),
#                          medians, ratios and VMM RSS as a table (docs/vmm.md).

.PHONY: test-vmm test-vmm-nested bench-vmm-nested
test-vmm:
	$(CARGO) test -p husk-vmm --release --lib --test kvm_guests --test vsock_guest --test cli --test tap

test-vmm-nested:
	bash vmm/tests/nested/run.sh

bench-vmm-nested:
	bash vmm/tests/nested/bench.sh

TEST_SUITES += test-vmm test-vmm-nested

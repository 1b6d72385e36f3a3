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
#                          VMM's threads must have no capabilities. The nested host
#                          has 2 vCPUs (with 1, a QEMU TCG lost wakeup stops it for
#                          good: docs/vmm.md); a serial log silent for
#                          HUSK_NESTED_STALL s (120) ends the run as STALLED with the
#                          console and the nested host's CPU state. About 3 minutes.
#   make test-vmm-nested-repeat N=10
#                          NOT part of `make test`: the stages N times in one nested
#                          host boot, each checked on its own, then "N passed, M
#                          failed" (HUSK_NESTED_STAGES="agent run" picks stages).
#   make bench-vmm-nested  NOT part of `make test`: in the same nested host, process
#                          start -> first console byte and -> "husk-agent ready" for
#                          husk-vmm vs QEMU -M microvm (same kernel, initramfs, vCPUs,
#                          memory; BENCH_RUNS=5, BENCH_VCPUS=1, BENCH_MEMORY_MIB=256),
#                          medians, ratios and VMM RSS as a table (docs/vmm.md).

.PHONY: test-vmm test-vmm-nested test-vmm-nested-repeat bench-vmm-nested
test-vmm:
	$(CARGO) test -p husk-vmm --release --lib --test kvm_guests --test vsock_guest --test cli --test tap

test-vmm-nested:
	bash vmm/tests/nested/run.sh

# N iterations of the stages in one nested-host boot (HUSK_NESTED_STAGES picks them).
N ?= 10
test-vmm-nested-repeat:
	HUSK_NESTED_REPEAT=$(N) bash vmm/tests/nested/run.sh

bench-vmm-nested:
	bash vmm/tests/nested/bench.sh

TEST_SUITES += test-vmm test-vmm-nested

# Guest side of VM isolation: kernel, static agent, initramfs, QEMU boot test.
# Included by the root Makefile (-include mk/*.mk); HUSK_CACHE is exported there.

GUEST_APT_PKGS := qemu-system-x86 cpio libseccomp-dev libcap-ng-dev busybox-static linux-source-6.12 flex bison bc libelf-dev

.PHONY: guest-deps guest-kernel agent-static initramfs guest-artifacts test-guest

# Installs the Debian packages the guest build and boot test need (root only;
# otherwise says what is missing). Quick when all are present.
guest-deps:
	@missing=""; for p in $(GUEST_APT_PKGS); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        echo "guest-deps: installing$$missing"; \
	        (DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing || \
	         (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing)); \
	    else echo "guest-deps: missing packages:$$missing (apt-get install them)"; exit 1; fi; \
	fi

# vmlinux in $(HUSK_CACHE)/kernel/<hash>/ (skipped when cached).
guest-kernel: guest-deps
	bash guest-kernel/build.sh

# Static husk-agent in target/agent/ (its own target dir and RUSTFLAGS).
agent-static: guest-deps
	bash agent/build-static.sh

# Uncompressed cpio with /init = husk-agent, in $(HUSK_CACHE)/initramfs/<hash>/.
initramfs: guest-deps
	bash agent/mkinitramfs.sh "$$(bash agent/build-static.sh)"

# Builds what is missing, then prints "kernel=<path>" and "initramfs=<path>"
# (for the runtime and the VMM: `make -s guest-artifacts`).
guest-artifacts: guest-deps
	@echo "kernel=$$(KERNEL_PRINT_PATH=1 bash guest-kernel/build.sh)"
	@echo "initramfs=$$(bash agent/mkinitramfs.sh "$$(bash agent/build-static.sh)")"

# Boots kernel + initramfs under QEMU TCG and talks to the agent over vsock.
test-guest: guest-kernel initramfs
	bash tests/guest/boot_test.sh

TEST_SUITES += test-guest

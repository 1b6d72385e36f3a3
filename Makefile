# husk — top-level entry points. README.md names two of them:
#   make demo   install what is missing, build, run a container
#   make test   install what is missing, build, run every suite
# Component makefiles in mk/*.mk add their own suites to TEST_SUITES.

SHELL := /bin/bash
CARGO ?= cargo
# Everything, tests included, builds in release so each crate compiles once.
CARGO_PROFILE := --release
TARGET_DIR := $(CURDIR)/target/release
HUSK := $(TARGET_DIR)/husk
HUSK_CACHE ?= $(HOME)/.cache/husk
export HUSK_CACHE

TEST_SUITES :=

-include mk/*.mk

.PHONY: setup build demo test lint unit-test e2e bench bench-compare bench-net
setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build $(CARGO_PROFILE) --workspace --bins

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Unit tests: no engines; the sandbox's mount and cgroup tests need root, as CI has.
# (husk-vmm's run in test-vmm, with its KVM layer.)
unit-test: setup
	$(CARGO) test $(CARGO_PROFILE) --workspace --exclude husk-e2e --exclude husk-benches --exclude husk-vmm

# End-to-end suites against the real husk binary and real engines (root needed).
# guest-artifacts (mk/guest.mk): the vm suite boots the guest kernel and initramfs.
e2e: build guest-artifacts
	$(CARGO) test $(CARGO_PROFILE) -p husk-e2e

# The main job: a container in a microVM (guest kernel and agent built if missing).
demo: build guest-artifacts
	bash scripts/demo.sh

test: build lint unit-test e2e $(TEST_SUITES)
	@echo "make test: all suites passed"

# Every benchmark: container startup, vm vs container, the end-to-end comparison, network.
bench: build guest-artifacts
	$(CARGO) bench -p husk-benches

# docker run and direct run, vm isolation vs husk container vs runc vs crun, memory.
bench-compare: build guest-artifacts
	$(CARGO) bench -p husk-benches --bench compare

# TCP throughput both ways and round-trip latency container <-> peer over a veth:
# vm isolation vs husk container vs runc.
bench-net: build guest-artifacts
	$(CARGO) bench -p husk-benches --bench net

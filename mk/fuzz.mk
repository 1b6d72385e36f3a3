# Fuzzing with cargo-fuzz and libFuzzer: the agent's request decoding and path
# handling (agent/fuzz) and husk-vmm's guest-facing device parsers (vmm/fuzz).
# Included by the root Makefile; HUSK_CACHE is exported there.
#
#   make fuzz-agent                    each agent target FUZZ_SECONDS (40 s), fails on a crash
#   make fuzz-vmm                      each vmm target FUZZ_SECONDS (20 s), fails on a crash
#   make fuzz-vmm FUZZ_SECONDS=600     a longer run
#
# Stable toolchain: cargo-fuzz's default AddressSanitizer needs `-Zsanitizer`, a
# nightly flag. `--sanitizer none` leaves only stable codegen options
# (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*), so no nightly and no
# RUSTC_BOOTSTRAP. Little is lost: the fuzzed code is safe Rust, and cargo-fuzz still
# builds with debug assertions (overflow checks). libfuzzer-sys compiles libFuzzer
# with the system C++ compiler (g++).
#
# New inputs go to <crate>/fuzz/corpus/<target> (not committed; it grows run after
# run); the committed seeds are in <crate>/fuzz/seeds/<target>. A crash leaves its
# input in <crate>/fuzz/artifacts/<target>/ and cargo-fuzz prints how to rerun it.

CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ := $(HUSK_CACHE)/bin/cargo-fuzz
# Instrumented builds cannot share target/ (other RUSTFLAGS). In the cache they
# outlive the clone, so CI's fresh clones rebuild only the agent, not its deps.
FUZZ_TARGET_DIR := $(HUSK_CACHE)/fuzz-target
FUZZ := $(CARGO_FUZZ) fuzz
FUZZ_BUILD_ARGS := --sanitizer none --target-dir "$(FUZZ_TARGET_DIR)"
FUZZ_AGENT_TARGETS := request_decode oci_json path_handling
FUZZ_VMM_TARGETS := mmio_registers vsock_packets fs_requests net_frames blk_requests
# FUZZ_SECONDS, when given, applies to every target; by default the agent's run 40 s
# and husk-vmm's 20 s each (five targets: about two minutes plus the build).
ifeq ($(origin FUZZ_SECONDS),undefined)
FUZZ_AGENT_SECONDS := 40
FUZZ_VMM_SECONDS := 20
else
FUZZ_AGENT_SECONDS := $(FUZZ_SECONDS)
FUZZ_VMM_SECONDS := $(FUZZ_SECONDS)
endif
# -timeout: one input taking longer is a hang, reported as a crash.
fuzz_args = -max_total_time=$(1) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -print_funcs=0

.PHONY: fuzz-deps fuzz-agent fuzz-vmm

# cargo-fuzz, pinned, into the cache outside the clone (only when missing or another
# version).
fuzz-deps:
	@if [ "$$($(CARGO_FUZZ) --version 2>/dev/null)" != "cargo-fuzz $(CARGO_FUZZ_VERSION)" ]; then \
	    echo "fuzz-deps: cargo install cargo-fuzz $(CARGO_FUZZ_VERSION) into $(HUSK_CACHE)/bin"; \
	    $(CARGO) install --locked --quiet cargo-fuzz --version $(CARGO_FUZZ_VERSION) --root "$(HUSK_CACHE)"; \
	fi

# Builds the fuzz crate of $(1) (agent, vmm) and runs each of the targets $(2) for
# $(3) s. The scratch trees the targets build go to a temporary TMPDIR, removed
# afterwards. libFuzzer's line per new corpus entry is filtered out (thousands of
# lines); its crash report and final stats are kept.
define fuzz_run
cd $(1) && $(FUZZ) build $(FUZZ_BUILD_ARGS)
@set -eo pipefail; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	for t in $(2); do \
	    echo "fuzz-$(1): $$t for $(3) s"; \
	    mkdir -p $(1)/fuzz/corpus/$$t; \
	    dict=; [ -f $(1)/fuzz/dicts/$$t.dict ] && dict=-dict=fuzz/dicts/$$t.dict; \
	    (cd $(1) && TMPDIR="$$tmp" $(FUZZ) run $(FUZZ_BUILD_ARGS) $$t \
	        fuzz/corpus/$$t fuzz/seeds/$$t -- $(call fuzz_args,$(3)) $$dict 2>&1) \
	        | { grep -Ev '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)|NEW_FUNC' || true; }; \
	done; \
	echo "fuzz-$(1): no crash in $(2)"
endef

fuzz-agent: fuzz-deps
	$(call fuzz_run,agent,$(FUZZ_AGENT_TARGETS),$(FUZZ_AGENT_SECONDS))

# Drives the device models over plain guest memory: no /dev/kvm needed.
fuzz-vmm: fuzz-deps
	$(call fuzz_run,vmm,$(FUZZ_VMM_TARGETS),$(FUZZ_VMM_SECONDS))

TEST_SUITES += fuzz-agent fuzz-vmm

# Fuzzing the agent's request decoding and path handling (agent/fuzz, cargo-fuzz
# and libFuzzer). Included by the root Makefile; HUSK_CACHE is exported there.
#
#   make fuzz-agent                    each target FUZZ_SECONDS (40 s), fails on a crash
#   make fuzz-agent FUZZ_SECONDS=600   a longer run
#
# Stable toolchain: cargo-fuzz's default AddressSanitizer needs `-Zsanitizer`, a
# nightly flag. `--sanitizer none` leaves only stable codegen options
# (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*), so no nightly and no
# RUSTC_BOOTSTRAP. Little is lost: the fuzzed code is safe Rust, and cargo-fuzz still
# builds with debug assertions (overflow checks). libfuzzer-sys compiles libFuzzer
# with the system C++ compiler (g++).
#
# New inputs go to agent/fuzz/corpus/<target> (not committed; it grows run after
# run); the committed seeds are in agent/fuzz/seeds/<target>. A crash leaves its
# input in agent/fuzz/artifacts/<target>/ and cargo-fuzz prints how to rerun it.

CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ := $(HUSK_CACHE)/bin/cargo-fuzz
# Instrumented builds cannot share target/ (other RUSTFLAGS). In the cache they
# outlive the clone, so CI's fresh clones rebuild only the agent, not its deps.
FUZZ_TARGET_DIR := $(HUSK_CACHE)/fuzz-target
FUZZ := $(CARGO_FUZZ) fuzz
FUZZ_BUILD_ARGS := --sanitizer none --target-dir "$(FUZZ_TARGET_DIR)"
FUZZ_TARGETS := request_decode oci_json path_handling
FUZZ_SECONDS ?= 40
# -timeout: one input taking longer is a hang, reported as a crash.
FUZZ_ARGS := -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -print_funcs=0

.PHONY: fuzz-deps fuzz-agent

# cargo-fuzz, pinned, into the cache outside the clone (only when missing or another
# version).
fuzz-deps:
	@if [ "$$($(CARGO_FUZZ) --version 2>/dev/null)" != "cargo-fuzz $(CARGO_FUZZ_VERSION)" ]; then \
	    echo "fuzz-deps: cargo install cargo-fuzz $(CARGO_FUZZ_VERSION) into $(HUSK_CACHE)/bin"; \
	    $(CARGO) install --locked --quiet cargo-fuzz --version $(CARGO_FUZZ_VERSION) --root "$(HUSK_CACHE)"; \
	fi

# The scratch trees the targets build go to a temporary TMPDIR, removed afterwards.
# libFuzzer's line per new corpus entry is filtered out (thousands of lines); its
# crash report and final stats are kept.
fuzz-agent: fuzz-deps
	cd agent && $(FUZZ) build $(FUZZ_BUILD_ARGS)
	@set -eo pipefail; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	for t in $(FUZZ_TARGETS); do \
	    echo "fuzz-agent: $$t for $(FUZZ_SECONDS) s"; \
	    mkdir -p agent/fuzz/corpus/$$t; \
	    dict=; [ -f agent/fuzz/dicts/$$t.dict ] && dict=-dict=fuzz/dicts/$$t.dict; \
	    (cd agent && TMPDIR="$$tmp" $(FUZZ) run $(FUZZ_BUILD_ARGS) $$t \
	        fuzz/corpus/$$t fuzz/seeds/$$t -- $(FUZZ_ARGS) $$dict 2>&1) \
	        | { grep -Ev '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)|NEW_FUNC' || true; }; \
	done; \
	echo "fuzz-agent: no crash in $(FUZZ_TARGETS)"

TEST_SUITES += fuzz-agent

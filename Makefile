# husk — top-level entry points. README.md names two of them:
#   make demo   install what is missing, build, run a container
#   make test   install what is missing, build, run every suite
# Component makefiles in mk/*.mk add their own suites to TEST_SUITES.

SHELL := /bin/bash
CARGO ?= cargo
PROFILE ?= release
TARGET_DIR := $(CURDIR)/target/$(PROFILE)
HUSK := $(TARGET_DIR)/husk
HUSK_CACHE ?= $(HOME)/.cache/husk
export HUSK_CACHE

TEST_SUITES :=

-include mk/*.mk

.PHONY: setup build demo test lint unit-test bench
setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build --profile $(PROFILE) --workspace --bins

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit-test: setup
	$(CARGO) test --workspace

demo: build
	bash scripts/demo.sh

test: build lint unit-test $(TEST_SUITES)
	@echo "make test: all suites passed"

bench: build
	bash benches/run.sh

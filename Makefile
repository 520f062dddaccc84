# Lazarus: the entry points.
#
#   make demo      the main job: a protected service and a client, shown end to end
#   make test      every test: host unit/property tests, then the VM tests
#   make bench     benchmarks (results under bench/results/)
#
# Both install what they need (scripts/setup.sh) and build the kernel once into a
# cache outside the repository ($(LAZARUS_CACHE)), so later runs are incremental.

SHELL := /bin/bash
LAZARUS_CACHE ?= $(HOME)/.cache/lazarus
export LAZARUS_CACHE
export PATH := $(LAZARUS_CACHE)/venv/bin:$(HOME)/.cargo/bin:$(PATH)
PYTEST_ARGS ?=

.PHONY: all setup kernel modules userspace check-generated test test-host test-vm demo bench install clean

all: modules userspace

setup:
	@scripts/setup.sh

kernel: setup
	@scripts/kernel.sh >/dev/null

# The module build needs the kernel tree; its path depends on the cache key.
modules: kernel
	@$(MAKE) -s -C "$$(scripts/kernel.sh --dir)" M=$(CURDIR) LLVM=-14 modules

userspace: setup
	cargo build --release --workspace --locked

check-generated: setup
	python scripts/nlspec.py --check

test-host: setup check-generated
	cargo test --workspace --locked

test-vm: modules userspace
	cd tests && LAZARUS_KDIR="$$(../scripts/kernel.sh --dir)" LAZARUS_MODULES=$(CURDIR)/modules \
		python -m pytest -v -rA $(PYTEST_ARGS) .

test: test-host test-vm

demo: modules userspace
	LAZARUS_KDIR="$$(scripts/kernel.sh --dir)" LAZARUS_MODULES=$(CURDIR)/modules python scripts/demo.py $(DEMO_ARGS)

bench: modules userspace
	LAZARUS_KDIR="$$(scripts/kernel.sh --dir)" LAZARUS_MODULES=$(CURDIR)/modules python bench/run.py

clean:
	cargo clean
	-$(MAKE) -s -C "$$(scripts/kernel.sh --dir)" M=$(CURDIR) LLVM=-14 clean

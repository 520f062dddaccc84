# Lazarus: the entry points.
#
#   make demo      the main job: a protected service and a client, shown end to end
#   make test      every test: host unit/property tests, then the VM tests
#   make bench     benchmarks (results under bench/results/)
#   make install   install modules, binaries, systemd unit, config, completions, docs
#                  (PREFIX=/usr/local, DESTDIR=); make uninstall removes them
#
# Both install what they need (scripts/setup.sh) and build the kernel once into a
# cache outside the repository ($(LAZARUS_CACHE)), so later runs are incremental.

SHELL := /bin/bash
LAZARUS_CACHE ?= $(HOME)/.cache/lazarus
export LAZARUS_CACHE
export PATH := $(LAZARUS_CACHE)/venv/bin:$(HOME)/.cargo/bin:$(PATH)
PYTEST_ARGS ?=

.PHONY: all setup kernel modules userspace check-generated test test-host test-vm demo bench install uninstall clean

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

# --- Installation ------------------------------------------------------------------
# The modules go to /lib/modules/<release>/extra/lazarus, where <release> is that of
# the kernel tree they were built against (scripts/kernel.sh --dir); they load only on
# that kernel. depmod runs unless DESTDIR is set (a staging tree).
#
# The unit goes to $(PREFIX)/lib/systemd/system, not /etc/systemd/system: systemd
# searches both /usr/local/lib/systemd/system and /usr/lib/systemd/system, and
# /etc/systemd/system stays the operator's, for `systemctl edit` drop-ins that a
# reinstall never overwrites. With a PREFIX systemd does not search, give
# SYSTEMD_UNITDIR=/etc/systemd/system. The unit's /usr/local paths follow PREFIX.
#
# /etc/lazarus/lazarus.toml is installed from dist/lazarus.toml.example only when it
# does not exist (mode 0600: it names the cluster key); an operator's file is never
# replaced. The example is also installed with the docs, for comparison on upgrades.
PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
SYSTEMD_UNITDIR ?= $(PREFIX)/lib/systemd/system
BASH_COMPLETIONDIR ?= $(PREFIX)/share/bash-completion/completions
ZSH_COMPLETIONDIR ?= $(PREFIX)/share/zsh/site-functions
DOCDIR ?= $(PREFIX)/share/doc/lazarus
CONFDIR := /etc/lazarus
KMODS := lazarus_core lazarus_shadow lazarus_splice lazarus_backdoor
INSTALL_DOCS := docs/architecture.md docs/deployment.md docs/failure-model.md docs/tuning.md docs/shadow-operations.md docs/sysctl.md \
	docs/troubleshooting.md docs/netlink.md docs/development.md docs/splice-operations.md docs/backdoor-operations.md
GENERATED := target/dist

install: modules userspace
	@set -euo pipefail; export PATH="$$PATH:/usr/sbin:/sbin"; \
	rel=$$(cat "$$(scripts/kernel.sh --dir)/include/config/kernel.release"); \
	moddir="$(DESTDIR)/lib/modules/$$rel/extra/lazarus"; \
	for m in $(KMODS); do \
	  ko=modules/$$m/$$m.ko; built=$$(modinfo -F vermagic "$$ko" | cut -d' ' -f1); \
	  [ "$$built" = "$$rel" ] || { echo "$$ko is built for $$built, not $$rel: run make modules" >&2; exit 1; }; \
	  install -D -m 0644 "$$ko" "$$moddir/$$m.ko"; echo "installed $$moddir/$$m.ko"; \
	done; \
	if [ -z "$(DESTDIR)" ]; then depmod -a "$$rel"; echo "ran depmod -a $$rel"; \
	  [ "$$(uname -r)" = "$$rel" ] || echo "note: this machine runs $$(uname -r); the modules load only on $$rel"; fi
	install -D -m 0755 target/release/lazarusd "$(DESTDIR)$(SBINDIR)/lazarusd"
	install -D -m 0755 target/release/lzctl "$(DESTDIR)$(SBINDIR)/lzctl"
	install -D -m 0755 target/release/lzproxy "$(DESTDIR)$(SBINDIR)/lzproxy"
	@mkdir -p $(GENERATED)
	sed -e 's|/usr/local/sbin/|$(SBINDIR)/|g' -e 's|/usr/local/share/doc/lazarus/|$(DOCDIR)/|g' \
		dist/systemd/lazarusd.service > $(GENERATED)/lazarusd.service
	sed -e 's|/usr/local/sbin/|$(SBINDIR)/|g' -e 's|/usr/local/share/doc/lazarus/|$(DOCDIR)/|g' \
		dist/systemd/lzproxy.service > $(GENERATED)/lzproxy.service
	install -D -m 0644 $(GENERATED)/lazarusd.service "$(DESTDIR)$(SYSTEMD_UNITDIR)/lazarusd.service"
	install -D -m 0644 $(GENERATED)/lzproxy.service "$(DESTDIR)$(SYSTEMD_UNITDIR)/lzproxy.service"
	target/release/lzctl completions bash > $(GENERATED)/lzctl.bash
	target/release/lzctl completions zsh > $(GENERATED)/_lzctl
	install -D -m 0644 $(GENERATED)/lzctl.bash "$(DESTDIR)$(BASH_COMPLETIONDIR)/lzctl"
	install -D -m 0644 $(GENERATED)/_lzctl "$(DESTDIR)$(ZSH_COMPLETIONDIR)/_lzctl"
	install -d -m 0755 "$(DESTDIR)$(DOCDIR)"
	install -m 0644 $(INSTALL_DOCS) dist/lazarus.toml.example dist/cluster.toml.example dist/lzproxy.toml.example "$(DESTDIR)$(DOCDIR)/"
	@if [ -e "$(DESTDIR)$(CONFDIR)/lazarus.toml" ]; then \
	  echo "kept $(DESTDIR)$(CONFDIR)/lazarus.toml (an existing configuration is never replaced)"; \
	else \
	  install -D -m 0600 dist/lazarus.toml.example "$(DESTDIR)$(CONFDIR)/lazarus.toml" \
	  && echo "installed $(DESTDIR)$(CONFDIR)/lazarus.toml from dist/lazarus.toml.example: edit it"; \
	fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "next: edit $(CONFDIR)/lazarus.toml, put the cluster key in $(CONFDIR)/cluster.key (mode 0600),"
	@echo "      $(SBINDIR)/lazarusd --check, then systemctl enable --now lazarusd"

# Removes what install put in place, for every kernel release; $(CONFDIR) (the
# configuration and the cluster key) is left alone.
uninstall:
	@set -eu; export PATH="$$PATH:/usr/sbin:/sbin"; \
	for dir in "$(DESTDIR)"/lib/modules/*/extra/lazarus; do \
	  [ -d "$$dir" ] || continue; \
	  for m in $(KMODS); do rm -f "$$dir/$$m.ko"; done; \
	  rmdir "$$dir" 2>/dev/null || true; echo "removed $$dir"; \
	  rel=$${dir#"$(DESTDIR)"/lib/modules/}; rel=$${rel%/extra/lazarus}; \
	  if [ -z "$(DESTDIR)" ]; then depmod -a "$$rel"; fi; \
	done
	rm -f "$(DESTDIR)$(SBINDIR)/lazarusd" "$(DESTDIR)$(SBINDIR)/lzctl" "$(DESTDIR)$(SBINDIR)/lzproxy"
	rm -f "$(DESTDIR)$(SYSTEMD_UNITDIR)/lazarusd.service" "$(DESTDIR)$(SYSTEMD_UNITDIR)/lzproxy.service"
	rm -f "$(DESTDIR)$(BASH_COMPLETIONDIR)/lzctl" "$(DESTDIR)$(ZSH_COMPLETIONDIR)/_lzctl"
	rm -f $(patsubst %,"$(DESTDIR)$(DOCDIR)/%",$(notdir $(INSTALL_DOCS)) lazarus.toml.example cluster.toml.example lzproxy.toml.example)
	@rmdir "$(DESTDIR)$(DOCDIR)" 2>/dev/null || true
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "kept $(DESTDIR)$(CONFDIR) (configuration and cluster key)"

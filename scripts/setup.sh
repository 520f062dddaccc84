#!/usr/bin/env bash
# Install everything the build, the VM bench and the tests need on a Debian 12 host.
# Idempotent: each step checks before it installs, so warm runs take a second or two.
# Only bookworm and bookworm-security are used; no other suite is ever added.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

APT_PACKAGES=(
  linux-source-6.12
  clang-14 lld-14 llvm-14 libclang-14-dev
  build-essential bc bison flex libelf-dev libssl-dev cpio kmod dwarves
  qemu-system-x86 iproute2 iperf3 tcpdump netcat-openbsd curl socat ethtool
  busybox-static python3-pip python3-venv
  nginx-light haproxy xxd procps psmisc iputils-ping
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt: installing ${missing[*]}"
  # Third-party lists on some images are unreachable; only Debian's own are needed.
  sudo_ apt-get update -o Acquire::Retries=3 -o APT::Update::Error-Mode=any >/dev/null 2>&1 \
    || sudo_ apt-get update -o Acquire::Retries=3 >/dev/null 2>&1 || true
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  # nginx-light's and haproxy's packages start system services; tests and benchmarks
  # start their own.
  sudo_ systemctl disable --now nginx >/dev/null 2>&1 || true
  sudo_ systemctl disable --now haproxy >/dev/null 2>&1 || true
fi

# Rust: the machine's rustup toolchain plus rust-src (needed by the kernel's Rust build).
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
  log "rustup: adding rust-src"
  rustup component add rust-src
fi
if ! command -v bindgen >/dev/null 2>&1; then
  log "cargo: installing bindgen-cli"
  cargo install bindgen-cli --locked --version 0.73.2
fi

# virtme-ng, pytest and PyYAML from PyPI, in their own venv so the system Python is
# left alone. Reinstalled when the pinned list changes.
req="$here/requirements.txt"
stamp="$VENV/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "pip: installing $(grep -v '^#' "$req" | tr '\n' ' ')into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi
log "setup: ok"

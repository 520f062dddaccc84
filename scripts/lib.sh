# Shared settings for the scripts. Sourced, not run.
# The cache lives outside the repository so that a fresh clone reuses the kernel build.
: "${LAZARUS_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/lazarus}"
VENV="$LAZARUS_CACHE/venv"
VNG_VERSION=$(sed -n "s/^virtme-ng==//p" "$(dirname "${BASH_SOURCE[0]}")/requirements.txt")
export PATH="$VENV/bin:$HOME/.cargo/bin:$PATH"

log() { printf '[lazarus] %s\n' "$*" >&2; }
die() { printf '[lazarus] error: %s\n' "$*" >&2; exit 1; }
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

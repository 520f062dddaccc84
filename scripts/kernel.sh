#!/usr/bin/env bash
# Build the Lazarus test kernel: Debian's linux-source-6.12 + our small patch + config.
#
#   scripts/kernel.sh            build (incremental) and print the kernel directory
#   scripts/kernel.sh --dir      print the kernel directory for the current key, build nothing
#
# The tree lives in $LAZARUS_CACHE/kernel/<key>, where <key> hashes the source package
# version, the config fragment, the patch files and the virtme-ng version. A new key is
# seeded from the newest finished tree of the same source version, so a patch or config
# change rebuilds incrementally instead of from scratch.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

TARBALL=/usr/src/linux-source-6.12.tar.xz
PATCH_FILES=("$here/kernel/lazarus_bindings.h" "$here/kernel/lazarus_helpers.c")
FRAGMENT="$here/kernel/config.fragment"
MAKE=(make LLVM=-14 -j"$(($(nproc) + 1))")

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null) \
  || die "linux-source-6.12 is not installed (run scripts/setup.sh)"
key=$( { echo "$src_version"; echo "vng $VNG_VERSION"; cat "$FRAGMENT" "${PATCH_FILES[@]}";
         sed -n '/^apply_patch()/,/^}/p' "$0"; } | sha256sum | cut -c1-16)
base="$LAZARUS_CACHE/kernel"
dir="$base/$src_version-$key"

if [ "${1:-}" = "--dir" ]; then echo "$dir/src"; exit 0; fi

# Copy a file only when its content changed, so make sees unchanged timestamps.
install_if_changed() { cmp -s "$1" "$2" || cp "$1" "$2"; }

apply_patch() {
  install_if_changed "$here/kernel/lazarus_bindings.h" rust/bindings/lazarus_bindings.h
  install_if_changed "$here/kernel/lazarus_helpers.c" rust/helpers/lazarus.c
  grep -q '#include "lazarus_bindings.h"' rust/bindings/bindings_helper.h \
    || echo '#include "lazarus_bindings.h"' >> rust/bindings/bindings_helper.h
  grep -q '#include "lazarus.c"' rust/helpers/helpers.c \
    || echo '#include "lazarus.c"' >> rust/helpers/helpers.c
}

configure() {
  local want=.config.lazarus
  # virtme-ng's minimal config first; it appends its own defaults (debug info among
  # them) after any fragment it is given, so our fragment is merged over its result.
  vng --kconfig >/dev/null 2>&1 || die "vng --kconfig failed"
  scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" >/dev/null 2>&1 \
    || die "merging $FRAGMENT failed"
  "${MAKE[@]}" olddefconfig >/dev/null 2>&1
  # Every option in the fragment must have survived dependency resolution.
  local bad=0 line opt val
  while IFS= read -r line; do
    case "$line" in ''|'#'*) continue;; esac
    opt=${line%%=*}; val=${line#*=}
    if [ "$val" = n ]; then
      grep -q "^$opt=" .config && { log "config: $opt is set but must be off"; bad=1; }
    else
      grep -qx "$opt=$val" .config || { log "config: $opt=$val did not survive olddefconfig"; bad=1; }
    fi
  done < "$FRAGMENT"
  [ $bad = 0 ] || die "kernel config does not satisfy $FRAGMENT"
  cp .config "$want"
}

mkdir -p "$base"
exec 9>"$base/.lock"
flock 9

if [ -f "$dir/.built" ]; then echo "$dir/src"; exit 0; fi

if [ ! -d "$dir/src" ]; then
  seed=$(ls -td "$base/$src_version"-*/ 2>/dev/null | while read -r d; do
           [ -f "$d/.built" ] && { echo "${d%/}"; break; }; done || true)
  if [ -n "$seed" ]; then
    log "kernel: seeding $dir from $seed (incremental rebuild)"
    cp -a "$seed" "$dir.tmp"
    rm -f "$dir.tmp/.built"
  else
    log "kernel: unpacking $TARBALL (cold build, ~20 min on 2 cores)"
    mkdir -p "$dir.tmp/src"
    tar -xf "$TARBALL" -C "$dir.tmp/src" --strip-components=1
  fi
  mv "$dir.tmp" "$dir"
fi

cd "$dir/src"
apply_patch
configure
"${MAKE[@]}" rustavailable >/dev/null || die "Rust toolchain not usable for the kernel (make rustavailable)"
log "kernel: building in $dir/src"
start=$(date +%s)
"${MAKE[@]}" >"$dir/build.log" 2>&1 || { tail -40 "$dir/build.log" >&2; die "kernel build failed, see $dir/build.log"; }
log "kernel: built in $(( $(date +%s) - start ))s"
touch "$dir/.built"

# Keep the two newest finished trees; older ones only cost disk.
ls -td "$base/$src_version"-*/ 2>/dev/null | tail -n +3 | while read -r old; do
  [ "${old%/}" = "$dir" ] || rm -rf "${old%/}"
done
echo "$dir/src"

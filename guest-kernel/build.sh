#!/usr/bin/env bash
# Build husk's guest kernel: an uncompressed vmlinux with a PVH entry point and no
# modules, from Debian's linux-source-6.12, `make tinyconfig` and the fragments in
# guest-kernel/fragments/. The result is cached by the hash of the fragments and of
# this script:
#     ${HUSK_CACHE:-$HOME/.cache/husk}/kernel/<hash>/vmlinux
# and the build is skipped when that file exists. Prints the path, size and build time.
#
# Options (environment):
#   HUSK_CACHE          cache root (default ~/.cache/husk)
#   KERNEL_JOBS         make -j value (default 2)
#   KERNEL_PRINT_PATH=1 print only the vmlinux path on stdout (for Makefiles/tests)
#   KERNEL_CONFIG_ONLY=1 stop after configuring and checking .config
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FRAG_DIR="$HERE/fragments"
CACHE="${HUSK_CACHE:-$HOME/.cache/husk}"
KVER=6.12
TARBALL="/usr/src/linux-source-$KVER.tar.xz"
JOBS="${KERNEL_JOBS:-2}"

log() { echo "guest-kernel: $*" >&2; }
die() { echo "guest-kernel: ERROR: $*" >&2; exit 1; }

shopt -s nullglob
FRAGMENTS=("$FRAG_DIR"/*.config)
shopt -u nullglob
[ "${#FRAGMENTS[@]}" -gt 0 ] || die "no fragments in $FRAG_DIR"

# The cache key covers every input we control: fragment names and contents, and
# this script. The kernel source version is part of the script (KVER).
HASH="$( (for f in "${FRAGMENTS[@]}"; do echo "== $(basename "$f")"; cat "$f"; done
          echo "== build.sh"; cat "${BASH_SOURCE[0]}") | sha256sum | cut -c1-16)"
OUT_DIR="$CACHE/kernel/$HASH"
VMLINUX="$OUT_DIR/vmlinux"

report() {
    if [ "${KERNEL_PRINT_PATH:-0}" = 1 ]; then
        echo "$VMLINUX"
    else
        echo "vmlinux: $VMLINUX"
        echo "size:    $(stat -c %s "$VMLINUX") bytes"
        echo "build:   $1"
    fi
}

if [ -s "$VMLINUX" ]; then
    report "cached (built earlier; $(cat "$OUT_DIR/build-seconds" 2>/dev/null || echo '?') s)"
    exit 0
fi

# --- toolchain and source -------------------------------------------------------
install_pkgs() {
    [ "$(id -u)" = 0 ] || die "missing packages ($*) and not root: apt-get install $*"
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2; } ||
        die "apt-get install $* failed"
}
missing=()
[ -f "$TARBALL" ] || missing+=("linux-source-$KVER")
for tool in gcc:gcc make:make flex:flex bison:bison bc:bc xz:xz-utils; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
# objtool needs libelf headers; the x86 build always runs objtool.
[ -f /usr/include/libelf.h ] || [ -f /usr/include/elfutils/libelf.h ] || missing+=(libelf-dev)
[ "${#missing[@]}" -eq 0 ] || install_pkgs "${missing[@]}"
[ -f "$TARBALL" ] || die "$TARBALL still missing after installing linux-source-$KVER"

SRC_ROOT="$CACHE/kernel/src"
SRC="$SRC_ROOT/linux-source-$KVER"
STAMP="$SRC_ROOT/.extracted-$(stat -c '%s-%Y' "$TARBALL")"
mkdir -p "$SRC_ROOT" "$OUT_DIR"

# One build at a time per cache (the source tree is shared by all hashes).
exec 9>"$SRC_ROOT/.lock"
flock 9
if [ -s "$VMLINUX" ]; then report "cached (built by a concurrent run)"; exit 0; fi

if [ ! -f "$STAMP" ]; then
    log "extracting $TARBALL"
    rm -rf "$SRC" "$SRC_ROOT"/.extracted-*
    tar -C "$SRC_ROOT" -xf "$TARBALL"
    [ -d "$SRC" ] || die "tarball did not contain linux-source-$KVER/"
    touch "$STAMP"
fi

# --- configure ------------------------------------------------------------------
BUILD="$OUT_DIR/build"
# After a fragment edit, start from the newest earlier build tree: Kbuild then
# recompiles only what the changed options touch (minutes become seconds).
if [ ! -f "$BUILD/.config" ]; then
    prev="$(ls -dt "$CACHE"/kernel/*/build 2>/dev/null | grep -vxF "$BUILD" | head -1 || true)"
    if [ -n "$prev" ] && [ -f "$prev/.config" ]; then
        log "seeding the build tree from $prev (incremental build)"
        mkdir -p "$BUILD"
        cp -a "$prev/." "$BUILD/"
    fi
fi
mkdir -p "$BUILD"
start=$(date +%s)
# Quiet the tree's make output; errors still show.
kmake() { make -C "$SRC" O="$BUILD" ARCH=x86_64 "$@"; }

log "configuring (tinyconfig + ${#FRAGMENTS[@]} fragments) in $BUILD"
kmake -s tinyconfig >&2
"$SRC/scripts/kconfig/merge_config.sh" -m -O "$BUILD" "$BUILD/.config" "${FRAGMENTS[@]}" >/dev/null
kmake -s olddefconfig >&2

# Every option the fragments ask for must be in the final .config as asked: Kconfig
# silently drops options whose dependencies are not met, and a missing option shows
# up much later as a guest that does not boot or a container that fails oddly.
check_config() {
    local cfg="$1" bad=0 f line name val
    for f in "${FRAGMENTS[@]}"; do
        while IFS= read -r line; do
            if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
                name="${BASH_REMATCH[1]}"; val="${BASH_REMATCH[2]}"
                if ! grep -qxF "$name=$val" "$cfg"; then
                    echo "  $(basename "$f"): $name=$val, final: $(grep -E "^(# )?$name[= ]" "$cfg" || echo 'absent (dependency not met)')" >&2
                    bad=1
                fi
            elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
                name="${BASH_REMATCH[1]}"
                if grep -qE "^$name=" "$cfg"; then
                    echo "  $(basename "$f"): $name unset, final: $(grep -E "^$name=" "$cfg")" >&2
                    bad=1
                fi
            fi
        done <"$f"
    done
    return $bad
}
if ! check_config "$BUILD/.config"; then
    die "the options above did not survive olddefconfig; fix the fragments (missing dependencies?)"
fi
log "all fragment options present in .config"
if [ "${KERNEL_CONFIG_ONLY:-0}" = 1 ]; then echo "$BUILD/.config"; exit 0; fi

# --- build ----------------------------------------------------------------------
log "building vmlinux with make -j$JOBS (a few minutes)"
if ! kmake -j"$JOBS" vmlinux >"$OUT_DIR/build.log" 2>&1; then
    tail -40 "$OUT_DIR/build.log" >&2
    die "kernel build failed; full log: $OUT_DIR/build.log"
fi
# A PVH-capable vmlinux carries the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18).
if ! readelf -n "$BUILD/vmlinux" 2>/dev/null | grep -q 'Xen'; then
    die "vmlinux has no Xen/PVH ELF note; CONFIG_PVH did not take effect"
fi
cp "$BUILD/.config" "$OUT_DIR/config"
cp "$BUILD/vmlinux" "$VMLINUX.tmp"
mv "$VMLINUX.tmp" "$VMLINUX"
secs=$(( $(date +%s) - start ))
echo "$secs" >"$OUT_DIR/build-seconds"
report "built in ${secs} s (make -j$JOBS)"

#!/usr/bin/env bash
# Packs the static husk-agent as /init into an UNCOMPRESSED newc cpio, together with
# the directories it mounts on and a /dev/console node (the kernel opens it for
# init's stdio before devtmpfs is mounted). Output is cached by the agent's hash:
#     ${HUSK_CACHE:-$HOME/.cache/husk}/initramfs/<sha256 of agent>/initramfs.cpio
# usage: mkinitramfs.sh AGENT_BINARY   (prints the cpio path)
set -euo pipefail
AGENT="${1:?usage: mkinitramfs.sh AGENT_BINARY}"
[ -x "$AGENT" ] || { echo "mkinitramfs: $AGENT is not an executable" >&2; exit 1; }
if ! command -v cpio >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "mkinitramfs: need cpio (apt-get install cpio)" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cpio >&2
fi
CACHE="${HUSK_CACHE:-$HOME/.cache/husk}"
# The layout below is part of the key: bump LAYOUT when it changes.
LAYOUT=2
HASH="$( (sha256sum <"$AGENT"; echo "layout $LAYOUT") | sha256sum | cut -c1-16)"
OUT_DIR="$CACHE/initramfs/$HASH"
OUT="$OUT_DIR/initramfs.cpio"
# Cached: touch it, so husk's default lookup (the newest image in the cache) boots the
# agent this checkout asked for last, not one another checkout built later.
if [ -s "$OUT" ]; then touch "$OUT"; echo "$OUT"; exit 0; fi

mkdir -p "$OUT_DIR"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{dev,proc,sys,run,tmp,etc}
chmod 1777 "$STAGE/tmp"
install -m 0755 "$AGENT" "$STAGE/init"
# Symbols are useless in the guest and cost boot time (the kernel copies the cpio).
strip --strip-all "$STAGE/init"
# A char device needs root to create; without it the agent still reopens
# /dev/console after mounting devtmpfs, only the earliest messages are lost.
if [ "$(id -u)" = 0 ]; then
    mknod -m 0600 "$STAGE/dev/console" c 5 1
fi
# Reproducible: fixed order, owner root, fixed mtimes.
find "$STAGE" -exec touch -h -d @0 {} +
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible >"$OUT.tmp")
mv "$OUT.tmp" "$OUT"
echo "$OUT"

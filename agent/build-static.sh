#!/usr/bin/env bash
# Builds husk-agent as a static executable (glibc, -C target-feature=+crt-static;
# the musl target is not installable here) into its own target dir, target/agent,
# so its RUSTFLAGS never touch the rest of the workspace. Prints the binary path.
#
# --target is passed explicitly so that RUSTFLAGS apply to the agent and its
# dependencies only, not to build scripts and proc-macros (which cannot be static).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET=x86_64-unknown-linux-gnu
PROFILE="${AGENT_PROFILE:-release}"

# libseccomp (through libcontainer) must be linked statically too.
if [ ! -f /usr/lib/x86_64-linux-gnu/libseccomp.a ]; then
    [ "$(id -u)" = 0 ] || { echo "build-static: need libseccomp-dev (apt-get install libseccomp-dev)" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libseccomp-dev >&2
fi
export LIBSECCOMP_LINK_TYPE=static
export LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"

cargo build --manifest-path "$ROOT/Cargo.toml" -p husk-agent --profile "$PROFILE" \
    --target "$TARGET" --target-dir "$ROOT/target/agent" >&2
BIN="$ROOT/target/agent/$TARGET/$PROFILE/husk-agent"
# Refuse a dynamic binary: as /init it would fail with no loader in the initramfs.
if file "$BIN" | grep -q 'dynamically linked'; then
    echo "build-static: $BIN is dynamically linked" >&2
    exit 1
fi
echo "$BIN"

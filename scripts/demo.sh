#!/usr/bin/env bash
# The main job on embedded defaults: build a busybox bundle and run a container in it.
# VM isolation (the default) runs when `husk check` says this host can (QEMU, guest
# kernel and initramfs from `make guest-kernel initramfs`); otherwise the demo shows husk
# refusing it rather than silently using the shared kernel. Then it runs the workload in
# container isolation.
set -euo pipefail
cd "$(dirname "$0")/.."
husk="$PWD/target/${PROFILE:-release}/husk"
work=$(mktemp -d /tmp/husk-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/bundle/rootfs"/{bin,proc,sys,dev,tmp,etc}
cp "$(command -v busybox)" "$work/bundle/rootfs/bin/busybox"
for applet in $("$work/bundle/rootfs/bin/busybox" --list); do
  [ -e "$work/bundle/rootfs/bin/$applet" ] || ln -s busybox "$work/bundle/rootfs/bin/$applet"
done
"$husk" spec --bundle "$work/bundle"
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
path = sys.argv[1]
spec = json.load(open(path))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["sh", "-c",
    "echo \"hello from a husk container: hostname=$(hostname) pid=$$ uid=$(id -u)\"; "
    "echo \"kernel: $(uname -r)\"; echo \"cgroup: $(grep memory /proc/self/cgroup)\""]
json.dump(spec, open(path, "w"), indent=2)
PY

root="$work/state"
echo "== husk check"
if "$husk" check; then
  echo "== husk run (default isolation: vm: its own guest kernel in a QEMU microVM)"
  "$husk" --root "$root" run --bundle "$work/bundle" demo-vm
else
  echo "== husk run (default isolation: vm) must be refused here (see husk check above)"
  if "$husk" --root "$root" run --bundle "$work/bundle" demo-vm; then
    echo "demo: vm isolation ran although husk check said it cannot" >&2
    exit 1
  fi
fi
echo "== husk --isolation container run"
"$husk" --root "$root" --isolation container run --bundle "$work/bundle" demo
echo "== done: container exited, state cleaned up: $(ls -A "$root" | wc -l) entries left in $root"

#!/usr/bin/env bash
# Boot test for the guest side of VM isolation. Needs: qemu-system-x86_64 (Debian's
# qemu-system-x86), the guest kernel (guest-kernel/build.sh), the static agent and
# its initramfs, vhost-device-vsock 0.3.0 and virtiofsd 1.14.0 (cargo-installed into
# $HUSK_CACHE/bin when missing; virtiofsd needs libcap-ng-dev and libseccomp-dev),
# and a static busybox (busybox-static). `make guest-deps` installs the packages.
#
# Boots the kernel + initramfs under QEMU TCG (microvm, no ACPI; the host /dev/kvm is
# PVM here and cannot run a stock Linux guest), wires vsock through vhost-device-vsock
# (hybrid vsock: a host Unix socket speaking CONNECT/OK), then runs the agent_probe
# example: CONNECT 1024, ttrpc health check + version, a malformed request. Then
# (GUEST_CONTAINER_TEST=1, the default) it shares a busybox rootfs over virtio-fs
# (virtiofsd, cargo-installed into $HUSK_CACHE/bin) and runs a container that prints
# "hello" and exits 3, asserting both.
#
# Fails (non-zero) when anything is missing: it never passes by skipping.
# On failure it prints the guest console log.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${HUSK_CACHE:-$HOME/.cache/husk}"
export HUSK_CACHE="$CACHE"
VCPUS="${GUEST_VCPUS:-2}"
MEM="${GUEST_MEM:-256M}"
TIMEOUT="${GUEST_TIMEOUT:-90}"
CONTAINER_TEST="${GUEST_CONTAINER_TEST:-1}"

fail() { echo "boot_test: FAIL: $*" >&2; exit 1; }
log() { echo "boot_test: $*" >&2; }

command -v qemu-system-x86_64 >/dev/null ||
    fail "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"

KERNEL="${GUEST_KERNEL:-$(KERNEL_PRINT_PATH=1 "$ROOT/guest-kernel/build.sh")}"
[ -s "$KERNEL" ] || fail "guest kernel missing: $KERNEL"
AGENT="$("$ROOT/agent/build-static.sh")"
INITRAMFS="${GUEST_INITRAMFS:-$("$ROOT/agent/mkinitramfs.sh" "$AGENT")}"
[ -s "$INITRAMFS" ] || fail "initramfs missing: $INITRAMFS"

VSOCKD="$CACHE/bin/vhost-device-vsock"
if [ ! -x "$VSOCKD" ]; then
    log "installing vhost-device-vsock 0.3.0 into $CACHE/bin (about 2 minutes)"
    cargo install --locked vhost-device-vsock --version 0.3.0 --root "$CACHE" >&2 ||
        fail "cargo install vhost-device-vsock failed"
fi

VIRTIOFSD="$CACHE/bin/virtiofsd"
BUSYBOX=/bin/busybox
if [ "$CONTAINER_TEST" = 1 ]; then
    if [ ! -x "$VIRTIOFSD" ]; then
        log "installing virtiofsd 1.14.0 into $CACHE/bin (a few minutes)"
        cargo install --locked virtiofsd --version 1.14.0 --root "$CACHE" >&2 ||
            fail "cargo install virtiofsd failed (needs libcap-ng-dev and libseccomp-dev)"
    fi
    file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' ||
        fail "$BUSYBOX is not a static busybox (apt-get install busybox-static)"
fi

cargo build --manifest-path "$ROOT/Cargo.toml" -q -p husk-agent-protocol --example agent_probe >&2
PROBE="$ROOT/target/debug/examples/agent_probe"
[ -x "$PROBE" ] || fail "agent_probe not built"

WORK="$(mktemp -d /tmp/husk-boot.XXXXXX)"
CONSOLE="$WORK/console.log"
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$rc" != 0 ]; then
        echo "----- guest console ($CONSOLE) -----" >&2
        cat "$CONSOLE" >&2 2>/dev/null || echo "(no console output)" >&2
        echo "----- vhost-device-vsock log -----" >&2
        cat "$WORK/vsock.log" >&2 2>/dev/null || true
        echo "----- virtiofsd log -----" >&2
        cat "$WORK/virtiofsd.log" >&2 2>/dev/null || true
        echo "----- qemu log -----" >&2
        cat "$WORK/qemu.log" >&2 2>/dev/null || true
        echo "boot_test: FAILED" >&2
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

"$VSOCKD" --guest-cid 3 --socket "$WORK/vhost-vsock.sock" --uds-path "$WORK/vsock.sock" \
    >"$WORK/vsock.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$WORK/vhost-vsock.sock" ] && break; sleep 0.05; done
[ -S "$WORK/vhost-vsock.sock" ] || fail "vhost-device-vsock did not create its socket"

QEMU_FS=()
PROBE_ARGS=()
if [ "$CONTAINER_TEST" = 1 ]; then
    # The container rootfs lives in the shared directory, as a bundle would.
    ROOTFS="$WORK/shared/hello/rootfs"
    mkdir -p "$ROOTFS"/{bin,proc,dev,sys,tmp}
    cp "$BUSYBOX" "$ROOTFS/bin/busybox"
    ln -s busybox "$ROOTFS/bin/sh"
    "$VIRTIOFSD" --socket-path "$WORK/virtiofs.sock" --shared-dir "$WORK/shared" \
        --sandbox namespace --cache never >"$WORK/virtiofsd.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do [ -S "$WORK/virtiofs.sock" ] && break; sleep 0.05; done
    [ -S "$WORK/virtiofs.sock" ] || fail "virtiofsd did not create its socket"
    QEMU_FS=(-chardev "socket,id=fs0,path=$WORK/virtiofs.sock"
             -device vhost-user-fs-device,chardev=fs0,tag=husk-shared)
    PROBE_ARGS=(--container-spec "$ROOT/tests/guest/hello/config.json"
                --rootfs hello/rootfs --shared-tag husk-shared
                --expect-stdout hello --expect-exit 3)
fi

# A small disk: the guest kernel must find it through virtio-blk (checked in the
# console log; nothing in the guest uses it yet).
truncate -s 4M "$WORK/disk.img"

# microvm with acpi=off: QEMU appends virtio_mmio.device=... to the cmdline itself.
# reboot=t: the agent's reboot(2) triple-faults and -no-reboot turns that into exit.
start_ns=$(date +%s%N)
qemu-system-x86_64 \
    -M microvm,accel=tcg,acpi=off,memory-backend=mem \
    -cpu max -smp "$VCPUS" -m "$MEM" \
    -object memory-backend-memfd,id=mem,size="$MEM",share=on \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial "file:$CONSOLE" \
    -kernel "$KERNEL" -initrd "$INITRAMFS" \
    -append "console=ttyS0 reboot=t panic=-1 printk.time=1 no_timer_check" \
    -chardev socket,id=vsock0,path="$WORK/vhost-vsock.sock" \
    -device vhost-user-vsock-device,chardev=vsock0 \
    -drive "file=$WORK/disk.img,format=raw,if=none,id=disk0" \
    -device virtio-blk-device,drive=disk0 \
    "${QEMU_FS[@]}" \
    >"$WORK/qemu.log" 2>&1 &
QEMU_PID=$!
PIDS+=($QEMU_PID)

kill -0 "$QEMU_PID" 2>/dev/null || fail "QEMU exited at once (see its log)"
"$PROBE" --socket "$WORK/vsock.sock" --timeout "$TIMEOUT" --vm-pid "$QEMU_PID" \
    "${PROBE_ARGS[@]}" --destroy ||
    fail "agent probe failed"
end_ns=$(date +%s%N)
# DestroySandbox makes the agent reset the VM (reboot=t); -no-reboot turns that
# into QEMU exiting with status 0.
for _ in $(seq 200); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$QEMU_PID" 2>/dev/null; then fail "QEMU still running 20 s after DestroySandbox"; fi
wait "$QEMU_PID" || fail "QEMU exited with status $? after DestroySandbox"
exit_ns=$(date +%s%N)

grep -q 'virtio_blk.*\[vda\]' "$CONSOLE" || fail "guest kernel did not find the virtio-blk disk"
ready="$(grep -o 'guest uptime [0-9.]* s' "$CONSOLE" | head -1 || true)"
log "kernel:    $KERNEL ($(stat -c %s "$KERNEL") bytes)"
log "initramfs: $INITRAMFS ($(stat -c %s "$INITRAMFS") bytes)"
log "agent ready: ${ready:-?}; QEMU start to probe done: $(( (end_ns - start_ns) / 1000000 )) ms, to VM exit: $(( (exit_ns - start_ns) / 1000000 )) ms (TCG)"
echo "boot_test: 1 passed, 0 failed"

#!/usr/bin/env bash
# Boot benchmark: husk-vmm vs QEMU `-M microvm` on the nested KVM host
# (`make bench-vmm-nested`; not part of `make test`). docs/vmm.md records the figures.
#
# Inside the nested host of run.sh (QEMU TCG -cpu max + kvm-amd, so a real /dev/kvm
# with SVM), both VMMs boot the same guest kernel and agent initramfs with the same
# vCPUs and memory and a vsock device (husk-vmm's hybrid vsock; QEMU's
# vhost-vsock-device on the nested host's vhost_vsock). `boot_timer` (boot_timer.rs,
# static, no forks while polling) starts the VMM and times, from just before the
# spawn: the first byte on the serial console, and "husk-agent ready" on it; at ready
# it reads the VMM's RSS outside guest RAM. Runs alternate husk-vmm and QEMU; the
# table gives medians (and min-max) of $BENCH_RUNS runs each and the ratios.
#
# Env: BENCH_RUNS (5), BENCH_VCPUS (1), BENCH_MEMORY_MIB (256), BENCH_CMDLINE_EXTRA
# (appended to both kernel command lines, e.g. "quiet"), HUSK_GUEST_KERNEL,
# HUSK_AGENT_INITRAMFS (else the newest in $HUSK_CACHE, as run.sh). Needs what run.sh
# needs; the Debian cloud kernel for the nested host is fetched into the same cache.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
HC=${HUSK_CACHE:-$HOME/.cache/husk}
CACHE=$HC/vmm-nested
RUNS=${BENCH_RUNS:-5}
VCPUS=${BENCH_VCPUS:-1}
MEM=${BENCH_MEMORY_MIB:-256}
EXTRA=${BENCH_CMDLINE_EXTRA:-}
WORK=$(mktemp -d /tmp/husk-vmm-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CACHE"
say() { echo "bench-vmm-nested: $*"; }

command -v qemu-system-x86_64 >/dev/null || { say "needs qemu-system-x86"; exit 1; }
if ! ls "$CACHE"/root/boot/vmlinuz-* >/dev/null 2>&1; then
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
    say "fetching $pkg"
    (cd "$WORK" && apt-get download "$pkg" 2>/dev/null && dpkg-deb -x "$pkg"_*.deb "$CACHE/root")
fi
VMLINUZ=$(ls "$CACHE"/root/boot/vmlinuz-* | head -1)
MODS="$CACHE/root/lib/modules/$(ls "$CACHE"/root/lib/modules | head -1)/kernel"
KERNEL=${HUSK_GUEST_KERNEL:-$(ls -t "$HC"/kernel/*/vmlinux 2>/dev/null | head -1 || true)}
INITRAMFS=${HUSK_AGENT_INITRAMFS:-$(ls -t "$HC"/initramfs/*/initramfs.cpio 2>/dev/null | head -1 || true)}
[ -n "$KERNEL" ] || { say "no guest kernel: run make guest-artifacts"; exit 1; }
if [ -z "$INITRAMFS" ]; then
    say "no agent initramfs in the cache: building it"
    INITRAMFS=$(bash "$ROOT/agent/mkinitramfs.sh" "$(bash "$ROOT/agent/build-static.sh")")
fi
say "guest kernel $KERNEL, initramfs $INITRAMFS, $VCPUS vCPU(s), $MEM MiB, $RUNS runs each${EXTRA:+, cmdline + \"$EXTRA\"}"

(cd "$ROOT" && cargo build -q -p husk-vmm --release)
VMM="$ROOT/target/release/husk-vmm"
QEMU=$(command -v qemu-system-x86_64)
rustc --edition 2021 -O -C target-feature=+crt-static -o "$WORK/boot_timer" \
    "$ROOT/vmm/tests/nested/boot_timer.rs"

H="$WORK/host"
mkdir -p "$H"/{bin,proc,sys,dev,tmp,mod,g,lib64,lib/x86_64-linux-gnu,usr/bin,usr/share/qemu}
cp /bin/busybox "$H/bin/"
for m in virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd net/vmw_vsock/vsock \
    net/vmw_vsock/vmw_vsock_virtio_transport_common drivers/vhost/vhost_iotlb \
    drivers/vhost/vhost drivers/vhost/vhost_vsock; do
    cp "$MODS/$m.ko" "$H/mod/"
done
cp "$VMM" "$WORK/boot_timer" "$H/"
# QEMU finds its firmware relative to its binary (../share/qemu) or in /usr/share/qemu.
cp "$QEMU" "$H/usr/bin/"
for f in bios-microvm.bin qboot.rom pvh.bin linuxboot_dma.bin kvmvapic.bin; do
    cp "/usr/share/qemu/$f" "$H/usr/share/qemu/"
done
for lib in $(ldd "$VMM" "$QEMU" | awk '$3 ~ /^\// {print $3} $1 ~ /^\// && $1 !~ /:$/ {print $1}' | sort -u); do
    mkdir -p "$H$(dirname "$lib")"
    cp -L "$lib" "$H$(dirname "$lib")/"
done
cp "$KERNEL" "$H/g/vmlinux"
cp "$INITRAMFS" "$H/g/agent.cpio"

cat > "$H/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in irqbypass kvm kvm-amd vsock vmw_vsock_virtio_transport_common vhost_iotlb vhost vhost_vsock; do
    insmod /mod/\$m.ko
done
[ -c /dev/kvm ] && [ -c /dev/vhost-vsock ] || { echo "BENCH-HOST: no /dev/kvm or /dev/vhost-vsock"; poweroff -f; }
echo "BENCH-HOST-READY"
CMDLINE="console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd $EXTRA"
for i in \$(seq $RUNS); do
    echo "BENCH-RUN \$i"
    /boot_timer husk-vmm /tmp/c.log "husk-agent ready" 120 -- /husk-vmm \\
        --kernel /g/vmlinux --initramfs /g/agent.cpio --vcpus $VCPUS --memory-mib $MEM \\
        --console /tmp/c.log --vsock /tmp/v.sock --cmdline "\$CMDLINE"
    /boot_timer qemu-microvm /tmp/c.log "husk-agent ready" 120 -- /usr/bin/$(basename "$QEMU") \\
        -M microvm,accel=kvm,acpi=off -cpu host -smp $VCPUS -m ${MEM}M \\
        -nodefaults -no-user-config -display none -no-reboot -serial file:/tmp/c.log \\
        -kernel /g/vmlinux -initrd /g/agent.cpio -append "\$CMDLINE" \\
        -device vhost-vsock-device,guest-cid=3
done
echo "BENCH-DONE"
poweroff -f
INIT
chmod +x "$H/init"
(cd "$H" && find . | cpio -o -H newc 2>/dev/null) > "$WORK/host.cpio"

say "booting the nested host (QEMU TCG, -cpu max); $((RUNS * 2)) guest boots"
LOG="$CACHE/bench.log"
start=$(date +%s)
timeout 1200 qemu-system-x86_64 -M q35,accel=tcg -cpu max -m 1536 -smp 1 \
    -nographic -no-reboot -kernel "$VMLINUZ" -initrd "$WORK/host.cpio" \
    -append "console=ttyS0 panic=-1 quiet" >"$LOG" 2>&1 || true
say "QEMU ran $(( $(date +%s) - start )) s; serial log kept in $LOG"
sed -i 's/\r$//' "$LOG"
grep -q BENCH-DONE "$CACHE/bench.log" && ! grep -q "BOOT-TIMER.*failed=" "$CACHE/bench.log" || {
    say "the benchmark did not complete; log follows"; cat "$CACHE/bench.log"; exit 1; }

grep '^BOOT-TIMER ' "$CACHE/bench.log" | awk -v runs="$RUNS" -v vcpus="$VCPUS" -v mem="$MEM" '
function median(name, key,   n, i, j, t, a) {
    n = split(vals[name, key], a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    lo[name, key] = a[1]; hi[name, key] = a[n]
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{
    for (f = 2; f <= NF; f++) { split($f, kv, "="); r[kv[1]] = kv[2] }
    name = r["name"]
    for (k in r) if (k != "name") vals[name, k] = vals[name, k] " " r[k]
}
END {
    split("husk-vmm qemu-microvm", names, " ")
    for (i = 1; i <= 2; i++) {
        n = names[i]
        fb[n] = median(n, "first_byte_ms") / 1000; rd[n] = median(n, "ready_ms") / 1000
        rss[n] = median(n, "vmm_rss_kb") / 1024
        fbr[n] = sprintf("%.2f-%.2f", lo[n, "first_byte_ms"] / 1000, hi[n, "first_byte_ms"] / 1000)
        rdr[n] = sprintf("%.2f-%.2f", lo[n, "ready_ms"] / 1000, hi[n, "ready_ms"] / 1000)
    }
    printf "nested KVM host (QEMU TCG), %d vCPU(s), %d MiB, median of %d runs (min-max)\n", vcpus, mem, runs
    printf "%-14s %22s %22s %14s %12s\n", "VMM", "first console byte s", "agent ready s", "guest uptime s", "VMM RSS MiB"
    for (i = 1; i <= 2; i++) {
        n = names[i]
        up[n] = median(n, "guest_uptime_ms") / 1000
        printf "%-14s %8.2f (%11s) %8.2f (%11s) %14.2f %12.1f\n", n, fb[n], fbr[n], rd[n], rdr[n], up[n], rss[n]
    }
    printf "%-14s %22.2fx %21.2fx %14s %11.1fx\n", "QEMU/husk", fb["qemu-microvm"] / fb["husk-vmm"], rd["qemu-microvm"] / rd["husk-vmm"], "", rss["qemu-microvm"] / rss["husk-vmm"]
    printf "before the guest clock starts (ready - guest uptime): husk-vmm %.2f s, qemu-microvm %.2f s\n", rd["husk-vmm"] - up["husk-vmm"], rd["qemu-microvm"] - up["qemu-microvm"]
}'

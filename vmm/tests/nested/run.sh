#!/usr/bin/env bash
# Real-Linux test of husk-vmm on a nested KVM host (docs/vmm.md, "Nested test host").
#
# The host KVM here is PVM and cannot boot a stock Linux, so this boots QEMU TCG with
# `-cpu max` and a Debian cloud kernel whose initramfs loads kvm/kvm-amd (SVM + nested
# paging), then runs husk-vmm inside it on a real /dev/kvm with 2 vCPUs.
#
# The husk-vmm guest kernel is $HUSK_GUEST_KERNEL, else the newest project guest
# kernel in $HUSK_CACHE/kernel/*/vmlinux (ELF, PVH entry, virtio-mmio cmdline devices
# and vsock built in). Its busybox initramfs answers one vsock connection on port 1024
# and reboots (i8042 reset); a client in the nested host speaks the hybrid vsock
# protocol (CONNECT/OK) to it. Passes when the guest booted, the vsock echo round trip
# worked and husk-vmm exited 0.
#
# Without a project guest kernel (or with HUSK_GUEST_KERNEL=debian) the stock Debian
# bzImage is the guest; it lacks
# VIRTIO_MMIO_CMDLINE_DEVICES (no ACPI here, so no virtio discovery), so only boot,
# console and reboot → exit 0 are checked, and the script says so.
# Needs: root, Debian apt (qemu-system-x86, busybox-static, cpio, the kernel package),
# rustc/cargo. Prints the whole serial log on failure. ~1 minute on 2 cores.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
CACHE=${HUSK_CACHE:-$HOME/.cache/husk}/vmm-nested
TIMEOUT=${HUSK_NESTED_TIMEOUT:-300}
WORK=$(mktemp -d /tmp/husk-vmm-nested.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CACHE"

say() { echo "test-vmm-nested: $*"; }

# Tools.
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
[ -x /bin/busybox ] && /bin/busybox --help >/dev/null 2>&1 || missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ldd /bin/busybox >/dev/null 2>&1; then
    say "/bin/busybox must be static (busybox-static)"; exit 1
fi

# The Debian cloud kernel (bzImage + modules), cached.
if ! ls "$CACHE"/root/boot/vmlinuz-* >/dev/null 2>&1; then
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
    fi
    say "fetching $pkg"
    (cd "$WORK" && apt-get download "$pkg" 2>/dev/null && dpkg-deb -x "$pkg"_*.deb "$CACHE/root")
fi
VMLINUZ=$(ls "$CACHE"/root/boot/vmlinuz-* | head -1)
GUEST_KERNEL=${HUSK_GUEST_KERNEL:-$(ls -t "${HUSK_CACHE:-$HOME/.cache/husk}"/kernel/*/vmlinux 2>/dev/null | head -1 || true)}
[ "$GUEST_KERNEL" = debian ] && GUEST_KERNEL=
if [ -n "$GUEST_KERNEL" ]; then
    VSOCK=1
    say "guest kernel: $GUEST_KERNEL"
else
    VSOCK=0
    GUEST_KERNEL=$VMLINUZ
    say "no project guest kernel: guest is the Debian bzImage; vsock part NOT run (boot, console, reboot only)"
fi
KVER=$(ls "$CACHE"/root/lib/modules | head -1)
MODS="$CACHE/root/lib/modules/$KVER/kernel"

# husk-vmm and the vsock probe.
say "building husk-vmm (release) and the vsock probe"
(cd "$ROOT" && cargo build -q -p husk-vmm --release)
VMM="$ROOT/target/release/husk-vmm"
rustc --edition 2021 -O -C target-feature=+crt-static -o "$WORK/vsock_probe" \
    "$ROOT/vmm/tests/nested/vsock_probe.rs"

cpio_of() { (cd "$1" && find . | cpio -o -H newc 2>/dev/null); }

# The husk-vmm guest: stock kernel + busybox + virtio/vsock modules + probe.
G="$WORK/guest"
mkdir -p "$G"/{bin,proc,sys,dev,mod}
cp /bin/busybox "$G/bin/"
cp "$WORK/vsock_probe" "$G/"
for m in drivers/virtio/virtio drivers/virtio/virtio_ring drivers/virtio/virtio_mmio \
    net/vmw_vsock/vsock net/vmw_vsock/vmw_vsock_virtio_transport_common \
    net/vmw_vsock/vmw_vsock_virtio_transport; do
    cp "$MODS/$m.ko" "$G/mod/"
done
cat > "$G/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "HUSK-GUEST-BOOTED uptime $(cut -d' ' -f1 /proc/uptime)"
echo "HUSK-GUEST-CPUS $(grep -c ^processor /proc/cpuinfo)"
if grep -q husk.vsock=1 /proc/cmdline; then
    # Modules only for a modular kernel (the project kernel has them built in).
    for m in virtio_ring virtio virtio_mmio vsock vmw_vsock_virtio_transport_common \
        vmw_vsock_virtio_transport; do
        [ -f /proc/modules ] && [ -f /mod/$m.ko ] && insmod /mod/$m.ko
    done
    /vsock_probe guest 1024
fi
echo "HUSK-GUEST-DONE uptime $(cut -d' ' -f1 /proc/uptime)"
reboot -f
INIT
chmod +x "$G/init"

# The nested host: same kernel, kvm modules, husk-vmm (+ its libraries), the guest.
H="$WORK/host"
mkdir -p "$H"/{bin,proc,sys,dev,tmp,mod,guest,lib64,lib/x86_64-linux-gnu}
cp /bin/busybox "$H/bin/"
cp "$MODS/virt/lib/irqbypass.ko" "$MODS/arch/x86/kvm/kvm.ko" "$MODS/arch/x86/kvm/kvm-amd.ko" "$H/mod/"
cp "$VMM" "$WORK/vsock_probe" "$H/"
for lib in $(ldd "$VMM" | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    cp -L "$lib" "$H$(dirname "$lib")/" 2>/dev/null || cp -L "$lib" "$H/lib/x86_64-linux-gnu/"
done
cp "$GUEST_KERNEL" "$H/guest/vmlinuz"
cpio_of "$G" > "$H/guest/initrd"
cat > "$H/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in irqbypass kvm kvm-amd; do insmod /mod/$m.ko; done
[ -c /dev/kvm ] || { echo "NESTED-HOST: no /dev/kvm"; poweroff -f; }
echo "NESTED-HOST-READY uptime $(cut -d' ' -f1 /proc/uptime)"
VSOCK=@VSOCK@
# The probe logs to a file: on the shared console its lines would interleave with
# the guest's.
if [ $VSOCK = 1 ]; then /vsock_probe host /tmp/v.sock 1024 >/tmp/probe.log 2>&1 & probe=$!; fi
HUSK_VMM_LOG=info /husk-vmm --kernel /guest/vmlinuz --initramfs /guest/initrd \
    --memory-mib 256 --vcpus 2 --vsock /tmp/v.sock \
    --cmdline "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd husk.vsock=$VSOCK"
echo "HUSK-VMM-EXIT=$? uptime $(cut -d' ' -f1 /proc/uptime)"
if [ $VSOCK = 1 ]; then wait $probe; rc=$?; cat /tmp/probe.log; echo "VSOCK-PROBE-EXIT=$rc"; fi
poweroff -f
INIT
sed -i "s/@VSOCK@/$VSOCK/" "$H/init"
chmod +x "$H/init"
cpio_of "$H" > "$WORK/host.cpio"

say "booting the nested host (QEMU TCG, -cpu max)"
LOG="$WORK/serial.log"
start=$(date +%s)
timeout "$TIMEOUT" qemu-system-x86_64 -M q35,accel=tcg -cpu max -m 1024 -smp 1 \
    -nographic -no-reboot -kernel "$VMLINUZ" -initrd "$WORK/host.cpio" \
    -append "console=ttyS0 panic=-1 quiet" >"$LOG" 2>&1 || true
say "QEMU ran $(( $(date +%s) - start )) s; serial log kept in $CACHE/serial.log"
cp "$LOG" "$CACHE/serial.log"

fail=0
markers="NESTED-HOST-READY HUSK-GUEST-BOOTED HUSK-GUEST-DONE HUSK-VMM-EXIT=0"
if [ $VSOCK = 1 ]; then
    markers="$markers VSOCK-LISTENING VSOCK-OK VSOCK-CLOSED VSOCK-GUEST-DONE VSOCK-PROBE-EXIT=0"
fi
for marker in $markers; do
    if grep -q "$marker" "$LOG"; then say "ok: $marker"; else say "MISSING: $marker"; fail=1; fi
done
if [ $fail -ne 0 ]; then
    say "serial log follows"
    cat "$LOG"
    exit 1
fi
grep -E "HUSK-GUEST-BOOTED|HUSK-GUEST-CPUS|HUSK-GUEST-DONE|HUSK-VMM-EXIT" "$LOG" | sed 's/^/test-vmm-nested: /'
say "passed"

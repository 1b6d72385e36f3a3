#!/usr/bin/env bash
# Real-Linux test of husk-vmm on a nested KVM host (docs/vmm.md, "Nested test host").
#
# The host KVM here is PVM and cannot boot a stock Linux, so this boots QEMU TCG with
# `-cpu max` and a Debian cloud kernel whose initramfs loads kvm/kvm-amd (SVM + nested
# paging), then runs husk-vmm inside it on a real /dev/kvm with 2 vCPUs, twice:
#
# 1. The husk-vmm guest kernel is $HUSK_GUEST_KERNEL, else the newest project guest
#    kernel in $HUSK_CACHE/kernel/*/vmlinux (ELF, PVH entry, virtio-mmio cmdline
#    devices and vsock built in). Its busybox initramfs answers one vsock connection on
#    port 1024 and reboots (i8042 reset); a client in the nested host speaks the hybrid
#    vsock protocol (CONNECT/OK) to it. The VM also has a virtio-net device on tap0
#    (--net): the nested host gives tap0 10.0.2.1/24, the guest's busybox gives eth0
#    10.0.2.2/24 and pings the host. Passes when the guest booted, the ping was
#    answered, the vsock echo round trip worked and husk-vmm exited 0.
# 2. The same kernel with the REAL agent initramfs (newest
#    $HUSK_CACHE/initramfs/*/initramfs.cpio, built from agent/ when there is none) and
#    a virtio-fs share (--fs tag=husk-shared,path=/shared) holding a busybox rootfs.
#    The agent_probe example, in the nested host, connects over hybrid vsock, checks
#    the agent's health, creates a sandbox that mounts the share, runs a container
#    (`echo hello-from-vmm; write /from-guest.txt; exit 3`) and checks its output and
#    exit code, then the probe's exec/stdin/tty/OOM cases, then DestroySandbox: the
#    agent reboots the guest and husk-vmm exits 0. The file the container wrote must
#    be in the nested host's /shared. The VM also gets a 4 MiB read-only virtio-blk
#    disk, which its kernel must find. The nested host's kernel has Landlock, so the
#    virtio-fs thread must report itself confined to /shared.
# 3. The runtime end to end: `husk --isolation vm --hypervisor builtin run` of a
#    bundle in the nested host (husk, husk-vmm beside it, the kernel and initramfs in
#    a $HUSK_CACHE there): its stdout and exit status must be the container's, and
#    husk must have picked builtin because /dev/kvm there has SVM. The bundle's
#    network namespace is /run/netns/pod, prepared as a CNI plugin would (veth eth0,
#    10.0.3.2/24, MTU 1400; its peer in the nested host): husk carries it into the
#    guest (a tap in the namespace, tc redirects, the tap's descriptor handed to
#    husk-vmm with `--net fd=`), the container must see eth0 with the veth's MAC and
#    MTU and exchange a message with a nc server on the peer, and afterwards no tap
#    and no ingress qdisc may be left in the namespace.
#
# Without a project guest kernel (or with HUSK_GUEST_KERNEL=debian) the stock Debian
# bzImage is the guest; it lacks
# VIRTIO_MMIO_CMDLINE_DEVICES (no ACPI here, so no virtio discovery), so only boot,
# console and reboot → exit 0 are checked, and the script says so.
# Needs: root, Debian apt (qemu-system-x86, busybox-static, cpio, the kernel package),
# rustc/cargo. Prints the whole serial log (the nested host's console, with the agent
# VM's console inside it) on failure. 1-3 minutes on 2 cores.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
CACHE=${HUSK_CACHE:-$HOME/.cache/husk}/vmm-nested
TIMEOUT=${HUSK_NESTED_TIMEOUT:-600}
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
    say "no project guest kernel: guest is the Debian bzImage; vsock, agent and husk run parts NOT run (boot, console, reboot only)"
fi
KVER=$(ls "$CACHE"/root/lib/modules | head -1)
MODS="$CACHE/root/lib/modules/$KVER/kernel"

# husk-vmm, the agent probe and the vsock probe.
say "building husk-vmm, agent_probe and husk (release) and the vsock probe"
(cd "$ROOT" && cargo build -q -p husk-vmm --release &&
    cargo build -q -p husk-agent-protocol --example agent_probe --release &&
    cargo build -q -p husk-runtime --bin husk --release)
VMM="$ROOT/target/release/husk-vmm"
PROBE="$ROOT/target/release/examples/agent_probe"
HUSK="$ROOT/target/release/husk"
AGENT_INITRAMFS=
if [ $VSOCK = 1 ]; then
    AGENT_INITRAMFS=${HUSK_AGENT_INITRAMFS:-$(ls -t "${HUSK_CACHE:-$HOME/.cache/husk}"/initramfs/*/initramfs.cpio 2>/dev/null | head -1 || true)}
    if [ -z "$AGENT_INITRAMFS" ]; then
        say "no agent initramfs in the cache: building it (agent/build-static.sh, agent/mkinitramfs.sh)"
        AGENT_INITRAMFS=$(bash "$ROOT/agent/mkinitramfs.sh" "$(bash "$ROOT/agent/build-static.sh")")
    fi
    say "agent initramfs: $AGENT_INITRAMFS"
fi
rustc --edition 2021 -O -C target-feature=+crt-static -o "$WORK/vsock_probe" \
    "$ROOT/vmm/tests/nested/vsock_probe.rs"

cpio_of() { (cd "$1" && find . | cpio -o -H newc 2>/dev/null); }

# The husk-vmm guest: stock kernel + busybox + virtio/vsock modules + probe.
G="$WORK/guest"
mkdir -p "$G"/{bin,proc,sys,dev,mod,tmp}
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
    # virtio-net over the nested host's tap0 (the host sets its end up once
    # husk-vmm has created it; retry until then).
    ip link set eth0 up && ip addr add 10.0.2.2/24 dev eth0
    echo "HUSK-GUEST-NET $(cat /sys/class/net/eth0/address 2>&1)"
    for i in $(seq 30); do
        if ping -c 1 -W 2 10.0.2.1 >/tmp/ping.log 2>&1; then
            echo "HUSK-GUEST-PING-OK attempt $i: $(grep -o 'time=.*' /tmp/ping.log)"
            break
        fi
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
# /dev/net/tun for --net (built in on some kernels); veth and the tc pieces husk's
# network carrying uses (ingress qdisc, u32 filter, mirred action) for `husk run`.
for m in drivers/net/tun drivers/net/veth net/sched/sch_ingress net/sched/cls_u32 net/sched/act_mirred; do
    [ -f "$MODS/$m.ko" ] && cp "$MODS/$m.ko" "$H/mod/"
done
cp "$VMM" "$PROBE" "$HUSK" "$WORK/vsock_probe" "$H/"
# iproute2 (busybox's ip has no netns or veth) for the namespace `husk run` carries.
IP=$(readlink -f "$(command -v ip)")
TC=$(readlink -f "$(command -v tc)")
mkdir -p "$H/iproute2" && cp "$IP" "$H/iproute2/ip" && cp "$TC" "$H/iproute2/tc"
# (ldd of several files prints "file:" headers: skip them.)
for lib in $(ldd "$VMM" "$PROBE" "$HUSK" "$IP" "$TC" | awk '$3 ~ /^\// {print $3} $1 ~ /^\// && $1 !~ /:$/ {print $1}' | sort -u); do
    cp -L "$lib" "$H$(dirname "$lib")/" 2>/dev/null || cp -L "$lib" "$H/lib/x86_64-linux-gnu/"
done
cpio_of "$G" > "$H/guest/initrd"
if [ $VSOCK = 1 ]; then
    # The husk cache of the nested host (kernel and agent initramfs, found by husk);
    # the direct husk-vmm runs use the same files.
    mkdir -p "$H/cache/kernel/k" "$H/cache/initramfs/i"
    cp "$GUEST_KERNEL" "$H/cache/kernel/k/vmlinux"
    cp "$AGENT_INITRAMFS" "$H/cache/initramfs/i/initramfs.cpio"
    ln -s ../cache/kernel/k/vmlinux "$H/guest/vmlinuz"
    ln -s ../cache/initramfs/i/initramfs.cpio "$H/guest/agent.cpio"
else
    cp "$GUEST_KERNEL" "$H/guest/vmlinuz"
fi
if [ $VSOCK = 1 ]; then
    # The agent VM: the real initramfs, and a shared dir holding a busybox rootfs as a
    # bundle would (the agent mounts the share and runs the container from it).
    R="$H/shared/hello/rootfs"
    mkdir -p "$R"/{bin,proc,dev,sys,tmp}
    cp /bin/busybox "$R/bin/"
    ln -s busybox "$R/bin/sh"
    for a in echo cat head tr sleep stty test; do ln -s busybox "$R/bin/$a"; done
    args='"args": ["/bin/sh", "-c", "echo hello-from-vmm; echo written-in-the-guest > /from-guest.txt; exit 3"],'
    sed "s|^    \"args\": .*|    $args|" "$ROOT/tests/guest/hello/config.json" > "$H/agent-spec.json"
    grep -q hello-from-vmm "$H/agent-spec.json" ||
        { say "could not set the container args in tests/guest/hello/config.json's copy"; exit 1; }
    # A bundle for husk run: the same rootfs, its own config.json.
    mkdir -p "$H/bundle"
    cp -a "$R" "$H/bundle/rootfs"
    rm -f "$H/bundle/rootfs/from-guest.txt"
    # The container runs in the network namespace /run/netns/pod that the nested
    # host's init prepares as a CNI plugin would (veth eth0, 10.0.3.2/24, MTU 1400):
    # husk carries it into the guest through a tap handed to husk-vmm by descriptor.
    # The container prints its interface and what the peer's nc sends it.
    script='echo hello-from-husk-run; echo GUEST-ETH0 $(cat /sys/class/net/eth0/address) mtu $(cat /sys/class/net/eth0/mtu); echo from-the-vm | busybox timeout 20 busybox nc 10.0.3.1 8080; exit 7'
    args="\"args\": [\"/bin/sh\", \"-c\", \"$script\"],"
    sed -e "s#^    \"args\": .*#    $args#" \
        -e 's|{ "type": "cgroup" }|{ "type": "cgroup" }, { "type": "network", "path": "/run/netns/pod" }|' \
        "$ROOT/tests/guest/hello/config.json" > "$H/bundle/config.json"
    grep -q '"/run/netns/pod"' "$H/bundle/config.json" ||
        { say "could not add the network namespace to the husk run bundle"; exit 1; }
fi
cat > "$H/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in irqbypass kvm kvm-amd; do insmod /mod/$m.ko; done
for m in tun veth sch_ingress cls_u32 act_mirred; do [ -f /mod/$m.ko ] && insmod /mod/$m.ko; done
[ -c /dev/kvm ] || { echo "NESTED-HOST: no /dev/kvm"; poweroff -f; }
echo "NESTED-HOST-READY uptime $(cut -d' ' -f1 /proc/uptime)"
VSOCK=@VSOCK@
# The probe logs to a file: on the shared console its lines would interleave with
# the guest's.
if [ $VSOCK = 1 ]; then /vsock_probe host /tmp/v.sock 1024 >/tmp/probe.log 2>&1 & probe=$!; fi
NET=
[ $VSOCK = 1 ] && NET="--net tap=tap0,mac=02:48:55:53:4b:01"
HUSK_VMM_LOG=info /husk-vmm --kernel /guest/vmlinuz --initramfs /guest/initrd \
    --memory-mib 256 --vcpus 2 --vsock /tmp/v.sock $NET \
    --cmdline "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd husk.vsock=$VSOCK" &
vmm=$!
if [ $VSOCK = 1 ]; then
    # husk-vmm creates tap0 (non-persistent) when it builds the VM: give it the host
    # address, then read every thread's CapEff (all 0 once the vCPUs run).
    for _ in $(seq 300); do [ -e /sys/class/net/tap0 ] && break; sleep 0.1; done
    ip addr add 10.0.2.1/24 dev tap0 && ip link set tap0 up && echo "NESTED-HOST-TAP-UP"
    caps_zero() {
        for t in /proc/$vmm/task/*; do
            awk '/^CapEff/ {exit ($2 == "0000000000000000") ? 0 : 1}' $t/status || return 1
        done
    }
    for _ in $(seq 150); do caps_zero && break; sleep 0.2; done
    caps_zero && echo "VMM-CAPS-ALL-ZERO"
    echo "VMM-THREAD-CAPS $(for t in /proc/$vmm/task/*; do echo -n "$(cat $t/comm)=$(awk '/^CapEff/ {print $2}' $t/status) "; done)"
fi
wait $vmm
echo "HUSK-VMM-EXIT=$? uptime $(cut -d' ' -f1 /proc/uptime)"
if [ $VSOCK = 1 ]; then wait $probe; rc=$?; cat /tmp/probe.log; echo "VSOCK-PROBE-EXIT=$rc"; fi
if [ $VSOCK = 1 ]; then
    # The real agent with the rootfs shared over virtio-fs (seccomp enforced).
    # Plus a 4 MiB read-only disk: the guest kernel must find it (virtio-blk).
    dd if=/dev/zero of=/tmp/disk.img bs=1M count=4 2>/dev/null
    echo "AGENT-VM-START uptime $(cut -d' ' -f1 /proc/uptime)"
    HUSK_VMM_LOG=info /husk-vmm --kernel /guest/vmlinuz --initramfs /guest/agent.cpio \
        --memory-mib 256 --vcpus 1 --vsock /tmp/a.sock --console /tmp/agent-console.log \
        --fs tag=husk-shared,path=/shared --disk readonly,path=/tmp/disk.img \
        2>/tmp/agent-vmm.log &
    vmm=$!
    /agent_probe --socket /tmp/a.sock --timeout 240 --vm-pid $vmm \
        --container-spec /agent-spec.json --rootfs hello/rootfs --shared-tag husk-shared \
        --expect-stdout hello-from-vmm --expect-exit 3 --destroy >/tmp/agent-probe.log 2>&1 &
    probe=$!
    # The VMM's own memory once the agent is up: RSS of every mapping but guest RAM
    # (the one 256 MiB mapping).
    for _ in $(seq 600); do grep -q "husk-agent ready" /tmp/agent-console.log 2>/dev/null && break; sleep 0.2; done
    awk '/^Size:/ {size=$2} /^Rss:/ {if (size == 262144) guest += $2; else vmm += $2}
         END {print "AGENT-VMM-RSS vmm " vmm " kB, guest RAM touched " guest " kB"}' /proc/$vmm/smaps
    wait $probe
    echo "AGENT-PROBE-EXIT=$? uptime $(cut -d' ' -f1 /proc/uptime)"
    # DestroySandbox reboots the guest; a VMM still up 30 s later is stopped so the
    # consoles below are printed whatever happened.
    for _ in $(seq 300); do kill -0 $vmm 2>/dev/null || break; sleep 0.1; done
    kill -0 $vmm 2>/dev/null && { echo "AGENT-VMM-STILL-RUNNING: sending SIGTERM"; kill $vmm; }
    wait $vmm
    echo "AGENT-VMM-EXIT=$? uptime $(cut -d' ' -f1 /proc/uptime)"
    echo "AGENT-HOST-FILE=$(cat /shared/hello/rootfs/from-guest.txt 2>&1)"
    sed 's/^/agent-probe: /' /tmp/agent-probe.log
    sed 's/^/agent-vmm: /' /tmp/agent-vmm.log
    echo "----- agent VM console (husk-vmm guest) -----"
    cat /tmp/agent-console.log
    echo "----- end of agent VM console -----"

    # The runtime's builtin backend end to end, with the container's network
    # namespace prepared as a CNI plugin would: eth0 in /run/netns/pod, its peer
    # veth-p here with a nc server that answers from-the-peer.
    mkdir -p /run /etc/husk
    mount -t tmpfs tmpfs /run
    IPR=/iproute2/ip
    $IPR netns add pod && $IPR link add veth-p type veth peer name eth0 netns pod &&
        $IPR link set veth-p mtu 1400 up && $IPR addr add 10.0.3.1/24 dev veth-p &&
        $IPR -n pod link set lo up && $IPR -n pod link set eth0 mtu 1400 up &&
        $IPR -n pod addr add 10.0.3.2/24 dev eth0 && echo "NESTED-POD-NETNS-UP"
    POD_MAC=$($IPR -n pod -o link show eth0 | sed 's/.*link\/ether \([0-9a-f:]*\).*/\1/')
    echo from-the-peer | timeout 200 nc -l -p 8080 >/tmp/peer-got 2>&1 &
    echo "HUSK-RUN-START uptime $(cut -d' ' -f1 /proc/uptime)"
    HUSK_CACHE=/cache timeout 300 /husk --root /run/husk --debug --isolation vm \
        --hypervisor auto run -b /bundle husk-vm-1 >/tmp/husk-run.out 2>/tmp/husk-run.err
    echo "HUSK-RUN-EXIT=$? uptime $(cut -d' ' -f1 /proc/uptime)"
    sed 's/^/HUSK-RUN-STDOUT=/' /tmp/husk-run.out
    echo "HUSK-POD-MAC=$POD_MAC"
    grep -q "GUEST-ETH0 $POD_MAC mtu 1400" /tmp/husk-run.out && echo "HUSK-RUN-NET-SAME-MAC-MTU"
    echo "HUSK-PEER-GOT=$(cat /tmp/peer-got)"
    sed 's/^/husk-run: /' /tmp/husk-run.err
    leftover=$(ls /run/husk 2>/dev/null | grep -v '^\.' || true)
    echo "HUSK-RUN-LEFTOVER=${leftover:-none}"
    # The tap went with husk-vmm, the ingress qdisc with the sandbox's teardown.
    left=$($IPR -n pod -o link | grep -o 'husk-tap[0-9]*' || true)
    $IPR netns exec pod /iproute2/tc qdisc show dev eth0 | grep -q ingress && left="$left ingress-qdisc"
    echo "HUSK-NET-LEFTOVER=${left:-none}"
fi
poweroff -f
INIT
sed -i "s/@VSOCK@/$VSOCK/" "$H/init"
chmod +x "$H/init"
cpio_of "$H" > "$WORK/host.cpio"

say "booting the nested host (QEMU TCG, -cpu max)"
LOG="$WORK/serial.log"
# The nested host is QEMU emulating SVM in software: on a loaded machine it has
# been seen to stop making progress altogether (no output, its own timeouts not
# firing). Such a hang (QEMU killed by the timeout) gets one more attempt, said
# loudly; a run that ends by itself is judged as it is.
for attempt in 1 2; do
    start=$(date +%s)
    rc=0
    timeout "$TIMEOUT" qemu-system-x86_64 -M q35,accel=tcg -cpu max -m 1536 -smp 1 \
        -nographic -no-reboot -kernel "$VMLINUZ" -initrd "$WORK/host.cpio" \
        -append "console=ttyS0 panic=-1 quiet" >"$LOG" 2>&1 || rc=$?
    say "QEMU ran $(( $(date +%s) - start )) s (attempt $attempt); serial log kept in $CACHE/serial.log"
    cp "$LOG" "$CACHE/serial.log"
    [ "$rc" -eq 124 ] || break
    [ "$attempt" -eq 1 ] || break
    say "WARNING: the nested host made no progress for $TIMEOUT s and was killed; last lines:"
    tail -5 "$LOG" | sed 's/^/test-vmm-nested:   /'
    say "WARNING: retrying the nested run once"
done

fail=0
markers="NESTED-HOST-READY HUSK-GUEST-BOOTED HUSK-GUEST-DONE HUSK-VMM-EXIT=0"
if [ $VSOCK = 1 ]; then
    markers="$markers VSOCK-LISTENING VSOCK-OK VSOCK-CLOSED VSOCK-GUEST-DONE VSOCK-PROBE-EXIT=0"
    markers="$markers NESTED-HOST-TAP-UP HUSK-GUEST-NET.02:48:55:53:4b:01 HUSK-GUEST-PING-OK"
    markers="$markers VMM-CAPS-ALL-ZERO"
    markers="$markers AGENT-VM-START husk-agent.ready AGENT-PROBE-EXIT=0 AGENT-VMM-EXIT=0"
    markers="$markers AGENT-HOST-FILE=written-in-the-guest vda.*8192.512-byte"
    markers="$markers agent-vmm:.*virtio-fs.thread.confined.by.Landlock"
    markers="$markers HUSK-RUN-EXIT=7 HUSK-RUN-STDOUT=hello-from-husk-run HUSK-RUN-LEFTOVER=none"
    markers="$markers NESTED-POD-NETNS-UP HUSK-RUN-NET-SAME-MAC-MTU HUSK-RUN-STDOUT=from-the-peer"
    markers="$markers HUSK-PEER-GOT=from-the-vm HUSK-NET-LEFTOVER=none"
    markers="$markers husk-run:.husk:.vm.isolation.with.builtin"
fi
for marker in $markers; do
    if grep -q "$marker" "$LOG"; then say "ok: $marker"; else say "MISSING: $marker"; fail=1; fi
done
if [ $fail -ne 0 ]; then
    say "serial log follows"
    cat "$LOG"
    exit 1
fi
grep -E "HUSK-GUEST-BOOTED|HUSK-GUEST-CPUS|HUSK-GUEST-PING|VMM-THREAD-CAPS|HUSK-GUEST-DONE|HUSK-VMM-EXIT|AGENT-|husk-agent ready|agent-probe: agent_probe: (health|container)|HUSK-RUN|HUSK-POD|HUSK-PEER|HUSK-NET|NESTED-POD|husk-run: husk: vm isolation" "$LOG" |
    sed 's/^/test-vmm-nested: /'
say "passed"

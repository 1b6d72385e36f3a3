#!/usr/bin/env bash
# Real-Linux test of husk-vmm on a nested KVM host (docs/vmm.md, "Nested test host").
#
# The host KVM here is PVM and cannot boot a stock Linux, so this boots QEMU TCG with
# `-cpu max` and a Debian cloud kernel whose initramfs loads kvm/kvm-amd (SVM + nested
# paging) on 2 vCPUs (see SMP below), then runs husk-vmm inside it on a real /dev/kvm,
# in three stages (HUSK_NESTED_STAGES="guest agent run"), HUSK_NESTED_REPEAT times
# (default 1; `make test-vmm-nested-repeat N=10`), each iteration checked on its own:
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
# VM's console, the probes' and husk's logs streamed into it) on failure. A serial log
# that stops growing for HUSK_NESTED_STALL s (120) ends the run at once as STALLED,
# with the nested host's CPU and APIC state from the QEMU monitor. 2-4 minutes on 2
# cores.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
CACHE=${HUSK_CACHE:-$HOME/.cache/husk}/vmm-nested
# How often the stages run inside the one nested-host boot (each iteration is
# checked on its own; `make test-vmm-nested-repeat N=10`), and which of them.
REPEAT=${HUSK_NESTED_REPEAT:-1}
STAGES=${HUSK_NESTED_STAGES:-guest agent run}
# A serial log that has not grown for this long ends the run as stalled.
STALL=${HUSK_NESTED_STALL:-120}
# The whole run, a backstop behind the stall detector.
TIMEOUT=${HUSK_NESTED_TIMEOUT:-$((300 + 300 * REPEAT))}
# The nested host's vCPUs, kvm-amd options and extra kernel command line. Two vCPUs:
# QEMU 7.2's TCG can lose a vCPU's interrupt request (its APIC timer fires on the
# main-loop thread while the vCPU thread, emulating VMRUN, rewrites the same
# interrupt_request word without the lock). With one vCPU nothing ever makes the APIC
# look again and the nested host stops for good (issue 11, docs/vmm.md); with two,
# the next IPI to the deaf CPU does.
SMP=${HUSK_NESTED_SMP:-2}
KVM_AMD_OPTS=${HUSK_NESTED_KVM_AMD:-}
APPEND=${HUSK_NESTED_APPEND:-}
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

# The nested host's Debian kernel (bzImage + modules), cached: the cloud flavour
# (boots fastest), or with HUSK_NESTED_FLAVOUR=standard Debian's standard one.
FLAVOUR=${HUSK_NESTED_FLAVOUR:-cloud}
case $FLAVOUR in
cloud) META=linux-image-cloud-amd64 ;;
standard) META=linux-image-amd64 CACHE=$CACHE/standard ;;
*) say "HUSK_NESTED_FLAVOUR is cloud or standard"; exit 1 ;;
esac
mkdir -p "$CACHE"
if ! ls "$CACHE"/root/boot/vmlinuz-* >/dev/null 2>&1; then
    pkg=$(apt-cache depends $META 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg=$(apt-cache depends $META | awk '/Depends: linux-image-/{print $2; exit}')
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
[ $VSOCK = 1 ] || [ -n "${HUSK_NESTED_STAGES:-}" ] || STAGES=guest
for s in $STAGES; do
    case $s in
    guest) ;;
    agent | run) [ $VSOCK = 1 ] || { say "stage $s needs the project guest kernel"; exit 1; } ;;
    *) say "unknown stage $s in HUSK_NESTED_STAGES (guest, agent, run)"; exit 1 ;;
    esac
done
KVER=$(ls "$CACHE"/root/lib/modules | head -1)
MODS="$CACHE/root/lib/modules/$KVER/kernel"

# husk-vmm, the agent probe and the vsock probe.
say "building husk-vmm, agent_probe and husk (release) and the vsock probe"
(cd "$ROOT" && cargo build -q -p husk-vmm --release &&
    cargo build -q -p husk-agent-protocol --example agent_probe --release &&
    cargo build -q -p husk-runtime --bin husk --release)
VMM=${HUSK_NESTED_VMM:-$ROOT/target/release/husk-vmm}
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
# The standard flavour's kvm-amd needs ccp (SEV).
[ -f "$MODS/drivers/crypto/ccp/ccp.ko" ] && cp "$MODS/drivers/crypto/ccp/ccp.ko" "$H/mod/"
# /dev/net/tun for --net (built in on some kernels); veth and the tc pieces husk's
# network carrying uses (ingress qdisc, u32 filter, mirred action) for `husk run`.
for m in drivers/net/tun drivers/net/veth net/sched/sch_ingress net/sched/cls_u32 net/sched/act_mirred; do
    [ -f "$MODS/$m.ko" ] && cp "$MODS/$m.ko" "$H/mod/"
done
cp "$VMM" "$H/husk-vmm"
cp "$PROBE" "$HUSK" "$WORK/vsock_probe" "$H/"
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
# husk runs each sandbox's VM processes in a host cgroup of its own (docs/security.md).
mount -t cgroup2 cgroup2 /sys/fs/cgroup
[ -f /mod/ccp.ko ] && insmod /mod/ccp.ko
insmod /mod/irqbypass.ko && insmod /mod/kvm.ko && insmod /mod/kvm-amd.ko @KVM_AMD_OPTS@
for m in tun veth sch_ingress cls_u32 act_mirred; do [ -f /mod/$m.ko ] && insmod /mod/$m.ko; done
[ -c /dev/kvm ] || { echo "NESTED-HOST: no /dev/kvm"; poweroff -f; }
echo "NESTED-HOST-READY uptime $(cut -d' ' -f1 /proc/uptime) cpus $(grep -c ^processor /proc/cpuinfo)"
echo "NESTED-KVM $(for p in /sys/module/kvm/parameters/enable_pmu /sys/module/kvm/parameters/halt_poll_ns /sys/module/kvm_amd/parameters/*; do echo -n "${p##*/}=$(cat $p) "; done)"
VSOCK=@VSOCK@
REPEAT=@REPEAT@
STAGES="@STAGES@"
up() { cut -d' ' -f1 /proc/uptime; }

# Logs of the quiet stages (the agent VM's console, the probes, husk) go to files so
# their lines do not interleave with the others; they are streamed to the console
# line by line while they grow, prefixed, so that the serial log shows progress and
# a nested host that stops making progress is seen by run.sh's stall detector.
stream() { # PREFIX FILE-GLOB: stream the first file matching the glob once it exists
    sh -c 'echo $$ >> /tmp/stream.pids
        while ! f=$(ls $1 2>/dev/null | head -1) || [ -z "$f" ]; do sleep 0.5; done
        exec tail -n +1 -f "$f"' stream "$2" 2>/dev/null | sed "s|^|$1: |" &
}
stop_streams() { # let the tails catch up, then end them (their seds end on EOF)
    sleep 1.5
    [ -f /tmp/stream.pids ] && kill $(cat /tmp/stream.pids) 2>/dev/null
    rm -f /tmp/stream.pids
    sleep 0.2
}
caps_zero() {
    for t in /proc/$1/task/*; do
        awk '/^CapEff/ {exit ($2 == "0000000000000000") ? 0 : 1}' $t/status || return 1
    done
}

# 1. The busybox guest on 2 vCPUs (its console is the VMM's stdout: live): vsock
#    echo through the hybrid socket, a ping over virtio-net on tap0, reboot.
stage_guest() {
    rm -f /tmp/v.sock
    if [ $VSOCK = 1 ]; then /vsock_probe host /tmp/v.sock 1024 >/tmp/probe.log 2>&1 & probe=$!; fi
    NET=
    [ $VSOCK = 1 ] && NET="--net tap=tap0,mac=02:48:55:53:4b:01"
    HUSK_VMM_LOG=info /husk-vmm --kernel /guest/vmlinuz --initramfs /guest/initrd \
        --memory-mib 256 --vcpus 2 --vsock /tmp/v.sock $NET \
        --cmdline "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd husk.vsock=$VSOCK" &
    vmm=$!
    if [ $VSOCK = 1 ]; then
        # husk-vmm creates tap0 (non-persistent) when it builds the VM: give it the
        # host address, then read every thread's CapEff (all 0 once the vCPUs run).
        for _ in $(seq 300); do [ -e /sys/class/net/tap0 ] && break; sleep 0.1; done
        ip addr add 10.0.2.1/24 dev tap0 && ip link set tap0 up && echo "NESTED-HOST-TAP-UP"
        for _ in $(seq 150); do caps_zero $vmm && break; sleep 0.2; done
        caps_zero $vmm && echo "VMM-CAPS-ALL-ZERO"
        echo "VMM-THREAD-CAPS $(for t in /proc/$vmm/task/*; do echo -n "$(cat $t/comm)=$(awk '/^CapEff/ {print $2}' $t/status) "; done)"
    fi
    wait $vmm
    echo "HUSK-VMM-EXIT=$? uptime $(up)"
    if [ $VSOCK = 1 ]; then wait $probe; rc=$?; cat /tmp/probe.log; echo "VSOCK-PROBE-EXIT=$rc"; fi
}

# 2. The real agent with the rootfs shared over virtio-fs (seccomp enforced), plus a
#    4 MiB read-only disk the guest kernel must find (virtio-blk); agent_probe drives it.
stage_agent() {
    dd if=/dev/zero of=/tmp/disk.img bs=1M count=4 2>/dev/null
    rm -f /tmp/a.sock /shared/hello/rootfs/from-guest.txt
    : >/tmp/agent-console.log; : >/tmp/agent-vmm.log; : >/tmp/agent-probe.log
    echo "AGENT-VM-START uptime $(up)"
    stream agent-console /tmp/agent-console.log
    stream agent-vmm /tmp/agent-vmm.log
    stream agent-probe /tmp/agent-probe.log
    HUSK_VMM_LOG=info /husk-vmm --kernel /guest/vmlinuz --initramfs /guest/agent.cpio \
        --memory-mib 256 --vcpus 1 --vsock /tmp/a.sock --console /tmp/agent-console.log \
        --fs tag=husk-shared,path=/shared --disk readonly,path=/tmp/disk.img \
        2>>/tmp/agent-vmm.log &
    vmm=$!
    /agent_probe --socket /tmp/a.sock --timeout 240 --vm-pid $vmm \
        --container-spec /agent-spec.json --rootfs hello/rootfs --shared-tag husk-shared \
        --expect-stdout hello-from-vmm --expect-exit 3 --destroy >>/tmp/agent-probe.log 2>&1 &
    probe=$!
    # The VMM's own memory once the agent is up: RSS of every mapping but guest RAM
    # (the one 256 MiB mapping).
    for _ in $(seq 600); do grep -q "husk-agent ready" /tmp/agent-console.log 2>/dev/null && break; sleep 0.2; done
    awk '/^Size:/ {size=$2} /^Rss:/ {if (size == 262144) guest += $2; else vmm += $2}
         END {print "AGENT-VMM-RSS vmm " vmm " kB, guest RAM touched " guest " kB"}' /proc/$vmm/smaps
    wait $probe
    echo "AGENT-PROBE-EXIT=$? uptime $(up)"
    # DestroySandbox reboots the guest; a VMM still up 30 s later is stopped so the
    # consoles are complete whatever happened.
    for _ in $(seq 300); do kill -0 $vmm 2>/dev/null || break; sleep 0.1; done
    kill -0 $vmm 2>/dev/null && { echo "AGENT-VMM-STILL-RUNNING: sending SIGTERM"; kill $vmm; }
    wait $vmm
    echo "AGENT-VMM-EXIT=$? uptime $(up)"
    stop_streams
    echo "AGENT-HOST-FILE=$(cat /shared/hello/rootfs/from-guest.txt 2>&1)"
}

# The jail of the husk-vmm that `husk run` starts (docs/security.md), from /proc: its
# root, its namespaces, its threads' uids (one uid-0 thread, virtio-fs; the others
# the sandbox's uid).
jail_check() {
    pid=
    for _ in $(seq 900); do
        for c in /proc/[0-9]*/comm; do
            [ "$(cat $c 2>/dev/null)" = husk-vmm ] && { pid=${c#/proc/}; pid=${pid%/comm}; break; }
        done
        [ -n "$pid" ] && [ -S /proc/$pid/root/run/vsock.sock ] && break
        pid=
        sleep 0.2
    done
    [ -n "$pid" ] || { echo "VMM-JAIL: no jailed husk-vmm process"; return; }
    # Its threads confine themselves as they start.
    sleep 3
    echo "VMM-JAIL-ROOT $(ls /proc/$pid/root | tr '\n' ' ')end"
    shared=""
    for ns in mnt pid net ipc uts; do
        [ "$(readlink /proc/$pid/ns/$ns)" != "$(readlink /proc/1/ns/$ns)" ] || shared="$shared $ns"
    done
    echo "VMM-JAIL-NS-SHARED-WITH-HOST ${shared:-none}"
    root=0
    for t in /proc/$pid/task/*; do
        [ "$(awk '/^Uid:/ {print $2}' $t/status)" = 0 ] && root=$((root + 1))
    done
    echo "VMM-JAIL-ROOT-THREADS $root end"
    echo "VMM-JAIL-UIDS $(awk '/^Uid:/ {print $2}' /proc/$pid/task/*/status | sort -u | tr '\n' ' ')end"
}

# 3. The runtime's builtin backend end to end, with the container's network namespace
#    prepared as a CNI plugin would: eth0 in /run/netns/pod, its peer veth-p here with
#    a nc server that answers from-the-peer.
IPR=/iproute2/ip
stage_run() {
    grep -q " /run " /proc/mounts || { mkdir -p /run /etc/husk && mount -t tmpfs tmpfs /run; }
    $IPR netns add pod && $IPR link add veth-p type veth peer name eth0 netns pod &&
        $IPR link set veth-p mtu 1400 up && $IPR addr add 10.0.3.1/24 dev veth-p &&
        $IPR -n pod link set lo up && $IPR -n pod link set eth0 mtu 1400 up &&
        $IPR -n pod addr add 10.0.3.2/24 dev eth0 && echo "NESTED-POD-NETNS-UP"
    POD_MAC=$($IPR -n pod -o link show eth0 | sed 's/.*link\/ether \([0-9a-f:]*\).*/\1/')
    echo from-the-peer | timeout 200 nc -l -p 8080 >/tmp/peer-got 2>&1 &
    peer=$!
    # husk check names the backend it picks and checks only what that one needs
    # (no virtiofsd or vhost-device-vsock here: builtin needs neither).
    HUSK_CACHE=/cache /husk --root /run/husk check >/tmp/husk-check.out 2>&1
    echo "HUSK-CHECK-EXIT=$?"
    sed 's/^/HUSK-CHECK: /' /tmp/husk-check.out
    : >/tmp/husk-run.err
    echo "HUSK-RUN-START uptime $(up)"
    stream husk-run /tmp/husk-run.err
    stream husk-console "/run/husk/*/console.log /run/husk/*/*/console.log"
    jail_check &
    jailcheck=$!
    HUSK_CACHE=/cache timeout 300 /husk --root /run/husk --debug --isolation vm \
        --hypervisor auto run -b /bundle husk-vm-$ITER >/tmp/husk-run.out 2>>/tmp/husk-run.err
    echo "HUSK-RUN-EXIT=$? uptime $(up)"
    wait $jailcheck
    stop_streams
    sed 's/^/HUSK-RUN-STDOUT=/' /tmp/husk-run.out
    echo "HUSK-POD-MAC=$POD_MAC"
    grep -q "GUEST-ETH0 $POD_MAC mtu 1400" /tmp/husk-run.out && echo "HUSK-RUN-NET-SAME-MAC-MTU"
    kill $peer 2>/dev/null; wait $peer 2>/dev/null
    echo "HUSK-PEER-GOT=$(cat /tmp/peer-got)"
    leftover=$(ls /run/husk 2>/dev/null | grep -v '^\.' || true)
    echo "HUSK-RUN-LEFTOVER=${leftover:-none}"
    # The tap went with husk-vmm, the ingress qdisc with the sandbox's teardown.
    left=$($IPR -n pod -o link | grep -o 'husk-tap[0-9]*' || true)
    $IPR netns exec pod /iproute2/tc qdisc show dev eth0 | grep -q ingress && left="$left ingress-qdisc"
    echo "HUSK-NET-LEFTOVER=${left:-none}"
    # The next iteration starts from a fresh namespace (the veth pair goes with it).
    $IPR netns del pod
}

ITER=1
while [ $ITER -le $REPEAT ]; do
    echo "NESTED-ITER-START $ITER uptime $(up)"
    for s in $STAGES; do stage_$s; done
    echo "NESTED-ITER-END $ITER uptime $(up)"
    ITER=$((ITER + 1))
done
poweroff -f
INIT
sed -i -e "s/@VSOCK@/$VSOCK/" -e "s/@REPEAT@/$REPEAT/" -e "s/@STAGES@/$STAGES/" \
    -e "s/@KVM_AMD_OPTS@/$KVM_AMD_OPTS/" "$H/init"
chmod +x "$H/init"
cpio_of "$H" > "$WORK/host.cpio"

# Stage markers, checked per iteration (the lines between its NESTED-ITER-START and
# NESTED-ITER-END).
declare -A MARKERS
MARKERS[guest]="HUSK-GUEST-BOOTED HUSK-GUEST-DONE HUSK-VMM-EXIT=0"
if [ $VSOCK = 1 ]; then
    MARKERS[guest]+=" VSOCK-LISTENING VSOCK-OK VSOCK-CLOSED VSOCK-GUEST-DONE VSOCK-PROBE-EXIT=0"
    MARKERS[guest]+=" NESTED-HOST-TAP-UP HUSK-GUEST-NET.02:48:55:53:4b:01 HUSK-GUEST-PING-OK"
    MARKERS[guest]+=" VMM-CAPS-ALL-ZERO"
    MARKERS[agent]="AGENT-VM-START husk-agent.ready AGENT-PROBE-EXIT=0 AGENT-VMM-EXIT=0"
    MARKERS[agent]+=" AGENT-HOST-FILE=written-in-the-guest agent-console:.*vda.*8192.512-byte"
    MARKERS[agent]+=" agent-vmm:.*virtio-fs.thread.confined.by.Landlock"
    MARKERS[run]="HUSK-RUN-EXIT=7 HUSK-RUN-STDOUT=hello-from-husk-run HUSK-RUN-LEFTOVER=none"
    MARKERS[run]+=" NESTED-POD-NETNS-UP HUSK-RUN-NET-SAME-MAC-MTU HUSK-RUN-STDOUT=from-the-peer"
    MARKERS[run]+=" HUSK-PEER-GOT=from-the-vm HUSK-NET-LEFTOVER=none"
    MARKERS[run]+=" husk-run:.husk:.vm.isolation.with.builtin"
    MARKERS[run]+=" HUSK-CHECK-EXIT=0 HUSK-CHECK:.backend:.*builtin.with.kvm"
    MARKERS[run]+=" VMM-JAIL-ROOT.dev.initramfs.kernel.proc.run.shared.vm.json.end"
    MARKERS[run]+=" VMM-JAIL-NS-SHARED-WITH-HOST.none VMM-JAIL-ROOT-THREADS.1.end VMM-JAIL-UIDS.0.2[0-9]*.end"
fi

# L1's CPU as QEMU sees it, for a stalled run: where it is (L1's kernel or the L2
# guest's, by symbol), whether it moves, its local APIC (pending timer interrupts).
MON="$WORK/monitor"
mkfifo "$MON.in" "$MON.out"
monitor_dump() {
    local i
    for i in 1 2 3; do
        printf 'info cpus\ninfo registers\n' >"$MON.in"
        sleep 1
    done
    printf 'info lapic\n' >"$MON.in"
    sleep 1
    say "L1 CPU state (QEMU monitor, 3 samples 1 s apart):"
    tr -d '\r' <"$WORK/monitor.log" | sed 's/\x1b\[[0-9;]*[A-Za-z]//g' |
        grep -E '^\* CPU|^ *CPU|RIP=|RAX=|RSP=|CR0=|CR3=|EFER=|CPL=|^LVT|^Timer|^ISR|^IRR|^ESR|^APR' |
        sed 's/^/test-vmm-nested:   /'
    local rips rip
    rips=$(tr -d '\r' <"$WORK/monitor.log" | grep -o 'RIP=[0-9a-f]*' | cut -d= -f2 | sort -u)
    l1_kallsyms
    for rip in $rips; do
        say "  RIP $rip: nested host $(symbol_of "$WORK/l1.map" "$rip"), guest kernel $(symbol_of "$GUEST_NM" "$rip")"
    done
}
# The nested host's symbols (Debian ships no System.map; it boots with nokaslr, so
# its /proc/kallsyms is the same every boot): one short boot of the same kernel that
# prints it, only when a stall is being explained.
l1_kallsyms() {
    local k="$WORK/kallsyms"
    mkdir -p "$k/bin" "$k/proc"
    cp /bin/busybox "$k/bin/"
    printf '%s\n' '#!/bin/busybox sh' '/bin/busybox mount -t proc proc /proc' \
        'echo KALLSYMS-START' '/bin/busybox grep -i " [tw] " /proc/kallsyms' 'echo KALLSYMS-END' \
        '/bin/busybox poweroff -f' >"$k/init"
    chmod +x "$k/init"
    cpio_of "$k" >"$WORK/kallsyms.cpio"
    timeout 120 qemu-system-x86_64 -M q35,accel=tcg -cpu max -m 1536 -smp 1 -nographic \
        -no-reboot -kernel "$VMLINUZ" -initrd "$WORK/kallsyms.cpio" \
        -append "console=ttyS0 panic=-1 quiet nokaslr" 2>/dev/null | tr -d '\r' |
        sed -n '/KALLSYMS-START/,/KALLSYMS-END/p' | grep -E '^[0-9a-f]{16} ' | sort >"$WORK/l1.map" || true
}
# The symbol containing ADDR in a sorted `nm -n`-style map (the guest kernel has no
# KASLR: PVH boot; the nested host boots with nokaslr).
symbol_of() {
    [ -s "$1" ] || { echo "?"; return; }
    awk -v a="$2" 'BEGIN { a = tolower(a); while (length(a) < 16) a = "0" a }
        { if ($1 <= a) { s = $3; o = $1 } else exit }
        END { print (s == "" ? "?" : s) }' "$1"
}
GUEST_NM="$WORK/guest.map"
if [ "$VSOCK" = 1 ] && command -v nm >/dev/null; then
    nm -n "$GUEST_KERNEL" 2>/dev/null | grep -i ' [tw] ' >"$GUEST_NM" || true
fi

say "booting the nested host (QEMU TCG, -cpu max, $SMP vCPU(s)${KVM_AMD_OPTS:+, kvm-amd $KVM_AMD_OPTS}, $REPEAT iteration(s) of: $STAGES; stall bound ${STALL} s)"
LOG="$WORK/serial.log"
: >"$LOG"
start=$(date +%s)
qemu-system-x86_64 -M q35,accel=tcg -cpu max -m 1536 -smp "$SMP" \
    -nographic -no-reboot -kernel "$VMLINUZ" -initrd "$WORK/host.cpio" \
    -chardev pipe,id=mon0,path="$MON" -mon chardev=mon0,mode=readline \
    -append "console=ttyS0 panic=-1 quiet nokaslr $APPEND" >"$LOG" 2>&1 &
qemu=$!
cat "$MON.out" >"$WORK/monitor.log" &
# Stall detector: every stage prints as it goes (the guests' consoles, the probes'
# and husk's logs streamed by the nested host), so a serial log that has not grown
# for $STALL s (but for the nested kernel's own lockup reports) means the nested host
# stopped making progress. Such a run is ended at
# once with the console and L1's CPU state, not after the overall $TIMEOUT.
size=0 last=$start longest=0 verdict=
while kill -0 $qemu 2>/dev/null; do
    sleep 2
    now=$(date +%s)
    # The nested host's own lockup and RCU-stall reports are not progress: they are
    # what a hung nested host prints.
    new=$(grep -a -c -v -E 'soft lockup|rcu: |rcu_preempt|watchdog: ' "$LOG")
    if [ "$new" != "$size" ]; then
        [ $((now - last)) -gt "$longest" ] && longest=$((now - last))
        size=$new last=$now
    elif [ $((now - last)) -ge "$STALL" ]; then
        verdict="STALLED: no console output for $((now - last)) s"
    fi
    [ $((now - start)) -ge "$TIMEOUT" ] && verdict="TIMEOUT: the nested host ran $((now - start)) s (HUSK_NESTED_TIMEOUT)"
    if [ -n "$verdict" ]; then
        say "$verdict; last lines:"
        tail -5 "$LOG" | sed 's/^/test-vmm-nested:   /'
        monitor_dump
        # Tell a lost wakeup from a real hang: one external interrupt (a shift key
        # press on the PS/2 keyboard, IRQ 1, which the nested host ignores) makes its
        # APIC look at its pending vectors again; a nested host that then prints
        # again had one pending and undelivered.
        printf 'sendkey shift\n' >"$MON.in"
        sleep 15
        [ "$(grep -a -c -v -E 'soft lockup|rcu: |rcu_preempt|watchdog: ' "$LOG")" != "$size" ] &&
            say "after one external interrupt (PS/2 key press) the nested host printed again: its pending interrupt had not been delivered (lost wakeup)"
        kill $qemu 2>/dev/null
        break
    fi
done
rc=0
wait $qemu || rc=$?
cp "$LOG" "$CACHE/serial.log"
say "QEMU ran $(( $(date +%s) - start )) s (exit $rc), longest console silence ${longest} s; serial log kept in $CACHE/serial.log"

fail=0
grep -q NESTED-HOST-READY "$LOG" && say "ok: NESTED-HOST-READY" || { say "MISSING: NESTED-HOST-READY"; fail=1; }
passed=0 failed=0 notrun=0
for i in $(seq "$REPEAT"); do
    if ! grep -q "^NESTED-ITER-START $i " "$LOG"; then
        notrun=$((notrun + 1)) fail=1
        continue
    fi
    awk -v i="$i" '$0 ~ "NESTED-ITER-START " i " " {on = 1} on {print} $0 ~ "NESTED-ITER-END " i " " {exit}' \
        "$LOG" >"$WORK/iter.log"
    ok=1 missing=
    grep -q "NESTED-ITER-END $i " "$WORK/iter.log" || { ok=0; missing+=" NESTED-ITER-END"; }
    for s in $STAGES; do
        for marker in ${MARKERS[$s]:-}; do
            if grep -q "$marker" "$WORK/iter.log"; then
                [ "$REPEAT" -eq 1 ] && say "ok: $marker"
            else
                ok=0 missing+=" $marker"
            fi
        done
    done
    if [ $ok = 1 ]; then
        passed=$((passed + 1))
        [ "$REPEAT" -gt 1 ] && say "run $i/$REPEAT: passed ($(grep -o 'NESTED-ITER-START [0-9]* uptime [0-9.]*' "$WORK/iter.log" | awk '{print $4}') -> $(grep -o 'NESTED-ITER-END [0-9]* uptime [0-9.]*' "$WORK/iter.log" | awk '{print $4}') s nested-host uptime)"
    else
        failed=$((failed + 1)) fail=1
        say "run $i/$REPEAT: FAILED, missing:$missing"
    fi
done
[ -z "$verdict" ] || fail=1
summary="$passed passed, $failed failed"
[ $notrun -eq 0 ] || summary+=", $notrun not run"
[ "$REPEAT" -gt 1 ] && say "$summary (of $REPEAT runs of: $STAGES)"
if [ $fail -ne 0 ]; then
    [ -z "$verdict" ] || say "$verdict"
    say "serial log follows"
    cat "$LOG"
    exit 1
fi
grep -E "NESTED-HOST-READY|HUSK-GUEST-BOOTED|HUSK-GUEST-CPUS|HUSK-GUEST-PING|VMM-THREAD-CAPS|HUSK-GUEST-DONE|HUSK-VMM-EXIT|AGENT-|husk-agent ready|agent-probe: agent_probe: (health|container)|HUSK-RUN|HUSK-POD|HUSK-PEER|HUSK-NET|NESTED-POD|VMM-JAIL|HUSK-CHECK|husk-run: husk: vm isolation" "$LOG" |
    sed 's/^/test-vmm-nested: /'
say "passed"

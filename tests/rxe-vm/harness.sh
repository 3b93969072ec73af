#!/usr/bin/env bash
# Runs a script inside a qemu VM whose kernel has soft-RoCE (rdma_rxe), with `rxe0` up on
# eth0 (addresses 10.0.2.15 and 10.0.2.16), chrooted into this host's root over 9p, so the
# host's freshly built binaries run unchanged. Exits with the script's status.
#
# Usage: tests/rxe-vm/harness.sh SCRIPT
#
# Environment: RXE_VM_BOOT_LIMIT, seconds a boot may take to start the script (300);
# RXE_VM_CPU, the qemu CPU model of the first boot (max; a retry uses Haswell).
#
# This machine's kernel has no InfiniBand support; Debian's does. KVM hangs here, so the VM
# runs under TCG. See ../shared/DESIGN.md, "Testing facts". Needs the packages that
# scripts/setup installs (qemu-system-x86 linux-image-amd64 busybox-static rdma-core
# ibverbs-utils perftest).
set -euo pipefail

script=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${CARGO_TARGET_DIR:-$root/target}/rxe-vm
say() { printf 'rxe-vm: %s\n' "$*" >&2; }

kver=$(ls /lib/modules 2>/dev/null | grep -- '-amd64$' | sort -V | tail -n 1 || true)
kernel=/boot/vmlinuz-$kver
if [ -z "$kver" ] || [ ! -r "$kernel" ]; then
    say "no Debian kernel (linux-image-amd64) installed: run scripts/setup"
    exit 2
fi

# The initramfs: busybox, the kernel's modules for rxe, 9p and virtio, and an init that sets
# up rxe and runs the script. Rebuilt when this harness or the kernel changes.
stamp="$kver $(sha256sum "$0" | cut -c1-16)"
initrd=$work/initramfs.cpio.gz
mkdir -p "$work"
exec 9>"$work/build.lock"
flock 9 # several VMs may start at once; one builds, the others wait for it
if [ ! -s "$initrd" ] || [ "$(cat "$work/stamp" 2>/dev/null)" != "$stamp" ]; then
    say "building the initramfs for kernel $kver"
    rm -rf "$work/initramfs"
    mkdir -p "$work/initramfs"/{bin,proc,sys,dev,host,lib/modules}
    cp /bin/busybox "$work/initramfs/bin/busybox"
    : > "$work/initramfs/modules.order"
    # One module per --show-depends call (further words would be module parameters).
    # crc32_generic: rdma_rxe needs it and does not declare it ("failed to init crc32").
    for m in crc32_generic configfs ib_core ib_uverbs rdma_cm rdma_ucm rdma_rxe \
        9pnet 9pnet_virtio 9p virtio_ring virtio virtio_pci virtio_net dummy; do
        modprobe -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" { print $2 }'
    done | awk '!seen[$0]++' | while read -r ko; do
        cp "$ko" "$work/initramfs/lib/modules/"
        basename "$ko" >> "$work/initramfs/modules.order"
    done
    cat > "$work/initramfs/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do
    insmod "/lib/modules/$m" 2>/dev/null || echo "rxe-vm: insmod $m failed (built in?)"
done
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^lanet\.$1=//p"; }
script=$(arg script)
result=$(arg result)
mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576,cache=none hostroot /host
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -o bind /dev /host/dev
mount -t tmpfs tmpfs /host/run
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip addr add 10.0.2.16/24 dev eth0
ip route add default via 10.0.2.2 2>/dev/null
chroot /host /bin/sh -c "
    set -e
    rdma link add rxe0 type rxe netdev eth0
    cd \"$(dirname "$script")\"
    sh \"$script\"
" > "/host$result/output" 2>&1
echo $? > "/host$result/status"
sync
poweroff -f
INIT
    chmod +x "$work/initramfs/init"
    (cd "$work/initramfs" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd"
    echo "$stamp" > "$work/stamp"
fi
flock -u 9

# One boot. The script's output file appears when init starts the script (its chroot shell,
# which first adds rxe0), so a VM that has not made it by $boot_limit seconds hung while
# booting: once in CI, TCG sat after "Booting from ROM" until the timeout (the kernel was
# `quiet`). Such a boot is killed and tried again, once, with a named CPU model instead of
# `max`: TCG with `-cpu max -smp 2` is known to hang on some hosts while bringing up the
# second CPU, and a named model is the known way around it.
cpu=${RXE_VM_CPU:-max}
boot_limit=${RXE_VM_BOOT_LIMIT:-300}
case $boot_limit in
    '' | *[!0-9]* | 0)
        say "RXE_VM_BOOT_LIMIT must be a positive number of seconds, not '$boot_limit'"
        exit 2
        ;;
esac
# qemu runs under `timeout`, in a process group of its own: if this harness is stopped, it
# must not go on running.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
boot_hung=
boot() {
    result=$(mktemp -d "$work/run.XXXXXX") || return 2
    boot_hung=
    say "booting kernel $kver under qemu (TCG, -cpu $cpu) to run $script"
    timeout -k 10 1200 qemu-system-x86_64 -accel tcg -cpu "$cpu" -m 2048 -smp 2 -nographic -no-reboot \
        -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 clocksource=tsc tsc=reliable lanet.script=$script lanet.result=$result" \
        -fsdev local,id=hr,path=/,security_model=none,multidevs=remap \
        -device virtio-9p-pci,fsdev=hr,mount_tag=hostroot \
        -netdev user,id=n0 -device virtio-net-pci,netdev=n0 \
        > "$result/console.log" 2>&1 < /dev/null &
    local vm=$! waited=0
    # `jobs` asks this shell, which knows when its job ended (a bare PID could be reused,
    # but it is probed only here: the `kill` below follows a look that found it running).
    while [ ! -e "$result/output" ] && [ -n "$(jobs -rp)" ]; do
        if [ "$waited" -ge "$boot_limit" ]; then
            boot_hung=yes
            say "the VM has not started the script after ${boot_limit} s; its console:"
            tail -n 30 "$result/console.log" >&2
            kill "$vm" 2>/dev/null
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
    wait "$vm"
}
set +e
boot
qemu=$?
if [ -n "$boot_hung" ]; then
    rm -rf "$result"
    cpu=Haswell
    say "booting again"
    boot
    qemu=$?
fi
set -e
if [ ! -f "$result/status" ]; then
    if [ -n "$boot_hung" ]; then
        say "the VM hung while booting twice"
    else
        say "the VM did not finish the script (qemu exit $qemu; 124 or 137: the timeout); its console:"
        tail -n 60 "$result/console.log" >&2
    fi
    # What the script printed before it stopped: which test hung, or how far a slow VM got.
    if [ -s "$result/output" ]; then
        say "the script's output so far:"
        tail -n 80 "$result/output" >&2
    fi
    say "kept for a look: $result"
    exit 2
fi
cat "$result/output"
status=$(cat "$result/status")
rm -rf "$result"
exit "$status"

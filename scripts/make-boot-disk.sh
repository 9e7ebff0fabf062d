#!/usr/bin/env bash
# Builds a tiny BIOS-bootable raw disk for the instant-boot tests, without
# mounting anything (no root needed):
#   p1  FAT16 "VMVBOOT": syslinux, the host's Debian kernel, a busybox initrd
#   p2  ext2  "VMVROOT": busybox and an /sbin/init that counts its boots in
#       /boots (a write to the disk), prints
#         VMVAULT-BOOT-OK boots=N uptime=...
#       on the serial console and powers off.
# Boot it with: qemu-system-x86_64 -machine pc,accel=tcg -m 256 -display none
#   -no-reboot -serial stdio -drive file=IMG,format=raw,if=virtio
#
# Needs (Debian): linux-image-amd64 busybox-static syslinux syslinux-common
#   mtools dosfstools e2fsprogs fdisk cpio gzip
# Usage: scripts/make-boot-disk.sh OUT.raw
set -euo pipefail
out=${1:?usage: $0 OUT.raw}
export PATH=/usr/sbin:/sbin:$PATH MTOOLS_SKIP_CHECK=1

kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)
[ -n "$kernel" ] || { echo "no kernel in /boot (apt-get install linux-image-amd64)" >&2; exit 1; }
kver=${kernel#/boot/vmlinuz-}
moddir=/lib/modules/$kver
[ -d "$moddir" ] || { echo "no modules for $kver in $moddir" >&2; exit 1; }
busybox=/bin/busybox # busybox-static: the guest has no shared libraries
[ -x "$busybox" ] || { echo "need busybox-static ($busybox)" >&2; exit 1; }
mbr=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$mbr" ] || { echo "need syslinux-common ($mbr)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- initrd: busybox + the modules to find and mount a virtio/ATA ext2 disk.
mkdir -p "$work/initrd"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$busybox" "$work/initrd/bin/busybox"
want="virtio_blk virtio_pci ata_piix sd_mod ext4 crc32c_generic"
# Resolve dependencies (modules.dep lists them, deepest last) in load order.
declare -A seen=()
order=()
add() {
	local name=$1 path deps d
	path=$(awk -F: -v m="$name" '{n=$1; sub(/.*\//,"",n); sub(/\.ko(\.[a-z]+)?$/,"",n); gsub(/-/,"_",n); if (n==m) {print $1; exit}}' "$moddir/modules.dep")
	[ -n "$path" ] || return 0
	[ -n "${seen[$path]:-}" ] && return 0
	seen[$path]=1
	deps=$(grep "^$path:" "$moddir/modules.dep" | cut -d: -f2)
	for d in $deps; do
		d=${d##*/}; d=${d%%.ko*}; add "${d//-/_}"
	done
	order+=("$path")
}
for m in $want; do add "$m"; done
: >"$work/initrd/modules.order"
for p in "${order[@]}"; do
	base=${p##*/}
	case "$base" in
	*.ko.xz) xz -dc "$moddir/$p" >"$work/initrd/lib/modules/${base%.xz}"; base=${base%.xz} ;;
	*.ko.zst) zstd -qdc "$moddir/$p" >"$work/initrd/lib/modules/${base%.zst}"; base=${base%.zst} ;;
	*) cp "$moddir/$p" "$work/initrd/lib/modules/$base" ;;
	esac
	echo "$base" >>"$work/initrd/modules.order"
done
cat >"$work/initrd/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in $(cat /modules.order); do insmod /lib/modules/$m 2>/dev/null; done
for i in $(seq 1 200); do
	dev=$(findfs LABEL=VMVROOT 2>/dev/null) && break
	sleep 0.05
done
[ -n "$dev" ] || { echo "VMVAULT-BOOT-FAIL no root" >/dev/console; poweroff -f; }
mount -t ext4 -o ro "$dev" /newroot || { echo "VMVAULT-BOOT-FAIL mount" >/dev/console; poweroff -f; }
umount /sys /proc
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
EOF
chmod +x "$work/initrd/init"
(cd "$work/initrd" && find . | cpio -o -H newc --quiet | gzip -9) >"$work/initrd.img"

# --- root filesystem.
mkdir -p "$work/root"/{bin,sbin,dev,proc,tmp}
cp "$busybox" "$work/root/bin/busybox"
cat >"$work/root/sbin/init" <<'EOF'
#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
# Writer mode (capture tests): with a second virtio disk, write numbered
# 4 KiB records forever, record N to slot N%64 of the first disk's area
# past 32 MiB and then of the second disk (each flushed before the
# next), so any point in time shows, per disk, the last 64 records whole
# and, across the disks, a newest record on the second disk at most one
# behind the first.
if [ -b /dev/vdb ]; then
	echo "VMVAULT-WRITER-START" >/dev/console
	n=0
	while :; do
		n=$((n + 1))
		s=$((n % 64))
		$B yes "rec $n" | $B head -c 4096 | $B dd of=/dev/vda bs=4096 iflag=fullblock seek=$((8192 + s * 64)) conv=notrunc,fsync 2>/dev/null
		$B yes "rec $n" | $B head -c 4096 | $B dd of=/dev/vdb bs=4096 iflag=fullblock seek=$((s * 256)) conv=notrunc,fsync 2>/dev/null
	done
fi
$B mount -o remount,rw /
n=$($B cat /boots 2>/dev/null || echo 0)
n=$((n + 1))
echo $n >/boots
$B sync
$B mount -o remount,ro /
echo "VMVAULT-BOOT-OK boots=$n uptime=$($B cut -d' ' -f1 /proc/uptime)" >/dev/console
$B poweroff -f
EOF
chmod +x "$work/root/sbin/init"

# --- the disk: 32 MiB, p1 FAT16 20 MiB bootable, p2 ext2 for the rest.
rm -f "$out"
truncate -s 32M "$out"
sfdisk -q "$out" <<'EOF'
label: dos
start=2048, size=40960, type=6, bootable
start=43008, type=83
EOF
dd if="$mbr" of="$out" bs=440 count=1 conv=notrunc status=none
mkfs.fat -F 16 -n VMVBOOT --offset 2048 "$out" 20480 >"$work/mkfs.log" 2>&1 || { cat "$work/mkfs.log" >&2; exit 1; }
img="$out@@1048576"
mmd -i "$img" ::/boot
mcopy -i "$img" "$kernel" ::/boot/vmlinuz
mcopy -i "$img" "$work/initrd.img" ::/boot/initrd.img
cat >"$work/syslinux.cfg" <<'EOF'
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  LINUX /boot/vmlinuz
  INITRD /boot/initrd.img
  APPEND console=ttyS0 quiet loglevel=3 panic=-1
EOF
mcopy -i "$img" "$work/syslinux.cfg" ::/boot/syslinux.cfg
syslinux --offset 1048576 --install --directory /boot "$out"
mke2fs -q -F -t ext2 -b 1024 -m 0 -N 64 -L VMVROOT -O ^resize_inode,^dir_index -d "$work/root" \
	-E offset=$((43008 * 512)) "$out" $(((65536 - 43008) / 2))k
echo "$out: bootable test disk (kernel $kver)"

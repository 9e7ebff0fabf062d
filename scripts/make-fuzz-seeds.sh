#!/usr/bin/env bash
# make-fuzz-seeds.sh — rebuilds the tiny images in testdata/fs/ that seed the
# fs fuzz targets (ext2 with 128-byte inodes, ext4 with inline data and
# metadata_csum, FAT12, a 2 MiB NTFS, an MBR with logical partitions, a
# GPT, XFS v5 and v4, an LVM2 PV). They are committed (gzip, ~250 KB); run
# this only to change them. The XFS and LVM seeds are the images' first
# bytes up to the last non-zero 1 KiB block (the fuzz targets read zeros
# past them): XFS with its log on another device, so its metadata and data
# come first. Needs root (ntfs-3g, loop mounts), e2fsprogs, ntfs-3g,
# dosfstools, mtools, fdisk, attr, xfsprogs, lvm2.
set -euo pipefail
out=$(cd "$(dirname "$0")/../testdata/fs" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir -p t/d
echo hello >t/d/f
ln -s f t/d/l
echo x >t/small
seq 1 4000 >t/big
setfattr -n user.a -v b t/small
mke2fs -q -F -t ext2 -b 1024 -I 128 -N 32 -d t ext2.img 128K 2>/dev/null
mke2fs -q -F -t ext4 -O inline_data,metadata_csum,64bit -b 1024 -N 32 -d t ext4.img 256K 2>/dev/null
truncate -s 2M ntfs.img
mkntfs -q -F -Q -c 1024 ntfs.img >/dev/null 2>&1
m=$(mktemp -d)
ntfs-3g -o streams_interface=windows ntfs.img "$m"
cp -r t/* "$m/" 2>/dev/null || true
echo ads >"$m/small:s"
umount "$m"
rmdir "$m"
mkfs.vfat -C -F 12 fat12.img 128 >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -s -i fat12.img t/* ::/
truncate -s 64K mbr.img
printf 'label: dos\nstart=1, size=20, type=83\nstart=30, size=90, type=5\nstart=32, size=10, type=83\nstart=50, size=10, type=7\n' | sfdisk -q mbr.img
truncate -s 64K gpt.img
printf 'label: gpt\nfirst-lba: 34\nstart=40, size=20, name="a"\nstart=64, size=8\n' | sfdisk -q gpt.img
# prefix IMG: cut IMG after its last non-zero 1 KiB block.
prefix() {
	python3 - "$1" <<'PY'
import sys
p = sys.argv[1]
b = open(p, "rb").read()
last = max(i for i in range(0, len(b), 1024) if any(b[i:i + 1024]))
open(p, "wb").write(b[:last + 1024])
PY
}
export TEST_DEV=1 TEST_DIR=1 QA_CHECK_FS=1 # lets mkfs.xfs make a 16 MiB filesystem
truncate -s 16M xfs5.img && truncate -s 8M xfslog.img
mkfs.xfs -q -f -b size=1024 -d agcount=1 -i size=512 -l logdev=xfslog.img xfs5.img
log=$(losetup -f --show xfslog.img)
m=$(mktemp -d)
mount -o loop,logdev="$log" xfs5.img "$m"
cp -r t/* "$m/"
setfattr -n user.a -v b "$m/small"
ln -s "$(printf 'p%.0s' $(seq 1 1000))" "$m/longlink"
mkdir "$m/leaf"
for i in $(seq 1 60); do echo "$i" >"$m/leaf/entry-$i"; done
for i in $(seq 1 30); do setfattr -n "user.x$i" -v "val$i" "$m/big"; done
umount "$m"
rmdir "$m"
losetup -d "$log"
printf '/dev/null\n0 0\nd--755 0 0\nd d--755 0 0\nf ---644 0 0 %s\nl l--777 0 0 f\n$\nbig ---644 1 2 %s\nc c--644 0 0 1 3\n$\n' "$PWD/t/d/f" "$PWD/t/big" >proto
truncate -s 16M xfs4.img
mkfs.xfs -q -f -m crc=0 -b size=1024 -d agcount=1 -i size=256 -l logdev=xfslog.img -p proto xfs4.img 2>/dev/null
rm -f xfslog.img proto
unset TEST_DEV TEST_DIR QA_CHECK_FS
# an LVM2 PV (the whole 16 MiB image) with a two-segment LV and a striped one
truncate -s 16M lvm.img
pv=$(losetup -f --show lvm.img)
conf="devices { use_devicesfile=0 filter=[\"a|^$pv\$|\",\"r|.*|\"] } backup { backup=0 archive=0 }"
export LVM_SUPPRESS_FD_WARNINGS=1
lvm() { "$1" --config "$conf" --driverloaded n "${@:2}" >/dev/null 2>&1; }
lvm pvcreate "$pv"
lvm vgcreate -s 1M vgf "$pv"
lvm lvcreate -an -Zn -Wn -l 2 -n a vgf "$pv:6-7"
lvm lvextend -l +2 vgf/a "$pv:1-2"
lvm lvcreate -an -Zn -Wn -l 2 -n b-c vgf "$pv:9-10"
losetup -d "$pv"
for f in xfs5.img xfs4.img lvm.img; do prefix "$f"; done
for f in *.img; do gzip -9 -n -c "$f" >"$out/$f.gz"; done

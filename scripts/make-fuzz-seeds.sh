#!/usr/bin/env bash
# make-fuzz-seeds.sh — rebuilds the tiny images in testdata/fs/ that seed the
# fs fuzz targets (ext2 with 128-byte inodes, ext4 with inline data and
# metadata_csum, FAT12, a 2 MiB NTFS, an MBR with logical partitions, a
# GPT). They are committed (gzip, ~170 KB); run this only to change them.
# Needs root (ntfs-3g), e2fsprogs, ntfs-3g, dosfstools, mtools, fdisk, attr.
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
for f in *.img; do gzip -9 -n -c "$f" >"$out/$f.gz"; done

#!/usr/bin/env bash
# make-fs-images.sh OUTDIR — builds the disk images the fs/ tests and
# scripts/bench-fs.sh read: ext2 (1 KiB blocks, 128-byte inodes, a file deep
# in triple-indirect blocks), ext3, ext4 (a 300 MB file, a 5 GiB sparse file,
# htree directory of 5000 entries), ext4 with inline data, ext4 whose journal
# needs replaying, NTFS (ADS, compressed, sparse, resident, hard links,
# symlinks), FAT12/16/32 with long names, an MBR disk with logical
# partitions, a GPT disk, and a crafted ext2 with hostile names.
#
# ext images are built with `mke2fs -d` (no mount); NTFS is populated through
# ntfs-3g (FUSE, needs root); FAT through mtools. Builds are skipped when
# OUTDIR/.done matches this script's checksum. Needs: e2fsprogs, ntfs-3g,
# dosfstools, mtools, fdisk (sfdisk), attr (setfattr).
set -euo pipefail

out=${1:?usage: make-fs-images.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
stamp=$(sha256sum "$0" | cut -d' ' -f1)
# test packages run in parallel and may all ask for the images: one builds
exec 9>"$out/.lock"
flock 9
if [[ -f $out/.done && $(cat "$out/.done") == "$stamp" ]]; then
	exit 0
fi
rm -f "$out/.done"
cd "$out"
export MTOOLS_SKIP_CHECK=1
T0=1700000000 # fixed times keep listings comparable run to run

# populate DIR: the tree every filesystem gets (minus what it cannot hold).
populate() {
	local d=$1
	rm -rf "$d"
	mkdir -p "$d/etc" "$d/many" "$d/deep" "$d/empty-dir"
	echo web01 >"$d/etc/hostname"
	printf 'hello, restore point\n' >"$d/hello.txt"
	printf '' >"$d/empty.txt"
	for i in $(seq -w 1 5000); do echo "$i" >"$d/many/f$i"; done
	local p=$d/deep
	for i in $(seq 1 20); do p=$p/level$i; done
	mkdir -p "$p"
	echo bottom >"$p/bottom.txt"
	echo ja >"$d/日本語のファイル.txt"
	echo zh >"$d/中文文件.txt"
	echo emoji >"$d/emoji-🎉🚀.txt"
	echo linked >"$d/hard-a"
	ln "$d/hard-a" "$d/hard-b"
	truncate -s 64M "$d/sparse.bin"
	printf middle | dd of="$d/sparse.bin" bs=1 seek=$((32 << 20)) conv=notrunc status=none
	printf end | dd of="$d/sparse.bin" bs=1 seek=$(((64 << 20) - 3)) conv=notrunc status=none
	head -c 3000000 /dev/urandom >"$d/random-3M.bin"
	find "$d" -exec touch -h -d "@$T0" {} +
	touch -d "@$((T0 + 86400))" "$d/hello.txt"
	touch -d "@$T0.123456700" "$d/random-3M.bin" # sub-second, NTFS keeps 100 ns
}

# unix extras that ext keeps and NTFS/FAT do not.
unix_extras() {
	local d=$1
	ln -s hello.txt "$d/fast-link"
	ln -s "$(printf 'd%.0s' $(seq 1 80))/../hello.txt" "$d/slow-link"
	ln -s /etc/hostname "$d/abs-link"
	ln -s loop-b "$d/loop-a"
	ln -s loop-a "$d/loop-b"
	mkfifo "$d/fifo"
	chmod 4755 "$d/hello.txt"
	chmod 1777 "$d/empty-dir"
	chown 1000:1000 "$d/etc/hostname"
	setfattr -n user.comment -v "restore me" "$d/hello.txt"
	setfattr -n user.big -v "$(head -c 700 /dev/zero | tr '\0' x)" "$d/etc/hostname"
	find "$d" -exec touch -h -d "@$T0" {} +
	touch -d "@$((T0 + 86400))" "$d/hello.txt"
	touch -d "@$T0.123456789" "$d/random-3M.bin"
	touch -h -d "@$((-86400 * 365 * 20))" "$d/fast-link" # before 1970
}

populate src
unix_extras src

# ext2: 1 KiB blocks and 128-byte inodes; tri.bin (70 MB) reaches triple
# indirect blocks (12 + 256 + 65536 blocks is 64.3 MiB).
rm -rf src-ext2 && cp -a src src-ext2
head -c 70000000 /dev/urandom >src-ext2/tri.bin
touch -d "@$T0" src-ext2/tri.bin src-ext2
mke2fs -q -F -t ext2 -b 1024 -I 128 -L vmv-ext2 -U 11111111-2222-3333-4444-555555555555 \
	-E root_owner=0:0 -d src-ext2 ext2.img 160M
rm -rf src-ext2

mke2fs -q -F -t ext3 -L vmv-ext3 -d src ext3.img 128M
# mke2fs -d writes linear directories; e2fsck -D indexes the big ones (htree)
htree() {
	e2fsck -fyD "$1" >/dev/null 2>&1 || [ $? -le 1 ]
	debugfs -R "htree /many" "$1" 2>/dev/null | grep -q "Root node dump" ||
		{ echo "make-fs-images: /many in $1 has no htree" >&2; exit 1; }
}
htree ext3.img

# ext4: a 300 MB file (the cat benchmark) and a 5 GiB file with data past 4 GiB.
rm -rf src-ext4 && cp -a src src-ext4
head -c 300000000 /dev/urandom >src-ext4/big-300M.bin
truncate -s 5G src-ext4/huge-sparse.bin
printf 'past-4GiB' | dd of=src-ext4/huge-sparse.bin bs=1 seek=$((4608 << 20)) conv=notrunc status=none
touch -d "@$T0" src-ext4/big-300M.bin src-ext4/huge-sparse.bin src-ext4
mke2fs -q -F -t ext4 -O 64bit,metadata_csum -L vmv-ext4 -d src-ext4 ext4.img 512M
htree ext4.img
rm -rf src-ext4

# ext4 with inline data: small files and directories live in the inode.
rm -rf src-inline && mkdir -p src-inline/small-dir
echo tiny >src-inline/tiny.txt
head -c 100 /dev/urandom | base64 -w0 >src-inline/medium-inline.txt
for i in 1 2 3; do echo "$i" >"src-inline/small-dir/n$i"; done
head -c 20000 /dev/urandom >src-inline/not-inline.bin
mke2fs -q -F -t ext4 -O inline_data -I 256 -L vmv-inline -d src-inline ext4-inline.img 16M
rm -rf src-inline

# ext4 whose journal "needs recovery": read as on disk, with a warning.
rm -rf src-dirty && mkdir src-dirty && echo dirty >src-dirty/file.txt
mke2fs -q -F -t ext4 -L vmv-dirty -d src-dirty ext4-dirty.img 16M
debugfs -w -R "feature needs_recovery" ext4-dirty.img >/dev/null 2>&1
rm -rf src-dirty

# NTFS through ntfs-3g (needs root for the FUSE mount).
truncate -s 0 ntfs.img && truncate -s 256M ntfs.img
mkntfs -q -F -Q -L vmv-ntfs -c 4096 ntfs.img >/dev/null
mnt=$(mktemp -d)
ntfs-3g -o streams_interface=windows ntfs.img "$mnt"
trap 'umount "$mnt" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true' EXIT
populate "$mnt/tree"
mv "$mnt/tree"/* "$mnt/" && rmdir "$mnt/tree"
echo "hidden stream data" >"$mnt/hello.txt:secret"
echo "zone" >"$mnt/random-3M.bin:Zone.Identifier"
mkdir "$mnt/compressed"
setfattr -n system.ntfs_attrib_be -v 0x00000800 "$mnt/compressed"
(set +o pipefail; yes "compressible line of text for LZNT1" | head -c 2000000 >"$mnt/compressed/text.txt")
echo small >"$mnt/resident.txt"
ln -s hello.txt "$mnt/link-to-hello"
mkdir -p "$mnt/dir-a" "$mnt/dir-b"
echo shared >"$mnt/dir-a/shared.txt"
ln "$mnt/dir-a/shared.txt" "$mnt/dir-b/also-shared.txt"
echo "Long File Name With Spaces" >"$mnt/A Rather Long File Name With Spaces.txt"
umount "$mnt"
rmdir "$mnt"
trap - EXIT

# FAT12/16/32 through mtools.
rm -rf src-fat && mkdir -p src-fat/Sub\ Folder/Nested src-fat/many
echo fat >"src-fat/README.TXT"
echo long >"src-fat/A long file name.text"
echo mixed >"src-fat/MixedCase.Txt"
echo ja >"src-fat/日本語.txt"
echo nested >"src-fat/Sub Folder/Nested/deep file.txt"
for i in $(seq 1 300); do echo "$i" >"src-fat/many/file number $i.txt"; done
head -c 1500000 /dev/urandom >src-fat/random.bin
for v in 12 16 32; do
	size=$((v == 12 ? 4 : v == 16 ? 32 : 64))
	rm -f "fat$v.img"
	mkfs.vfat -C -F "$v" -n "VMVFAT$v" -i 1234ABCD "fat$v.img" $((size * 1024)) >/dev/null
	mcopy -s -p -m -i "fat$v.img" src-fat/* ::/
done

# An MBR disk: p1 FAT16, p2 extended with logical p5 (ext4 inline) and p6 (ext2).
rm -f mbr.img && truncate -s 120M mbr.img
sfdisk -q mbr.img <<'EOF'
label: dos
label-id: 0xdeadbeef
start=2048, size=65536, type=6, bootable
start=69632, type=5
start=71680, size=32768, type=83
start=106496, size=40960, type=83
EOF
mke2fs -q -F -t ext2 -L vmv-logical6 -d src/etc small-ext2.img 20M
dd if=fat16.img of=mbr.img bs=1M seek=1 conv=notrunc status=none
dd if=ext4-inline.img of=mbr.img bs=512 seek=71680 conv=notrunc status=none
dd if=small-ext2.img of=mbr.img bs=512 seek=106496 conv=notrunc status=none
rm -f small-ext2.img

# A GPT disk: p1 EFI system (FAT32), p3 Linux (ext4 inline); entry 2 unused.
rm -f gpt.img && truncate -s 100M gpt.img
sfdisk -q gpt.img <<'EOF'
label: gpt
label-id: 01234567-89AB-CDEF-0123-456789ABCDEF
gpt.img1 : start=2048, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system", uuid=AAAAAAAA-0000-0000-0000-000000000001
gpt.img3 : start=155648, size=32768, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="data", uuid=AAAAAAAA-0000-0000-0000-000000000003
EOF
dd if=fat32.img of=gpt.img bs=1M seek=1 conv=notrunc status=none
dd if=ext4-inline.img of=gpt.img bs=512 seek=155648 conv=notrunc status=none

# A crafted ext2 whose directory entries are hostile: "../escape", "/abs",
# "a/b", and NUL inside a name. Built by renaming placeholders of the same
# length in the image bytes (names are not checksummed in ext2).
rm -rf src-hostile && mkdir -p src-hostile/sub
echo ok >src-hostile/good.txt
echo e1 >src-hostile/XXescape1
echo e2 >src-hostile/YYYY
echo e3 >src-hostile/sub/ZZZ
echo e4 >src-hostile/sub/N_L
mke2fs -q -F -t ext2 -b 1024 -L vmv-hostile -d src-hostile hostile.img 4M
python3 - hostile.img <<'EOF'
import sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
for old, new in [(b'XXescape1', b'../escape'), (b'YYYY', b'/abs'), (b'ZZZ', b'a/b'), (b'N_L', b'n\x00l')]:
    i = b.find(old)
    assert i > 0, old
    b[i:i + len(old)] = new
open(p, 'wb').write(b)
EOF
rm -rf src-hostile

rm -rf src-fat
echo "$stamp" >"$out/.done"

#!/usr/bin/env bash
# make-golden-images.sh [OUTDIR] — builds the small filesystem images that
# fs/image/golden_test.go reads without any tool (testdata/fs/golden: NTFS,
# FAT12/16/32, ext2, ext4, each NAME.img.zst) and, for each, NAME.json: the
# listing of every path with its type, size, mode, owner, times, link count,
# symlink target, streams or xattrs and content hash as independent oracles
# see it. Image and listing are always regenerated together; commit both.
#
# Which oracle gives which field (details in scripts/golden-oracle.py):
#   ext2, ext4  the kernel's ext4 driver on a read-only loop mount: every
#               field (lstat, statx birth time, readlink, xattrs, content,
#               SEEK_DATA/SEEK_HOLE ranges).
#   ntfs        ntfs-3g, read-only, streams_interface=xattr: paths, type,
#               MFT record (ino), size, nlink, content; the four NTFS times
#               from system.ntfs_times; the read-only bit from
#               system.ntfs_attrib_be; streams as user.* xattrs, and through
#               The Sleuth Kit's icat when a stream is over the 64 KiB xattr
#               limit.
#   fat12/16/32 mtools: paths, type, size, content and mtime (mcopy -m),
#               read-only bit (mattrib); The Sleuth Kit's istat: creation time
#               and access date. (This kernel has no vfat driver.)
#   all         blkid -p: filesystem type, label, UUID.
# The images are populated through the same drivers (kernel ext4 on a loop
# mount, ntfs-3g, mtools), with fixed content, names and times: the user-space
# tools (mkntfs, ntfs-3g, mtools) run under libfaketime with the clock frozen
# at 2023-11-14 22:13:20 UTC, and ext inode change and birth times are set
# with debugfs after the kernel unmounted the image. Images are reproducible
# in content, not byte for byte.
#
# Needs root (loop mounts, FUSE) and: e2fsprogs, ntfs-3g, dosfstools, mtools,
# sleuthkit, attr, faketime, zstd, python3, util-linux (blkid). ONLY="ntfs
# ext4" rebuilds just those; KEEP=1 keeps the work directory.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "make-golden-images: needs root (loop mounts, ntfs-3g)" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../testdata/fs/golden}
mkdir -p "$out"
out=$(cd "$out" && pwd)
oracle=$here/golden-oracle.py
libfaketime=$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null | head -1)
[ -n "$libfaketime" ] || { echo "make-golden-images: libfaketime missing (apt-get install faketime)" >&2; exit 1; }
work=$(mktemp -d)
mnt=$work/mnt
mkdir "$mnt"
cleanup() {
	cd /
	if mountpoint -q "$mnt"; then umount "$mnt"; fi
	[ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
export TZ=UTC LC_ALL=C.UTF-8 MTOOLS_SKIP_CHECK=1

T0=1700000000 # 2023-11-14 22:13:20 UTC
# NO_FAKE_STAT: files keep their own times (mcopy -m copies them)
faked() { LD_PRELOAD=$libfaketime FAKETIME="2023-11-14 22:13:20" NO_FAKE_STAT=1 "$@"; }
gen() { python3 "$oracle" gen "$@"; }
# finish NAME ORACLE-ARGS...: write NAME.json from golden-oracle.py ORACLE-ARGS
# and compress the image.
finish() {
	local name=$1
	shift
	python3 "$oracle" "$@" >"$out/$name.json"
	zstd -q -19 -f "$work/$name.img" -o "$out/$name.img.zst"
	echo "make-golden-images: $name.img.zst $(stat -c %s "$out/$name.img.zst") bytes, $(grep -c '"path"' "$out/$name.json") paths"
}

# ---------------------------------------------------------------- NTFS
ntfs() {
	local img=$work/ntfs.img p i lcn1 len1 lcn2 len2
	truncate -s 12M "$img"
	faked mkntfs -q -F -Q -L vmv-golden-ntfs -c 4096 "$img" >/dev/null 2>&1
	# pass 1: ADS through the windows interface (streams over 64 KiB are
	# beyond xattrs), Interix symlinks and special files (ntfs-3g's default).
	faked ntfs-3g -o streams_interface=windows "$img" "$mnt"
	cd "$mnt"
	printf 'hello, restore point\n' >hello.txt
	printf 'hidden stream data\n' >hello.txt:secret
	printf '[ZoneTransfer]\r\nZoneId=3\r\n' >hello.txt:Zone.Identifier
	printf 'has a stream over 64 KiB\n' >big-stream.txt
	gen text 100000 bigstream >big-stream.txt:big
	: >empty.txt
	echo small >resident.txt
	gen text 20000 nonresident >nonresident.bin
	echo "read only" >readonly.txt
	echo "Long File Name With Spaces" >"A Rather Long File Name With Spaces, Commas and Mixed Case.txt"
	echo ja >"日本語のファイル.txt"
	echo latin >"Ünïcødé ñame.txt"
	echo emoji >"emoji-🎉🚀.txt"
	mkdir -p links/dir-a links/dir-b dir-with-stream
	echo shared >links/dir-a/shared.txt
	ln links/dir-a/shared.txt links/dir-b/also-shared.txt
	ln links/dir-a/shared.txt links/dir-a/shared-again.txt
	ln -s ../hello.txt links/interix-rel
	ln -s /etc/hostname links/interix-abs
	mkdir special
	mkfifo special/interix-fifo
	mknod special/interix-chardev c 1 3
	mknod special/interix-blockdev b 7 2
	python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' special/interix-socket
	# compressed directory: new files in it are LZNT1-compressed in 64 KiB
	# units; in mixed.bin an incompressible (stored) unit is followed by a
	# compressed one, and ntfs-3g writes both into one data run.
	mkdir compressed
	setfattr -n system.ntfs_attrib_be -v 0x00000810 compressed
	gen text 150000 compressed >compressed/text.txt
	gen text 3000 small >compressed/small.txt
	{
		gen rotated 65536 unit0
		gen text 65536 unit1
		gen text 5000 tail
	} >compressed/mixed.bin
	gen text 65536 holey0 >compressed/holey.bin
	gen text 65536 holey1 | dd of=compressed/holey.bin bs=64K seek=8 conv=notrunc status=none
	truncate -s 700000 compressed/holey.bin
	# stored, compressed, all-zero, compressed units: the compressed unit's
	# clusters share the stored unit's data run, and the hole after them
	# also covers the zero unit (go-ntfs dropped that unit and shifted the
	# rest); shared-run2.bin has two stored units and two zero units
	{
		gen rotated 65536 shared0
		gen text 65536 shared1
		head -c 65536 /dev/zero
		gen text 30000 shared3
	} >compressed/shared-run.bin
	{
		gen rotated 65536 shared2-0
		gen rotated 65536 shared2-1
		gen text 65536 shared2-2
		head -c 131072 /dev/zero
		gen text 65536 shared2-5
	} >compressed/shared-run2.bin
	truncate -s 2M sparse.bin
	printf middle | dd of=sparse.bin bs=1 seek=$((1 << 20)) conv=notrunc status=none
	printf end | dd of=sparse.bin bs=1 seek=$(((2 << 20) - 3)) conv=notrunc status=none
	p=deep
	for i in $(seq 1 20); do p=$p/level$i; done
	mkdir -p "$p"
	echo bottom >"$p/bottom.txt"
	# a few hundred entries: the index lives in an $INDEX_ALLOCATION B-tree;
	# long names make it deeper
	mkdir many many-long
	for i in $(seq -w 1 200); do echo "$i" >"many/f$i"; done
	for i in $(seq -w 1 60); do : >"many-long/$i-$(printf 'long-name-%.0s' $(seq 1 20))"; done
	# a file in hundreds of fragments: its run list overflows the MFT record
	# into extents in other records, found through an $ATTRIBUTE_LIST. Fill
	# the volume with 4 KiB files, delete every other one, write the file
	# into the holes, delete the rest.
	python3 - <<'PY'
import os
os.mkdir("fill")
n = 0
try:
    while True:
        with open("fill/%05d" % n, "wb") as f:
            f.write(b"%05d" % n * 819 + b"x")
        n += 1
except OSError:
    os.remove("fill/%05d" % n)
for i in range(0, n, 2):
    os.remove("fill/%05d" % i)
line = lambda i: b"fragmented line %08d of deterministic text\n" % i
data = b"".join(line(i) for i in range(300000))[: (n // 2 - 8) * 4096]
with open("fragmented.bin", "wb") as f:
    f.write(data)
for i in range(1, n, 2):
    os.remove("fill/%05d" % i)
os.rmdir("fill")
PY
	mkdir times
	for f in subsec.txt y2030.txt y1999.txt y1601.txt y1960.txt y1970.txt y2038.txt y2100.txt y2400.txt; do
		echo "$f" >"times/$f"
	done
	mkdir times/dir-1980
	cd /
	umount "$mnt"
	# pass 2: a stream on a directory (xattr interface), WSL special files,
	# reparse-point symlinks and a junction.
	faked ntfs-3g -o streams_interface=xattr,special_files=wsl "$img" "$mnt"
	cd "$mnt"
	setfattr -n user.dirstream -v "a stream on a directory" dir-with-stream
	ln -s ../hello.txt links/wsl-link
	mkfifo special/wsl-fifo
	mknod special/wsl-chardev c 4 64
	mknod special/wsl-blockdev b 8 1
	python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' special/wsl-socket
	: >links/reparse-rel
	python3 "$oracle" reparse symlink links/reparse-rel '..\hello.txt' '..\hello.txt' relative
	: >links/reparse-abs
	python3 "$oracle" reparse symlink links/reparse-abs '\??\C:\Windows\System32' 'C:\Windows\System32'
	mkdir links/junction
	python3 "$oracle" reparse junction links/junction '\??\C:\Users\Public' 'C:\Users\Public'
	# pass 3: a fresh mount (the kernel keeps the junction cached as a
	# directory) for attributes and times
	cd /
	umount "$mnt"
	faked ntfs-3g -o streams_interface=xattr "$img" "$mnt"
	cd "$mnt"
	setfattr -n system.ntfs_attrib_be -v 0x00000021 readonly.txt
	# a Win32 long name with its DOS 8.3 twin (ntfs-3g creates POSIX names)
	setfattr -n system.ntfs_dos_name -v "ARATHE~1.TXT" "A Rather Long File Name With Spaces, Commas and Mixed Case.txt"
	# times: creation, modification, access differ from each other and
	# from the MFT-change time (the frozen clock, T0); 100 ns precision.
	python3 "$oracle" ntfs-times-tree . $(((T0 - 86400) * 10 ** 9 + 100000000)) $((T0 * 10 ** 9 + 200000000)) $(((T0 + 3600) * 10 ** 9 + 300000000))
	python3 "$oracle" ntfs-times times/subsec.txt $((T0 * 10 ** 9 + 123456700)) $((T0 * 10 ** 9 + 999999900)) $(((T0 + 1) * 10 ** 9 + 500000000))
	python3 "$oracle" ntfs-times times/y2030.txt 1893456000000000000 1900000000000000000 1900000000100000000
	# times outside 2001-2033 (go-ntfs skipped their index entries), before
	# 1677 and after 2262 (its conversion wrapped), the NTFS epoch itself;
	# whole seconds before 1970 (ntfs-3g's stat rounds negative fractions
	# differently from its system.ntfs_times)
	python3 "$oracle" ntfs-times times/y1999.txt 915148800000000000 920000000000000000 920000000000000000
	python3 "$oracle" ntfs-times times/y1601.txt -11644473600000000000 -11644473599000000000 -11644473500000000000
	python3 "$oracle" ntfs-times times/y1960.txt -315619200000000000 -300000000000000000 -299999999000000000
	python3 "$oracle" ntfs-times times/y1970.txt 0 100 1000000000
	python3 "$oracle" ntfs-times times/y2038.txt 2147483647000000000 2147483648000000000 2147483649123456700
	python3 "$oracle" ntfs-times times/y2100.txt 4102444800000000000 4102444800000000100 4133980800000000000
	python3 "$oracle" ntfs-times times/y2400.txt 13569465600000000000 13569465600500000000 13600000000000000000
	python3 "$oracle" ntfs-times times/dir-1980 315532800000000000 315532800000000000 315532800000000000
	cd /
	umount "$mnt"
	ntfslabel --new-serial=0123456789ABCDEF "$img" >/dev/null
	# the structures the listing is meant to cover must be there
	istat "$img" "$(ifind -n /many "$img")" | grep -q 'INDEX_ALLOCATION' ||
		{ echo "make-golden-images: /many has no index allocation" >&2; exit 1; }
	# a data run shared by the stored unit (16 clusters) and the next
	# compressed one
	ntfsinfo -v -F /compressed/mixed.bin "$img" 2>/dev/null | grep -Eq '^\s+0x0\s+0x[0-9a-f]+\s+0x1[1-9a-f]$' ||
		{ echo "make-golden-images: /compressed/mixed.bin does not start with a shared run" >&2; exit 1; }
	ntfsinfo -v -F /fragmented.bin "$img" 2>/dev/null | grep -q 'ATTRIBUTE_LIST' ||
		{ echo "make-golden-images: /fragmented.bin has no attribute list" >&2; exit 1; }
	# shared-run.bin: one run of 16 stored + a few compressed clusters, then
	# one hole over the compressed unit's rest and the zero unit (> 16
	# clusters); The Sleuth Kit's icat must read what ntfs-3g reads
	ntfsinfo -v -F /compressed/shared-run.bin "$img" 2>/dev/null |
		awk '/Runlist:/ {on=1; next} on && NF==3 {print $2, $3}' >"$work/runs"

	{ read -r lcn1 len1 && read -r lcn2 len2; } <"$work/runs"
	[ "$lcn1" != "<HOLE>" ] && ((len1 > 16 && len1 < 32)) && [ "$lcn2" = "<HOLE>" ] && ((len2 > 16)) ||
		{ echo "make-golden-images: /compressed/shared-run.bin runs are not stored+compressed, hole over the next unit:" >&2; cat "$work/runs" >&2; exit 1; }
	ntfs-3g -o ro "$img" "$mnt"
	for p in compressed/shared-run.bin compressed/shared-run2.bin compressed/holey.bin compressed/mixed.bin; do
		[ "$(icat "$img" "$(ifind -n "/$p" "$img")" | sha256sum)" = "$(sha256sum <"$mnt/$p")" ] ||
			{ echo "make-golden-images: icat and ntfs-3g read /$p differently" >&2; umount "$mnt"; exit 1; }
	done
	umount "$mnt"
	ntfs-3g -o ro,streams_interface=xattr "$img" "$mnt"
	finish ntfs ntfs "$mnt" "$img"
	umount "$mnt"
}

# ---------------------------------------------------------------- FAT
fat() {
	local v=$1 img=$work/fat$1.img src=$work/src-fat i p
	rm -rf "$src" && mkdir -p "$src/Sub Folder/Nested" "$src/many"
	echo fat >"$src/README.TXT"
	echo long >"$src/A long file name.text"
	echo mixed >"$src/MixedCase.Txt"
	echo lower >"$src/lower.txt"
	echo dots >"$src/two.dots.name.txt"
	echo ja >"$src/日本語.txt"
	echo latin >"$src/Ünïcødé ñame.txt"
	: >"$src/empty.txt"
	echo "read only" >"$src/readonly.txt"
	echo nested >"$src/Sub Folder/Nested/deep file.txt"
	p=$src/deep
	for i in $(seq 1 12); do p=$p/level$i; done
	mkdir -p "$p" && echo bottom >"$p/bottom.txt"
	for i in $(seq 1 100); do echo "$i" >"$src/many/file number $i.txt"; done
	gen random 5000 fat-random >"$src/random.bin"
	gen text 100000 fat-text >"$src/text.txt"
	# mtime: FAT keeps local time in 2 s steps (TZ=UTC here)
	find "$src" -exec touch -d "@$T0" {} +
	touch -d "@$((T0 + 86400 + 6))" "$src/README.TXT"
	touch -d "@$((T0 - 365 * 86400))" "$src/text.txt"
	local kib=$((v == 12 ? 2048 : v == 16 ? 16384 : 33792)) opt=()
	[ "$v" = 32 ] && opt=(-s 1)
	rm -f "$img"
	faked mkfs.vfat -C -F "$v" "${opt[@]}" -n "GOLDEN$v" -i 1234ABCD "$img" "$kib" >/dev/null
	faked mcopy -s -p -m -i "$img" "$src"/* ::/
	# fragmented.bin: written into the gap a deleted file leaves, then
	# continued after the next file
	gen text 3000 gap >"$work/gap.bin"
	gen text 30000 after >"$work/after.bin"
	gen text 40000 fragmented >"$work/fragmented.bin"
	touch -d "@$T0" "$work/gap.bin" "$work/after.bin" "$work/fragmented.bin"
	faked mcopy -m -i "$img" "$work/gap.bin" "$work/after.bin" ::/
	mdel -i "$img" ::/gap.bin
	if [ "$v" = 32 ]; then
		# FAT32: mtools allocates from the FSInfo next-free hint; mark it
		# unknown (0xffffffff) so the search starts at cluster 2, as after a
		# mount by another system
		local fsinfo
		fsinfo=$(od -An -tu2 -j48 -N2 "$img" | tr -d ' ')
		printf '\xff\xff\xff\xff' | dd of="$img" bs=1 seek=$((fsinfo * 512 + 492)) conv=notrunc status=none
	fi
	faked mcopy -m -i "$img" "$work/fragmented.bin" ::/
	[ "$(mshowfat -i "$img" ::/fragmented.bin | grep -o '<' | wc -l)" -ge 2 ] ||
		{ echo "make-golden-images: fat$v fragmented.bin is not fragmented" >&2; exit 1; }
	mattrib -i "$img" +r ::/readonly.txt
	rm -rf "$src"
	finish "fat$v" fat "$img"
}

# ---------------------------------------------------------------- ext
# populate_ext DIR KIND: the tree both ext images get (KIND ext2 or ext4).
populate_ext() {
	local d=$1 kind=$2 i p
	cd "$d"
	printf 'hello, restore point\n' >hello.txt
	: >empty.txt
	echo tiny >tiny.txt
	gen text 3000 medium >medium.txt
	gen text 400000 big >big.txt # ext2 (1 KiB blocks): into double indirect
	gen random 5000 random >random.bin
	# data only past 64.3 MiB: ext2 reaches it through the triple indirect block
	printf 'deep data' | dd of=far.bin bs=1 seek=$((70 << 20)) conv=notrunc status=none
	# seven data blocks with holes between: more extents than fit in the inode
	for i in 0 1 3 6 10 15 21; do
		gen text 4096 "holes$i" | dd of=holes.bin bs=4096 seek=$((i * 25)) conv=notrunc status=none
	done
	truncate -s $((22 * 25 * 4096 + 1000)) holes.bin
	if [ "$kind" = ext4 ]; then
		# unwritten extents around a written block
		fallocate -l 256K prealloc.bin
		gen text 4096 prealloc | dd of=prealloc.bin bs=4096 seek=16 conv=notrunc status=none
		mkdir small-dir # inline directory
		echo 1 >small-dir/one
		echo 2 >small-dir/two
	fi
	ln -s hello.txt fast-link
	ln -s "$(printf 'd%.0s' $(seq 1 80))/../hello.txt" slow-link
	ln -s /etc/hostname abs-link
	ln -s does/not/exist dangling-link
	echo linked >hard-a
	ln hard-a hard-b
	mkdir sub
	ln hard-a sub/hard-c
	mknod chardev c 1 3
	mknod blockdev b 7 0
	mkfifo fifo
	python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' socket
	echo private >private.txt
	chmod 600 private.txt
	chown 1000:1000 private.txt
	chmod 4755 hello.txt
	mkdir sticky-dir setgid-dir
	chmod 1777 sticky-dir
	chmod 2750 setgid-dir
	chown 0:100 setgid-dir
	setfattr -n user.comment -v "restore me" hello.txt
	setfattr -n trusted.note -v "trusted value" medium.txt
	local big
	big=$(head -c 700 /dev/zero | tr '\0' x)
	setfattr -n user.big -v "$big" sub/hard-c # xattr block
	echo one >xattr-shared-1.txt
	echo two >xattr-shared-2.txt
	setfattr -n user.same -v "$big" xattr-shared-1.txt # one block, shared by both
	setfattr -n user.same -v "$big" xattr-shared-2.txt
	if [ "$kind" = ext4 ]; then
		setfattr -n user.huge -v "$(gen text 6000 ea-inode)" xattr-shared-1.txt # EA inode
	fi
	echo ja >"日本語.txt"
	echo emoji >"emoji-🎉🚀.txt"
	echo spaces >"name with spaces.txt"
	mkdir many # a few hundred entries: an htree directory
	for i in $(seq -w 1 250); do echo "$i" >"many/file-with-a-longer-name-$i"; done
	p=deep
	for i in $(seq 1 16); do p=$p/level$i; done
	mkdir -p "$p"
	echo bottom >"$p/bottom.txt"
	# times: every path gets distinct mtime and atime with nanoseconds
	find . -depth -mindepth 1 -exec touch -h -d "@$T0.200000002" {} + -exec touch -h -a -d "@$((T0 + 3600)).300000003" {} +
	touch -h -d "@$((T0 + 86400)).123456789" hello.txt
	touch -h -d "@$((-86400 * 365 * 20)).5" fast-link # before 1970
	if [ "$kind" = ext4 ]; then
		touch -d "@4102444800.000000001" tiny.txt # 2100: needs the extra epoch bits
	fi
	cd /
}

# fix_ext_times IMAGE INODES...: inode change and birth times, which the
# kernel sets from its clock, are rewritten with debugfs.
fix_ext_times() {
	local img=$1 ino
	shift
	{
		for ino in "$@"; do
			echo "sif <$ino> ctime @$((T0 + 7200))"
			echo "sif <$ino> ctime_extra $((400000004 << 2))"
			echo "sif <$ino> crtime @$((T0 - 86400))"
			echo "sif <$ino> crtime_extra $((100000001 << 2))"
		done
	} >"$work/debugfs.cmd"
	debugfs -w -f "$work/debugfs.cmd" "$img" >/dev/null 2>&1
}

ext() {
	local kind=$1 img=$work/$1.img inodes
	rm -f "$img"
	truncate -s "$([ "$kind" = ext2 ] && echo 8M || echo 16M)" "$img"
	if [ "$kind" = ext2 ]; then
		mke2fs -q -F -t ext2 -b 1024 -I 128 -L vmv-golden-ext2 -U 11111111-2222-3333-4444-555555555555 \
			-E hash_seed=66666666-7777-8888-9999-aaaaaaaaaaaa "$img" 2>/dev/null
	else
		mke2fs -q -F -t ext4 -b 4096 -I 256 -O inline_data,metadata_csum,64bit,ea_inode \
			-L vmv-golden-ext4 -U 22222222-3333-4444-5555-666666666666 \
			-E hash_seed=77777777-8888-9999-aaaa-bbbbbbbbbbbb "$img"
	fi
	mount -o loop,noatime "$img" "$mnt"
	populate_ext "$mnt" "$kind"
	inodes=$(find "$mnt" -printf '%i\n' | sort -un)
	umount "$mnt"
	if [ "$kind" = ext4 ]; then
		fix_ext_times "$img" $inodes
	else
		# 128-byte inodes: no nanoseconds, no birth time
		for ino in $inodes; do echo "sif <$ino> ctime @$((T0 + 7200))"; done >"$work/debugfs.cmd"
		debugfs -w -f "$work/debugfs.cmd" "$img" >/dev/null 2>&1
	fi
	e2fsck -fn "$img" >/dev/null 2>&1 || { echo "make-golden-images: e2fsck finds $kind inconsistent" >&2; exit 1; }
	debugfs -R "htree /many" "$img" 2>/dev/null | grep -q "Root node dump" ||
		{ echo "make-golden-images: /many in $kind has no htree" >&2; exit 1; }
	if [ "$kind" = ext4 ]; then
		debugfs -R "stat /small-dir" "$img" 2>/dev/null | grep -q "Size of inline data" ||
			{ echo "make-golden-images: /small-dir in ext4 is not inline" >&2; exit 1; }
		debugfs -R "stat /tiny.txt" "$img" 2>/dev/null | grep -q "Size of inline data" ||
			{ echo "make-golden-images: /tiny.txt in ext4 is not inline" >&2; exit 1; }
		debugfs -R "ex /holes.bin" "$img" 2>/dev/null | grep -q '^ 0/ 1' ||
			{ echo "make-golden-images: /holes.bin in ext4 has no extent tree below the inode" >&2; exit 1; }
	fi
	mount -o ro,loop "$img" "$mnt"
	finish "$kind" ext "$mnt" "$img"
	umount "$mnt"
}

for what in ${ONLY:-ntfs fat12 fat16 fat32 ext2 ext4}; do
	case $what in
	ntfs) ntfs ;;
	fat*) fat "${what#fat}" ;;
	ext*) ext "$what" ;;
	esac
done
echo "make-golden-images: $(du -cb "$out"/*.zst | tail -1 | cut -f1) bytes of images in $out"

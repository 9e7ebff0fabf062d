#!/usr/bin/env bash
# make-volume-images.sh OUTDIR — builds the XFS and LVM2 images the
# fs/image volume oracle tests read:
#
#   xfs5.img      XFS v5 (CRC, reflink, bigtime, 4 KiB blocks), filled
#                 through a kernel loop mount: short-form, block, leaf, node
#                 and btree directories, fragmented (btree-mapped), sparse,
#                 preallocated and reflinked files, xattrs in short-form,
#                 leaf and node form with remote values, ACLs, local and
#                 remote symlinks, devices, a FIFO, a socket, hard links,
#                 times before 1970 and after 2038.
#   xfs5-1k.img   XFS v5 with 1 KiB blocks, 8 KiB directory blocks, 64-bit
#                 extent counters and old-style timestamps, same tree.
#   xfs4.img      XFS v4 (no CRCs), filled by mkfs.xfs -p from src4/ (this
#                 kernel cannot mount v4), with src4/ kept as the oracle.
#   lvm.img       a GPT disk with two LVM2 physical volumes (p1, p2) of one
#                 volume group, made by the real pvcreate/vgcreate/lvcreate
#                 on loop devices without device-mapper (--driverloaded n):
#                 a linear LV holding ext4, a striped LV holding XFS, an LV
#                 of two segments in reverse order holding ext4, a hidden
#                 sub-LV-free layout, and lvm.lvs (lvs --reportformat json)
#                 and lvm-fs/*.img (the filesystems as copied in) as oracles.
#   lvm-whole.img a disk that is one PV without a partition table, a VG
#                 whose second PV is on another disk (lvm-other.img), with a
#                 linear LV on this disk and one spanning both.
#
# Builds are skipped when OUTDIR/.done matches this script's checksum.
# Needs root, xfsprogs, lvm2, e2fsprogs, fdisk, attr, acl, python3.
set -euo pipefail

out=${1:?usage: make-volume-images.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
stamp=$(sha256sum "$0" | cut -d' ' -f1)
exec 9>"$out/.lock"
flock 9
if [[ -f $out/.done && $(cat "$out/.done") == "$stamp" ]]; then
	exit 0
fi
rm -f "$out/.done"
cd "$out"
T0=1700000000

mnt=$(mktemp -d)
loops=()
cleanup() {
	umount "$mnt" 2>/dev/null || true
	rmdir "$mnt" 2>/dev/null || true
	for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
}
trap cleanup EXIT

# fill DIR: the tree of the XFS images. unix=1 adds what only a kernel
# mount can make (xattrs, ACLs, reflinks, sockets, preallocation).
fill() {
	local d=$1 full=$2
	mkdir -p "$d/etc" "$d/sf" "$d/block" "$d/leaf" "$d/node" "$d/empty-dir"
	echo web01 >"$d/etc/hostname"
	printf 'hello, restore point\n' >"$d/hello.txt"
	: >"$d/empty.txt"
	for i in 1 2 3; do echo "$i" >"$d/sf/s$i"; done
	for i in $(seq -w 1 40); do echo "$i" >"$d/block/b$i"; done
	for i in $(seq -w 1 400); do echo "$i" >"$d/leaf/leaf-entry-$i"; done
	for i in $(seq -w 1 4000); do echo "$i" >"$d/node/node-entry-with-a-longer-name-$i"; done
	echo ja >"$d/日本語のファイル.txt"
	echo emoji >"$d/emoji-🎉.txt"
	head -c 3000000 /dev/urandom >"$d/random-3M.bin"
	ln -s hello.txt "$d/fast-link"
	ln -s /etc/hostname "$d/abs-link"
	ln -s "$(printf 'long/%.0s' $(seq 1 199))target" "$d/long-link" # 1000 bytes: remote
	mknod "$d/chr" c 1 3
	mknod "$d/blk" b 7 0
	mknod "$d/bigdev" c 300 70000
	mkfifo "$d/fifo"
	chmod 4755 "$d/hello.txt"
	chmod 1777 "$d/empty-dir"
	chown 1234:5678 "$d/etc/hostname"
	# sparse: data at 32 MiB and at the end
	truncate -s 64M "$d/sparse.bin"
	printf middle | dd of="$d/sparse.bin" bs=1 seek=$((32 << 20)) conv=notrunc status=none
	printf end | dd of="$d/sparse.bin" bs=1 seek=$(((64 << 20) - 3)) conv=notrunc status=none
	if [[ $full == 1 ]]; then
		echo linked >"$d/hard-a"
		ln "$d/hard-a" "$d/hard-b"
		python3 -c "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])" "$d/socket"
		# fragmented: two files appended to in turn, each append synced,
		# so their blocks interleave (allocsize=4k: no preallocation)
		for i in $(seq 0 299); do
			head -c 4096 /dev/urandom | dd of="$d/frag-a.bin" bs=4096 seek="$i" conv=notrunc,fsync status=none
			head -c 4096 /dev/urandom | dd of="$d/frag-b.bin" bs=4096 seek="$i" conv=notrunc,fsync status=none
		done
		# btree directory: three directories grown in turn, each new block
		# synced, until their blocks no longer fit the inode's extent list
		mkdir -p "$d/bt1" "$d/bt2" "$d/bt3"
		local long
		long=$(printf 'x%.0s' $(seq 1 200))
		for i in $(seq -w 1 1500); do
			for b in bt1 bt2 bt3; do : >"$d/$b/$long-$i"; done
			if ((10#$i % 20 == 0)); then sync -f "$d"; fi
		done
		# preallocated (unwritten) range inside the sparse file
		fallocate -o $((8 << 20)) -l $((1 << 20)) "$d/sparse.bin"
		# reflinked copy, then one block of it rewritten (copy on write)
		if cp --reflink=always "$d/random-3M.bin" "$d/reflink.bin" 2>/dev/null; then
			head -c 4096 /dev/urandom | dd of="$d/reflink.bin" bs=4096 seek=256 conv=notrunc status=none
		fi
		# xattrs: short-form, leaf (many), node (very many), remote values
		setfattr -n user.comment -v "restore me" "$d/hello.txt"
		setfattr -n trusted.t -v trusted-value "$d/hello.txt"
		setfattr -n security.s -v security-value "$d/hello.txt"
		: >"$d/xattr-leaf.txt"
		for i in $(seq 1 40); do setfattr -n "user.attr$i" -v "value number $i of a leaf" "$d/xattr-leaf.txt"; done
		: >"$d/xattr-node.txt"
		for i in $(seq 1 600); do setfattr -n "user.many-attributes-$i" -v "value $i" "$d/xattr-node.txt"; done
		: >"$d/xattr-remote.txt"
		setfattr -n user.big -v "$(head -c 6000 /dev/zero | tr '\0' r)" "$d/xattr-remote.txt"
		setfattr -n user.huge -v "0x$(head -c 40000 /dev/urandom | od -An -v -tx1 | tr -d ' \n')" "$d/xattr-remote.txt"
		setfacl -m u:1000:rw,g:2000:r "$d/etc/hostname"
		setfacl -d -m u:1000:rwx "$d/empty-dir"
		setfattr -n user.dir -v on-a-dir "$d/leaf"
	fi
	find "$d" -exec touch -h -d "@$T0" {} +
	touch -d "@$((T0 + 86400))" "$d/hello.txt"
	touch -d "@$T0.123456789" "$d/random-3M.bin"
	touch -h -d "@-631152000" "$d/fast-link" # 1950
	if [[ $full == 1 ]]; then
		touch -d "@$T0" "$d/reflink.bin"
	fi
}

mkxfs() {
	local img=$1 bigtime=$2
	shift 2
	rm -f "$img" && truncate -s 400M "$img"
	mkfs.xfs -q -f "$@" "$img"
	mount -o loop,allocsize=4096 "$img" "$mnt"
	fill "$mnt" 1
	if [[ $bigtime == 1 ]]; then
		touch -h -d "2300-01-02T03:04:05.987654321Z" "$mnt/abs-link" # past 2038: bigtime
		touch -d "@$T0" "$mnt"
	fi
	umount "$mnt"
	for p in /bt1 /frag-a.bin; do
		f=$(xfs_db -r -c "path $p" -c "print core.format" "$img" | awk '{print $3}')
		[[ $f == 3 || $f == *btree* ]] || { echo "make-volume-images: $p in $img is not in btree form ($f)" >&2; exit 1; }
	done
}

mkxfs xfs5.img 1 -L vmv-xfs5 -m uuid=5a5a5a5a-1111-2222-3333-444444444444
mkxfs xfs5-1k.img 0 -L vmv-xfs5k -b size=1024 -n size=8192 -i nrext64=1 -m bigtime=0

# v4 through a prototype file: the tree without what only a mount makes.
rm -rf src4 && mkdir src4 && fill src4 0
chmod 0777 src4/empty-dir # a prototype file cannot set the sticky bit
python3 - src4 >proto4 <<'EOF'
import os, stat, sys
root = sys.argv[1]
print("/dev/null\n0 0")
def mode(st):
    m = st.st_mode
    t = {stat.S_IFREG: "-", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFIFO: "p"}[stat.S_IFMT(m)]
    return t + ("u" if m & stat.S_ISUID else "-") + ("g" if m & stat.S_ISGID else "-") + "%03o" % (m & 0o777)
def walk(d):
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        st = os.lstat(p)
        head = "%s %s %d %d" % (name, mode(st), st.st_uid, st.st_gid)
        if stat.S_ISDIR(st.st_mode):
            print(head); walk(p); print("$")
        elif stat.S_ISREG(st.st_mode):
            print(head, os.path.abspath(p))
        elif stat.S_ISLNK(st.st_mode):
            print(head, os.readlink(p))
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            print(head, os.major(st.st_rdev), os.minor(st.st_rdev))
        else:
            print(head)
st = os.lstat(root)
print("d--%03o %d %d" % (st.st_mode & 0o777, st.st_uid, st.st_gid))
walk(root)
print("$")
EOF
rm -f xfs4.img && truncate -s 400M xfs4.img
mkfs.xfs -q -f -m crc=0 -i size=256 -L vmv-xfs4 -p proto4 xfs4.img 2>/dev/null
rm -f proto4

echo "$stamp" >"$out/.done"

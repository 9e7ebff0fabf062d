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

# ---- LVM2: real lvm tools on loop devices, without device-mapper ----
export LVM_SUPPRESS_FD_WARNINGS=1
# lvmconf DEV...: a configuration that sees only these devices and writes
# no backups; --driverloaded n keeps the tools away from device-mapper.
lvmconf() {
	local f='' d
	for d in "$@"; do f+="\"a|^$d\$|\","; done
	echo "devices { use_devicesfile=0 filter=[${f}\"r|.*|\"] } backup { backup=0 archive=0 } activation { udev_sync=0 udev_rules=0 }"
}
lvmrun() { # lvmrun CONF CMD ARGS...
	local conf=$1 cmd=$2
	shift 2
	"$cmd" --config "$conf" --driverloaded n "$@" >/dev/null 2> >(grep -v -e 'Activation disabled' -e 'not zeroed' -e 'WARNING: This metadata update is NOT backed up' >&2)
}
attach() { # attach VAR IMG OFFSET SIZE: VAR=the new loop device
	local l
	l=$(losetup -f --show -o "$3" --sizelimit "$4" "$2")
	loops+=("$l")
	printf -v "$1" %s "$l"
}
detach_all() {
	for l in "${loops[@]}"; do losetup -d "$l"; done
	loops=()
}
# copy_into IMG LVS-JSON LV FSIMG: write a filesystem image into an LV's
# extents, as lvs reports them (dm-linear / dm-striped layout).
copy_into() {
	python3 - "$@" <<'PY'
import json, sys
img, report, lv, fsimg = sys.argv[1:5]
rep = json.load(open(report))["report"][0]["seg"]
devs = json.load(open(report + ".pvs"))
segs = [s for s in rep if s["lv_name"] == lv]
data = open(fsimg, "rb").read()
out = open(img, "r+b")
ext = int(segs[0]["vg_extent_size"].rstrip("B"))
for s in segs:
    start = int(s["seg_start_pe"]) * ext
    size = int(s["seg_size_pe"]) * ext
    areas = []
    for r in s["seg_pe_ranges"].split():
        dev, pes = r.rsplit(":", 1)
        first = int(pes.split("-")[0])
        areas.append(devs[dev]["offset"] + devs[dev]["pe_start"] + first * ext)
    chunk = int(s["stripe_size"].rstrip("B")) if len(areas) > 1 else size
    for o in range(0, size, chunk):
        c = o // chunk
        disk = areas[c % len(areas)] + (c // len(areas)) * chunk
        piece = data[start + o:start + o + chunk]
        if piece:
            out.seek(disk)
            out.write(piece)
PY
}
# report DEVS...: lvs segments as JSON, plus where each PV starts
report() { # report NAME OFFSET... with loop devices in $devs
	local name=$1 conf
	shift
	conf=$(lvmconf "${devs[@]}")
	lvs --config "$conf" --driverloaded n -a --segments --units b --nosuffix --reportformat json \
		-o vg_name,lv_name,lv_attr,lv_size,seg_start_pe,seg_size_pe,seg_pe_ranges,stripes,stripe_size,segtype,vg_extent_size,vg_seqno >"$name"
	python3 - "$name" "$@" <<'PY'
import json, subprocess, sys
name, offsets = sys.argv[1], sys.argv[2:]
out = {}
for pair in offsets:
    dev, off = pair.split("=")
    out[dev] = {"offset": int(off)}
conf = open(name + ".conf").read()
r = subprocess.run(["pvs", "--config", conf, "--driverloaded", "n", "--units", "b", "--nosuffix", "--reportformat", "json",
                    "-o", "pv_name,pe_start,pv_uuid,vg_name"], capture_output=True, text=True, check=True)
for pv in json.loads(r.stdout)["report"][0]["pv"]:
    d = out.setdefault(pv["pv_name"], {})
    d["pe_start"] = int(pv["pe_start"])
    d["uuid"] = pv["pv_uuid"]
json.dump(out, open(name + ".pvs", "w"), indent=1)
PY
}

rm -rf lvm-fs && mkdir lvm-fs
rm -rf src-lvm && mkdir -p src-lvm/etc src-lvm/many
echo lvm-root >src-lvm/etc/hostname
for i in $(seq -w 1 300); do echo "$i" >"src-lvm/many/f$i"; done
head -c 2000000 /dev/urandom >src-lvm/random.bin
ln -s etc/hostname src-lvm/link
find src-lvm -exec touch -h -d "@$T0" {} +
mke2fs -q -F -t ext4 -L lvm-root -d src-lvm lvm-fs/root.img 16M
mke2fs -q -F -t ext4 -L lvm-split -d src-lvm lvm-fs/split.img 12M
rm -f lvm-fs/striped.img && truncate -s 40M lvm-fs/striped.img
TEST_DEV=1 TEST_DIR=1 QA_CHECK_FS=1 mkfs.xfs -q -f -L lvm-xfs lvm-fs/striped.img
mount -o loop lvm-fs/striped.img "$mnt"
cp -a src-lvm/. "$mnt/"
head -c 5000000 /dev/urandom >"$mnt/big.bin"
touch -d "@$T0" "$mnt/big.bin" "$mnt"
umount "$mnt"
rm -f lvm-fs/swap.img && truncate -s 4M lvm-fs/swap.img && mkswap -q -L lvm-swap lvm-fs/swap.img
rm -f lvm-fs/crypt.img && truncate -s 20M lvm-fs/crypt.img
if command -v cryptsetup >/dev/null; then
	printf pass | cryptsetup luksFormat -q --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - lvm-fs/crypt.img
fi

# lvm.img: GPT, p1 and p2 are PVs of VG vgtest (1 MiB extents).
rm -f lvm.img && truncate -s 200M lvm.img
sfdisk -q lvm.img <<'EOT'
label: gpt
start=2048, size=184320, type=E6D6D379-F807-44C2-A23C-238F2A3DF928, name="pv-a"
start=186368, size=184320, type=E6D6D379-F807-44C2-A23C-238F2A3DF928, name="pv-b"
EOT
offA=$((2048 * 512)) offB=$((186368 * 512)) psize=$((184320 * 512))
attach a lvm.img $offA $psize
attach b lvm.img $offB $psize
devs=("$a" "$b")
conf=$(lvmconf "$a" "$b")
echo "$conf" >lvm.lvs.json.conf
lvmrun "$conf" pvcreate -q "$a" "$b"
lvmrun "$conf" vgcreate -q -s 1M vgtest "$a" "$b"
lvmrun "$conf" lvcreate -q -an -Zn -Wn -l 16 -n root vgtest "$a:0-15"
lvmrun "$conf" lvcreate -q -an -Zn -Wn -l 4 -n tmp vgtest "$a:16-19"
lvmrun "$conf" lvcreate -q -an -Zn -Wn -l 8 -n split-ext4 vgtest "$a:24-31"
lvmrun "$conf" lvremove -q -f vgtest/tmp
lvmrun "$conf" lvextend -q -l +4 vgtest/split-ext4 "$a:16-19" # second segment before the first
lvmrun "$conf" lvcreate -q -an -Zn -Wn -i 2 -I 64k -l 40 -n data-x vgtest "$a:40-59" "$b:0-19"
lvmrun "$conf" lvcreate -q -an -Zn -Wn -l 4 -n swap vgtest "$b:30-33"
lvmrun "$conf" lvcreate -q -an -Zn -Wn -l 20 -n crypt vgtest "$b:40-59"
# pv-b keeps the metadata as it is now; one more LV is then made, so
# pv-a's metadata is newer than pv-b's (the reader must take pv-a's)
dd if=lvm.img of=old-pv-b.bin bs=1M skip=$((offB >> 20)) count=1 status=none
lvmrun "$conf" lvcreate -q -an -Zn -Wn -l 2 -n late vgtest "$b:70-71"
report lvm.lvs.json "$a=$offA" "$b=$offB"
lvmrun "$conf" vgcfgbackup -q -f lvm.vgcfg vgtest
detach_all
dd if=old-pv-b.bin of=lvm.img bs=1M seek=$((offB >> 20)) conv=notrunc status=none
rm -f old-pv-b.bin
python3 - lvm.img lvm.lvs.json <<'PY'
import json, sys
seg = json.load(open(sys.argv[2]))["report"][0]["seg"]
runs = {(s["lv_name"], s["seg_start_pe"]): s["seg_pe_ranges"] for s in seg}
assert int(next(s for s in seg if s["lv_name"] == "split-ext4" and s["seg_start_pe"] == "8")["seg_pe_ranges"].split(":")[1].split("-")[0]) < 24, runs
PY
copy_into lvm.img lvm.lvs.json root lvm-fs/root.img
copy_into lvm.img lvm.lvs.json split-ext4 lvm-fs/split.img
copy_into lvm.img lvm.lvs.json data-x lvm-fs/striped.img
copy_into lvm.img lvm.lvs.json swap lvm-fs/swap.img
copy_into lvm.img lvm.lvs.json crypt lvm-fs/crypt.img

# lvm-whole.img is a PV without a partition table; VG vgw also has a PV on
# lvm-other.img: vgw/local lies on this disk, vgw/span on both.
rm -f lvm-whole.img lvm-other.img && truncate -s 64M lvm-whole.img lvm-other.img
attach w lvm-whole.img 0 $((64 << 20))
attach o lvm-other.img 0 $((64 << 20))
devs=("$w" "$o")
conf=$(lvmconf "$w" "$o")
echo "$conf" >lvm-whole.lvs.json.conf
lvmrun "$conf" pvcreate -q "$w" "$o"
lvmrun "$conf" vgcreate -q -s 1M vgw "$w" "$o"
lvmrun "$conf" lvcreate -q -an -Zn -Wn -l 16 -n local vgw "$w"
lvmrun "$conf" lvcreate -q -an -Zn -Wn -l 50 -n span vgw "$w:16-40" "$o:0-24"
report lvm-whole.lvs.json "$w=0"
detach_all
copy_into lvm-whole.img lvm-whole.lvs.json local lvm-fs/root.img
rm -f ./*.conf

echo "$stamp" >"$out/.done"

#!/usr/bin/env bash
# Skip-free-space benchmark: what --skip-free-space saves on a disk whose
# filesystems hold deleted data, against vmvault without it, restic 0.18.1
# and borg (Debian's; neither can skip free space).
#
# Workload (SKIPFREE_SIZE, default 4 GiB): MBR, p1 ext4 and p2 NTFS of
# half the disk each. In each: a pseudo-random file and a text file (kept,
# 300 MB each at 4 GiB) and ~1 GiB of pseudo-random files written, synced
# and deleted (their data stays in the free blocks). Everything scales with
# SKIPFREE_SIZE. Data is deterministic (AES-CTR keystreams from openssl).
#
# Per repetition, tools alternating (vmvault-skip = --skip-free-space):
# capture into an empty repository; wall time, CPU, repository size.
# Once, untimed: each tool's repository size for the same disk with its
# free space zeroed (the skipping capture's restore), so "deleted data
# stored" = size - that, as a share of the deleted bytes. The skipping
# capture's restore is checked: e2fsck -fn and ntfsfix -n on its
# partitions, and every file's sha256 equal to the source's (kernel loop
# mount, ntfs-3g).
#
# Usage: scripts/bench-skipfree.sh [REPS]        (default 3; root)
# Env:   BENCH_DIR (default /var/tmp/vmvault-bench-skipfree),
#        SKIPFREE_SIZE (default 4G; e.g. 256M for a quick check),
#        BENCH_TOOLS (default "vmvault-skip vmvault restic borg")
set -euo pipefail
REPS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${BENCH_DIR:-/var/tmp/vmvault-bench-skipfree}
TOOLS=${BENCH_TOOLS:-vmvault-skip vmvault restic borg}
SIZE=$(numfmt --from=iec "${SKIPFREE_SIZE:-4G}")
BIN=$W/bin
[ "$(id -u)" = 0 ] || { echo "bench-skipfree: needs root (loop mounts, ntfs-3g)" >&2; exit 1; }
mkdir -p "$W" "$BIN"
export PATH=$BIN:/usr/sbin:/sbin:$PATH

need() { command -v "$1" >/dev/null || { echo "bench-skipfree: missing $1 ($2)" >&2; exit 1; }; }
need mke2fs "apt-get install e2fsprogs"
need e2fsck "apt-get install e2fsprogs"
need mkntfs "apt-get install ntfs-3g"
need ntfs-3g "apt-get install ntfs-3g"
need ntfsfix "apt-get install ntfs-3g"
need sfdisk "apt-get install fdisk"
need openssl "apt-get install openssl"
need borg "apt-get install borgbackup"
[ -x /usr/bin/time ] || { echo "bench-skipfree: missing /usr/bin/time (apt-get install time)" >&2; exit 1; }

echo "== building vmvault"
(cd "$ROOT" && go build -o "$BIN/" ./cmd/vmvault ./cmd/vmvault-capture)
if ! [ -x "$BIN/restic" ]; then
	echo "== building restic 0.18.1 from the Go module proxy"
	dir=$(go mod download -json github.com/restic/restic@v0.18.1 | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
	(cd "$dir" && go build -o "$BIN/restic" ./cmd/restic)
fi

MNT=$W/mnt
mkdir -p "$MNT"
cleanup() {
	mountpoint -q "$MNT" && umount "$MNT"
	rm -rf "$W"/repo-* "$W"/clean-* "$W/restore.img" "$W"/part-*
}
trap cleanup EXIT

# stream SEED BYTES: deterministic pseudo-random bytes (the generator is
# cut off by head: a subshell without pipefail)
stream() { (set +o pipefail; openssl enc -aes-128-ctr -nosalt -pass "pass:$1" -pbkdf2 -in /dev/zero 2>/dev/null | head -c "$2"); }
# text SEED BYTES: deterministic compressible text
text() { (set +o pipefail; seq -f "$1 log line %.0f: the quick brown fox jumps over the lazy dog" 1 100000000 | head -c "$2"); }

IMG=$W/disk.img
SCALE_NUM=$((SIZE / 1048576)) # MiB; the 4 GiB workload is SCALE_NUM=4096
KEEP=$((300000000 * SCALE_NUM / 4096))
GONE_FILES=16
GONE_EACH=$((64 * 1048576 * SCALE_NUM / 4096))
PART=$(((SIZE / 512 - 2048) / 2))
echo "== workload: $(numfmt --to=iec "$SIZE") disk, per filesystem $(numfmt --to=iec $((2 * KEEP))) kept and $(numfmt --to=iec $((GONE_FILES * GONE_EACH))) deleted"
rm -f "$IMG"
truncate -s "$SIZE" "$IMG"
printf 'label: dos\nstart=2048, size=%d, type=83\nstart=%d, size=%d, type=7\n' $PART $((2048 + PART)) $PART | sfdisk -q "$IMG"
DELETED=0
fill() { # fill DIR SEED: kept files, then deleted ones
	local d=$1 s=$2 i
	stream "$s-random" "$KEEP" >"$d/random.bin"
	text "$s" "$KEEP" >"$d/text.txt"
	mkdir -p "$d/gone"
	for i in $(seq 1 $GONE_FILES); do stream "$s-gone-$i" "$GONE_EACH" >"$d/gone/g$i.bin"; done
	sync
	rm -rf "$d/gone"
	sync
	DELETED=$((DELETED + GONE_FILES * GONE_EACH))
}
losetup_part() { losetup -f --show -o $(($1 * 512)) --sizelimit $(($2 * 512)) "$IMG"; }
dev=$(losetup_part 2048 $PART)
mke2fs -q -F -t ext4 "$dev"
mount "$dev" "$MNT"
fill "$MNT" ext4
umount "$MNT"
losetup -d "$dev"
dev=$(losetup_part $((2048 + PART)) $PART)
mkntfs -q -F -Q "$dev" >"$W/mkntfs.out" 2>&1 || { cat "$W/mkntfs.out" >&2; exit 1; }
ntfs-3g "$dev" "$MNT"
fill "$MNT" ntfs
umount "$MNT"
losetup -d "$dev"
echo "   deleted data: $(numfmt --to=iec $DELETED)"

R=$W/results.tsv
: >"$R"
export RESTIC_PASSWORD=bench-only-not-a-secret RESTIC_CACHE_DIR=$W/restic-cache BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_BASE_DIR=$W/borg-base
warm() { cat "$1" >/dev/null; }
timed() { # timed TOOL STEP CMD...
	local tool=$1 step=$2
	shift 2
	/usr/bin/time -f "%e %U %S %M" -o "$W/time.out" "$@" >"$W/cmd.out" 2>&1 || { cat "$W/cmd.out" >&2; echo "bench-skipfree: $tool $step failed" >&2; exit 1; }
	echo "$tool $step $(cat "$W/time.out")" >>"$R"
}
size_of() { du -sb "$1" | cut -f1; }
# capture TOOL REPO IMAGE [STEP]: one capture into a new repository; STEP
# set: timed and recorded
capture() {
	local tool=$1 repo=$2 img=$3 step=${4:-}
	rm -rf "$repo" "$W/restic-cache" "$W/borg-base"
	local cmd
	case $tool in
	vmvault-skip | vmvault)
		vmvault init --repo "$repo" >/dev/null
		cmd=(vmvault-capture file -q --repo "$repo" --vm bench --disk disk0="$img")
		[ $tool = vmvault-skip ] && cmd+=(--skip-free-space)
		;;
	restic)
		restic init -q --repo "$repo" >/dev/null
		cmd=(restic -q --repo "$repo" backup "$img")
		;;
	borg)
		borg init -e none "$repo"
		cmd=(borg create --compression lz4 "$repo::a" "$img")
		;;
	esac
	warm "$img"
	if [ -n "$step" ]; then
		timed "$tool" "$step" "${cmd[@]}"
		echo "$tool size $(size_of "$repo")" >>"$R"
	else
		"${cmd[@]}" >/dev/null 2>&1
	fi
}

for rep in $(seq 1 "$REPS"); do
	set -- $TOOLS
	[ $((rep % 2)) = 0 ] && set -- $(printf '%s\n' $TOOLS | tac)
	for tool in "$@"; do
		echo "== repetition $rep/$REPS: $tool (load $(cut -d' ' -f1 /proc/loadavg))"
		capture "$tool" "$W/repo-$tool" "$IMG" capture
		if [ "$tool" = vmvault-skip ] && [ "$rep" = 1 ]; then
			mv "$W/repo-$tool" "$W/repo-check" # restored and checked below
		fi
		rm -rf "$W/repo-$tool"
	done
done

echo "== checking the skipping capture's restore"
vmvault restore -q --repo "$W/repo-check" bench@latest --disk disk0 --to "$W/restore.img"
for p in 1 2; do
	off=$((2048 + (p - 1) * PART))
	dd if="$W/restore.img" of="$W/part-r$p" bs=1M skip=$((off * 512)) count=$((PART * 512)) iflag=skip_bytes,count_bytes status=none
	dd if="$IMG" of="$W/part-s$p" bs=1M skip=$((off * 512)) count=$((PART * 512)) iflag=skip_bytes,count_bytes status=none
done
e2fsck -fn "$W/part-r1" >"$W/fsck.out" 2>&1 || { cat "$W/fsck.out"; echo "bench-skipfree: e2fsck fails on the restore" >&2; exit 1; }
ntfsfix -n "$W/part-r2" >"$W/fsck.out" 2>&1 || { cat "$W/fsck.out"; echo "bench-skipfree: ntfsfix fails on the restore" >&2; exit 1; }
sums() { # sums PARTFILE MOUNTCMD...
	local f=$1
	shift
	"$@" "$f" "$MNT"
	(cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum)
	umount "$MNT"
}
for p in 1 2; do
	m=(mount -o ro,loop,noload)
	[ $p = 2 ] && m=(ntfs-3g -o ro)
	sums "$W/part-s$p" "${m[@]}" >"$W/sums-source"
	sums "$W/part-r$p" "${m[@]}" >"$W/sums-restored"
	if [ "$(wc -l <"$W/sums-source")" -lt 2 ] || ! cmp -s "$W/sums-source" "$W/sums-restored"; then
		echo "bench-skipfree: files of partition $p differ after the restore" >&2
		diff "$W/sums-source" "$W/sums-restored" | head >&2
		exit 1
	fi
done
echo "   e2fsck, ntfsfix and every file's sha256: ok"

echo "== repository sizes of the same disk with its free space zeroed (untimed)"
for tool in $TOOLS; do
	[ $tool = vmvault-skip ] && continue
	capture "$tool" "$W/clean-$tool" "$W/restore.img"
	echo "$tool clean $(size_of "$W/clean-$tool")" >>"$R"
	rm -rf "$W/clean-$tool"
done

python3 - "$R" "$SIZE" "$DELETED" "$TOOLS" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
size, deleted, tools = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split()
def vals(tool, step, col):
    return [float(r[col]) for r in rows if r[0] == tool and r[1] == step]
def med(tool, step, col=2):
    v = vals(tool, step, col)
    return st.median(v) if v else None
print(f"\n{size / 2**30:.2f} GiB disk, {deleted / 2**20:.0f} MiB of deleted data; medians of {len(vals(tools[0], 'capture', 2))}")
print(f"{'':28}" + "".join(f"{t:>14}" for t in tools))
def row(name, f, fmt):
    cells = []
    for t in tools:
        v = f(t)
        cells.append(f"{fmt.format(v):>14}" if v is not None else f"{'':>14}")
    print(f"{name:28}" + "".join(cells))
row("capture wall s", lambda t: med(t, "capture"), "{:.1f}")
row("capture MB/s of the disk", lambda t: size / 1e6 / med(t, "capture") if med(t, "capture") else None, "{:.0f}")
row("capture CPU s", lambda t: med(t, "capture", 3) + med(t, "capture", 4) if med(t, "capture") else None, "{:.1f}")
row("repository MiB", lambda t: med(t, "size") / 2**20 if med(t, "size") else None, "{:.0f}")
clean = lambda t: med("vmvault", "clean") if t == "vmvault-skip" else med(t, "clean")
row("same disk zeroed MiB", lambda t: clean(t) / 2**20 if clean(t) else None, "{:.0f}")
def share(t):
    if med(t, "size") is None or clean(t) is None:
        return None
    return 100 * max(0.0, med(t, "size") - clean(t)) / deleted
row("deleted data stored %", share, "{:.1f}")
s, p = med("vmvault-skip", "capture"), med("vmvault", "capture")
if s and p:
    print(f"\nskipping: capture time {100 * s / p:.0f}% of not skipping; repository "
          f"{100 * med('vmvault-skip', 'size') / med('vmvault', 'size'):.0f}%; deleted data stored "
          f"{share('vmvault-skip'):.1f}% vs {share('vmvault'):.1f}%")
PY

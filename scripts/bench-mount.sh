#!/usr/bin/env bash
# FUSE mount benchmark, one run: the 4 GiB workload image (bench-workload.sh)
# captured by vmvault, restic 0.18.1 and borg 1.2 (lz4), each mounted:
#   start    mount start -> the image file visible
#   seq      dd bs=1M of the whole image file through the mount (after a
#            fresh mount and a page-cache drop)
#   rand     fio psync randread 4 KiB, QD1, buffered, 10 s, on the image file
#   inner    the 300 MB random file inside the ext4 partition: vmvault
#            through its own filesystem tree; restic and borg through a
#            read-only loop mount of their image file (cold each time)
# plus the ceilings (the same inner file from a kernel loop mount of the raw
# image, cold; the sequential dd of a FUSE file of the same size served
# from memory with vmvault's mount options: scripts/fuseceiling) and a
# 1,000-restore-point repository: `ls` of every VM and restore point
# directory, and the mount's RSS afterwards.
#
# Usage: scripts/bench-mount.sh          (root; ~10 min the first time)
# Env:   BENCH_DIR (default /var/tmp/vmvault-bench)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${BENCH_DIR:-/var/tmp/vmvault-bench}
BIN=$W/bin
mkdir -p "$W" "$BIN"
export PATH=$BIN:/usr/sbin:/sbin:$PATH
need() { command -v "$1" >/dev/null || { echo "bench-mount: missing $1 ($2)" >&2; exit 1; }; }
need fio "apt-get install fio"
need borg "apt-get install borgbackup"
need fusermount3 "apt-get install fuse3"

echo "== building vmvault, the workload tool and restic"
(cd "$ROOT" && go build -o "$BIN/" ./cmd/vmvault ./cmd/vmvault-capture && go build -o "$BIN/" ./scripts/workload ./scripts/fuseceiling)
if ! [ -x "$BIN/restic" ]; then
	dir=$(go mod download -json github.com/restic/restic@v0.18.1 | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
	(cd "$dir" && go build -o "$BIN/restic" ./cmd/restic)
fi
IMG=$W/base.img CHG=$W/changed.img
. "$ROOT/scripts/bench-workload.sh"
export RESTIC_PASSWORD=bench-only-not-a-secret RESTIC_CACHE_DIR=$W/restic-cache BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_BASE_DIR=$W/borg-base

M=$W/mount-repos
mkdir -p "$M"
if ! [ -f "$M/done" ]; then
	echo "== capturing the workload image with vmvault, restic and borg"
	rm -rf "$M"/* && mkdir -p "$M/img" && cp --reflink=auto --sparse=always "$IMG" "$M/img/disk0.raw"
	VMVAULT_REPOSITORY=$M/vmvault vmvault init >/dev/null
	VMVAULT_REPOSITORY=$M/vmvault vmvault-capture file --vm bench --disk "disk0=$IMG" >/dev/null
	restic init -q --repo "$M/restic" >/dev/null
	(cd "$M/img" && restic -q --repo "$M/restic" backup disk0.raw >/dev/null)
	borg init -e none "$M/borg"
	(cd "$M/img" && borg create --compression lz4 "$M/borg::a" disk0.raw)
	rm -rf "$M/img"
	echo "== a repository with 1,000 restore points (tiny disks, 10 VMs)"
	head -c 1M /dev/urandom >"$W/tiny.img"
	VMVAULT_REPOSITORY=$M/many vmvault init >/dev/null
	for i in $(seq 1 1000); do
		printf '%08d' "$i" | dd of="$W/tiny.img" conv=notrunc status=none
		VMVAULT_REPOSITORY=$M/many vmvault-capture file -q --vm "vm$((i % 10))" --disk "disk0=$W/tiny.img" >/dev/null
	done
	touch "$M/done"
fi

MNT=$W/mnt
mkdir -p "$MNT"
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
PID= IMGF= STARTED=
start_mount() { # tool -> sets PID, IMGF and STARTED (seconds to the image file visible)
	local t0 log=$W/mount-$1.log
	drop
	t0=$(now)
	case $1 in
	vmvault) VMVAULT_REPOSITORY=$M/vmvault vmvault mount -q "$MNT" >"$log" 2>&1 & PID=$!; IMGF=$MNT/bench/latest/disks/disk0.raw ;;
	restic) restic -q --repo "$M/restic" mount "$MNT" >"$log" 2>&1 & PID=$!; IMGF=$MNT/snapshots/latest/disk0.raw ;;
	borg) borg mount -f "$M/borg::a" "$MNT" >"$log" 2>&1 & PID=$!; IMGF=$MNT/disk0.raw ;;
	esac
	until [ -e "$IMGF" ]; do sleep 0.01; done
	STARTED=$(echo "$(now) - $t0" | bc -l)
}
stop_mount() { umount "$MNT" 2>/dev/null || fusermount3 -u "$MNT" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
secs() { local s; s=$(now); "$@" >/dev/null 2>&1; echo "$(now) - $s" | bc -l; }
mbs() { echo "$1 / $2 / 1000000" | bc -l | xargs printf '%.0f'; }
SIZE=$(stat -c %s "$IMG")
INNER=300000000
declare -A R
for tool in vmvault restic borg; do
	echo "== $tool"
	start_mount $tool
	R[$tool.start]=$STARTED
	R[$tool.seq]=$(mbs "$SIZE" "$(secs dd if="$IMGF" of=/dev/null bs=1M)")
	R[$tool.rand]=$(fio --name=r --filename="$IMGF" --readonly --rw=randread --bs=4k --ioengine=psync --iodepth=1 \
		--runtime=10 --time_based --size="$SIZE" --output-format=terse 2>/dev/null | cut -d';' -f8)
	stop_mount
	start_mount $tool
	drop
	if [ $tool = vmvault ]; then
		R[$tool.inner]=$(mbs $INNER "$(secs cat "$MNT/bench/latest/disk0/p1/random.bin")")
	else
		L=$(mktemp -d)
		mount -o ro,loop,offset=$((2048 * 512)) "$IMGF" "$L"
		drop
		R[$tool.inner]=$(mbs $INNER "$(secs cat "$L/random.bin")")
		umount "$L" && rmdir "$L"
	fi
	stop_mount
done
L=$(mktemp -d)
mount -o ro,loop,offset=$((2048 * 512)) "$IMG" "$L"
drop
R[kernel.inner]=$(mbs $INNER "$(secs cat "$L/random.bin")")
umount "$L" && rmdir "$L"

echo "== FUSE ceiling: a file of the image's size served from memory with vmvault's mount options"
drop
fuseceiling "$MNT" "$SIZE" >"$W/mount-ceiling.log" 2>&1 & PID=$!
until [ -e "$MNT/disk.raw" ]; do sleep 0.01; done
drop
R[ceiling.seq]=$(mbs "$SIZE" "$(secs dd if="$MNT/disk.raw" of=/dev/null bs=1M)")
stop_mount

echo "== 1,000 restore points"
drop
t0=$(now)
VMVAULT_REPOSITORY=$M/many vmvault mount -q "$MNT" >"$W/mount-many.log" 2>&1 & PID=$!
until [ -d "$MNT/vm0" ]; do sleep 0.01; done
n=$(ls "$MNT"/vm*/ | grep -c _ || true)
R[many.list]=$(echo "$(now) - $t0" | bc -l)
R[many.rss]=$(($(awk '/VmRSS/ {print $2}' /proc/$PID/status) / 1024))
stop_mount

echo
echo "== results (one run; MB/s = 10^6 bytes/s; cold page cache)"
printf '%-8s %10s %10s %10s %12s\n' tool "start s" "seq MB/s" "rand IOPS" "inner MB/s"
for tool in vmvault restic borg; do
	printf '%-8s %10.2f %10s %10s %12s\n' $tool "${R[$tool.start]}" "${R[$tool.seq]}" "${R[$tool.rand]}" "${R[$tool.inner]}"
done
printf 'kernel loop mount of the raw image, inner file: %s MB/s\n' "${R[kernel.inner]}"
printf 'FUSE ceiling (same dd of a file served from memory, no work per read): %s MB/s\n' "${R[ceiling.seq]}"
best=$(( R[restic.seq] > R[borg.seq] ? R[restic.seq] : R[borg.seq] ))
bestin=$(( R[restic.inner] > R[borg.inner] ? R[restic.inner] : R[borg.inner] ))
printf 'seq vs best peer %.2fx (target 2x); rand vs restic %.1fx (target 10x); inner vs best peer %.2fx (target 3x), vs kernel %.2f (target 0.5); start %.2f s (target < 0.3)\n' \
	"$(echo "${R[vmvault.seq]} / $best" | bc -l)" "$(echo "${R[vmvault.rand]} / ${R[restic.rand]}" | bc -l)" \
	"$(echo "${R[vmvault.inner]} / $bestin" | bc -l)" "$(echo "${R[vmvault.inner]} / ${R[kernel.inner]}" | bc -l)" "${R[vmvault.start]}"
printf '1,000 restore points (%s listed): mount start to every directory listed %.2f s (target < 1 s), RSS %s MiB (target < 100)\n' "$n" "${R[many.list]}" "${R[many.rss]}"

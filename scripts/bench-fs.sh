#!/usr/bin/env bash
# File-level benchmark (issue: files inside restore points). The ext4 test
# image of make-fs-images.sh is captured as a restore point, then per
# repetition, alternating:
#   cat-vmvault  vmvault cat RP:disk0/p0/big-300M.bin > /dev/null
#   cat-kernel   cat MNT/big-300M.bin > /dev/null  (kernel loop mount, ro,
#                of the same raw image)
# both warm (inputs re-read untimed right before; page cache of the image
# or the repository files hot — vmvault's chunk cache starts empty, as it
# does for every command) and cold (page cache dropped before the timed
# read). Then `vmvault ls -l` of the 5000-entry directory, 5 times.
# Medians and ratios are printed at the end.
#
# Usage: scripts/bench-fs.sh [REPS]       (default 5; needs root)
# Env:   BENCH_DIR (default /var/tmp/vmvault-bench)
set -euo pipefail
REPS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${BENCH_DIR:-/var/tmp/vmvault-bench}
BIN=$W/bin
mkdir -p "$W" "$BIN"
IMGS=$W/fsimg
export VMVAULT_REPOSITORY=$W/fs-repo

echo "== building vmvault and the test images"
(cd "$ROOT" && go build -o "$BIN/" ./cmd/vmvault ./cmd/vmvault-capture)
"$ROOT/scripts/make-fs-images.sh" "$IMGS" >/dev/null
# (re)capture whenever the images were rebuilt
if [[ ! -f $VMVAULT_REPOSITORY/config || "$(cat "$W/fs-repo.stamp" 2>/dev/null)" != "$(cat "$IMGS/.done")" ]]; then
	rm -rf "$VMVAULT_REPOSITORY"
	"$BIN/vmvault" init >/dev/null
	"$BIN/vmvault-capture" file --vm fsbench --disk "disk0=$IMGS/ext4.img" >/dev/null
	cp "$IMGS/.done" "$W/fs-repo.stamp"
fi
RP=fsbench@latest:disk0/p0
MNT=$(mktemp -d)
mount -o ro,loop "$IMGS/ext4.img" "$MNT"
trap 'umount "$MNT"; rmdir "$MNT"' EXIT
want=$(sha256sum <"$MNT/big-300M.bin" | cut -d' ' -f1)
got=$("$BIN/vmvault" cat "$RP/big-300M.bin" | sha256sum | cut -d' ' -f1)
[[ $want == "$got" ]] || { echo "content differs" >&2; exit 1; }
SIZE=$(stat -c %s "$MNT/big-300M.bin")

secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
warm_repo() { find "$VMVAULT_REPOSITORY" -type f -exec cat {} + >/dev/null; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
declare -A R
for i in $(seq 1 "$REPS"); do
	echo "== repetition $i (load $(cut -d' ' -f1 /proc/loadavg))"
	warm_repo
	R[vw]+=" $(secs "$BIN/vmvault" cat "$RP/big-300M.bin")"
	cat "$MNT/big-300M.bin" >/dev/null
	R[kw]+=" $(secs cat "$MNT/big-300M.bin")"
	drop
	R[vc]+=" $(secs "$BIN/vmvault" cat "$RP/big-300M.bin")"
	drop
	R[kc]+=" $(secs cat "$MNT/big-300M.bin")"
	warm_repo
	R[ls]+=" $(secs "$BIN/vmvault" ls -l "$RP/many")"
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mbs() { echo "$SIZE / $1 / 1000000" | bc -l | xargs printf '%.0f'; }
vw=$(echo "${R[vw]}" | median) kw=$(echo "${R[kw]}" | median)
vc=$(echo "${R[vc]}" | median) kc=$(echo "${R[kc]}" | median)
ls=$(echo "${R[ls]}" | median)
echo
echo "== medians of $REPS (300 MB file in ext4; MB/s = 10^6 bytes/s)"
printf 'cat warm: vmvault %s MB/s, kernel loop mount %s MB/s, ratio %.2f (target >= 0.50)\n' "$(mbs "$vw")" "$(mbs "$kw")" "$(echo "$kw / $vw" | bc -l)"
printf 'cat cold: vmvault %s MB/s, kernel loop mount %s MB/s, ratio %.2f\n' "$(mbs "$vc")" "$(mbs "$kc")" "$(echo "$kc / $vc" | bc -l)"
printf 'ls -l of 5000 entries: %.3f s (target < 0.5 s)\n' "$ls"
echo "raw: ${R[*]}"

#!/usr/bin/env bash
# gc at scale: synthesize a local repository (scripts/gcscale: CHUNKS chunk
# objects, VMS x RPS restore points of DISK_CHUNKS-chunk disks, 2% churn
# between restore points, the older ones forgotten) and time 'vmvault gc'
# on it: mark and sweep seconds, objects removed, peak RSS, the mark
# filter's size. Prints the per-chunk costs and what they come to for a
# repository of 40 million chunks (10 TB of 256 KiB chunks).
#
# Usage: scripts/bench-gc.sh     Env: CHUNKS (1500000), VMS (10), RPS (30),
#        DISK_CHUNKS (100000), KEEP (20), BENCH_DIR (/var/tmp/vmvault-bench)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${BENCH_DIR:-/var/tmp/vmvault-bench}/gc
CHUNKS=${CHUNKS:-1500000} VMS=${VMS:-10} RPS=${RPS:-30} DISK_CHUNKS=${DISK_CHUNKS:-100000} KEEP=${KEEP:-20}
mkdir -p "$W/bin"
(cd "$ROOT" && go build -o "$W/bin/" ./cmd/vmvault ./scripts/gcscale)
R=$W/repo-$CHUNKS-$VMS-$RPS-$DISK_CHUNKS
if ! [ -f "$R.done" ]; then
	rm -rf "$R"
	echo "== synthesizing $R"
	"$W/bin/gcscale" -dir "$R" -chunks "$CHUNKS" -vms "$VMS" -rps "$RPS" -disk-chunks "$DISK_CHUNKS" -keep "$KEEP"
	cp -al "$R" "$R.pristine" # gc removes objects: each run starts from a copy of the links
	touch "$R.done"
fi
rm -rf "$R.run" && cp -al "$R.pristine" "$R.run"
sync
echo "== warm: list the repository once"
find "$R.run" -type f | wc -l
for mode in dry-run remove; do
	args=(gc --repo "$R.run" --grace 1h --json)
	[ $mode = dry-run ] && args+=(--dry-run)
	/usr/bin/time -f "%e %M" -o "$W/time.out" "$W/bin/vmvault" "${args[@]}" >"$W/gc.json"
	read -r wall rss <"$W/time.out"
	python3 - "$W/gc.json" "$wall" "$rss" "$mode" "$CHUNKS" "$VMS" "$RPS" "$DISK_CHUNKS" <<'PY'
import json, sys
g = json.load(open(sys.argv[1])); wall, rss, mode = float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
chunks, vms, rps, dc = map(int, sys.argv[5:9])
entries = g["restore_points"] * dc
print(f"gc {mode}: {wall:.1f} s wall (mark {g['mark_seconds']:.1f} s, sweep {g['sweep_seconds']:.1f} s), peak RSS {rss/1024:.0f} MiB, "
      f"filter {g['filter_bytes']/2**20:.1f} MiB; {g['restore_points']} restore points ({entries/1e6:.1f} M index entries), "
      f"{chunks/1e6:.2f} M chunks stored, {g['live_chunks']} live, removed {g['removed_chunks']} chunks and {g['removed_indexes']} indexes")
if mode == "remove":
    per_entry = g["mark_seconds"] / max(entries, 1)
    per_chunk = g["sweep_seconds"] / max(chunks, 1)
    big_chunks, big_entries = 40e6, 2000 * 400e3
    print(f"  per index entry marked {per_entry*1e9:.0f} ns, per stored chunk swept {per_chunk*1e6:.1f} us; "
          f"for 40 M chunks and 2,000 restore points of 100 GB disks (800 M index entries): mark ~{per_entry*big_entries/60:.0f} min, "
          f"sweep ~{per_chunk*big_chunks/60:.0f} min, filter {40e6*11/8/2**20:.0f} MiB")
PY
done
rm -rf "$R.run"

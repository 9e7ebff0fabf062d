#!/usr/bin/env bash
# vSphere capture benchmark: govmomi's simulator with emulated CBT
# (cbt/vsphere/vcsimtest), the VM's disk filled with the 4 GiB workload
# image (bench-workload.sh); a full capture over the direct transport, 640
# scattered 64 KiB guest writes (~1% of 4 GiB), then the incremental.
# Target: incremental <= 5% of the full capture's time. Medians of REPS.
#
# Usage: scripts/bench-vsphere.sh [REPS]    (default 3)
# Env:   BENCH_DIR (default /var/tmp/vmvault-bench)
set -euo pipefail
REPS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${BENCH_DIR:-/var/tmp/vmvault-bench}
BIN=$W/bin
mkdir -p "$W" "$BIN"
(cd "$ROOT" && go build -o "$BIN/workload" ./scripts/workload)
IMG=$W/base.img CHG=$W/changed.img
. "$ROOT/scripts/bench-workload.sh"
cd "$ROOT"
VMVAULT_BENCH_IMAGE=$IMG go test -run '^$' -bench BenchmarkIncrementalDirect -benchtime 1x -count "$REPS" -timeout 60m ./cbt/vsphere/ | tee "$W/vsphere-bench.txt"
awk '/^BenchmarkIncrementalDirect/ {for (i = 1; i <= NF; i++) { if ($i == "full-s") f = f " " $(i-1); if ($i == "incr-s") n = n " " $(i-1); if ($i == "incr-%-of-full") p = p " " $(i-1) } }
	END { print "full s:" f; print "incremental s:" n; print "incremental % of full:" p }' "$W/vsphere-bench.txt"

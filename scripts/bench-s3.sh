#!/usr/bin/env bash
# Object storage benchmark: vmvault on MinIO against vmvault on the local
# backend and restic 0.18.1 on the same MinIO, on the 4 GiB workload of
# bench-capture, in one run.
#
# MinIO runs erasure-coded over 4 directories on this machine; every S3
# request goes through scripts/s3proxy, which counts requests by method
# and, for the "+20ms" rows, delays each by 20 ms. Per repetition, tools
# alternating: full capture of base.img, extents incremental of
# changed.img (restic: its second backup), restore of the incremental
# (vmvault from MinIO with an empty disk cache), and for vmvault nbdcopy
# of the restore point from 'vmvault serve' to null: with a cold cache (a
# new server, empty cache directory) and then warm (the same server again).
# Reported: medians, ratios, PUTs per GiB stored, GETs of the cold restore.
#
# Usage: scripts/bench-s3.sh [REPS]    (default 3)
# Env:   BENCH_DIR (default /var/tmp/vmvault-bench)
set -euo pipefail
REPS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${BENCH_DIR:-/var/tmp/vmvault-bench}
BIN=$W/bin
mkdir -p "$W" "$BIN"
export PATH=$BIN:$PATH

need() { command -v "$1" >/dev/null || { echo "bench-s3: missing $1 ($2)" >&2; exit 1; }; }
need mke2fs "apt-get install e2fsprogs"
need sfdisk "apt-get install fdisk"
need nbdcopy "apt-get install libnbd-bin"
need curl "apt-get install curl"
[ -x /usr/bin/time ] || { echo "bench-s3: missing /usr/bin/time (apt-get install time)" >&2; exit 1; }

echo "== building vmvault, the workload tool and s3proxy"
(cd "$ROOT" && go build -o "$BIN/" ./cmd/vmvault ./cmd/vmvault-capture ./scripts/workload ./scripts/s3proxy)
if ! [ -x "$BIN/restic" ]; then
	echo "== building restic 0.18.1 from the Go module proxy"
	dir=$(go mod download -json github.com/restic/restic@v0.18.1 | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
	(cd "$dir" && go build -o "$BIN/restic" ./cmd/restic)
fi
IMG=$W/base.img CHG=$W/changed.img
. "$ROOT/scripts/bench-workload.sh"
. "$ROOT/scripts/bench-minio.sh"
SIZE=$(stat -c %s "$IMG")
export RESTIC_PASSWORD=bench-only-not-a-secret RESTIC_CACHE_DIR=$W/restic-cache VMVAULT_REPO_PATH_STYLE=true

minio_start
proxy_start M 0s
proxy_start L 20ms

R=$W/s3-results.tsv
: >"$R"
warm() { cat "$1" >/dev/null; }
timed() { # TOOL STEP CMD...: "tool step wall cpu rss_kb servers_cpu"
	local tool=$1 step=$2 before; shift 2
	before=$(servers_cpu)
	/usr/bin/time -f "%e %U %S %M" -o "$W/time.out" "$@" >"$W/cmd.out" 2>"$W/cmd.err" || { cat "$W/cmd.out" "$W/cmd.err" >&2; echo "bench-s3: $tool $step failed" >&2; exit 1; }
	read -r wall u s rss <"$W/time.out"
	echo "$tool $step $wall $(python3 -c "print($u+$s)") $rss $(python3 -c "print($(servers_cpu) - $before)")" >>"$R"
}
record() { echo "$*" >>"$R"; }
num() { sed -n "s/.*$1 \([0-9]*\).*/\1/p" <<<"$2" | head -1; }
stored() { vmvault stats --json --repo "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total_stored_bytes"])'; }

# nbd TOOL STEP REPO CACHE: nbdcopy of bench@latest from a new server,
# twice (cold, then warm when STEP is nbd).
nbd() {
	local tool=$1 step=$2 repo=$3 cache=$4 sock=$W/nbd.sock
	rm -rf "$cache" "$sock"
	VMVAULT_CACHE_DIR=$cache vmvault serve -q --repo "$repo" --socket "$sock" 2>"$W/serve.log" &
	local pid=$!
	for _ in $(seq 1 200); do [ -S "$sock" ] && break; sleep 0.05; done
	timed "$tool" "${step}_cold" nbdcopy "nbd+unix:///bench@latest/disk0?socket=$sock" null:
	[ "$step" = nbd ] && timed "$tool" "${step}_warm" nbdcopy "nbd+unix:///bench@latest/disk0?socket=$sock" null:
	kill -TERM $pid; wait $pid || true
}

run() {
	local tool=$1 rep=$2 repo out=$W/s3-restore.out
	rm -rf "$out" "$W/restic-cache"
	ln -f "$IMG" "$W/work.img"; warm "$IMG"
	case $tool in
	vmvault-local)
		repo=$W/s3-local-$rep; rm -rf "$repo"
		vmvault init -q --repo "$repo"
		timed $tool full vmvault-capture file -q --repo "$repo" --vm bench --disk disk0="$W/work.img"
		warm "$CHG"
		timed $tool incr vmvault-capture file -q --repo "$repo" --vm bench --disk disk0="$CHG" --changed-extents disk0="$W/guest.extents"
		sync; find "$repo" -type f -print0 | xargs -0 cat >/dev/null
		timed $tool restore vmvault restore -q --repo "$repo" bench@latest --disk disk0 --to "$out"
		nbd $tool nbd "$repo" "$W/cache-unused"
		rm -rf "$repo"
		;;
	vmvault-minio | vmvault-minio+20ms)
		local p=$PROXY_M c=M
		[ $tool = vmvault-minio+20ms ] && p=$PROXY_L c=L
		repo=s3:http://$p/vv-$rep-${c,,}/repo
		export VMVAULT_CACHE_DIR=$W/vv-cache-$rep
		rm -rf "$VMVAULT_CACHE_DIR"
		vmvault init -q --repo "$repo"
		counts $c >/dev/null
		timed $tool full vmvault-capture file -q --repo "$repo" --vm bench --disk disk0="$W/work.img"
		record $tool full_req "$(num PUT "$(counts $c)")" "$(stored "$repo")"
		warm "$CHG"
		timed $tool incr vmvault-capture file -q --repo "$repo" --vm bench --disk disk0="$CHG" --changed-extents disk0="$W/guest.extents"
		counts $c >/dev/null
		rm -rf "$VMVAULT_CACHE_DIR"
		timed $tool restore vmvault restore -q --repo "$repo" bench@latest --disk disk0 --to "$out"
		record $tool restore_req "$(num GET "$(counts $c)")" 0
		if [ $tool = vmvault-minio ]; then
			nbd $tool nbd "$repo" "$W/vv-nbd-cache-$rep"
		else
			nbd $tool nbdlat "$repo" "$W/vv-nbd-cache-$rep"
		fi
		if [ "${CHECKED:-}" != 1 ]; then
			cmp "$out" "$CHG" || { echo "bench-s3: restore from MinIO differs from the source" >&2; exit 1; }
			CHECKED=1
		fi
		rm -rf "$W/vv-cache-$rep" "$W/vv-nbd-cache-$rep"
		;;
	restic-minio | restic-minio+20ms)
		local p=$PROXY_M c=M
		[ $tool = restic-minio+20ms ] && p=$PROXY_L c=L
		repo=s3:http://$p/rs-$rep-${c,,}/repo
		restic init -q --repo "$repo" >/dev/null
		counts $c >/dev/null
		(cd "$W" && timed $tool full restic -q --repo "$repo" backup work.img)
		record $tool full_req "$(num PUT "$(counts $c)")" 0
		ln -f "$CHG" "$W/work.img"; warm "$CHG"
		(cd "$W" && timed $tool incr restic -q --repo "$repo" backup work.img)
		mkdir -p "$out"; rm -rf "$W/restic-cache"
		counts $c >/dev/null
		timed $tool restore restic -q --repo "$repo" restore latest --sparse --target "$out"
		record $tool restore_req "$(num GET "$(counts $c)")" 0
		;;
	esac
	rm -rf "$out"
}

TOOLS="vmvault-local vmvault-minio restic-minio vmvault-minio+20ms restic-minio+20ms"
for rep in $(seq 1 "$REPS"); do
	set -- $TOOLS
	[ $((rep % 2)) = 0 ] && set -- $(printf '%s\n' $TOOLS | tac)
	for tool in "$@"; do
		echo "== repetition $rep/$REPS: $tool (load $(cut -d' ' -f1 /proc/loadavg))"
		run "$tool" "$rep"
	done
done

python3 - "$R" "$SIZE" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
size = int(sys.argv[2])
def med(tool, step, col=2):
    v = [float(r[col]) for r in rows if r[0] == tool and r[1] == step]
    return st.median(v) if v else None
def mbs(tool, step):
    w = med(tool, step)
    return size / 1e6 / w if w else None
tools = ["vmvault-local", "vmvault-minio", "restic-minio", "vmvault-minio+20ms", "restic-minio+20ms"]
print(f"\nmedians, {size/2**30:.0f} GiB disk; MB/s are of the disk; MinIO on this machine (4 drives, erasure-coded)")
print(f"{'':22}" + "".join(f"{t:>20}" for t in tools))
for step in ["full", "incr", "restore", "nbd_cold", "nbd_warm", "nbdlat_cold"]:
    print(f"{step + ' MB/s':22}" + "".join(f"{(mbs(t, step) or 0):20.0f}" for t in tools))
    print(f"{step + ' CPU s':22}" + "".join(f"{(med(t, step, 3) or 0):20.1f}" for t in tools))
    print(f"{'  MinIO+proxy CPU s':22}" + "".join(f"{(med(t, step, 5) or 0):20.1f}" for t in tools))
def ratio(a, b, what, bound):
    if a and b:
        print(f"{what}: {a/b:.2f} (target {bound})")
print()
ratio(mbs("vmvault-minio", "full"), mbs("vmvault-local", "full"), "capture to MinIO / local capture", ">= 0.80")
# MinIO and the counting proxy run on the same 2 cores as the capture: the
# capture cannot finish before all their CPU time is spent on both cores.
if med("vmvault-minio", "full") and med("vmvault-local", "full"):
    cpu, srv = med("vmvault-minio", "full", 3), med("vmvault-minio", "full", 5)
    bound = (cpu + srv) / 2
    print(f"  bound: (capture {cpu:.1f} + MinIO and proxy {srv:.1f} CPU-s) / 2 cores = {bound:.2f} s,"
          f" so at best {med('vmvault-local', 'full') / bound:.2f} of the local capture on this machine")
ratio(mbs("vmvault-minio", "full"), mbs("restic-minio", "full"), "capture to MinIO / restic backup to MinIO", ">= 1.5")
ratio(mbs("vmvault-minio", "restore"), mbs("restic-minio", "restore"), "restore from MinIO / restic restore", ">= 2")
ratio(mbs("vmvault-minio", "nbd_cold"), mbs("vmvault-local", "nbd_cold"), "nbdcopy cold cache MinIO / local", ">= 0.50")
if med("vmvault-minio", "nbd_cold"):
    print(f"  MinIO and proxy used {med('vmvault-minio', 'nbd_cold', 5):.1f} CPU-s during the cold pass")
ratio(mbs("vmvault-minio", "nbd_warm"), mbs("vmvault-local", "nbd_cold"), "nbdcopy warm cache MinIO / local", ">= 0.90")
ratio(mbs("vmvault-minio+20ms", "full"), mbs("restic-minio+20ms", "full"), "+20ms: capture / restic backup", "")
ratio(mbs("vmvault-minio+20ms", "restore"), mbs("restic-minio+20ms", "restore"), "+20ms: restore / restic restore", "")
for t in ["vmvault-minio", "restic-minio"]:
    puts = med(t, "full_req"); stored = med(t, "full_req", 3)
    gets = med(t, "restore_req")
    if puts:
        per = f", {puts / (stored / 2**30):.1f} PUTs per GiB stored (target <= 64)" if stored else ""
        print(f"{t}: full capture {puts:.0f} PUTs{per}; cold restore {gets or 0:.0f} GETs")
PY

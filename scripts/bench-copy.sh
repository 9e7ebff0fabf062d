#!/usr/bin/env bash
# Replication benchmark: vmvault copy against restic 0.18.1 copy and rclone
# sync (Debian's) of the vmvault repository directory (a dumb mirror), on the
# 4 GiB workload of bench-capture, local -> local and local -> MinIO, in one
# run.
#
# Sources, built once: a vmvault repository holding the full capture of
# base.img (S1) and a copy of it with the extents incremental of
# changed.img added (S2); restic repositories likewise (A1: one snapshot,
# A2: two). Per repetition, tools alternating, each into a fresh
# destination: the full copy (from S1 / A1, and rclone of S1), then the
# incremental (from S2 / A2, rclone of S2 over the first). Reported:
# medians of wall time and MB/s of the 4 GiB disk, bytes sent and PUTs
# (MinIO, counted by scripts/s3proxy), ratios against the peers, and the
# incremental's bytes sent against the stored size of its new chunks.
#
# Usage: scripts/bench-copy.sh [REPS]    (default 3)
# Env:   BENCH_DIR (default /var/tmp/vmvault-bench), BENCH_TARGETS ("local minio")
set -euo pipefail
REPS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${BENCH_DIR:-/var/tmp/vmvault-bench}
TARGETS=${BENCH_TARGETS:-local minio}
BIN=$W/bin
mkdir -p "$W" "$BIN"
export PATH=$BIN:$PATH

need() { command -v "$1" >/dev/null || { echo "bench-copy: missing $1 ($2)" >&2; exit 1; }; }
need mke2fs "apt-get install e2fsprogs"
need sfdisk "apt-get install fdisk"
need rclone "apt-get install rclone"
need curl "apt-get install curl"
[ -x /usr/bin/time ] || { echo "bench-copy: missing /usr/bin/time (apt-get install time)" >&2; exit 1; }

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
export RESTIC_PASSWORD=bench-only-not-a-secret RESTIC_FROM_PASSWORD=bench-only-not-a-secret RESTIC_CACHE_DIR=$W/restic-cache
export VMVAULT_CACHE_DIR=$W/vmvault-cache VMVAULT_REPO_PATH_STYLE=true

C=$W/copy
if ! [ -f "$C/sources.done" ]; then
	echo "== building the source repositories"
	rm -rf "$C" && mkdir -p "$C"
	vmvault init -q --repo "$C/S1"
	vmvault-capture file -q --repo "$C/S1" --vm bench --disk disk0="$IMG"
	cp -a "$C/S1" "$C/S2"
	vmvault-capture file --json --repo "$C/S2" --vm bench --disk disk0="$CHG" --changed-extents disk0="$W/guest.extents" >"$C/incr.json"
	restic init -q --repo "$C/A1"
	(cd "$W" && ln -f "$IMG" work.img && restic -q --repo "$C/A1" backup work.img)
	cp -a "$C/A1" "$C/A2"
	(cd "$W" && ln -f "$CHG" work.img && restic -q --repo "$C/A2" backup work.img)
	touch "$C/sources.done"
fi
NEW=$(python3 -c 'import json,sys; print(sum(d["bytes_stored"] for d in json.load(open(sys.argv[1]))["disks"]))' "$C/incr.json")
RESTIC_SNAP1=$(restic --repo "$C/A1" snapshots --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
echo "sources: vmvault $(du -sh "$C/S1" | cut -f1) + incremental storing $NEW bytes; restic $(du -sh "$C/A1" | cut -f1)"

minio_start
proxy_start M 0s
# rclone 1.60's AWS SDK fails on AWS_CA_BUNDLE (set system-wide on some
# hosts: "LoadCustomCABundleError ... unsupported transport"); the
# endpoint here is plain HTTP on loopback and needs no CA.
unset AWS_CA_BUNDLE
export RCLONE_CONFIG_M_TYPE=s3 RCLONE_CONFIG_M_PROVIDER=Minio RCLONE_CONFIG_M_ENDPOINT=http://$PROXY_M \
	RCLONE_CONFIG_M_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_M_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY

R=$W/copy-results.tsv
: >"$R"
warm_dir() { find "$1" -type f -print0 | xargs -0 cat >/dev/null; }
# timed TOOL TARGET STEP CMD...: "tool target step wall cpu" to the results
timed() {
	local tool=$1 target=$2 step=$3; shift 3
	/usr/bin/time -f "%e %U %S" -o "$W/time.out" "$@" >"$W/cmd.out" 2>"$W/cmd.err" || { cat "$W/cmd.out" "$W/cmd.err" >&2; echo "bench-copy: $tool $target $step failed" >&2; exit 1; }
	read -r wall u s <"$W/time.out"
	echo "$tool $target $step $wall $(python3 -c "print($u+$s)")" >>"$R"
}
record() { echo "$*" >>"$R"; }
sent_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_sent"])' "$W/cmd.out"; }
puts_of() { sed -n 's/.*PUT \([0-9]*\).*/\1/p' <<<"$1"; }

bucket=0
dest() { # dest TARGET NAME -> a fresh location (run bumps $bucket: this runs in a subshell)
	case $1 in
	local) rm -rf "$C/dst-$2"; echo "$C/dst-$2" ;;
	minio) echo "s3:http://$PROXY_M/b$bucket-$2/repo" ;;
	esac
}

run() {
	local tool=$1 target=$2 d
	bucket=$((bucket + 1))
	warm_dir "$C"
	case $tool in
	vmvault)
		d=$(dest "$target" vmvault)
		vmvault init -q --repo "$d" --like "$C/S1"
		counts M >/dev/null
		timed vmvault "$target" full vmvault copy --json --repo "$C/S1" --to "$d"
		record vmvault "$target" full_sent "$(sent_of)" "$(puts_of "$(counts M)")"
		timed vmvault "$target" incr vmvault copy --json --repo "$C/S2" --to "$d"
		record vmvault "$target" incr_sent "$(sent_of)" "$(puts_of "$(counts M)")"
		if [ "$target" = local ] && [ "${CHECKED:-}" != 1 ]; then
			vmvault restore -q --repo "$d" bench@latest --disk disk0 --to "$W/copy-check.img"
			cmp "$W/copy-check.img" "$CHG" || { echo "bench-copy: the copy restores different bytes" >&2; exit 1; }
			rm -f "$W/copy-check.img"; CHECKED=1
		fi
		;;
	restic)
		d=$(dest "$target" restic)
		restic init -q --repo "$d" --from-repo "$C/A1" --copy-chunker-params >/dev/null
		counts M >/dev/null
		timed restic "$target" full restic --repo "$d" copy --from-repo "$C/A1" "$RESTIC_SNAP1"
		record restic "$target" full_sent - "$(puts_of "$(counts M)")"
		timed restic "$target" incr restic --repo "$d" copy --from-repo "$C/A2"
		record restic "$target" incr_sent - "$(puts_of "$(counts M)")"
		;;
	rclone)
		d=$(dest "$target" rclone)
		[ "$target" = minio ] && { d="M:b$bucket-rclone/repo"; rclone mkdir "M:b$bucket-rclone"; }
		counts M >/dev/null
		timed rclone "$target" full rclone sync "$C/S1" "$d"
		record rclone "$target" full_sent - "$(puts_of "$(counts M)")"
		timed rclone "$target" incr rclone sync "$C/S2" "$d"
		record rclone "$target" incr_sent - "$(puts_of "$(counts M)")"
		;;
	esac
	[ "$target" = local ] && rm -rf "$C/dst-$tool"
	return 0
}

TOOLS="vmvault restic rclone"
for rep in $(seq 1 "$REPS"); do
	for target in $TARGETS; do
		set -- $TOOLS
		[ $((rep % 2)) = 0 ] && set -- $(printf '%s\n' $TOOLS | tac)
		for tool in "$@"; do
			echo "== repetition $rep/$REPS: $tool -> $target (load $(cut -d' ' -f1 /proc/loadavg))"
			run "$tool" "$target"
		done
	done
done

python3 - "$R" "$SIZE" "$NEW" "$TARGETS" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
size, new, targets = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split()
tools = ["vmvault", "restic", "rclone"]
def med(tool, target, step, col):
    v = [float(r[col]) for r in rows if r[0] == tool and r[1] == target and r[2] == step and r[col] != "-"]
    return st.median(v) if v else None
print(f"\nmedians; {size/2**30:.0f} GiB disk; MB/s are of the disk (the same data for every tool)")
for target in targets:
    print(f"\n-> {target}")
    print(f"{'':28}" + "".join(f"{t:>12}" for t in tools) + f"{'vmvault/restic':>16}{'vmvault/rclone':>16}")
    for step in ["full", "incr"]:
        w = {t: med(t, target, step, 3) for t in tools}
        print(f"{step + ' wall s':28}" + "".join(f"{(w[t] or 0):12.2f}" for t in tools))
        mbs = {t: (size / 1e6 / w[t]) if w[t] else None for t in tools}
        r1 = f"{mbs['vmvault']/mbs['restic']:.2f}" if mbs['vmvault'] and mbs['restic'] else "-"
        r2 = f"{mbs['vmvault']/mbs['rclone']:.2f}" if mbs['vmvault'] and mbs['rclone'] else "-"
        print(f"{step + ' MB/s of the disk':28}" + "".join(f"{(mbs[t] or 0):12.0f}" for t in tools) + f"{r1:>16}{r2:>16}")
        c = {t: med(t, target, step, 4) for t in tools}
        print(f"{step + ' CPU s':28}" + "".join(f"{(c[t] or 0):12.2f}" for t in tools))
        if target == "minio":
            p = {t: med(t, target, step + "_sent", 4) for t in tools}
            print(f"{step + ' PUT requests':28}" + "".join(f"{(p[t] or 0):12.0f}" for t in tools))
    s = med("vmvault", target, "incr_sent", 3)
    if s is not None:
        print(f"vmvault incremental sent {s:.0f} bytes; its new chunks are {new} bytes stored: {s/new:.3f}x (bound: 1.0)")
PY

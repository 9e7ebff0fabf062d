#!/usr/bin/env bash
# Capture benchmark: vmvault against restic 0.18.1 and borg 1.2 on one
# deterministic 4 GiB VM-disk workload, in one run.
#
# Workload: MBR + one ext4 partition at 1 MiB (mke2fs -d) holding ~2.2 GiB of
# /usr, a 300 MB pseudo-random file and a 300 MB text file; the rest zero.
# Then 640 seeded 64 KiB guest writes inside those two files' data blocks.
#
# Measured per repetition, tools alternating: full backup, second backup
# after the writes (vmvault: from the changed-extents list, and again by
# deduplication), and restore of the second backup. vmvault captures with
# its capture default (the codec 'vmvault init' sets), then recompresses
# the repository with 'vmvault compact --codec zstd-best' (timed, CPU-s per
# GiB) and restores again from the dense repository. Reported: medians of
# wall time, MB/s (of the 4 GiB disk), CPU seconds, peak RSS, repository
# size and growth, size after compaction; ratios against the best peer
# and the targets. Inputs are re-read (warm page cache) before each timed
# step. vmvault-enc is vmvault with an encrypted repository ('init
# --encrypt', the password from a file, so every command derives its key
# with the calibrated argon2id first): full, incremental and restore, no
# compaction; its ratios are against unencrypted vmvault.
#
# Usage: scripts/bench-capture.sh [REPS]     (default 5)
# Env:   BENCH_DIR (default /var/tmp/vmvault-bench), VMVAULT_INIT_FLAGS
#        (e.g. "--chunk-size 128KiB" or "--compression zstd-fastest"),
#        BENCH_TOOLS (default "vmvault vmvault-enc restic borg-lz4 borg-zstd"),
#        COMPACT_CODEC (default zstd-best), COMPACT_REPS (repetitions
#        that compact and restore again, default 1: its size is the same
#        every time, and it takes minutes), BENCH_SMALL=1 (a 512 MiB
#        workload, to check the script works; not a measurement)
set -euo pipefail
REPS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${BENCH_DIR:-/var/tmp/vmvault-bench}
TOOLS=${BENCH_TOOLS:-vmvault vmvault-enc restic borg-lz4 borg-zstd}
BIN=$W/bin
mkdir -p "$W" "$BIN"
export PATH=$BIN:$PATH

need() { command -v "$1" >/dev/null || { echo "bench-capture: missing $1 ($2)" >&2; exit 1; }; }
need mke2fs "apt-get install e2fsprogs"
need debugfs "apt-get install e2fsprogs"
need sfdisk "apt-get install fdisk"
need borg "apt-get install borgbackup"
[ -x /usr/bin/time ] || { echo "bench-capture: missing /usr/bin/time (apt-get install time)" >&2; exit 1; }

echo "== building vmvault and the workload tool"
(cd "$ROOT" && go build -o "$BIN/" ./cmd/vmvault ./cmd/vmvault-capture && go build -o "$BIN/workload" ./scripts/workload)
if ! [ -x "$BIN/restic" ]; then
	echo "== building restic 0.18.1 from the Go module proxy"
	dir=$(go mod download -json github.com/restic/restic@v0.18.1 | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
	(cd "$dir" && go build -o "$BIN/restic" ./cmd/restic)
fi

IMG=$W/base.img CHG=$W/changed.img
. "$ROOT/scripts/bench-workload.sh"
SIZE=$(stat -c %s "$IMG")
echo "workload: $(du -h --apparent-size "$IMG" | cut -f1) image, $(du -h "$IMG" | cut -f1) allocated; $(wc -l <"$W/guest.extents") writes of 64 KiB"

export RESTIC_PASSWORD=bench-only-not-a-secret RESTIC_CACHE_DIR=$W/restic-cache BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_BASE_DIR=$W/borg-base
R=$W/results.tsv
: >"$R"
warm() { cat "$1" >/dev/null; }
# warm_repo DIR: the repository is a restore's input; read it once, untimed,
# like the image before a capture (this machine pages out what sat idle).
warm_repo() { find "$1" -type f -print0 | xargs -0 cat >/dev/null; }
# timed TOOL STEP CMD... : appends "tool step wall user sys rss_kb" to results
timed() {
	local tool=$1 step=$2; shift 2
	/usr/bin/time -f "%e %U %S %M" -o "$W/time.out" "$@" >"$W/cmd.out" 2>&1 || { cat "$W/cmd.out" >&2; echo "bench-capture: $tool $step failed" >&2; exit 1; }
	echo "$tool $step $(cat "$W/time.out")" >>"$R"
}
size_of() { du -sb "$1" | cut -f1; }
record() { echo "$1 $2 $3" >>"$R"; }

# Repositories are kept until the end of the run: deleting thousands of
# files right before another tool creates thousands makes ext4's inode
# allocator skip the recently freed inodes and skews the next measurement.
if compgen -G "$W/repo-*" >/dev/null; then
	rm -rf "$W"/repo-* "$W/restore.out"
	echo "== waiting 5 minutes: ext4 avoids reusing inodes deleted within that window"
	sync; sleep 300
fi
trap 'rm -rf "$W"/repo-* "$W/restore.out"' EXIT
run_tool() {
	local tool=$1 repo=$W/repo-$1-$2 out=$W/restore.out
	rm -rf "$out" "$W/restic-cache" "$W/borg-base"
	ln -f "$IMG" "$W/work.img"
	case $tool in
	vmvault | vmvault-enc)
		local pw=() enc=()
		if [ $tool = vmvault-enc ]; then
			echo bench-only-not-a-secret >"$W/bench.password"
			chmod 600 "$W/bench.password"
			pw=(env VMVAULT_PASSWORD_FILE="$W/bench.password") enc=(--encrypt)
		fi
		"${pw[@]}" vmvault init --repo "$repo" "${enc[@]}" ${VMVAULT_INIT_FLAGS:-} >/dev/null
		# What opening costs: the password's key derivation, paid once by
		# every command.
		[ $tool = vmvault-enc ] && timed $tool open "${pw[@]}" vmvault key list --repo "$repo"
		warm "$IMG"; timed $tool full "${pw[@]}" vmvault-capture file -q --repo "$repo" --vm bench --disk disk0="$W/work.img"
		record $tool size_full "$(size_of "$repo")"
		ln -f "$CHG" "$W/work.img"; warm "$CHG"
		timed $tool incr "${pw[@]}" vmvault-capture file -q --repo "$repo" --vm bench --disk disk0="$W/work.img" --changed-extents "$W/guest.extents"
		record $tool size_incr "$(size_of "$repo")"
		timed $tool incr_dedup "${pw[@]}" vmvault-capture file -q --repo "$repo" --vm bench --disk disk0="$W/work.img"
		sync; warm_repo "$repo"; timed $tool restore "${pw[@]}" vmvault restore -q --repo "$repo" bench@latest --disk disk0 --to "$out"
		if [ "${CHECKED:-}" != 1 ] || [ "${CHECKED_ENC:-}" != 1 ]; then
			cmp "$out" "$CHG" || { echo "bench-capture: $tool restore differs from the source" >&2; exit 1; }
			[ $tool = vmvault-enc ] && CHECKED_ENC=1
		fi
		rm -f "$out"
		[ $tool = vmvault-enc ] || [ "$2" -gt "${COMPACT_REPS:-1}" ] && return
		# Dense later: every pack recompressed, as a scheduled compact does
		# once restore points are older than --older-than.
		sync; warm_repo "$repo"
		timed $tool compact vmvault compact -q --repo "$repo" --older-than 0 --codec "${COMPACT_CODEC:-zstd-best}"
		record $tool size_compact "$(size_of "$repo")"
		sync; warm_repo "$repo"; timed $tool restore_compact vmvault restore -q --repo "$repo" bench@latest --disk disk0 --to "$out"
		if [ "${CHECKED:-}" != 1 ]; then
			cmp "$out" "$CHG" || { echo "bench-capture: vmvault restore after compaction differs from the source" >&2; exit 1; }
			CHECKED=1
		fi
		;;
	restic)
		restic init -q --repo "$repo" >/dev/null
		warm "$IMG"; timed $tool full restic -q --repo "$repo" backup "$W/work.img"
		record $tool size_full "$(size_of "$repo")"
		ln -f "$CHG" "$W/work.img"; warm "$CHG"
		timed $tool incr restic -q --repo "$repo" backup "$W/work.img"
		record $tool size_incr "$(size_of "$repo")"
		sync; mkdir -p "$out"; warm_repo "$repo"
		timed $tool restore restic -q --repo "$repo" restore latest --sparse --target "$out"
		;;
	borg-lz4 | borg-zstd)
		local comp=lz4; [ $tool = borg-zstd ] && comp=zstd,3
		borg init -e none "$repo"
		warm "$IMG"; timed $tool full borg create --compression $comp "$repo::a" "$W/work.img"
		record $tool size_full "$(size_of "$repo")"
		ln -f "$CHG" "$W/work.img"; warm "$CHG"
		timed $tool incr borg create --compression $comp "$repo::b" "$W/work.img"
		record $tool size_incr "$(size_of "$repo")"
		;;
	esac
	rm -rf "$out"
}

for rep in $(seq 1 "$REPS"); do
	set -- $TOOLS
	[ $((rep % 2)) = 0 ] && set -- $(printf '%s\n' $TOOLS | tac)
	for tool in "$@"; do
		echo "== repetition $rep/$REPS: $tool (load $(cut -d' ' -f1 /proc/loadavg))"
		run_tool "$tool" "$rep"
	done
done

python3 - "$R" "$SIZE" "$TOOLS" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
size = int(sys.argv[2]); tools = sys.argv[3].split()
def vals(tool, step, col):
    return [float(r[col]) for r in rows if r[0] == tool and r[1] == step]
def med(tool, step, col=2):
    v = vals(tool, step, col)
    return st.median(v) if v else None
peers = [t for t in tools if not t.startswith("vmvault")]
metrics = []
for step in ["full", "incr", "incr_dedup", "restore", "compact", "restore_compact"]:
    metrics += [(f"{step} wall s", lambda t, s=step: med(t, s), "min"),
                (f"{step} MB/s", lambda t, s=step: (size / 1e6 / med(t, s)) if med(t, s) else None, "max"),
                (f"{step} CPU s", lambda t, s=step: (med(t, s, 3) + med(t, s, 4)) if med(t, s) else None, "min"),
                (f"{step} peak RSS MiB", lambda t, s=step: (med(t, s, 5) / 1024) if med(t, s) else None, "min")]
metrics += [("repo after full MiB", lambda t: (med(t, "size_full") or 0) / 2**20 or None, "min"),
            ("repo growth MiB", lambda t: ((med(t, "size_incr") or 0) - (med(t, "size_full") or 0)) / 2**20 if med(t, "size_incr") else None, "min"),
            ("repo after both MiB", lambda t: (med(t, "size_incr") or 0) / 2**20 or None, "min"),
            ("repo compacted MiB", lambda t: (med(t, "size_compact") or 0) / 2**20 or None, "min")]
def fmt(v): return "-" if v is None else (f"{v:.1f}" if v < 1000 else f"{v:.0f}")
print(f"\nmedians of {len(vals('vmvault','full',2)) or len(vals(tools[0],'full',2))} repetitions, {size/2**30:.2g} GiB disk image (warm page cache)")
print(f"{'metric':30}" + "".join(f"{t:>12}" for t in tools) + f"{'vmvault/best peer':>20}")
for name, f, better in metrics:
    vs = {t: f(t) for t in tools}
    pv = [vs[t] for t in peers if vs[t] is not None]
    ratio = "-"
    if vs.get("vmvault") is not None and pv:
        best = max(pv) if better == "max" else min(pv)
        ratio = f"{vs['vmvault'] / best:.2f}" if best else "-"
    print(f"{name:30}" + "".join(f"{fmt(vs[t]):>12}" for t in tools) + f"{ratio:>20}")
inc = med("vmvault", "incr"); full = med("vmvault", "full")
print()
if inc and full:
    print(f"vmvault extents incremental / full capture time: {100*inc/full:.1f}% (target <= 5%)")
pf = [med(t, "full") for t in peers if med(t, "full")]
if full and pf:
    print(f"full capture throughput / fastest peer's: {min(pf) / full:.2f} (target >= 1.5)")
if med("vmvault", "full", 5):
    print(f"full capture peak RSS: {med('vmvault', 'full', 5) / 1024:.0f} MiB (target <= 512)")
if med("vmvault", "restore") and med("restic", "restore"):
    print(f"restore / restic's: {med('restic', 'restore') / med('vmvault', 'restore'):.2f}x faster, after compaction "
          f"{med('restic', 'restore') / med('vmvault', 'restore_compact'):.2f}x (target >= 3)")
if med("vmvault-enc", "full") and full:
    print(f"encrypted / unencrypted throughput: full capture {full / med('vmvault-enc', 'full'):.2f} (target >= 0.90), "
          f"restore {med('vmvault', 'restore') / med('vmvault-enc', 'restore'):.2f} (target >= 0.85), "
          f"extents incremental {inc / med('vmvault-enc', 'incr'):.2f}")
    o = med("vmvault-enc", "open")
    print(f"  each command first derives the key from the password (argon2id; 'vmvault key list': {o:.2f} s); without it: "
          f"full capture {full / (med('vmvault-enc', 'full') - o):.2f}, restore {med('vmvault', 'restore') / (med('vmvault-enc', 'restore') - o):.2f}")
dense = med("vmvault", "size_compact")
small = [med(t, "size_incr") for t in ("restic", "borg-zstd") if t in tools and med(t, "size_incr")]
if dense and small:
    print(f"repository after compact / smallest of restic and borg zstd,3: {dense / min(small):.3f} (target <= 1)")
if med("vmvault", "compact"):
    cpu = med("vmvault", "compact", 3) + med("vmvault", "compact", 4)
    print(f"compaction: {cpu:.1f} CPU-s = {cpu / (size / 2**30):.1f} CPU-s per GiB of disk image, "
          f"{cpu / ((med('vmvault', 'size_incr') or 1) / 2**30):.1f} per GiB of repository read; {med('vmvault', 'compact'):.1f} s wall")
PY

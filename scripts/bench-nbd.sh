#!/usr/bin/env bash
# NBD benchmark: 'vmvault serve' of a restore point of the 4 GiB workload
# image (see bench-workload.sh) against qemu-nbd --read-only and nbdkit's
# file plugin serving the raw image file, in one run.
#
# Per repetition, servers alternating:
#   seq      nbdcopy EXPORT null: (whole export; every server reports holes)
#   qd1/qd16 fio --ioengine=nbd randread 4 KiB, 10 s (FIO_SECONDS), iodepth 1 and 16
# over a unix socket and over TCP (127.0.0.1). vmvault is measured with a
# cold chunk cache (server just restarted; the repository files are in the
# page cache, like the peers' image) and warm (cache big enough for the
# disk, filled by a first pass). Then: nbdcopy from a cold disk (page
# cache dropped) for vmvault and qemu-nbd; server RSS with 8 clients reading
# at once (default 256 MiB cache), and boot-to-marker of the tiny boot disk
# (scripts/make-boot-disk.sh) from vmvault and from qemu-nbd.
# Each repetition also times `vmvault verify` of the repository (every chunk
# decoded and checked against its id on all cores, no network): with
# nbdcopy's own CPU time it bounds what a cold pass can reach here.
# The restore point is served twice: fresh, as captured with the capture
# default (vmvault-cold, vmvault-warm), and after 'vmvault compact --codec
# zstd-best' of a copy of the repository (vmvault-dense-cold), each with
# its own verify bound. The codecs' decode+hash CPU time per GiB, measured
# one core at a time on the image's chunks (TestCodecMeasure), gives the
# same bound per codec.
# The same image captured into an encrypted repository ('init --encrypt')
# is served cold and warm and verified too (vmvault-enc-*): its ratios are
# against the unencrypted repository's in the same run.
# Medians and ratios are printed at the end.
#
# Usage: scripts/bench-nbd.sh [REPS]     (default 3)
# Env:   BENCH_DIR (default /var/tmp/vmvault-bench), COMPACT_CODEC (default
#        zstd-best), CODECS (measured, default "none s2 auto zstd-fastest
#        zstd-best"; empty: skip), BENCH_SMALL=1 (a 512 MiB workload, to
#        check the script works; not a measurement)
set -euo pipefail
REPS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${BENCH_DIR:-/var/tmp/vmvault-bench}
BIN=$W/bin
mkdir -p "$W" "$BIN"
export PATH=$BIN:/usr/sbin:/sbin:$PATH
need() { command -v "$1" >/dev/null || { echo "bench-nbd: missing $1 ($2)" >&2; exit 1; }; }
need nbdcopy "apt-get install libnbd-bin"
need fio "apt-get install fio"
need qemu-nbd "apt-get install qemu-utils"
need nbdkit "apt-get install nbdkit"
need qemu-system-x86_64 "apt-get install qemu-system-x86"
need sfdisk "apt-get install fdisk"
[ -x /usr/bin/time ] || { echo "bench-nbd: missing /usr/bin/time (apt-get install time)" >&2; exit 1; }

echo "== building vmvault and the workload tool"
(cd "$ROOT" && go build -o "$BIN/" ./cmd/vmvault ./cmd/vmvault-capture && go build -o "$BIN/workload" ./scripts/workload)
IMG=$W/base.img CHG=$W/changed.img
. "$ROOT/scripts/bench-workload.sh"
SIZE=$(stat -c %s "$IMG")

export VMVAULT_REPOSITORY=$W/nbd-repo
DENSE=$W/nbd-repo-dense ENC=$W/nbd-repo-enc
# The encrypted repository's password; unencrypted ones never ask for it.
echo bench-only-not-a-secret >"$W/bench.password"
chmod 600 "$W/bench.password"
export VMVAULT_PASSWORD_FILE=$W/bench.password
CODEC=$(vmvault init --help | sed -n 's/.*--compression string.*(default "\([a-z0-9-]*\)").*/\1/p')
WL_MARK="$(cat "$W/workload.done") codec=$CODEC encrypted-copy"
if [ "$(cat "$W/nbd-repo.done" 2>/dev/null)" != "$WL_MARK" ]; then
	echo "== capturing the workload image with the capture default ($CODEC)"
	rm -rf "$VMVAULT_REPOSITORY" "$DENSE" "$ENC" "$W/nbd-repo-dense.done" "$W/boot.raw"
	vmvault init -q >/dev/null
	vmvault-capture -q file --vm bench --disk disk0="$IMG" >/dev/null
	vmvault init -q --repo "$ENC" --encrypt >/dev/null
	vmvault-capture -q file --repo "$ENC" --vm bench --disk disk0="$IMG" >/dev/null
	echo "$WL_MARK" >"$W/nbd-repo.done"
fi
BOOT=$W/boot.raw
if ! [ -f "$BOOT" ]; then
	"$ROOT/scripts/make-boot-disk.sh" "$BOOT" >/dev/null
	vmvault-capture -q file --vm tiny --disk disk0="$BOOT" >/dev/null
fi
if ! [ -f "$W/nbd-repo-dense.done" ]; then
	echo "== compacting a copy of the repository with ${COMPACT_CODEC:-zstd-best}"
	rm -rf "$DENSE" && cp -a "$VMVAULT_REPOSITORY" "$DENSE"
	vmvault compact -q --repo "$DENSE" --older-than 0 --codec "${COMPACT_CODEC:-zstd-best}" --json >"$W/nbd-compact.json"
	touch "$W/nbd-repo-dense.done"
fi
warm() { find "$VMVAULT_REPOSITORY" "$DENSE" "$ENC" -type f -print0 | xargs -0 cat >/dev/null; cat "$IMG" "$BOOT" >/dev/null; }

S=$W/sock
mkdir -p "$S"
PORT_V=10911 PORT_Q=10912 PORT_K=10913
VPID=""
start_vmvault() { # CACHE [REPOSITORY]
	stop_vmvault
	vmvault serve --repo "${2:-$VMVAULT_REPOSITORY}" --socket "$S/vmvault" --listen 127.0.0.1:$PORT_V --memory-cache "$1" 2>"$W/serve.log" &
	VPID=$!
	for _ in $(seq 200); do [ -S "$S/vmvault" ] && nbdinfo --size "nbd+unix:///bench@latest/disk0?socket=$S/vmvault" >/dev/null 2>&1 && return; sleep 0.05; done
	echo "vmvault serve did not start" >&2; cat "$W/serve.log" >&2; exit 1
}
stop_vmvault() { if [ -n "$VPID" ]; then kill -TERM "$VPID" 2>/dev/null || true; wait "$VPID" 2>/dev/null || true; VPID=""; fi; }
QPIDS=()
cleanup() { stop_vmvault; for p in "${QPIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$S"; }
trap cleanup EXIT
qemu-nbd --read-only --format=raw --persistent --shared=32 --socket="$S/qemu" "$IMG" & QPIDS+=($!)
qemu-nbd --read-only --format=raw --persistent --shared=32 --bind=127.0.0.1 --port=$PORT_Q "$IMG" & QPIDS+=($!)
nbdkit -f -r -U "$S/nbdkit" file file="$IMG" & QPIDS+=($!)
nbdkit -f -r -i 127.0.0.1 -p $PORT_K file file="$IMG" & QPIDS+=($!)
sleep 1

uri() { # SERVER TRANSPORT
	local exp=""
	[ "$1" = vmvault ] && exp=bench@latest/disk0
	case "$2" in
	unix) echo "nbd+unix:///$exp?socket=$S/$1" ;;
	tcp) case "$1" in vmvault) echo "nbd://127.0.0.1:$PORT_V/$exp" ;; qemu) echo "nbd://127.0.0.1:$PORT_Q/" ;; nbdkit) echo "nbd://127.0.0.1:$PORT_K/" ;; esac ;;
	esac
}
R=$W/nbd-results.tsv
: >"$R"
seq_read() { # LABEL URI
	local t0 t1
	t0=$(date +%s.%N)
	/usr/bin/time -f "%U %S" -o "$W/nbdcopy.time" nbdcopy "$2" null:
	t1=$(date +%s.%N)
	echo "$1 seq $(echo "$SIZE / ($t1 - $t0) / 1000000" | bc -l)" >>"$R"
	echo "$1 client_cpu $(awk '{print $1 + $2}' "$W/nbdcopy.time")" >>"$R"
}
rand_read() { # LABEL URI QD
	local iops
	iops=$(fio --name=r --ioengine=nbd --uri="$2" --rw=randread --bs=4k --iodepth="$3" --runtime="${FIO_SECONDS:-10}" --time_based \
		--size="$SIZE" --output-format=json 2>/dev/null | python3 -c 'import json,sys; s=sys.stdin.read(); print(json.loads(s[s.index("{"):])["jobs"][0]["read"]["iops"])')
	echo "$1 qd$3 $iops" >>"$R"
}

for rep in $(seq "$REPS"); do
	echo "== repetition $rep/$REPS (load $(cut -d' ' -f1 /proc/loadavg))"
	# The work a cold pass cannot skip, without any network: vmvault verify
	# decodes every chunk and checks it against its id on all cores.
	warm
	t0=$(date +%s.%N)
	vmvault verify -q >/dev/null
	echo "verify wall $(echo "$(date +%s.%N) - $t0" | bc -l)" >>"$R"
	t0=$(date +%s.%N)
	vmvault verify -q --repo "$DENSE" >/dev/null
	echo "verify-dense wall $(echo "$(date +%s.%N) - $t0" | bc -l)" >>"$R"
	t0=$(date +%s.%N)
	vmvault verify -q --repo "$ENC" >/dev/null
	echo "verify-enc wall $(echo "$(date +%s.%N) - $t0" | bc -l)" >>"$R"
	t0=$(date +%s.%N) # opening alone: the password's key derivation
	vmvault key list --repo "$ENC" >/dev/null
	echo "open-enc wall $(echo "$(date +%s.%N) - $t0" | bc -l)" >>"$R"
	for tr in unix tcp; do
		for srv in vmvault-cold qemu nbdkit vmvault-warm vmvault-dense-cold vmvault-enc-cold vmvault-enc-warm; do
			# Right before each server's runs: this machine pages out what
			# sat idle for a minute, and one server's runs take longer.
			warm
			case $srv in
			vmvault-cold) start_vmvault 256MiB; u=$(uri vmvault $tr) ;;
			vmvault-warm) start_vmvault 5GiB; nbdcopy "$(uri vmvault $tr)" null:; u=$(uri vmvault $tr) ;;
			vmvault-dense-cold) start_vmvault 256MiB "$DENSE"; u=$(uri vmvault $tr) ;;
			vmvault-enc-cold) start_vmvault 256MiB "$ENC"; u=$(uri vmvault $tr) ;;
			vmvault-enc-warm) start_vmvault 5GiB "$ENC"; nbdcopy "$(uri vmvault $tr)" null:; u=$(uri vmvault $tr) ;;
			*) u=$(uri $srv $tr) ;;
			esac
			seq_read "$srv-$tr" "$u"
			[ $srv = vmvault-cold ] && start_vmvault 256MiB # random reads cold too
			[ $srv = vmvault-dense-cold ] && start_vmvault 256MiB "$DENSE"
			[ $srv = vmvault-enc-cold ] && start_vmvault 256MiB "$ENC"
			rand_read "$srv-$tr" "$u" 1
			rand_read "$srv-$tr" "$u" 16
		done
	done
done

if [ "$(id -u)" = 0 ]; then
	echo "== sequential read from a cold disk (page cache dropped; unix socket)"
	drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
	for rep in $(seq "$REPS"); do
		start_vmvault 256MiB
		drop
		seq_read vmvault-disk-unix "$(uri vmvault unix)"
		start_vmvault 256MiB "$DENSE"
		drop
		seq_read vmvault-dense-disk-unix "$(uri vmvault unix)"
		start_vmvault 256MiB "$ENC"
		drop
		seq_read vmvault-enc-disk-unix "$(uri vmvault unix)"
		drop
		seq_read qemu-disk-unix "$(uri qemu unix)"
	done
else
	echo "== sequential read from a cold disk: skipped (dropping the page cache needs root)"
fi

echo "== server RSS with 8 clients (256 MiB cache)"
start_vmvault 256MiB
pids=()
for i in $(seq 8); do nbdcopy "$(uri vmvault unix)" null: & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
RSS=$(awk '/VmHWM/ {print $2}' /proc/$VPID/status)
echo "vmvault rss8 $((RSS / 1024))" >>"$R"

echo "== boot to marker"
boot() { # URI
	local t0 t1
	t0=$(date +%s.%N)
	timeout 300 qemu-system-x86_64 -machine pc,accel=tcg -m 256 -smp 1 -display none -no-reboot -monitor none -nodefaults \
		-serial stdio -drive "file=$1,format=raw,if=virtio,snapshot=on" | grep -q VMVAULT-BOOT-OK
	t1=$(date +%s.%N)
	echo "$t1 - $t0" | bc -l
}
qemu-nbd --read-only --format=raw --persistent --shared=8 --socket="$S/qemu-boot" "$BOOT" & QPIDS+=($!)
sleep 0.5
for rep in $(seq "$REPS"); do
	start_vmvault 256MiB
	echo "boot vmvault $(boot "nbd+unix:///tiny@latest/disk0?socket=$S/vmvault")" >>"$R"
	echo "boot qemu $(boot "nbd+unix:///?socket=$S/qemu-boot")" >>"$R"
done
stop_vmvault

# Decode+hash CPU per GiB of each codec, one core at a time, on the image's
# chunks (the same sample for every codec).
CODECS=${CODECS-none s2 auto zstd-fastest zstd-best}
: >"$W/codecs.tsv"
if [ -n "$CODECS" ]; then
	echo "== codecs on the image's chunks, one core ($CODECS)"
	(cd "$ROOT" && GOMAXPROCS=1 VMVAULT_CODEC_IMAGE="$IMG" VMVAULT_CODEC_SAMPLE=512 VMVAULT_CODEC_CODECS="$(echo $CODECS | tr ' ' ,)" \
		VMVAULT_CODEC_OUT="$W/codecs.tsv" go test -count=1 -run TestCodecMeasure -timeout 30m ./repo/format >/dev/null)
fi
DATA=$(vmvault stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["unique_bytes"])')

python3 - "$R" "$SIZE" "$W/codecs.tsv" "$DATA" "$W/nbd-compact.json" <<'EOF'
import json, os, sys, statistics as st
size = int(sys.argv[2])
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = {}
for k1, k2, v in rows:
    med.setdefault((k1, k2), []).append(float(v))
m = {k: st.median(v) for k, v in med.items()}
n = {k: len(v) for k, v in med.items()}
def g(a, b): return m.get((a, b))
print("\nmedians of %d repetitions (unix socket and TCP to 127.0.0.1)\n" % max(n.values()))
print("%-9s %-18s %12s %12s %12s" % ("transport", "server", "seq MB/s", "QD1 IOPS", "QD16 IOPS"))
for tr in ("unix", "tcp"):
    for srv in ("vmvault-cold", "vmvault-warm", "vmvault-dense-cold", "vmvault-enc-cold", "vmvault-enc-warm", "qemu", "nbdkit"):
        k = srv + "-" + tr
        print("%-9s %-18s %12.0f %12.0f %12.0f" % (tr, srv, g(k, "seq"), g(k, "qd1"), g(k, "qd16")))
print()
for tr in ("unix", "tcp"):
    q, k, c, w = "qemu-" + tr, "nbdkit-" + tr, "vmvault-cold-" + tr, "vmvault-warm-" + tr
    d = "vmvault-dense-cold-" + tr
    print("%s: seq cold/qemu-nbd %.2f (target >= 0.70), compacted cold/qemu-nbd %.2f (>= 0.50), warm/qemu-nbd %.2f (>= 0.90); QD16 warm/qemu-nbd %.2f (>= 1), warm/nbdkit %.2f (>= 0.40); QD1 warm/qemu-nbd %.2f"
          % (tr, g(c, "seq") / g(q, "seq"), g(d, "seq") / g(q, "seq"), g(w, "seq") / g(q, "seq"), g(w, "qd16") / g(q, "qd16"), g(w, "qd16") / g(k, "qd16"), g(w, "qd1") / g(q, "qd1")))
# Bound for a cold pass: decoding and checking every chunk (verify's wall
# time on all cores) plus nbdcopy's own CPU time shared out over the cores.
cores = os.cpu_count()
bound = size / (g("verify", "wall") + g("vmvault-cold-unix", "client_cpu") / cores) / 1e6
print("cold pass bound (unix): verify of every chunk %.2f s + nbdcopy CPU %.2f s / %d cores -> at most %.0f MB/s = %.2f of qemu-nbd"
      % (g("verify", "wall"), g("vmvault-cold-unix", "client_cpu"), cores, bound, bound / g("qemu-unix", "seq")))
bound = size / (g("verify-dense", "wall") + g("vmvault-dense-cold-unix", "client_cpu") / cores) / 1e6
print("compacted cold pass bound (unix): verify %.2f s + nbdcopy CPU %.2f s / %d cores -> at most %.0f MB/s = %.2f of qemu-nbd"
      % (g("verify-dense", "wall"), g("vmvault-dense-cold-unix", "client_cpu"), cores, bound, bound / g("qemu-unix", "seq")))
for tr in ("unix", "tcp"):
    c, w, ec, ew = "vmvault-cold-" + tr, "vmvault-warm-" + tr, "vmvault-enc-cold-" + tr, "vmvault-enc-warm-" + tr
    print("%s: encrypted/unencrypted seq cold %.2f (target >= 0.85), warm %.2f (>= 0.95); QD16 cold %.2f, warm %.2f"
          % (tr, g(ec, "seq") / g(c, "seq"), g(ew, "seq") / g(w, "seq"), g(ec, "qd16") / g(c, "qd16"), g(ew, "qd16") / g(w, "qd16")))
print("verify: unencrypted %.2f s, encrypted %.2f s, throughput ratio %.2f (target >= 0.85); the encrypted one first derives its key (key list: %.2f s), without it %.2f"
      % (g("verify", "wall"), g("verify-enc", "wall"), g("verify", "wall") / g("verify-enc", "wall"), g("open-enc", "wall"),
         g("verify", "wall") / (g("verify-enc", "wall") - g("open-enc", "wall"))))
bound = size / (g("verify-enc", "wall") + g("vmvault-enc-cold-unix", "client_cpu") / cores) / 1e6
print("encrypted cold pass bound (unix): verify %.2f s + nbdcopy CPU %.2f s / %d cores -> at most %.0f MB/s = %.2f of qemu-nbd"
      % (g("verify-enc", "wall"), g("vmvault-enc-cold-unix", "client_cpu"), cores, bound, bound / g("qemu-unix", "seq")))
try:
    c = json.load(open(sys.argv[5]))
    print("compaction of the copy (%s): %s -> %s bytes of packs, %.1f CPU-s, %.1f s"
          % (c["codec"], c["pack_bytes_removed"], c["pack_bytes_written"], c["cpu_seconds"], c["seconds"]))
except (OSError, ValueError, KeyError):
    pass
# Per codec: decode+hash of the repository's data (unique_bytes) at the
# codec's one-core rate shared out over the cores, plus nbdcopy's CPU.
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[3]) if l.strip()]
data = int(sys.argv[4])
if len(rows) > 1:
    print("\ndecode+hash bound per codec (one-core CPU-s per GiB of chunk data, measured on the image's chunks;"
          " %.2f GiB of data, %d cores, nbdcopy CPU %.2f s):" % (data / 2**30, cores, g("vmvault-cold-unix", "client_cpu")))
    print("%-14s %7s %10s %14s %12s %10s" % ("codec", "ratio", "raw share", "CPU-s per GiB", "bound MB/s", "of qemu-nbd"))
    head = rows[0]
    for r in rows[1:]:
        v = dict(zip(head, r))
        cpu = float(v["decode_hash_cpu_s_per_GiB"]) * data / 2**30
        b = size / (cpu / cores + g("vmvault-cold-unix", "client_cpu") / cores) / 1e6
        print("%-14s %7s %10s %14.3f %12.0f %10.2f" % (v["codec"], v["ratio"], v["raw_share"], float(v["decode_hash_cpu_s_per_GiB"]), b, b / g("qemu-unix", "seq")))
if g("vmvault-disk-unix", "seq"):
    print("\nfrom a cold disk (page cache dropped, unix): vmvault %.0f MB/s, compacted %.0f MB/s, encrypted %.0f MB/s, qemu-nbd %.0f MB/s; ratios to qemu-nbd %.2f, %.2f, %.2f; encrypted/unencrypted %.2f"
          % (g("vmvault-disk-unix", "seq"), g("vmvault-dense-disk-unix", "seq"), g("vmvault-enc-disk-unix", "seq"), g("qemu-disk-unix", "seq"),
             g("vmvault-disk-unix", "seq") / g("qemu-disk-unix", "seq"), g("vmvault-dense-disk-unix", "seq") / g("qemu-disk-unix", "seq"),
             g("vmvault-enc-disk-unix", "seq") / g("qemu-disk-unix", "seq"), g("vmvault-enc-disk-unix", "seq") / g("vmvault-disk-unix", "seq")))
print("server RSS with 8 clients, 256 MiB cache: %.0f MiB (target <= 320)" % g("vmvault", "rss8"))
print("boot to marker: vmvault %.2f s, qemu-nbd %.2f s, ratio %.2f (target <= 1.2)" % (g("boot", "vmvault"), g("boot", "qemu"), g("boot", "vmvault") / g("boot", "qemu")))
EOF

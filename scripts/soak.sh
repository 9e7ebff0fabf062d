#!/usr/bin/env bash
# soak.sh — day-2 operations at the same time, in loops, for SOAK_SECONDS
# (default 120): captures of 3 VMs (full, changed-extents and dedup),
# prune + gc with no grace, verify, an NBD client (nbdcopy of each VM's
# newest restore point through 'vmvault serve') and a FUSE reader (the
# newest raw disk of each VM through 'vmvault mount'). Every read is
# compared with the SHA-256 of what its restore point captured; at the end
# every remaining restore point restores byte-identical and verify is
# clean. Prints the figures and exits non-zero on any error.
#
# Needs: nbdcopy (libnbd-bin); root and /dev/fuse for the mount (without
# them the FUSE reader is left out, and said so). SOAK_KEEP=1 keeps the
# work directory (repository, images, logs) for a look afterwards.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${SOAK_SECONDS:-120}
W=$(mktemp -d /var/tmp/vmvault-soak.XXXXXX)
[ -n "${SOAK_KEEP:-}" ] && echo "soak: keeping $W"
BIN=$W/bin
mkdir -p "$BIN" "$W/sha" "$W/log" "$W/mnt"
export PATH=$BIN:/usr/sbin:/sbin:$PATH VMVAULT_REPOSITORY=$W/repo
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	mountpoint -q "$W/mnt" && umount -l "$W/mnt"
	[ -n "${SOAK_KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
command -v nbdcopy >/dev/null || { echo "soak: nbdcopy missing (apt-get install libnbd-bin)" >&2; exit 1; }
(cd "$ROOT" && go build -o "$BIN/" ./cmd/vmvault ./cmd/vmvault-capture)
vmvault init --chunk-size 64KiB >/dev/null

SIZE=$((24 << 20))
END=$((SECONDS + SECS))
fail() { echo "soak: FAIL: $*" | tee -a "$W/log/errors" >&2; }

# capture_loop VM: change the image, capture (every third a full dedup
# read, else the changed extents), record the SHA-256 under the new id.
capture_loop() {
	local vm=$1 img=$W/$1.img n=0 ext=$W/$1.ext
	head -c $SIZE /dev/urandom >"$img"
	while [ $SECONDS -lt $END ]; do
		: >"$ext"
		for _ in 1 2 3; do
			local off=$(( (RANDOM * 32768 + RANDOM) % (SIZE - 65536) ))
			head -c 65536 /dev/urandom | dd of="$img" bs=64K seek=$off oflag=seek_bytes conv=notrunc status=none
			printf '%d\t65536\n' $off >>"$ext"
		done
		if [ $((n % 7)) = 3 ]; then # content another VM has: reuse of stored chunks
			dd if="$W/vm1.img" of="$img" bs=1M count=2 conv=notrunc status=none 2>/dev/null || true
			printf '0\t2097152\n' >>"$ext"
		fi
		local sum args=(--vm "$vm" --disk disk0="$img" --json -q)
		sum=$(sha256sum <"$img" | cut -d' ' -f1)
		[ $((n % 3)) != 0 ] && args+=(--changed-extents disk0="$ext")
		local out
		if out=$(vmvault-capture file "${args[@]}" 2>>"$W/log/capture-$vm"); then
			local id
			id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$out")
			echo "$sum" >"$W/sha/$id"
			echo ok >>"$W/log/captures"
		else
			fail "capture $vm: $(tail -1 "$W/log/capture-$vm")"
		fi
		n=$((n + 1))
		sleep 0.$((RANDOM % 10))
	done
}

# newest ID of VM, from the repository.
newest() {
	vmvault snapshots --vm "$1" --json 2>/dev/null | python3 -c 'import json,sys; l=json.load(sys.stdin); print(l[-1]["id"] if l else "")'
}

prune_loop() {
	while [ $SECONDS -lt $END ]; do
		if out=$(vmvault prune --keep-last 3 --grace 0 --lock-wait 10s --json 2>>"$W/log/prune"); then
			python3 -c 'import json,sys; print(json.load(sys.stdin)["gc"]["removed_chunks"])' <<<"$out" >>"$W/log/swept"
		else
			fail "prune: $(tail -1 "$W/log/prune")"
		fi
		sleep 1
	done
}

verify_loop() {
	while [ $SECONDS -lt $END ]; do
		if vmvault verify -q >>"$W/log/verify" 2>&1; then echo ok >>"$W/log/verifies"; else fail "verify: $(tail -3 "$W/log/verify")"; fi
		sleep 2
	done
}

# check WHAT ID FILE: FILE's SHA-256 must be what ID captured.
check() {
	local want got
	want=$(cat "$W/sha/$2" 2>/dev/null || true)
	[ -n "$want" ] || return 0 # captured while its capture was still reporting
	got=$(sha256sum <"$3" | cut -d' ' -f1)
	[ "$got" = "$want" ] || fail "$1 of ${2:0:8} read wrong data"
}

nbd_loop() {
	local s=$W/nbd.sock
	while [ $SECONDS -lt $END ]; do
		for vm in vm1 vm2 vm3; do
			local id
			id=$(newest $vm)
			[ -n "$id" ] || continue
			if nbdcopy "nbd+unix:///$vm/$id/disk0?socket=$s" "$W/nbd.out" 2>>"$W/log/nbd"; then
				check nbd "$id" "$W/nbd.out"
				echo ok >>"$W/log/nbdreads"
			elif vmvault snapshots --json | grep -q "$id"; then
				fail "nbd read of $vm/${id:0:8}, which exists: $(tail -1 "$W/log/nbd")"
			else
				echo forgotten >>"$W/log/nbdreads-forgotten" # forgotten before it was opened
			fi
		done
	done
}

fuse_loop() {
	while [ $SECONDS -lt $END ]; do
		for vm in vm1 vm2 vm3; do
			local d short id
			d=$(readlink "$W/mnt/$vm/latest" 2>>"$W/log/fuse") || continue
			short=${d##*_}
			# (|| true: under pipefail a grep that finds nothing, for a
			# restore point whose capture has not reported yet, would end
			# this loop)
			id=$(cd "$W/sha" && ls | grep "^$short" | head -1 || true)
			[ -n "$id" ] || { echo "no record for $vm/$short" >>"$W/log/fuse"; continue; }
			if cat "$W/mnt/$vm/$d/disks/disk0.raw" >"$W/fuse.out" 2>>"$W/log/fuse"; then
				check fuse "$id" "$W/fuse.out"
				echo ok >>"$W/log/fusereads"
			elif [ -e "$W/mnt/$vm/$d" ]; then
				fail "FUSE read of $vm/$short: $(tail -1 "$W/log/fuse")"
			fi
		done
		sleep 0.5
	done
}

echo "== soak for ${SECS}s in $W"
vmvault serve --socket "$W/nbd.sock" --listen "" 2>"$W/log/serve" &
pids+=($!)
for _ in $(seq 100); do [ -S "$W/nbd.sock" ] && break; sleep 0.1; done
fuse=no
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then
	vmvault mount "$W/mnt" 2>"$W/log/mount" &
	pids+=($!)
	for _ in $(seq 100); do mountpoint -q "$W/mnt" && break; sleep 0.1; done
	mountpoint -q "$W/mnt" || { cat "$W/log/mount" >&2; echo "soak: the mount did not come up" >&2; exit 1; }
	fuse=yes
else
	echo "soak: not root or no /dev/fuse: the FUSE reader is left out"
fi
loops=()
for vm in vm1 vm2 vm3; do capture_loop $vm & loops+=($!); done
prune_loop & loops+=($!)
verify_loop & loops+=($!)
nbd_loop & loops+=($!)
[ $fuse = yes ] && { fuse_loop & loops+=($!); }
# every loop ends by itself after its last round past the deadline
for p in "${loops[@]}"; do wait "$p" || true; done
mountpoint -q "$W/mnt" && umount "$W/mnt"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
pids=()

echo "== final checks"
vmvault gc --grace 0 -q >/dev/null
n=0
for id in $(vmvault snapshots --json | python3 -c 'import json,sys; print(" ".join(r["id"] for r in json.load(sys.stdin)))'); do
	vmvault restore -q "$id" --to "$W/final.raw" --overwrite >/dev/null
	check restore "$id" "$W/final.raw"
	n=$((n + 1))
done
vmvault verify -q >"$W/log/final-verify" 2>&1 || fail "final verify: $(cat "$W/log/final-verify")"
count() { [ -f "$1" ] && wc -l <"$1" || echo 0; }
swept=$(awk '{s += $1} END {print s + 0}' "$W/log/swept" 2>/dev/null || echo 0)
errors=$(count "$W/log/errors")
echo "soak: ${SECS}s; captures $(count "$W/log/captures"), prune+gc runs $(count "$W/log/swept"), chunks swept $swept," \
	"verify runs $(count "$W/log/verifies"), NBD reads $(count "$W/log/nbdreads") (+$(count "$W/log/nbdreads-forgotten") forgotten before open)," \
	"FUSE reads $(count "$W/log/fusereads") (mount: $fuse); restore points left $n, all byte-identical; errors: $errors"
# A reader that never read tested nothing.
for what in captures nbdreads $([ $fuse = yes ] && echo fusereads); do
	[ "$(count "$W/log/$what")" -gt 0 ] || { echo "soak: FAIL: no $what in ${SECS}s" >&2; errors=$((errors + 1)); }
done
[ "$errors" = 0 ]

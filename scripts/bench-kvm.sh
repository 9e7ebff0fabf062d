#!/usr/bin/env bash
# KVM/QEMU capture benchmark, one run, as root with libvirtd running
# (.ci/run shows how to start it by hand):
#
#  A. libvirt: a running TCG domain whose disk is the capture benchmark's
#     4 GiB workload image (scripts/bench-workload.sh) converted to qcow2.
#     vmvault-capture libvirt against virtnbdbackup on the same domain
#     definition, each tool on a fresh copy of the disk: full backup, then
#     ~1% scattered guest writes (the workload's 640 × 64 KiB, written
#     through QEMU with HMP qemu-io), then an incremental.
#  B. QMP: the same disk under a plain qemu-system-x86_64:
#     vmvault-capture qemu full and incremental, against qemu-img convert
#     -O raw of a point-in-time export set up the same way (backup
#     sync=none into an overlay, exported by QEMU's NBD server): a raw copy
#     that neither compresses nor dedups.
#
# The guests run TCG and boot a 36-byte multiboot kernel whose CPU halts:
# an idle VM (the workload image does not boot), whose disk belongs to a
# running QEMU, which is what the capture paths need; the writes go
# through QEMU's block layer like a guest's. BENCH_KVM_BUSY=1 leaves the
# guests in SeaBIOS instead, which finds no bootable disk and spins one
# of the host's CPUs (5 CPU-s in 5 s here) for the whole run.
#
# Reported: medians of wall time per step, the ratios the issue asks for
# (virtnbdbackup full / vmvault full >= 1.5, qemu-img convert / vmvault
# qemu full >= 1, vmvault incremental / full <= 5%, repository growth of
# the incremental <= 1.2 × the dirty bytes), and the commands.
#
# Usage: scripts/bench-kvm.sh [REPS]            (default 3)
# Env:   BENCH_DIR (default /var/tmp/vmvault-bench; shares the workload
#        with bench-capture.sh), BENCH_KVM_MIB (e.g. 256: a small synthetic
#        disk instead of the 4 GiB workload, to check the script end to
#        end), VMVAULT_INIT_FLAGS (default "--chunk-size 64KiB": the
#        writes are 64 KiB, so larger chunks store more than was written),
#        BENCH_KVM_BUSY=1 (guests spinning in SeaBIOS, see above).
set -euo pipefail
REPS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${BENCH_DIR:-/var/tmp/vmvault-bench}
BIN=$W/bin
K=$W/kvm
INIT_FLAGS=${VMVAULT_INIT_FLAGS:---chunk-size 64KiB}
mkdir -p "$W" "$BIN" "$K"
export PATH=$BIN:/usr/sbin:/sbin:$PATH

need() { command -v "$1" >/dev/null || { echo "bench-kvm: missing $1 ($2)" >&2; exit 1; }; }
need virsh "apt-get install libvirt-clients libvirt-daemon-system"
need virtnbdbackup "apt-get install virtnbdbackup"
need qemu-system-x86_64 "apt-get install qemu-system-x86"
need qemu-img "apt-get install qemu-utils"
need python3 "apt-get install python3"
[ -x /usr/bin/time ] || { echo "bench-kvm: missing /usr/bin/time (apt-get install time)" >&2; exit 1; }
virsh -c qemu:///system version >/dev/null 2>&1 || { echo "bench-kvm: libvirtd is not running (/usr/sbin/virtlogd -d; /usr/sbin/libvirtd -d)" >&2; exit 1; }
VIRSH="virsh -q -c qemu:///system"

echo "== building vmvault"
(cd "$ROOT" && go build -o "$BIN/" ./cmd/vmvault ./cmd/vmvault-capture && go build -o "$BIN/workload" ./scripts/workload)

# --- the disk and the writes: $K/disk.qcow2, $K/writes.tsv (offset, length, data file)
rm -rf "$K/writes" && mkdir -p "$K/writes"
if [ -n "${BENCH_KVM_MIB:-}" ]; then
	echo "== building a small synthetic disk of $BENCH_KVM_MIB MiB"
	python3 - "$K/src.raw" "$BENCH_KVM_MIB" "$K/writes" <<'PY'
import random, sys
path, mib, wdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
size = mib << 20
rng = random.Random(20261207)
with open(path, "wb") as f:
    f.truncate(size)
    f.seek(1 << 20)
    f.write(rng.randbytes(size * 4 // 10))
    f.write(b"".join(b"line %d of a log file, some text\n" % i for i in range(size // 5 // 34)))
# ~1% of the disk in 64 KiB writes at seeded offsets in the data area
n = max(1, size // 100 // (64 << 10))
with open(wdir + "/../writes.tsv", "w") as out:
    for i, off in enumerate(sorted(rng.sample(range(16, size * 6 // 10 // (64 << 10)), n))):
        p = f"{wdir}/{i}.bin"
        open(p, "wb").write(rng.randbytes(64 << 10))
        out.write(f"{off * (64 << 10)}\t{64 << 10}\t{p}\n")
PY
	qemu-img convert -f raw -O qcow2 "$K/src.raw" "$K/disk.qcow2"
	rm -f "$K/src.raw"
else
	IMG=$W/base.img CHG=$W/changed.img
	. "$ROOT/scripts/bench-workload.sh"
	if ! [ -f "$K/disk.done" ]; then
		echo "== converting the workload image to qcow2"
		qemu-img convert -f raw -O qcow2 "$IMG" "$K/disk.qcow2"
		touch "$K/disk.done"
	fi
	i=0
	while read -r off len; do
		dd if="$CHG" of="$K/writes/$i.bin" bs=64K iflag=skip_bytes,count_bytes skip="$off" count="$len" status=none
		printf '%s\t%s\t%s\n' "$off" "$len" "$K/writes/$i.bin"
		i=$((i + 1))
	done <"$W/guest.extents" >"$K/writes.tsv"
fi
# The idle guest: a multiboot (a.out kludge) kernel loaded at 1 MiB whose
# entry point is "cli; hlt; jmp .-1".
python3 - "$K/idle.mb" <<'PY'
import struct, sys
magic, flags = 0x1BADB002, 0x00010000
head = struct.pack("<8I", magic, flags, -(magic + flags) & 0xffffffff, 0x100000, 0x100000, 0, 0, 0x100020)
open(sys.argv[1], "wb").write(head + bytes([0xfa, 0xf4, 0xeb, 0xfd]) + bytes(512 - len(head) - 4))
PY
KERNEL_XML="<kernel>$K/idle.mb</kernel>" KERNEL_ARGS=(-kernel "$K/idle.mb")
if [ "${BENCH_KVM_BUSY:-}" = 1 ]; then KERNEL_XML= KERNEL_ARGS=(); fi
chmod -R a+rX "$K" # QEMU under libvirt runs as libvirt-qemu
for d in "$K" "$W"; do chmod a+x "$d"; done
DIRTY=$(awk '{s += $2} END {print s}' "$K/writes.tsv")
NWRITES=$(wc -l <"$K/writes.tsv")
SIZE=$(qemu-img info --output=json "$K/disk.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
echo "disk: $((SIZE >> 20)) MiB qcow2, $(du -h "$K/disk.qcow2" | cut -f1) allocated; $NWRITES writes, $DIRTY bytes"

# qmp SOCK JSON...: runs QMP commands, prints each answer's "return"
cat >"$K/qmp.py" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
def cmd(c):
    f.write(json.dumps(c) + "\n"); f.flush()
    while True:
        m = json.loads(f.readline())
        if "return" in m: return m["return"]
        if "error" in m: sys.exit("QMP %s: %s" % (c["execute"], m["error"]["desc"]))
json.loads(f.readline()); cmd({"execute": "qmp_capabilities"})
for a in sys.argv[2:]:
    print(json.dumps(cmd(json.loads(a))))
PY
qmp() { python3 "$K/qmp.py" "$@"; }

R=$K/results.tsv
: >"$R"
# timed NAME CMD...: appends "name wall user sys rss_kb"
timed() {
	local name=$1; shift
	/usr/bin/time -f "%e %U %S %M" -o "$K/time.out" "$@" >"$K/cmd.out" 2>"$K/cmd.err" || { cat "$K/cmd.out" "$K/cmd.err" >&2; echo "bench-kvm: $name failed: $*" >&2; exit 1; }
	echo "$name $(cat "$K/time.out")" >>"$R"
	echo "   $name: $(cut -d' ' -f1 "$K/time.out") s"
}
record() { echo "$1 $2" >>"$R"; }
warm() { cat "$1" >/dev/null; }

DOM=vmvault-bench-kvm
cleanup_domain() {
	$VIRSH destroy $DOM >/dev/null 2>&1 || true
	$VIRSH undefine $DOM --checkpoints-metadata >/dev/null 2>&1 || true
}
QPID=
cleanup() {
	cleanup_domain
	[ -n "$QPID" ] && kill "$QPID" 2>/dev/null || true
	rm -rf "$K/run" "$K/repo" "$K/vbk" "$K/raw.out"
}
trap cleanup EXIT

# start_domain: a fresh copy of the disk under a libvirt TCG domain
start_domain() {
	cleanup_domain
	rm -rf "$K/run" && mkdir -p "$K/run" && chmod 755 "$K/run"
	cp --sparse=always "$K/disk.qcow2" "$K/run/disk.qcow2"
	cat >"$K/run/dom.xml" <<EOF
<domain type='qemu'><name>$DOM</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type>$KERNEL_XML</os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$K/run/disk.qcow2'/><target dev='vda' bus='virtio'/></disk>
<video><model type='none'/></video><memballoon model='none'/></devices></domain>
EOF
	$VIRSH define "$K/run/dom.xml" >/dev/null
	$VIRSH start $DOM >/dev/null
	warm "$K/run/disk.qcow2"
}
# guest_writes HMP-RUNNER: the planned writes through QEMU's block layer
hmp_writes() {
	while IFS=$'\t' read -r off len file; do
		"$@" "qemu-io -d /machine/peripheral/${DEV}/virtio-backend \"write -q -s $file $off $len\""
	done <"$K/writes.tsv"
}
virsh_hmp() { $VIRSH qemu-monitor-command $DOM --hmp "$1" >/dev/null; }
qmp_hmp() { qmp "$K/run/qmp.sock" "$(python3 -c 'import json,sys; print(json.dumps({"execute":"human-monitor-command","arguments":{"command-line":sys.argv[1]}}))' "$1")" >/dev/null; }

for rep in $(seq 1 "$REPS"); do
	echo "== repetition $rep/$REPS (load $(cut -d' ' -f1 /proc/loadavg))"
	# A1. vmvault-capture libvirt
	start_domain
	rm -rf "$K/repo"; vmvault init --repo "$K/repo" $INIT_FLAGS >/dev/null
	timed libvirt_vmvault_full vmvault-capture libvirt -q --repo "$K/repo" --tmp-dir "$K/run" $DOM
	size_full=$(du -sb "$K/repo" | cut -f1)
	DEV=virtio-disk0 hmp_writes virsh_hmp
	timed libvirt_vmvault_incr vmvault-capture libvirt -q --json --repo "$K/repo" --tmp-dir "$K/run" $DOM
	record libvirt_vmvault_growth $(($(du -sb "$K/repo" | cut -f1) - size_full))
	record libvirt_vmvault_changed "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["disks"][0]["bytes_changed"])' "$K/cmd.out")"
	if [ "$rep" = 1 ]; then
		$VIRSH suspend $DOM >/dev/null
		vmvault restore -q --repo "$K/repo" $DOM@latest --disk vda --to "$K/raw.out" >/dev/null
		qemu-img compare -U -f raw -F qcow2 "$K/raw.out" "$K/run/disk.qcow2" >/dev/null || { echo "bench-kvm: vmvault's libvirt restore differs from the disk" >&2; exit 1; }
		rm -f "$K/raw.out"
	fi
	# A2. virtnbdbackup on a fresh copy
	start_domain
	rm -rf "$K/vbk"
	timed libvirt_virtnbdbackup_full virtnbdbackup -d $DOM -l full -o "$K/vbk"
	DEV=virtio-disk0 hmp_writes virsh_hmp
	timed libvirt_virtnbdbackup_incr virtnbdbackup -d $DOM -l inc -o "$K/vbk"
	cleanup_domain

	# B. the QMP path and qemu-img convert of the same kind of export
	rm -rf "$K/run" && mkdir -p "$K/run"
	cp --sparse=always "$K/disk.qcow2" "$K/run/disk.qcow2"
	qemu-system-x86_64 -machine pc,accel=tcg -m 128 -nodefaults -display none "${KERNEL_ARGS[@]}" \
		-qmp unix:"$K/run/qmp.sock",server=on,wait=off \
		-blockdev driver=qcow2,node-name=sys,file.driver=file,file.filename="$K/run/disk.qcow2" \
		-device virtio-blk-pci,drive=sys,id=vda >/dev/null 2>&1 &
	QPID=$!
	for _ in $(seq 1 100); do [ -S "$K/run/qmp.sock" ] && break; sleep 0.1; done
	warm "$K/run/disk.qcow2"
	qemu-img create -q -f qcow2 "$K/run/ovl.qcow2" "$SIZE"
	qmp "$K/run/qmp.sock" \
		'{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"bovl","backing":"sys","file":{"driver":"file","filename":"'"$K/run/ovl.qcow2"'"}}}' \
		'{"execute":"blockdev-backup","arguments":{"job-id":"bjob","device":"sys","target":"bovl","sync":"none"}}' \
		'{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"'"$K/run/nbd.sock"'"}}}}' \
		'{"execute":"block-export-add","arguments":{"type":"nbd","id":"bexp","node-name":"bovl","name":"pit","writable":false}}' >/dev/null
	timed qemu_img_convert qemu-img convert -p -f raw -O raw "nbd+unix:///pit?socket=$K/run/nbd.sock" "$K/raw.out"
	rm -f "$K/raw.out"
	qmp "$K/run/qmp.sock" '{"execute":"block-export-del","arguments":{"id":"bexp","mode":"hard"}}' '{"execute":"nbd-server-stop"}' '{"execute":"block-job-cancel","arguments":{"device":"bjob","force":true}}' >/dev/null
	sleep 1
	qmp "$K/run/qmp.sock" '{"execute":"blockdev-del","arguments":{"node-name":"bovl"}}' >/dev/null
	rm -f "$K/run/ovl.qcow2"
	rm -rf "$K/repo"; vmvault init --repo "$K/repo" $INIT_FLAGS >/dev/null
	timed qmp_vmvault_full vmvault-capture qemu -q --repo "$K/repo" --vm bench --qmp unix:"$K/run/qmp.sock" --tmp-dir "$K/run"
	DEV=vda hmp_writes qmp_hmp
	timed qmp_vmvault_incr vmvault-capture qemu -q --repo "$K/repo" --vm bench --qmp unix:"$K/run/qmp.sock" --tmp-dir "$K/run"
	kill "$QPID"; wait "$QPID" 2>/dev/null || true; QPID=
	rm -rf "$K/repo" "$K/run"
done

python3 - "$R" "$SIZE" "$DIRTY" "${BENCH_KVM_BUSY:-0}" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
size, dirty = int(sys.argv[2]), int(sys.argv[3])
def med(name, col=1):
    v = [float(r[col]) for r in rows if r[0] == name and len(r) > col]
    return st.median(v) if v else None
print(f"\nmedians of {len([r for r in rows if r[0] == 'libvirt_vmvault_full'])} repetitions, {size / 2**20:.0f} MiB qcow2 disk, {dirty / 2**20:.1f} MiB of scattered guest writes; "
      f"guests {'spinning in SeaBIOS (one host CPU busy)' if sys.argv[4] == '1' else 'idle (CPU halted)'}")
print(f"{'step':30}{'wall s':>10}{'MB/s':>10}{'CPU s':>10}{'RSS MiB':>10}")
for n in ["libvirt_vmvault_full", "libvirt_vmvault_incr", "libvirt_virtnbdbackup_full", "libvirt_virtnbdbackup_incr",
          "qmp_vmvault_full", "qmp_vmvault_incr", "qemu_img_convert"]:
    w = med(n)
    if w is None: continue
    print(f"{n:30}{w:10.2f}{size / 1e6 / w:10.0f}{med(n, 2) + med(n, 3):10.1f}{med(n, 4) / 1024:10.0f}")
vf, vi, nf = med("libvirt_vmvault_full"), med("libvirt_vmvault_incr"), med("libvirt_virtnbdbackup_full")
qf, qi, qc = med("qmp_vmvault_full"), med("qmp_vmvault_incr"), med("qemu_img_convert")
growth, changed = med("libvirt_vmvault_growth"), med("libvirt_vmvault_changed")
def verdict(ok): return "ok" if ok else "NOT MET"
print()
print(f"full: virtnbdbackup / vmvault libvirt       {nf / vf:6.2f}x  (>= 1.5: {verdict(nf / vf >= 1.5)})")
print(f"full: qemu-img convert / vmvault qemu        {qc / qf:6.2f}x  (>= 1: {verdict(qc / qf >= 1)})")
print(f"incremental / full, vmvault libvirt          {100 * vi / vf:6.1f}%  (<= 5%: {verdict(vi / vf <= 0.05)})")
print(f"incremental / full, vmvault qemu             {100 * qi / qf:6.1f}%  (<= 5%: {verdict(qi / qf <= 0.05)})")
print(f"repository growth / dirty bytes (bitmap)     {growth / changed:6.2f}   ({growth / 2**20:.1f} MiB for {changed / 2**20:.1f} MiB; <= 1.2: {verdict(growth <= 1.2 * changed)})")
PY
cat <<EOF

commands (each repetition on a fresh copy of the disk):
  vmvault init $INIT_FLAGS; vmvault-capture libvirt $DOM; writes; vmvault-capture libvirt $DOM
  virtnbdbackup -d $DOM -l full -o DIR; writes; virtnbdbackup -d $DOM -l inc -o DIR
  qemu-img convert -f raw -O raw nbd+unix:///pit?socket=... OUT   (backup sync=none overlay, NBD export)
  vmvault-capture qemu --vm bench --qmp unix:...; writes; vmvault-capture qemu --vm bench --qmp unix:...
  writes: HMP qemu-io "write -s FILE OFF 64k" on the virtio device, $NWRITES times
EOF

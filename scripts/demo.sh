#!/usr/bin/env bash
# vmvault demo on the embedded local repository: builds the binaries, makes
# a small disk image with a real ext4 filesystem, captures it, changes a
# file inside the filesystem, captures again (incremental), lists, verifies
# and restores both restore points, checking they are byte-identical to the
# disk as it was at each capture; reads single files out of them without
# restoring (partitions, ls, cat, find, cp); then serves them over NBD (vmvault serve)
# and reads the latest back with nbdcopy.
#
# Usage: scripts/demo.sh            (everything lives in ./.demo)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
D=$ROOT/.demo
cd "$ROOT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# ensure TOOL PACKAGE: installs PACKAGE as root on Debian when TOOL is missing.
ensure() {
	command -v "$1" >/dev/null && return 0
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		step "installing $2 ($1)"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 ||
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
		return 0
	fi
	return 1
}
export PATH=/usr/sbin:/sbin:$PATH
ensure mke2fs e2fsprogs && ensure debugfs e2fsprogs ||
	{ echo "demo: needs mke2fs and debugfs (Debian: apt-get install e2fsprogs)" >&2; exit 1; }
nbd=yes
ensure nbdcopy libnbd-bin || nbd=""

step "building vmvault and vmvault-capture into .demo/bin"
rm -rf "$D" && mkdir -p "$D/bin" "$D/tree/etc" "$D/tree/var/log"
go build -o "$D/bin/" ./cmd/vmvault ./cmd/vmvault-capture
export PATH=$D/bin:$PATH
export VMVAULT_REPOSITORY=$D/repo

step "making a 64 MiB disk image with an ext4 filesystem (mke2fs -d)"
echo "web01" >"$D/tree/etc/hostname"
echo "Hello from the first restore point" >"$D/tree/hello.txt"
seq 1 200000 | sed 's/^/log line /' >"$D/tree/var/log/app.log"
head -c 8M /dev/urandom >"$D/tree/var/random.bin"
truncate -s 64M "$D/web01.img"
mke2fs -q -t ext4 -L web01-root -d "$D/tree" "$D/web01.img"
sha1=$(sha256sum "$D/web01.img" | cut -d' ' -f1)

step "vmvault init (repository in $VMVAULT_REPOSITORY)"
vmvault init

step "first capture: full"
vmvault-capture file --vm web01 --disk disk0="$D/web01.img" --tag demo

step "changing /hello.txt inside the filesystem (debugfs -w), then an incremental capture"
echo "Hello from the second restore point" >"$D/hello2.txt"
debugfs -w -R "rm /hello.txt" "$D/web01.img" >/dev/null 2>&1
debugfs -w -R "write $D/hello2.txt /hello.txt" "$D/web01.img" >/dev/null 2>&1
sha2=$(sha256sum "$D/web01.img" | cut -d' ' -f1)
vmvault-capture file --vm web01 --disk disk0="$D/web01.img" --tag demo

step "vmvault snapshots"
vmvault snapshots
first=$(vmvault snapshots --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"][:8])')

step "vmvault show web01@latest"
vmvault show web01@latest

step "vmvault verify (re-hash every chunk)"
vmvault verify

step "vmvault stats"
vmvault stats

step "restoring both restore points and comparing with the disk as it was"
vmvault restore "$first" --disk disk0 --to "$D/restored-first.img"
vmvault restore web01@latest --disk disk0 --to "$D/restored-latest.img"
for pair in "first:$sha1" "latest:$sha2"; do
	name=${pair%%:*} want=${pair#*:}
	got=$(sha256sum "$D/restored-$name.img" | cut -d' ' -f1)
	if [ "$got" != "$want" ]; then
		echo "demo: restored $name image differs from the source" >&2
		exit 1
	fi
	printf '%-7s restore point: sha256 %s matches; /hello.txt says: %s\n' "$name" "${got:0:16}" \
		"$(debugfs -R 'cat /hello.txt' "$D/restored-$name.img" 2>/dev/null)"
done

step "single files without restoring the disk: vmvault partitions / ls / cat / find"
vmvault partitions web01@latest:disk0
vmvault ls -l web01@latest:disk0/p0/
old=$(vmvault cat "$first:disk0/p0/hello.txt")
new=$(vmvault cat web01@latest:disk0/p0/hello.txt)
printf '/hello.txt in the first restore point: %s\n/hello.txt in the latest:             %s\n' "$old" "$new"
[ "$old" = "Hello from the first restore point" ] || { echo "demo: vmvault cat read the wrong file" >&2; exit 1; }
vmvault find web01@all --name '*.log'
vmvault cp web01@latest:disk0/p0/etc "$D/restored-etc"
[ "$(cat "$D/restored-etc/hostname")" = web01 ] || { echo "demo: vmvault cp restored the wrong file" >&2; exit 1; }

if [ -n "$nbd" ]; then
	step "instant access: vmvault serve exports every restore point over NBD; nbdcopy reads one back"
	sock=$D/nbd.sock
	vmvault serve --socket "$sock" 2>"$D/serve.log" &
	serve=$!
	for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
	nbdinfo --list "nbd+unix:///?socket=$sock" | grep -E '^export=|description'
	nbdcopy "nbd+unix:///web01@latest/disk0?socket=$sock" "$D/nbd-latest.img"
	kill -TERM "$serve" && wait "$serve"
	[ "$(sha256sum "$D/nbd-latest.img" | cut -d' ' -f1)" = "$sha2" ] ||
		{ echo "demo: the NBD export differs from the source" >&2; exit 1; }
	echo "web01@latest/disk0 read over NBD: byte-identical; server log:"
	sed 's/^/  /' "$D/serve.log"
else
	echo "(skipping the NBD step: install libnbd-bin for nbdinfo/nbdcopy)"
fi
echo
echo "demo finished: both restores and the NBD export are byte-identical to the disk at capture time."
echo "Try: export VMVAULT_REPOSITORY=$D/repo PATH=$D/bin:\$PATH; vmvault --help"

# Sourced by the benchmark scripts: builds the deterministic 4 GiB VM-disk
# workload in $W once (MBR + ext4 at 1 MiB holding ~2.2 GiB of /usr, a
# 300 MB pseudo-random and a 300 MB text file; changed.img adds 640 seeded
# 64 KiB guest writes). Needs $W, $BIN (with the workload tool), $IMG, $CHG.
# BENCH_SMALL=1 builds a 512 MiB image with every part an eighth of its
# size instead (to check that a script works, not to measure).
if [ "${BENCH_SMALL:-}" = 1 ]; then
	WL_USR_MIB=275 WL_FILE_BYTES=37500000 WL_IMG_MIB=512
else
	WL_USR_MIB=2200 WL_FILE_BYTES=300000000 WL_IMG_MIB=4096
fi
WL_PARAMS="usr=$WL_USR_MIB files=$WL_FILE_BYTES image=$WL_IMG_MIB"
WL_BUILT=$(cat "$W/workload.done" 2>/dev/null || echo none)
[ -z "$WL_BUILT" ] && WL_BUILT="usr=2200 files=300000000 image=4096" # marked by builds without the knob
if [ "$WL_BUILT" != "$WL_PARAMS" ]; then
	echo "== building the workload image ($WL_PARAMS)"
	rm -f "$W/workload.done"
	rm -rf "$W/tree" && mkdir -p "$W/tree/usr"
	# /usr regular files in path order, up to the size.
	(cd / && find usr -xdev -type f -size +0 -printf '%s %p\n' 2>/dev/null | sort -k2 |
		awk -v lim=$((WL_USR_MIB*1024*1024)) '!done { if (s + $1 > lim) { done = 1; next } s += $1; print $2 }') >"$W/usr.list"
	# Files that vanish or change while copied are skipped (tar exits 1 then).
	tar -C / --ignore-failed-read -cf - -T "$W/usr.list" 2>/dev/null | tar -C "$W/tree" -xf - || true
	echo "copied $(du -sh "$W/tree/usr" | cut -f1) of /usr"
	workload files "$W/tree" "$WL_FILE_BYTES"
	rm -f "$W/fs.img"
	truncate -s $(( (WL_IMG_MIB - 1) * 1024 * 1024 )) "$W/fs.img"
	E2FSPROGS_FAKE_TIME=1763900000 mke2fs -q -t ext4 -b 4096 -U 6f1d9a0e-7c1b-4d3e-9a55-0b1a2c3d4e5f -E hash_seed=2c1a4b3e-1d2f-4a5b-8c9d-0e1f2a3b4c5d,lazy_itable_init=0,lazy_journal_init=0 -d "$W/tree" "$W/fs.img"
	rm -f "$IMG" && truncate -s "${WL_IMG_MIB}M" "$IMG"
	echo 'start=2048, type=83' | sfdisk -q "$IMG"
	dd if="$W/fs.img" of="$IMG" bs=1M seek=1 conv=notrunc,sparse status=none
	workload plan "$W/fs.img" $((1024 * 1024)) "$W/guest"
	rm -f "$CHG" && cp --sparse=always "$IMG" "$CHG"
	workload apply "$W/guest.writes" "$CHG"
	rm -rf "$W/tree" "$W/fs.img"
	sync
	echo "$WL_PARAMS" >"$W/workload.done"
fi

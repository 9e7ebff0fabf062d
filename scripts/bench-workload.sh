# Sourced by the benchmark scripts: builds the deterministic 4 GiB VM-disk
# workload in $W once (MBR + ext4 at 1 MiB holding ~2.2 GiB of /usr, a
# 300 MB pseudo-random and a 300 MB text file; changed.img adds 640 seeded
# 64 KiB guest writes). Needs $W, $BIN (with the workload tool), $IMG, $CHG.
if ! [ -f "$W/workload.done" ]; then
	echo "== building the 4 GiB workload image"
	rm -rf "$W/tree" && mkdir -p "$W/tree/usr"
	# ~2.2 GiB of /usr regular files in path order.
	(cd / && find usr -xdev -type f -size +0 -printf '%s %p\n' 2>/dev/null | sort -k2 |
		awk -v lim=$((2200*1024*1024)) '!done { if (s + $1 > lim) { done = 1; next } s += $1; print $2 }') >"$W/usr.list"
	# Files that vanish or change while copied are skipped (tar exits 1 then).
	tar -C / --ignore-failed-read -cf - -T "$W/usr.list" 2>/dev/null | tar -C "$W/tree" -xf - || true
	echo "copied $(du -sh "$W/tree/usr" | cut -f1) of /usr"
	workload files "$W/tree"
	rm -f "$W/fs.img"
	truncate -s $(( (4096 - 1) * 1024 * 1024 )) "$W/fs.img"
	E2FSPROGS_FAKE_TIME=1763900000 mke2fs -q -t ext4 -b 4096 -U 6f1d9a0e-7c1b-4d3e-9a55-0b1a2c3d4e5f -E hash_seed=2c1a4b3e-1d2f-4a5b-8c9d-0e1f2a3b4c5d,lazy_itable_init=0,lazy_journal_init=0 -d "$W/tree" "$W/fs.img"
	rm -f "$IMG" && truncate -s 4G "$IMG"
	echo 'start=2048, type=83' | sfdisk -q "$IMG"
	dd if="$W/fs.img" of="$IMG" bs=1M seek=1 conv=notrunc,sparse status=none
	workload plan "$W/fs.img" $((1024 * 1024)) "$W/guest"
	rm -f "$CHG" && cp --sparse=always "$IMG" "$CHG"
	workload apply "$W/guest.writes" "$CHG"
	rm -rf "$W/tree" "$W/fs.img"
	sync
	touch "$W/workload.done"
fi

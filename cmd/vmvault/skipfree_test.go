package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
	"github.com/vmvault/vmvault/fs/image"
)

// churnFS fills a mounted filesystem the way a busy guest does: many small
// and large files of random (incompressible) data, two files grown in
// turns so their blocks interleave (fragmented), a sparse file, a
// directory of files, and then deletes about half of it all. It returns
// the bytes of the deleted files. sync, when set, is called between the
// turns of the interleaved writes so each turn gets its own blocks.
func churnFS(t *testing.T, dir string, seed uint64, scale int, sync func()) (deleted int64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	data := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(dir, "small"), 0o755)
	os.MkdirAll(filepath.Join(dir, "big"), 0o755)
	for i := range 60 * scale {
		write(fmt.Sprintf("small/s%03d", i), data(100+rng.IntN(6000)))
	}
	for i := range 8 {
		write(fmt.Sprintf("big/b%d", i), data(scale*(300<<10)+rng.IntN(100<<10)))
	}
	// fragmented: a and b grow in turns
	fa, _ := os.Create(filepath.Join(dir, "frag-a"))
	fb, _ := os.Create(filepath.Join(dir, "frag-b"))
	for i := range 12 * scale {
		fa.Write(data(32 << 10))
		if sync != nil {
			fa.Sync()
			sync()
		}
		fb.Write(data(24 << 10))
		if sync != nil {
			fb.Sync()
			sync()
		}
		_ = i
	}
	fa.Close()
	fb.Close()
	// sparse: data at the start, the middle and the end of 8 MiB
	if f, err := os.Create(filepath.Join(dir, "sparse.bin")); err == nil {
		f.Truncate(8 << 20)
		f.WriteAt(data(10000), 0)
		f.WriteAt(data(70000), 3<<20)
		f.WriteAt(data(5000), 8<<20-5000)
		f.Close()
	}
	for i := 0; i < 60*scale; i += 2 {
		p := filepath.Join(dir, fmt.Sprintf("small/s%03d", i))
		if fi, err := os.Stat(p); err == nil {
			deleted += fi.Size()
		}
		os.Remove(p)
	}
	for _, i := range []int{0, 2, 3, 5, 6} {
		p := filepath.Join(dir, fmt.Sprintf("big/b%d", i))
		if fi, err := os.Stat(p); err == nil {
			deleted += fi.Size()
		}
		os.Remove(p)
	}
	if fi, err := os.Stat(filepath.Join(dir, "frag-b")); err == nil {
		deleted += fi.Size()
	}
	os.Remove(filepath.Join(dir, "frag-b"))
	return deleted
}

// TestSkipFreeSpaceRoundTrip: a disk with churned ext4, NTFS and FAT32
// partitions and a swap partition is captured with --skip-free-space
// --skip-swap and restored. Every restored filesystem passes its fsck
// (e2fsck -fn, ntfsfix -n, fsck.fat -n), every file reads as on the
// source through the kernel (ext4), ntfs-3g and mtools — pagefile.sys
// as its first 4 KiB and zeros —, the swap partition keeps its header,
// and at least 90% of the deleted data is not stored: the repository
// grows by at least that much less than a capture of the same disk
// without skipping.
func TestSkipFreeSpaceRoundTrip(t *testing.T) {
	fstest.NeedRoot(t)
	fstest.NeedTools(t, "mke2fs", "e2fsck", "mkntfs", "ntfs-3g", "ntfsfix", "mkfs.vfat", "fsck.fat", "mcopy", "mdel", "mkswap", "sfdisk")
	dir := t.TempDir()
	const mib = 1 << 20
	type part struct {
		name     string
		sectors  int64
		typ      string
		start    int64 // sector
		file     string
		deleted  int64
		restored string
	}
	parts := []*part{
		{name: "ext4", sectors: 96 * mib / 512, typ: "83"},
		{name: "ntfs", sectors: 96 * mib / 512, typ: "7"},
		{name: "fat32", sectors: 48 * mib / 512, typ: "c"},
		{name: "swap", sectors: 16 * mib / 512, typ: "82"},
	}
	start := int64(2048)
	for _, p := range parts {
		p.start, start = start, start+p.sectors
		p.file = filepath.Join(dir, p.name+".img")
		sh(t, "truncate", "-s", fmt.Sprint(p.sectors*512), p.file)
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	// ext4 through the kernel (no discard: deleted blocks keep their data)
	sh(t, "mke2fs", "-q", "-F", "-t", "ext4", parts[0].file)
	sh(t, "mount", "-o", "loop", parts[0].file, mnt)
	parts[0].deleted = churnFS(t, mnt, 1, 2, func() { exec.Command("sync").Run() })
	sh(t, "umount", mnt)
	// NTFS through ntfs-3g, with a compressed directory and a page file
	sh(t, "mkntfs", "-q", "-F", "-Q", parts[1].file)
	sh(t, "ntfs-3g", parts[1].file, mnt)
	parts[1].deleted = churnFS(t, mnt, 2, 2, nil)
	os.Mkdir(filepath.Join(mnt, "compressed"), 0o755)
	sh(t, "setfattr", "-n", "system.ntfs_attrib_be", "-v", "0x00000810", filepath.Join(mnt, "compressed"))
	for i := range 6 {
		os.WriteFile(filepath.Join(mnt, "compressed", fmt.Sprintf("c%d", i)), bytes.Repeat([]byte(fmt.Sprintf("compressible %d\n", i)), 20000), 0o644)
	}
	os.Remove(filepath.Join(mnt, "compressed", "c2"))
	page := bytes.Repeat([]byte("pagefile"), 4<<20/8)
	os.WriteFile(filepath.Join(mnt, "pagefile.sys"), page, 0o644)
	sh(t, "umount", mnt)
	// FAT32 through mtools (files from a churned host directory)
	sh(t, "mkfs.vfat", "-F", "32", "-s", "1", parts[2].file)
	host := filepath.Join(dir, "fat-src")
	os.Mkdir(host, 0o755)
	churnFS(t, host, 3, 1, nil)
	var all []string
	filepath.WalkDir(host, func(p string, d os.DirEntry, err error) error {
		if p != host && filepath.Dir(p) == host {
			all = append(all, p)
		}
		return nil
	})
	mtools := func(args ...string) {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	mtools(append(append([]string{"mcopy", "-s", "-i", parts[2].file}, all...), "::/")...)
	// delete on the volume: files written, then removed, leave their data
	for i := range 4 {
		p := filepath.Join(dir, fmt.Sprintf("gone%d", i))
		b := make([]byte, 2*mib)
		for j := range b {
			b[j] = byte(rand.Uint32())
		}
		os.WriteFile(p, b, 0o644)
		mtools("mcopy", "-i", parts[2].file, p, "::/")
		parts[2].deleted += int64(len(b))
	}
	for i := range 4 {
		mtools("mdel", "-i", parts[2].file, fmt.Sprintf("::/gone%d", i))
	}
	// swap with random content past its header
	sh(t, "mkswap", parts[3].file)
	if f, err := os.OpenFile(parts[3].file, os.O_WRONLY, 0); err == nil {
		f.WriteAt(bytes.Repeat([]byte("old swap"), int(parts[3].sectors*512-(1<<20))/8), 1<<20)
		f.Close()
	}

	disk := filepath.Join(dir, "disk.img")
	sh(t, "truncate", "-s", fmt.Sprint((start+2048)*512), disk)
	var table strings.Builder
	table.WriteString("label: dos\n")
	for _, p := range parts {
		fmt.Fprintf(&table, "start=%d, size=%d, type=%s\n", p.start, p.sectors, p.typ)
		sh(t, "dd", "if="+p.file, "of="+disk, "bs=1M", fmt.Sprintf("seek=%d", p.start*512), "oflag=seek_bytes", "conv=notrunc,sparse", "status=none")
	}
	cmd := exec.Command("sfdisk", "-q", disk)
	cmd.Stdin = strings.NewReader(table.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}

	skipping := newEnv(t)
	out := skipping.ok("vmvault-capture", "file", "--json", "--vm", "vm", "--disk", "d0="+disk, "--skip-free-space", "--skip-swap")
	var sum struct {
		Disks []struct {
			BytesStored int64 `json:"bytes_stored"`
			BytesRead   int64 `json:"bytes_read"`
			Skipped     struct {
				Bytes int64 `json:"bytes"`
			} `json:"skipped"`
		} `json:"disks"`
	}
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("capture JSON: %v\n%s", err, out)
	}
	plain := newEnv(t)
	plainSum := plain.capture("--vm", "vm", "--disk", "d0="+disk)

	restored := filepath.Join(dir, "restored.img")
	skipping.ok("vmvault", "restore", "vm@latest", "--disk", "d0", "--to", restored)
	show := skipping.ok("vmvault", "show", "vm@latest")
	for _, want := range []string{"p1 (ext4", "p2 (ntfs", "free space and swap files", "p3 (fat32", "p4 (swap", "swap partition"} {
		if !strings.Contains(show, want) {
			t.Errorf("vmvault show lacks %q:\n%s", want, show)
		}
	}
	for _, p := range parts {
		p.restored = filepath.Join(dir, p.name+".restored")
		sh(t, "dd", "if="+restored, "of="+p.restored, "bs=1M", fmt.Sprintf("skip=%d", p.start*512), fmt.Sprintf("count=%d", p.sectors*512),
			"iflag=skip_bytes,count_bytes", "status=none")
	}

	// fsck: the restored filesystems are consistent
	for _, c := range [][]string{
		{"e2fsck", "-fn", parts[0].restored},
		{"ntfsfix", "-n", parts[1].restored},
		{"fsck.fat", "-n", parts[2].restored},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Errorf("%s on the restored partition: %v\n%s", c[0], err, out)
		}
	}
	// files: every one as on the source
	compare := func(what string, got, want map[string]fileInfo) {
		t.Helper()
		for p, w := range want {
			if g, ok := got[p]; !ok {
				t.Errorf("%s: %s missing after restore", what, p)
			} else if g != w {
				t.Errorf("%s %s:\n got  %+v\n want %+v", what, p, g, w)
			}
		}
		for p := range got {
			if _, ok := want[p]; !ok {
				t.Errorf("%s: %s appeared after restore", what, p)
			}
		}
		if len(want) < 30 {
			t.Errorf("%s: only %d files compared", what, len(want))
		}
	}
	mountTree := func(mountCmd []string, img string) map[string]fileInfo {
		t.Helper()
		m := t.TempDir()
		sh(t, mountCmd[0], append(mountCmd[1:], img, m)...)
		defer exec.Command("umount", m).Run()
		return tree(t, m)
	}
	kernel := []string{"mount", "-o", "ro,loop,noload"}
	compare("ext4", mountTree(kernel, parts[0].restored), mountTree(kernel, parts[0].file))
	ntfs3g := []string{"ntfs-3g", "-o", "ro"}
	src, got := mountTree(ntfs3g, parts[1].file), mountTree(ntfs3g, parts[1].restored)
	pf := src["/pagefile.sys"]
	want := append(bytes.Clone(page[:4096]), make([]byte, len(page)-4096)...)
	pf.sha = sha(want)
	src["/pagefile.sys"] = pf
	compare("ntfs", got, src)
	mcopyTree := func(img string) map[string]fileInfo {
		t.Helper()
		d := t.TempDir()
		mtools("mcopy", "-s", "-p", "-m", "-n", "-i", img, "::/", d+"/")
		return tree(t, d)
	}
	compare("fat32", mcopyTree(parts[2].restored), mcopyTree(parts[2].file))
	// swap: header kept, the rest zero
	sw, _ := os.ReadFile(parts[3].restored)
	orig, _ := os.ReadFile(parts[3].file)
	if !bytes.Equal(sw[:64<<10], orig[:64<<10]) || !bytes.Equal(sw[64<<10:], make([]byte, len(sw)-64<<10)) {
		t.Error("restored swap partition: want its header and zeros")
	}

	// the deleted data (and page file, and swap) is not stored
	var deleted int64
	for _, p := range parts {
		deleted += p.deleted
	}
	saved := plainSum.Disks[0].BytesStored - sum.Disks[0].BytesStored
	t.Logf("deleted %d MiB; stored %d MiB skipping, %d MiB not; skipped %d MiB; read %d of %d MiB",
		deleted>>20, sum.Disks[0].BytesStored>>20, plainSum.Disks[0].BytesStored>>20, sum.Disks[0].Skipped.Bytes>>20,
		sum.Disks[0].BytesRead>>20, plainSum.Disks[0].BytesRead>>20)
	if saved < deleted*9/10 {
		t.Errorf("skipping stored only %d bytes less than not skipping; %d bytes of deleted files", saved, deleted)
	}
	if sum.Disks[0].Skipped.Bytes < deleted {
		t.Errorf("skipped %d bytes, less than the %d deleted", sum.Disks[0].Skipped.Bytes, deleted)
	}
}

// TestSkipFreeSpaceLVM: the LVM disk of scripts/make-volume-images.sh
// (two PVs; ext4 in a linear LV and in an LV of two segments in reverse
// order, XFS in a striped LV) captured with --skip-free-space and
// restored: the ext4 LVs pass e2fsck -fn, the XFS LV passes xfs_repair
// -n, the files of each read as on the source through the kernel, and the
// free space of both kinds was skipped.
func TestSkipFreeSpaceLVM(t *testing.T) {
	vols := fstest.VolumeImages(t)
	fstest.NeedTools(t, "e2fsck", "xfs_repair")
	e := newEnv(t)
	src := filepath.Join(vols, "lvm.img")
	out := e.ok("vmvault-capture", "file", "--json", "--vm", "lvm", "--disk", "d0="+src, "--skip-free-space")
	var sum struct {
		Disks []struct {
			Skipped struct {
				Bytes int64 `json:"bytes"`
			} `json:"skipped"`
		} `json:"disks"`
	}
	if err := json.Unmarshal([]byte(out), &sum); err != nil || len(sum.Disks) != 1 {
		t.Fatalf("capture JSON: %v\n%s", err, out)
	}
	restored := filepath.Join(e.dir, "restored.img")
	e.ok("vmvault", "restore", "lvm@latest", "--disk", "d0", "--to", restored)
	open := func(p string) (*image.Disk, *os.File) {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		fi, _ := f.Stat()
		d, err := image.Open(f, fi.Size())
		if err != nil {
			t.Fatal(err)
		}
		return d, f
	}
	sd, _ := open(src)
	rd, _ := open(restored)
	extract := func(d *image.Disk, p image.Partition, name string) string {
		path := filepath.Join(e.dir, name)
		w, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if _, err := io.Copy(w, io.NewSectionReader(d.Reader(p), 0, p.Size)); err != nil {
			t.Fatal(err)
		}
		return path
	}
	ext4, xfs := 0, 0
	for _, p := range sd.Partitions {
		if p.Table != "lvm" || p.Error != "" {
			continue
		}
		rp, err := rd.Partition(p.Name)
		if err != nil {
			t.Fatal(err)
		}
		a, b := extract(sd, p, p.Name+".src"), extract(rd, rp, p.Name+".restored")
		var check []string
		mountOpts := "ro,loop,noload"
		switch {
		case strings.HasPrefix(p.Filesystem, "ext"):
			ext4++
			check = []string{"e2fsck", "-fn", b}
		case p.Filesystem == "xfs":
			xfs++
			check = []string{"xfs_repair", "-n", b}
			mountOpts = "ro,loop,norecovery,nouuid"
		default:
			continue
		}
		if out, err := exec.Command(check[0], check[1:]...).CombinedOutput(); err != nil {
			t.Errorf("%s: %s on the restored LV: %v\n%s", p.Name, check[0], err, out)
		}
		mountTree := func(img string) map[string]fileInfo {
			m := t.TempDir()
			sh(t, "mount", "-o", mountOpts, img, m)
			defer exec.Command("umount", m).Run()
			return tree(t, m)
		}
		got, want := mountTree(b), mountTree(a)
		if len(want) == 0 || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: files differ after the restore (%d files)", p.Name, len(want))
		}
	}
	if ext4 < 2 || xfs < 1 || sum.Disks[0].Skipped.Bytes == 0 {
		t.Errorf("%d ext4 and %d XFS LVs, %d bytes skipped: the image does not test what this test is about", ext4, xfs, sum.Disks[0].Skipped.Bytes)
	}
}

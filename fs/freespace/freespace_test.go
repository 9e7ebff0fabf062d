package freespace

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/fstest"
	"github.com/vmvault/vmvault/fs/image"
	"github.com/vmvault/vmvault/repo/extent"
)

const mib = 1 << 20

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// testDisk builds a 72 MiB MBR disk: p1 ext4, p2 NTFS with a page file,
// p3 FAT16 (files written and deleted in each), p5 Linux swap and p6
// random bytes in an extended partition p4. It returns the image path and
// each partition's filesystem allocation, as the fs packages read it from
// the partition alone.
func testDisk(t *testing.T) string {
	t.Helper()
	fstest.NeedRoot(t)
	fstest.NeedTools(t, "mke2fs", "mkntfs", "ntfs-3g", "mkfs.vfat", "mcopy", "mdel", "mkswap", "sfdisk")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.Mkdir(src, 0o755)
	for i := range 12 {
		os.WriteFile(filepath.Join(src, fmt.Sprintf("f%02d", i)), bytes.Repeat([]byte(fmt.Sprintf("data %d ", i)), 1+i*20000), 0o644)
	}
	img := filepath.Join(dir, "disk.img")
	run(t, "truncate", "-s", "72M", img)
	sf := "label: dos\nstart=2048, size=32768, type=83\nstart=34816, size=32768, type=7\nstart=67584, size=16384, type=6\n" +
		"start=83968, size=63488, type=5\nstart=86016, size=8192, type=82\nstart=96256, size=8192, type=83\n"
	cmd := exec.Command("sfdisk", "-q", img)
	cmd.Stdin = strings.NewReader(sf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	part := func(name string, startSector, sectors int64, mk func(p string)) {
		p := filepath.Join(dir, name)
		run(t, "truncate", "-s", fmt.Sprint(sectors*512), p)
		mk(p)
		run(t, "dd", "if="+p, "of="+img, "bs=512", fmt.Sprintf("seek=%d", startSector), "conv=notrunc,sparse", "status=none")
	}
	part("ext4", 2048, 32768, func(p string) {
		run(t, "mke2fs", "-q", "-F", "-t", "ext4", "-d", src, p)
		run(t, "debugfs", "-w", "-R", "rm /f09", p)
		run(t, "debugfs", "-w", "-R", "rm /f05", p)
	})
	part("ntfs", 34816, 32768, func(p string) {
		run(t, "mkntfs", "-q", "-F", "-Q", p)
		mnt := t.TempDir()
		run(t, "ntfs-3g", p, mnt)
		defer exec.Command("umount", mnt).Run()
		run(t, "cp", "-r", src, mnt+"/dir")
		os.WriteFile(filepath.Join(mnt, "pagefile.sys"), bytes.Repeat([]byte{0x5a}, 2*mib), 0o644)
		os.Remove(filepath.Join(mnt, "dir", "f10"))
		run(t, "umount", mnt)
	})
	part("fat16", 67584, 16384, func(p string) {
		run(t, "mkfs.vfat", "-F", "16", "-s", "1", p)
		for _, n := range []string{"f03", "f06", "f08"} {
			run(t, "mcopy", "-i", p, filepath.Join(src, n), "::/")
		}
		run(t, "mdel", "-i", p, "::/f06")
	})
	part("swap", 86016, 8192, func(p string) { run(t, "mkswap", p) })
	part("random", 96256, 8192, func(p string) {
		b := make([]byte, 8192*512)
		rand.Read(b)
		os.WriteFile(p, b, 0o644)
	})
	return img
}

// free is what a partition's filesystem calls free, read on its own.
func free(t *testing.T, d *image.Disk, name string) []extent.Range {
	t.Helper()
	p, err := d.Partition(name)
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := image.OpenFS(d.Reader(p), p.Size)
	if err != nil {
		t.Fatal(err)
	}
	alloc, err := fsys.(fs.AllocationMapper).Allocated(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []extent.Range
	for _, r := range extent.Subtract([]extent.Range{{Offset: 0, Length: p.Size}}, alloc) {
		out = append(out, extent.Range{Offset: p.Start + r.Offset, Length: r.Length})
	}
	return out
}

// TestCompute: each option skips exactly what it should on a disk with
// ext4, NTFS, FAT16, swap and an unknown partition, and nothing outside
// partitions or in the unknown one.
func TestCompute(t *testing.T) {
	img := testDisk(t)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	d, err := image.Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	ntfsPart, _ := d.Partition("p2")
	nfs, err := image.OpenFS(d.Reader(ntfsPart), ntfsPart.Size)
	if err != nil {
		t.Fatal(err)
	}
	pagefile, err := nfs.(swapFiler).SwapFiles(context.Background())
	if err != nil || extent.Sum(pagefile) != 2*mib-4096 {
		t.Fatalf("page file ranges %v (%v): want 2 MiB less 4 KiB", pagefile, err)
	}
	for i := range pagefile {
		pagefile[i].Offset += ntfsPart.Start
	}
	swapPart, _ := d.Partition("p5")
	swap := []extent.Range{{Offset: swapPart.Start + swapKeep, Length: swapPart.Size - swapKeep}}
	fsFree := extent.Normalize(append(append(free(t, d, "p1"), free(t, d, "p2")...), free(t, d, "p3")...))
	for _, c := range []struct {
		name string
		opts Options
		want []extent.Range
		// what each partition reports: p1 p2 p3 p5 p6
		what string
	}{
		{"nothing asked", Options{}, nil, ""},
		{"free space", Options{FreeSpace: true}, fsFree, "free space|free space|free space|-|-"},
		{"swap", Options{Swap: true}, extent.Normalize(append(pagefile, swap...)), "-|swap files|-|swap partition|-"},
		{"both", Options{FreeSpace: true, Swap: true}, extent.Normalize(append(append(fsFree, pagefile...), swap...)),
			"free space|free space and swap files|free space|swap partition|-"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := Compute(context.Background(), bytes.NewReader(b), int64(len(b)), c.opts)
			if err != nil {
				t.Fatal(err)
			}
			if want := extent.Normalize(c.want); len(m.Skip)+len(want) > 0 && !reflect.DeepEqual(m.Skip, want) {
				t.Errorf("Skip differs: only here %v, only expected %v",
					extent.Subtract(m.Skip, extent.Normalize(c.want)), extent.Subtract(extent.Normalize(c.want), m.Skip))
			}
			if c.what == "" {
				if len(m.Volumes) != 0 || m.Skip != nil {
					t.Errorf("nothing asked: %+v", m)
				}
				return
			}
			var whats []string
			for _, v := range m.Volumes {
				w := v.What
				if w == "" {
					w = "-"
					if v.ReadInFull == "" {
						t.Errorf("%s: nothing skipped and no reason", v.Partition)
					}
				}
				whats = append(whats, w)
				if v.Partition == "p6" && !strings.Contains(v.ReadInFull, "no filesystem") {
					t.Errorf("p6: read in full because %q", v.ReadInFull)
				}
			}
			if got := strings.Join(whats, "|"); got != c.what {
				t.Errorf("volumes: %s, want %s (%+v)", got, c.what, m.Volumes)
			}
			// never outside a partition, never in p6
			var inside []extent.Range
			for _, v := range m.Volumes {
				if v.Partition != "p6" {
					inside = append(inside, extent.Range{Offset: v.Offset, Length: v.Size})
				}
			}
			if out := extent.Subtract(m.Skip, extent.Normalize(inside)); len(out) > 0 {
				t.Errorf("skips outside the partitions with filesystems: %v", out)
			}
		})
	}
}

// TestComputeOverlap: where a second partition overlaps a filesystem's
// free space, the overlap is read in full; a disk without a readable
// table is read in full with a note.
func TestComputeOverlap(t *testing.T) {
	fstest.NeedTools(t, "mkfs.vfat")
	p := filepath.Join(t.TempDir(), "fat.img")
	run(t, "mkfs.vfat", "-C", "-F", "16", "-s", "1", p, "8192")
	fat, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	disk := make([]byte, 1*mib+len(fat))
	copy(disk[mib:], fat)
	entry := func(i int, typ byte, start, sectors uint32) {
		e := disk[446+16*i:]
		e[4] = typ
		binary.LittleEndian.PutUint32(e[8:], start)
		binary.LittleEndian.PutUint32(e[12:], sectors)
	}
	disk[510], disk[511] = 0x55, 0xaa
	entry(0, 0x06, mib/512, uint32(len(fat)/512))
	entry(1, 0x83, mib/512+uint32(len(fat)/1024), 2048) // the second half of p1's free space
	ctx := context.Background()
	m, err := Compute(ctx, bytes.NewReader(disk), int64(len(disk)), Options{FreeSpace: true})
	if err != nil {
		t.Fatal(err)
	}
	overlap := extent.Range{Offset: int64(mib + len(fat)/2), Length: 2048 * 512}
	if len(m.Skip) == 0 || len(extent.Intersect(m.Skip, []extent.Range{overlap})) != 0 {
		t.Errorf("Skip %v: want free space outside %v only", m.Skip, overlap)
	}
	// without the second entry the same space is skipped
	entry(1, 0, 0, 0)
	m, _ = Compute(ctx, bytes.NewReader(disk), int64(len(disk)), Options{FreeSpace: true})
	if len(extent.Intersect(m.Skip, []extent.Range{overlap})) == 0 {
		t.Errorf("Skip %v does not cover %v without the overlapping partition: the case tests nothing", m.Skip, overlap)
	}

	m, err = Compute(ctx, bytes.NewReader(make([]byte, 100)), 100, Options{FreeSpace: true})
	if err != nil || m.Skip != nil || !strings.Contains(m.Note, "read in full") {
		t.Errorf("unreadable disk: %+v, %v", m, err)
	}
}

// TestComputeLVM: on a GPT disk with two LVM physical volumes, the free
// space of the ext4 filesystems in the logical volumes (linear, and two
// segments in reverse order) and of the XFS filesystem in a striped LV is
// skipped where the LVs' segments put it on the disk, and nothing else:
// the physical volumes' labels, metadata and unallocated extents are read
// in full.
func TestComputeLVM(t *testing.T) {
	dir := fstest.VolumeImages(t)
	b, err := os.ReadFile(filepath.Join(dir, "lvm.img"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := image.Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	var want []extent.Range
	ext4LVs, xfsLVs := 0, 0
	for _, p := range d.Partitions {
		if p.Table != "lvm" || p.Error != "" {
			continue
		}
		switch {
		case p.Filesystem == "xfs", strings.HasPrefix(p.Filesystem, "ext"):
			if p.Filesystem == "xfs" {
				xfsLVs++
			} else {
				ext4LVs++
			}
			fsys, err := image.OpenFS(d.Reader(p), p.Size)
			if err != nil {
				t.Fatal(err)
			}
			alloc, err := fsys.(fs.AllocationMapper).Allocated(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range extent.Subtract([]extent.Range{{Offset: 0, Length: p.Size}}, alloc) {
				want = append(want, p.DiskRanges(r)...)
			}
		}
	}
	if ext4LVs < 2 || xfsLVs < 1 {
		t.Fatalf("lvm.img has %d ext4 and %d XFS LVs: the image changed", ext4LVs, xfsLVs)
	}
	m, err := Compute(context.Background(), bytes.NewReader(b), int64(len(b)), Options{FreeSpace: true})
	if err != nil {
		t.Fatal(err)
	}
	want = extent.Normalize(want)
	if !reflect.DeepEqual(m.Skip, want) {
		t.Errorf("Skip differs: only here %v, only expected %v", extent.Subtract(m.Skip, want), extent.Subtract(want, m.Skip))
	}
	for _, v := range m.Volumes {
		t.Logf("%s %s: skipped %d, %s%s", v.Partition, v.Filesystem, v.Skipped, v.What, v.ReadInFull)
		if v.Filesystem == "LVM2_member" && v.Skipped != 0 {
			t.Errorf("%s (%s): %d bytes skipped", v.Partition, v.Filesystem, v.Skipped)
		}
		if v.Filesystem == "xfs" && v.Skipped == 0 {
			t.Errorf("%s (%s): nothing skipped: %s", v.Partition, v.Filesystem, v.ReadInFull)
		}
	}
}

package cbt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/fat"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/backend/mem"
	"github.com/vmvault/vmvault/repo/extent"
)

// recorder is a reader that records the ranges read.
type recorder struct {
	r    io.ReaderAt
	mu   sync.Mutex
	read []extent.Range
}

func (c *recorder) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.read = append(c.read, extent.Range{Offset: off, Length: int64(len(p))})
	c.mu.Unlock()
	return c.r.ReadAt(p, off)
}

// TestSkipReader: skipped ranges read as zeros, the rest as the source;
// reads skip stretches of readGap or more and read shorter gaps along.
func TestSkipReader(t *testing.T) {
	src := make([]byte, 1<<20)
	for i := range src {
		src[i] = byte(i%251 + 1)
	}
	skip := []extent.Range{{Offset: 1000, Length: 100}, {Offset: 4096, Length: 4096}, {Offset: 200 << 10, Length: 300 << 10}, {Offset: 1000 << 10, Length: 24 << 10}}
	cases := []struct {
		name   string
		off, n int64
	}{
		{"before any", 0, 500},
		{"across small gaps", 0, 100 << 10},
		{"inside a large skip", 250 << 10, 10 << 10},
		{"across a large skip", 150 << 10, 400 << 10},
		{"to the end", 900 << 10, 124 << 10},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := &recorder{r: bytes.NewReader(src)}
			s := &skipReader{r: rec, skip: skip}
			p := bytes.Repeat([]byte{0xee}, int(c.n))
			n, err := s.ReadAt(p, c.off)
			if n != len(p) || err != nil {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			want := bytes.Clone(src[c.off : c.off+c.n])
			for _, r := range extent.Intersect(skip, []extent.Range{{Offset: c.off, Length: c.n}}) {
				clear(want[r.Offset-c.off : r.End()-c.off])
			}
			if !bytes.Equal(p, want) {
				t.Fatal("content differs from the source with the skipped ranges zeroed")
			}
			for _, r := range rec.read {
				for _, sk := range skip {
					if sk.Length >= readGap && len(extent.Intersect([]extent.Range{r}, []extent.Range{sk})) > 0 {
						t.Errorf("read %v covers the skipped stretch %v", r, sk)
					}
				}
			}
		})
	}
	// a short read of the source is an error
	s := &skipReader{r: bytes.NewReader(src[:1000]), skip: skip}
	if _, err := s.ReadAt(make([]byte, 4000), 0); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short source: %v", err)
	}
}

// planRecorder is a recorder that also records the plan it was given.
type planRecorder struct {
	recorder
	plan  []extent.Range
	align int64
}

func (c *planRecorder) PlanReads(rs []extent.Range, align int64) { c.plan, c.align = rs, align }

// TestSkipReaderPlan: the plan a skipReader hands on is exactly what its
// reads of the planned blocks then read, joined where they touch.
func TestSkipReaderPlan(t *testing.T) {
	src := make([]byte, 1<<20)
	skip := []extent.Range{{Offset: 1000, Length: 100}, {Offset: 4096, Length: 4096}, {Offset: 200 << 10, Length: 300 << 10}, {Offset: 1000 << 10, Length: 24 << 10}}
	const align = 64 << 10
	plan := []extent.Range{{Offset: 0, Length: 192 << 10}, {Offset: 256 << 10, Length: 128 << 10}, {Offset: 448 << 10, Length: 576 << 10}}
	rec := &planRecorder{recorder: recorder{r: bytes.NewReader(src)}}
	s := &skipReader{r: rec, skip: skip}
	var _ repo.ReadPlanner = s
	s.PlanReads(plan, align)
	if rec.align != align {
		t.Errorf("align %d handed on as %d", align, rec.align)
	}
	for _, r := range plan {
		for off := r.Offset; off < r.End(); off += align {
			if _, err := s.ReadAt(make([]byte, align), off); err != nil {
				t.Fatal(err)
			}
		}
	}
	var read []extent.Range
	for _, r := range rec.read {
		if k := len(read); k > 0 && read[k-1].End() == r.Offset {
			read[k-1].Length += r.Length
		} else {
			read = append(read, r)
		}
	}
	if fmt.Sprint(read) != fmt.Sprint(rec.plan) {
		t.Errorf("planned %v\nread    %v", rec.plan, read)
	}
}

// memSource is a Source of one in-memory disk ("d0") whose changed ranges
// are given per capture.
type memSource struct {
	disk    []byte
	changed []extent.Range // nil: no change information
}

func (m *memSource) Describe(context.Context) (*Description, error) {
	return &Description{Lineage: "mem", Source: "mem", Disks: []Disk{{Name: "d0", Size: int64(len(m.disk))}}}, nil
}
func (m *memSource) Open(context.Context, Disk) (io.ReaderAt, error) {
	return bytes.NewReader(m.disk), nil
}
func (m *memSource) DataRanges(context.Context, Disk) ([]extent.Range, error) { return nil, nil }
func (m *memSource) ChangedRanges(context.Context, Disk, BaseDisk) ([]extent.Range, error) {
	if m.changed == nil {
		return nil, NoChangeInfo("no change list")
	}
	return m.changed, nil
}

// goldenFAT16 returns the golden FAT16 image and its free space, with
// every free byte set to 0xab (deleted data, as far as capture knows).
func goldenFAT16(t *testing.T) ([]byte, []extent.Range) {
	t.Helper()
	z, err := os.ReadFile(filepath.Join("..", "testdata", "fs", "golden", "fat16.img.zst"))
	if err != nil {
		t.Fatal(err)
	}
	zr, _ := zstd.NewReader(nil)
	img, err := zr.DecodeAll(z, nil)
	zr.Close()
	if err != nil {
		t.Fatal(err)
	}
	f, err := fat.Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	alloc, err := f.Allocated(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	free := extent.Subtract([]extent.Range{{Offset: 0, Length: int64(len(img))}}, alloc)
	for _, r := range free {
		for i := r.Offset; i < r.End(); i++ {
			img[i] = 0xab
		}
	}
	return img, free
}

// TestCaptureSkipFreeSpace captures a FAT16 volume whose free space holds
// "deleted data" with SkipFreeSpace: full, then an extents incremental
// whose changed ranges touch both used and free space, then a dedup
// capture. Each restore point reads as the source with the free space
// zeroed, the used bytes (all the changed ones included) intact, the
// record says what was skipped, and a file read through the restored
// filesystem is the source's.
func TestCaptureSkipFreeSpace(t *testing.T) {
	ctx := context.Background()
	r, err := repo.Init(ctx, mem.New(), repo.InitOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	img, free := goldenFAT16(t)
	src := &memSource{disk: img}
	check := func(rp *repo.RestorePoint, scope string, skipped int64) {
		t.Helper()
		d, err := r.OpenDisk(ctx, rp, "d0")
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(img))
		if _, err := d.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		want := bytes.Clone(img)
		for _, f := range free {
			clear(want[f.Offset:f.End()])
		}
		if !bytes.Equal(got, want) {
			t.Fatal("restore point is not the source with its free space zeroed")
		}
		st := rp.Disks[0].Stats.Skipped
		if st == nil || !st.FreeSpace || st.Scope != scope || st.Bytes != skipped || len(st.Volumes) != 1 ||
			st.Volumes[0].Filesystem != "fat16" || st.Volumes[0].Bytes != extent.Sum(free) || st.Volumes[0].What != "free space" {
			t.Fatalf("skip record %+v, want scope %s, %d bytes of %d free", st, scope, skipped, extent.Sum(free))
		}
		// the filesystem in the restore point reads its files as the source does
		rf, err := fat.Open(d, d.Size())
		if err != nil {
			t.Fatal(err)
		}
		sf, _ := fat.Open(bytes.NewReader(img), int64(len(img)))
		for _, p := range []string{"/text.txt", "/random.bin", "/fragmented.bin"} {
			if a, b := readFile(t, rf, p), readFile(t, sf, p); !bytes.Equal(a, b) {
				t.Errorf("%s differs in the restore point", p)
			}
		}
	}
	full, err := Capture(ctx, r, src, Options{VM: "vm", SkipFreeSpace: true})
	if err != nil {
		t.Fatal(err)
	}
	check(full, "disk", extent.Sum(free))
	if s := full.Disks[0].Stats; s.BytesRead >= int64(len(img))-extent.Sum(free)/2 || s.ZeroChunks == 0 {
		t.Errorf("full capture read %d of %d bytes (%d free), %d zero chunks: free space was read", s.BytesRead, len(img), extent.Sum(free), s.ZeroChunks)
	}

	// change used bytes (the FAT) and free bytes (deleted data moves on)
	fatByte := int64(512 + 100)
	img[fatByte] ^= 0x01
	last := free[len(free)-1]
	for i := last.Offset; i < last.Offset+4096; i++ {
		img[i] = 0xcd
	}
	src.changed = []extent.Range{{Offset: fatByte, Length: 1}, {Offset: last.Offset, Length: 4096}}
	inc, err := Capture(ctx, r, src, Options{VM: "vm", SkipFreeSpace: true})
	if err != nil {
		t.Fatal(err)
	}
	if inc.Disks[0].Stats.Mode != "extents" {
		t.Fatalf("mode %s", inc.Disks[0].Stats.Mode)
	}
	var touched []extent.Range
	for _, c := range src.changed {
		lo := c.Offset / (64 << 10) * (64 << 10)
		touched = append(touched, extent.Range{Offset: lo, Length: min(64<<10, int64(len(img))-lo)})
	}
	check(inc, "changed", extent.Sum(extent.Intersect(free, extent.Normalize(touched))))

	src.changed = nil
	dedup, err := Capture(ctx, r, src, Options{VM: "vm", SkipFreeSpace: true})
	if err != nil {
		t.Fatal(err)
	}
	if dedup.Disks[0].Stats.Mode != "dedup" {
		t.Fatalf("mode %s", dedup.Disks[0].Stats.Mode)
	}
	check(dedup, "disk", extent.Sum(free))

	// without skipping, the deleted data is kept and nothing is recorded
	plain, err := Capture(ctx, r, src, Options{VM: "vm", Full: true})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := r.OpenDisk(ctx, plain, "d0")
	got := make([]byte, len(img))
	d.ReadAt(got, 0)
	if !bytes.Equal(got, img) || plain.Disks[0].Stats.Skipped != nil {
		t.Errorf("capture without skipping: content equal %v, skip record %+v", bytes.Equal(got, img), plain.Disks[0].Stats.Skipped)
	}
}

func readFile(t *testing.T, fsys fs.FileSystem, p string) []byte {
	t.Helper()
	ctx := context.Background()
	ino, err := fs.Resolve(ctx, fsys, p, true)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fsys.Open(ctx, ino)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

package image

import (
	"bytes"
	"io"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
	"github.com/vmvault/vmvault/repo/extent"
)

// TestVolMapRanges checks ranges (whole stripe rows per stripe) against a
// byte-by-byte walk with locate, on a linear segment followed by a striped
// one of three 4-byte chunks.
func TestVolMapRanges(t *testing.T) {
	m := &volMap{segs: []volSeg{
		{start: 0, length: 10, disk: []int64{1000}},
		{start: 10, length: 48, chunk: 4, disk: []int64{2000, 3000, 4000}},
	}}
	for off := int64(0); off < 58; off++ {
		for n := int64(1); off+n <= 58; n++ {
			var want []extent.Range
			for b := off; b < off+n; b++ {
				d, _, ok := m.locate(b)
				if !ok {
					t.Fatalf("byte %d not mapped", b)
				}
				want = append(want, extent.Range{Offset: d, Length: 1})
			}
			want = extent.Normalize(want)
			got := extent.Normalize(m.ranges(off, n, nil))
			if len(got) != len(want) {
				t.Fatalf("ranges(%d, %d) = %v, want %v", off, n, got, want)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("ranges(%d, %d) = %v, want %v", off, n, got, want)
				}
			}
		}
	}
	// byte 10 is the striped segment's first; byte 14 its second chunk
	if d, n, _ := m.locate(14); d != 3000 || n != 4 {
		t.Errorf("locate(14) = %d, %d", d, n)
	}
	// byte 27: chunk 4 of the segment (second row, stripe 1), offset 1
	if d, _, _ := m.locate(10 + 16 + 1); d != 3000+4+1 {
		t.Errorf("locate(27) = %d", d)
	}
}

// padded is a seed image: its first bytes, then zeros up to size.
type padded struct {
	b    []byte
	size int64
}

func (p padded) ReadAt(q []byte, off int64) (int, error) {
	if off < 0 || off >= p.size {
		return 0, io.EOF
	}
	n := min(int64(len(q)), p.size-off)
	c := 0
	if off < int64(len(p.b)) {
		c = copy(q[:n], p.b[off:])
	}
	clear(q[c:n])
	if int(n) < len(q) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// TestLVMSeedVolumes opens the PV seed as a disk: LV a is PE 6-7 then PE
// 1-2 (1 MiB extents after a 1 MiB header), b-c is PE 9-10.
func TestLVMSeedVolumes(t *testing.T) {
	const mib = 1 << 20
	b := fstest.Seed(t, "lvm.img")
	d, err := Open(padded{b, 16 * mib}, 16*mib)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Partitions) != 3 || d.Partitions[0].Filesystem != "LVM2_member" {
		t.Fatalf("%+v", d.Partitions)
	}
	for _, c := range []struct {
		name string
		r    extent.Range
		want []extent.Range
	}{
		{"vgf-a", extent.Range{Offset: 0, Length: 4 * mib}, []extent.Range{{Offset: 2 * mib, Length: 2 * mib}, {Offset: 7 * mib, Length: 2 * mib}}},
		{"vgf-a", extent.Range{Offset: 2*mib - 1, Length: 2}, []extent.Range{{Offset: 2 * mib, Length: 1}, {Offset: 9*mib - 1, Length: 1}}},
		{"vgf-a", extent.Range{Offset: 3 * mib, Length: 10 * mib}, []extent.Range{{Offset: 3 * mib, Length: mib}}},
		{"vgf-b--c", extent.Range{Offset: 100, Length: 50}, []extent.Range{{Offset: 10*mib + 100, Length: 50}}},
		{"vgf-b--c", extent.Range{Offset: -5, Length: 10}, []extent.Range{{Offset: 10 * mib, Length: 5}}},
	} {
		v, err := d.Partition(c.name)
		if err != nil {
			t.Fatal(err)
		}
		if v.Table != "lvm" || v.Size != map[string]int64{"vgf-a": 4 * mib, "vgf-b--c": 2 * mib}[c.name] || v.Error != "" {
			t.Fatalf("%+v", v)
		}
		got := v.DiskRanges(c.r)
		if len(got) != len(c.want) {
			t.Fatalf("%s DiskRanges(%+v) = %v, want %v", c.name, c.r, got, c.want)
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Fatalf("%s DiskRanges(%+v) = %v, want %v", c.name, c.r, got, c.want)
			}
		}
	}
	// the reader follows the segments: mark the disk and read LV a
	img := make([]byte, 16*mib)
	copy(img, b)
	img[7*mib] = 'A'  // LV a, byte 0
	img[2*mib] = 'B'  // LV a, byte 2 MiB
	img[10*mib] = 'C' // LV b-c, byte 0
	d, err = Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := d.Partition("vgf-a")
	buf := make([]byte, 4*mib)
	if _, err := d.Reader(a).ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if buf[0] != 'A' || buf[2*mib] != 'B' || bytes.Count(buf, []byte{0}) != len(buf)-2 {
		t.Errorf("LV a reads %q at 0, %q at 2 MiB", buf[0], buf[2*mib])
	}
	if _, err := d.OpenFS(a); err == nil {
		t.Error("LV a without a filesystem opened")
	}
	if _, err := d.OpenFS(d.Partitions[0]); err == nil {
		t.Error("the PV opened as a filesystem")
	}
}

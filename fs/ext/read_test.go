package ext

import (
	"bytes"
	"io"
	"testing"
)

// TestFileReadAt covers the read path's edge cases on a synthetic
// filesystem of 1 KiB blocks: holes before, between and after runs,
// uninitialized extents, reads across runs, past the end, and inline data
// shorter than the file size (found by fuzzing: it must read as zeros).
func TestFileReadAt(t *testing.T) {
	const bs = 1024
	disk := make([]byte, 16*bs)
	for i := range disk {
		disk[i] = byte(i / bs) // block n is filled with byte n
	}
	f := &FS{r: bytes.NewReader(disk), blockSize: bs, blocksCount: 16}
	mapped := &File{f: f, size: 6*bs + 100, runs: []run{
		{lblk: 1, pblk: 5, count: 2},               // logical 1-2 → blocks 5-6
		{lblk: 3, pblk: 9, count: 1, uninit: true}, // logical 3 reads zeros
		{lblk: 5, pblk: 12, count: 2},              // logical 5-6 → blocks 12-13
	}}
	inline := &File{f: f, size: 100, inline: []byte("short")}
	want := func(fl *File, off, n int64) []byte {
		out := make([]byte, n)
		for i := range out {
			pos := off + int64(i)
			if fl.inline != nil {
				if pos < int64(len(fl.inline)) {
					out[i] = fl.inline[pos]
				}
				continue
			}
			lb := uint64(pos / bs)
			for _, r := range fl.runs {
				if lb >= r.lblk && lb < r.lblk+r.count && !r.uninit {
					out[i] = byte(r.pblk + lb - r.lblk)
				}
			}
		}
		return out
	}
	cases := []struct {
		name    string
		fl      *File
		off, n  int64
		wantN   int
		wantEOF bool
	}{
		{"leading hole", mapped, 0, 100, 100, false},
		{"hole into run", mapped, bs - 10, 30, 30, false},
		{"across two runs and the uninit block", mapped, bs + 5, 4 * bs, 4 * bs, false},
		{"whole file", mapped, 0, 6*bs + 100, 6*bs + 100, false},
		{"past the end", mapped, 6 * bs, 200, 100, true},
		{"at the end", mapped, 6*bs + 100, 10, 0, true},
		{"inline", inline, 0, 5, 5, false},
		{"inline beyond its data", inline, 50, 50, 50, false},
		{"inline past the end", inline, 90, 20, 10, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := bytes.Repeat([]byte{0xee}, int(c.n))
			n, err := c.fl.ReadAt(p, c.off)
			if n != c.wantN || (err == io.EOF) != c.wantEOF || (err != nil && err != io.EOF) {
				t.Fatalf("ReadAt = %d, %v; want %d, EOF %v", n, err, c.wantN, c.wantEOF)
			}
			if w := want(c.fl, c.off, int64(n)); !bytes.Equal(p[:n], w) {
				t.Fatalf("content differs:\n got %v\nwant %v", p[:n], w)
			}
		})
	}
	ex, _ := mapped.DataExtents()
	if len(ex) != 2 || ex[0].Offset != bs || ex[0].Length != 2*bs || ex[1].Offset != 5*bs || ex[1].Length != bs+100 {
		t.Errorf("DataExtents = %+v", ex)
	}
}

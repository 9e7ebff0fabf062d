package cbt

import (
	"os"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/repo/extent"
)

func rg(off, n int64) extent.Range { return extent.Range{Offset: off, Length: n} }

func TestParseExtents(t *testing.T) {
	cases := []struct {
		name, in string
		size     int64
		want     []extent.Range
		err      bool
	}{
		{"empty", "", 100, []extent.Range{}, false},
		{"tabs and comments", "# changed\n0\t10\n\n50\t5\n", 100, []extent.Range{rg(0, 10), rg(50, 5)}, false},
		{"merges and sorts", "50 5\n0 10\n8 4\n55 1\n", 100, []extent.Range{rg(0, 12), rg(50, 6)}, false},
		{"to the end", "90\t10\n", 100, []extent.Range{rg(90, 10)}, false},
		{"past the end", "95\t10\n", 100, nil, true},
		{"negative", "-1\t10\n", 100, nil, true},
		{"hex", "0x10\t10\n", 100, nil, true},
		{"three fields", "1 2 3\n", 100, nil, true},
		{"overflow", "9223372036854775807\t9223372036854775807\n", 100, nil, true},
		{"long line", strings.Repeat("1", 5000) + "\t1\n", 100, nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseExtents(strings.NewReader(c.in), c.size)
			if c.err {
				if err == nil {
					t.Fatalf("accepted: %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("got %v, want %v", got, c.want)
				}
			}
		})
	}
}

func FuzzParseExtents(f *testing.F) {
	f.Add([]byte("0\t65536\n1048576\t4096\n"), int64(1<<30))
	f.Add([]byte("# x\n\n5 5\n"), int64(10))
	f.Fuzz(func(t *testing.T, b []byte, size int64) {
		if size < 0 {
			return
		}
		rs, err := ParseExtents(strings.NewReader(string(b)), size)
		if err != nil {
			return
		}
		for i, r := range rs {
			if r.Offset < 0 || r.Length <= 0 || r.Offset+r.Length > size {
				t.Fatalf("range %v outside disk of %d", r, size)
			}
			if i > 0 && rs[i-1].Offset+rs[i-1].Length >= r.Offset {
				t.Fatalf("ranges not merged: %v", rs)
			}
		}
	})
}

func TestDataRanges(t *testing.T) {
	p := t.TempDir() + "/sparse.img"
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	const mib = 1 << 20
	f.Truncate(16 * mib)
	f.WriteAt([]byte("x"), 3*mib+5)
	f.WriteAt(make([]byte, 8192), 10*mib) // written zeros are data too
	f.Close()
	src, err := OpenFile(p)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	rs := src.DataRanges()
	if rs == nil {
		t.Skip("filesystem does not report holes")
	}
	covered := func(off int64) bool {
		for _, r := range rs {
			if off >= r.Offset && off < r.Offset+r.Length {
				return true
			}
		}
		return false
	}
	if !covered(3*mib+5) || !covered(10*mib) || covered(8*mib) || covered(15*mib) {
		t.Fatalf("data ranges %v", rs)
	}
}

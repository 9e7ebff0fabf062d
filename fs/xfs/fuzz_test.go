package xfs

import (
	"context"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
)

// FuzzImage opens mutated v5 and v4 seed images (their first bytes; zeros
// follow up to 16 MiB) and exercises every reader method and the
// allocation map: no panic, no hang, no unbounded allocation.
func FuzzImage(f *testing.F) {
	f.Add(fstest.Seed(f, "xfs5.img"))
	f.Add(fstest.Seed(f, "xfs4.img"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fsys, err := Open(padded{b, seedSize}, seedSize)
		if err != nil {
			return
		}
		fstest.Exercise(fsys)
		_, _ = fsys.Allocated(context.Background())
	})
}

// FuzzDirData parses directory data blocks and short-form directories of
// both versions, with and without file types.
func FuzzDirData(f *testing.F) {
	f.Add([]byte("XDD3\x00\x00\x00\x00"+string(make([]byte, 56))+"\x00\x00\x00\x00\x00\x00\x00\x85\x01a\x01\x00\x40"), true, true)
	f.Add([]byte("\x01\x00\x00\x00\x00\x80\x01\x00\x60a\x01\x00\x00\x00\x85"), false, true)
	f.Fuzz(func(t *testing.T, b []byte, v5, ftype bool) {
		fsys := &FS{v5: v5, ftype: ftype}
		ents, _ := fsys.parseDirData(b, nil, "fuzz")
		ents2, _ := fsys.parseShortDir(b, 1)
		for _, e := range append(ents, ents2...) {
			if e.Name == "" {
				t.Fatalf("empty name in %+v", e)
			}
		}
	})
}

// FuzzAttrs parses attribute leaf blocks and short-form attribute forks.
func FuzzAttrs(f *testing.F) {
	f.Add([]byte("\x00\x0b\x01\x00\x01\x01\x00ab"), false)
	f.Fuzz(func(t *testing.T, b []byte, v5 bool) {
		_, _ = parseAttrLeaf(b, v5, 1, 0)
		_, _ = parseShortAttrs(b, 1)
		_, _ = aclToXattr(b)
	})
}

// FuzzLog runs LogClean over mutated synthetic logs (an unmount record, a
// covered log, a wrapped one): no panic, no hang.
func FuzzLog(f *testing.F) {
	for _, seed := range logSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<20 {
			return
		}
		fsys := logFS(b)
		_ = fsys.LogClean(context.Background())
	})
}

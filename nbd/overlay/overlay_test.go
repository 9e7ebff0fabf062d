package overlay

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmvault/vmvault/repo/extent"
)

// bytesBase is a Base over a byte slice, all data.
type bytesBase []byte

func (b bytesBase) Size() int64 { return int64(len(b)) }

func (b bytesBase) ReadAt(_ context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > int64(len(b)) {
		return io.ErrUnexpectedEOF
	}
	copy(p, b[off:])
	return nil
}

func (b bytesBase) Extents(_ context.Context, off, length int64) ([]extent.Extent, error) {
	return []extent.Extent{{Offset: off, Length: length}}, nil
}

func openTestOverlay(t *testing.T, dir string, base []byte) *Overlay {
	t.Helper()
	o, err := Open(dir, Meta{VM: "vm", RestorePoint: "rp", Disk: "d"}, bytesBase(base))
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// The overlay behaves like a plain byte array under random writes, zeroes,
// trims, flushes and reopenings; the base is never touched.
func TestOverlayModel(t *testing.T) {
	ctx := context.Background()
	for _, size := range []int{3*BlockSize + 100, 1 << 20, 1<<20 + 1} {
		base := make([]byte, size)
		rng := rand.New(rand.NewPCG(uint64(size), 9))
		for i := range base {
			base[i] = byte(rng.Uint32())
		}
		orig := bytes.Clone(base)
		model := bytes.Clone(base)
		dir := filepath.Join(t.TempDir(), "ov")
		o := openTestOverlay(t, dir, base)
		for step := range 400 {
			off := rng.IntN(size)
			n := 1 + rng.IntN(min(size-off, 3*BlockSize))
			switch op := rng.IntN(10); {
			case op < 5:
				p := make([]byte, n)
				for i := range p {
					p[i] = byte(rng.Uint32())
				}
				if err := o.WriteAt(ctx, p, int64(off)); err != nil {
					t.Fatal(err)
				}
				copy(model[off:], p)
			case op < 7:
				err := o.WriteZeroes(ctx, int64(off), int64(n), op == 6)
				if errors.Is(err, ErrNotFast) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				clear(model[off : off+n])
			case op < 8:
				if err := o.Trim(ctx, int64(off), int64(n)); err != nil {
					t.Fatal(err)
				}
				// Whole blocks inside the range read as zero.
				first := (off + BlockSize - 1) / BlockSize * BlockSize
				end := (off + n) / BlockSize * BlockSize
				if off+n == size {
					end = size
				}
				if end > first {
					clear(model[first:end])
				}
			case op < 9:
				if err := o.Flush(ctx); err != nil {
					t.Fatal(err)
				}
			default:
				if err := o.Close(); err != nil {
					t.Fatal(err)
				}
				o = openTestOverlay(t, dir, base)
			}
			got := make([]byte, size)
			if err := o.ReadAt(ctx, got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, model) {
				t.Fatalf("size %d step %d: overlay differs from the model", size, step)
			}
			// Extents tile the disk; data outside Allocated equals the base.
			exts, err := o.Extents(ctx, 0, int64(size))
			if err != nil {
				t.Fatal(err)
			}
			pos := int64(0)
			for _, e := range exts {
				if e.Offset != pos || e.Length <= 0 {
					t.Fatalf("extents do not tile: %+v", exts)
				}
				pos += e.Length
			}
			if pos != int64(size) {
				t.Fatalf("extents cover %d of %d", pos, size)
			}
		}
		changed := bytes.Clone(base)
		for _, e := range o.Allocated() {
			copy(changed[e.Offset:e.Offset+e.Length], model[e.Offset:e.Offset+e.Length])
		}
		if !bytes.Equal(changed, model) {
			t.Fatal("base + Allocated ranges != overlay content")
		}
		if !bytes.Equal(base, orig) {
			t.Fatal("base was modified")
		}
		if err := o.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOverlayLockAndMismatch(t *testing.T) {
	dir := t.TempDir()
	base := make([]byte, 1<<16)
	o := openTestOverlay(t, dir, base)
	if !InUse(dir) {
		t.Fatal("open overlay not reported in use")
	}
	if _, err := Open(dir, Meta{VM: "vm", RestorePoint: "rp", Disk: "d"}, bytesBase(base)); !errors.Is(err, ErrBusy) {
		t.Fatalf("second open: %v", err)
	}
	if err := Discard(dir); !errors.Is(err, ErrBusy) {
		t.Fatalf("discard while open: %v", err)
	}
	o.Close()
	if _, err := Open(dir, Meta{VM: "vm", RestorePoint: "other", Disk: "d"}, bytesBase(base)); err == nil {
		t.Fatal("overlay opened for another restore point")
	}
	if err := Discard(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, metaFile)); !os.IsNotExist(err) {
		t.Fatalf("meta survived discard: %v", err)
	}
}

// prefetchBase is a Base that counts Prefetch calls.
type prefetchBase struct {
	bytesBase
	calls int
}

func (b *prefetchBase) Prefetch(context.Context, int64, int64) error {
	b.calls++
	return nil
}

// Prefetch reaches a base that can prefetch, and is a no-op otherwise.
func TestPrefetchPassesOn(t *testing.T) {
	for _, tc := range []struct {
		name string
		base Base
	}{
		{"prefetching base", &prefetchBase{bytesBase: make([]byte, 1<<16)}},
		{"plain base", bytesBase(make([]byte, 1<<16))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := Open(t.TempDir(), Meta{VM: "vm", RestorePoint: "rp", Disk: "d"}, tc.base)
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			if err := o.Prefetch(context.Background(), 0, 4096); err != nil {
				t.Fatal(err)
			}
			if pb, ok := tc.base.(*prefetchBase); ok && pb.calls != 1 {
				t.Errorf("base prefetched %d times, want 1", pb.calls)
			}
		})
	}
}

package nbd

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

func openTestOverlay(t *testing.T, dir string, base []byte) *Overlay {
	t.Helper()
	o, err := OpenOverlay(dir, OverlayMeta{VM: "vm", RestorePoint: "rp", Disk: "d"}, ReaderDevice{R: bytes.NewReader(base), N: int64(len(base))})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// The overlay behaves like a plain byte array under random writes, zeroes,
// trims, flushes and reopenings; the base is never touched.
func TestOverlayModel(t *testing.T) {
	ctx := context.Background()
	for _, size := range []int{3*OverlayBlockSize + 100, 1 << 20, 1<<20 + 1} {
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
			n := 1 + rng.IntN(min(size-off, 3*OverlayBlockSize))
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
				first := (off + OverlayBlockSize - 1) / OverlayBlockSize * OverlayBlockSize
				end := (off + n) / OverlayBlockSize * OverlayBlockSize
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
	if !OverlayInUse(dir) {
		t.Fatal("open overlay not reported in use")
	}
	if _, err := OpenOverlay(dir, OverlayMeta{VM: "vm", RestorePoint: "rp", Disk: "d"}, ReaderDevice{R: bytes.NewReader(base), N: int64(len(base))}); !errors.Is(err, ErrOverlayBusy) {
		t.Fatalf("second open: %v", err)
	}
	if err := DiscardOverlay(dir); !errors.Is(err, ErrOverlayBusy) {
		t.Fatalf("discard while open: %v", err)
	}
	o.Close()
	if _, err := OpenOverlay(dir, OverlayMeta{VM: "vm", RestorePoint: "other", Disk: "d"}, ReaderDevice{R: bytes.NewReader(base), N: int64(len(base))}); err == nil {
		t.Fatal("overlay opened for another restore point")
	}
	if err := DiscardOverlay(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, overlayMeta)); !os.IsNotExist(err) {
		t.Fatalf("meta survived discard: %v", err)
	}
}

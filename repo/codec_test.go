package repo

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/vmvault/vmvault/repo/format"
)

// codecImage is a disk of 8 chunks: text (compresses well), random (does
// not), zero, and half random half zero, twice; seed makes every data
// chunk unique to the image.
func codecImage(seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 2))
	b := make([]byte, 8*cs)
	for i := range 8 {
		c := b[i*cs : (i+1)*cs]
		switch i % 4 {
		case 0:
			var text []byte
			for n := 0; len(text) < cs; n++ {
				text = fmt.Appendf(text, "image %d line %d: the quick brown fox jumps over the lazy dog\n", seed, n)
			}
			copy(c, text)
		case 1:
			for j := range c {
				c[j] = byte(rng.Uint32())
			}
		case 3:
			for j := range c[:cs/2] {
				c[j] = byte(rng.Uint32())
			}
		}
	}
	return b
}

// TestCaptureCodecs captures into one repository with every codec (and
// the repository's default): each stored frame carries the payload type
// of the capture's codec, or raw where compressing does not pay, and
// every restore point reads back byte-identical through the cache, the
// streaming path and Restore, whatever mix of frames it holds.
func TestCaptureCodecs(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	def, err := format.CompressionPayload(r.Config().Compression)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		compression string
		text, half  byte // payload types of the text and half-random chunks
	}{
		{"", def, def},
		{format.CompressionNone, format.PayloadRaw, format.PayloadRaw},
		{format.CompressionS2, format.PayloadS2, format.PayloadS2},
		{format.CompressionS2Better, format.PayloadS2, format.PayloadS2},
		{format.CompressionZstdFastest, format.PayloadZstd, format.PayloadZstd},
		{format.CompressionZstdDefault, format.PayloadZstd, format.PayloadZstd},
		{format.CompressionZstdBetter, format.PayloadZstdDense, format.PayloadZstdDense},
		{format.CompressionZstdBest, format.PayloadZstdDense, format.PayloadZstdDense},
		{format.CompressionAuto, format.PayloadS2, format.PayloadS2},
	}
	var rps []*RestorePoint
	var images [][]byte
	for i, c := range cases {
		img := codecImage(uint64(i))
		rp, err := r.Capture(ctx, CaptureOptions{VM: "vm", Compression: c.compression},
			[]DiskSource{{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))}})
		if err != nil {
			t.Fatalf("%q: %v", c.compression, err)
		}
		d, err := r.OpenDisk(ctx, rp, "d")
		if err != nil {
			t.Fatal(err)
		}
		for k, id := range d.Index().IDs {
			want := map[int]byte{0: c.text, 1: format.PayloadRaw, 3: c.half}[k%4]
			if k%4 == 2 {
				if !id.IsZero() {
					t.Errorf("%q: zero chunk %d stored", c.compression, k)
				}
				continue
			}
			frame, err := r.Backend().Load(ctx, chunkHandle(id), 0, -1)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := format.FramePayload(frame); err != nil || got != want {
				t.Errorf("%q: chunk %d stored with payload type %d (%v), want %d", c.compression, k, got, err, want)
			}
		}
		rps, images = append(rps, rp), append(images, img)
	}
	for i, rp := range rps {
		if got := restoreBytes(t, r, rp, "d"); !bytes.Equal(got, images[i]) {
			t.Errorf("%q: restore point reads back wrong", cases[i].compression)
		}
	}
	if _, err := r.Capture(ctx, CaptureOptions{VM: "vm", Compression: "lz4"},
		[]DiskSource{{Name: "d", Reader: bytes.NewReader(images[0]), Size: int64(len(images[0]))}}); err == nil {
		t.Error("capture with an unknown codec succeeded")
	}
	if list, _, _ := r.ListRestorePoints(ctx); len(list) != len(cases) {
		t.Errorf("%d restore points, want %d", len(list), len(cases))
	}
}

package repo

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/faulty"
	"github.com/vmvault/vmvault/repo/backend/mem"
	"github.com/vmvault/vmvault/repo/format"
)

// takeHints returns and forgets the fetch hints b passed on so far, by
// chunk name.
func takeHints(b *faulty.Backend) map[string]int {
	h := b.Names(faulty.Prefetch, backend.ChunkFile)
	b.ResetCalls()
	return h
}

func waitHints(t *testing.T, d *Disk) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); d.hint.busy.Load(); {
		if time.Now().After(deadline) {
			t.Fatal("hints still being issued after 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFetchHints(t *testing.T) {
	const chunks = 48 * (1 << 20) / cs // 48 MiB: room for jumps longer than hintMax
	img := make([]byte, chunks*cs)     // distinct data chunks; every 4th is zero
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range chunks {
		if i%4 != 2 {
			for j := i * cs; j < (i+1)*cs; j += 8 {
				binary.LittleEndian.PutUint64(img[j:], rng.Uint64())
			}
		}
	}
	type read struct{ off, n int64 }
	tests := []struct {
		name   string
		cached []read // read (and so cached) before the measured reads
		reads  []read
		// The hints must be exactly the uncached data chunks in [wantFrom,
		// wantTo), each once (none when equal).
		wantFrom, wantTo int64
	}{
		{"one read hints nothing", nil,
			[]read{{0, cs}}, 0, 0},
		{"the second sequential read hints the minimal window", nil,
			[]read{{0, cs}, {cs, cs}}, 2, 2 + hintMin/cs},
		{"window doubles while reads continue", nil,
			[]read{{0, cs}, {cs, cs}, {2 * cs, cs}, {3 * cs, cs}},
			2, 4 + 4*hintMin/cs},
		{"slightly out-of-order reads of one stream still count", nil,
			[]read{{0, cs}, {2 * cs, cs}, {cs, cs}, {3 * cs, cs}},
			3, 4 + 4*hintMin/cs},
		{"jumps hint nothing", nil,
			[]read{{34 << 20, cs}, {0, cs}, {17<<20 + cs, cs}, {0, cs}}, 0, 0},
		{"a random read and the rest of its chunk hint nothing", nil,
			[]read{{30 << 20, cs}, {9<<20 + 4096, 4096}, {9 << 20, cs}}, 0, 0},
		{"cached chunks are not hinted", []read{{4 * cs, 4 * cs}},
			[]read{{0, cs}, {cs, cs}}, 2, 2 + hintMin/cs},
		{"the window stops at the end of the disk", nil,
			[]read{{int64(chunks-5) * cs, cs}, {int64(chunks-4) * cs, cs}, {int64(chunks-3) * cs, cs}},
			chunks - 2, chunks},
	}
	rec := faulty.New(mem.New(), 1) // counts the hints
	r0, err := Init(context.Background(), rec, InitOptions{ChunkSize: cs, PackSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	rp := capture(t, r0, "vm", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Open(context.Background(), rec, Options{}) // an empty cache
			if err != nil {
				t.Fatal(err)
			}
			d, err := r.OpenDisk(context.Background(), rp, "d")
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4*cs)
			cached := map[format.ID]bool{}
			for _, rd := range tc.cached {
				if _, err := d.ReadAt(buf[:rd.n], rd.off); err != nil {
					t.Fatal(err)
				}
				waitHints(t, d)
				for i := rd.off / cs; i < (rd.off+rd.n)/cs; i++ {
					cached[d.idx.IDs[i]] = true
				}
			}
			d.hint = hinter{} // the measured reads start a new stream
			takeHints(rec)
			for _, rd := range tc.reads {
				if _, err := d.ReadAt(buf[:rd.n], rd.off); err != nil {
					t.Fatal(err)
				}
				waitHints(t, d)
			}
			got := takeHints(rec)
			want := map[string]int{}
			for i := tc.wantFrom; i < tc.wantTo; i++ {
				if id := d.idx.IDs[i]; !id.IsZero() && !cached[id] {
					want[id.String()]++
				}
			}
			for name, n := range got {
				if want[name] != n {
					t.Errorf("chunk %.8s hinted %d times, want %d", name, n, want[name])
				}
			}
			for name := range want {
				if got[name] == 0 {
					t.Errorf("chunk %.8s not hinted", name)
				}
			}
			if t.Failed() {
				t.Logf("hinted %d chunks, want %d", len(got), len(want))
			}
		})
	}
}

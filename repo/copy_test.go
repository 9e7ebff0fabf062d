package repo

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/faulty"
	"github.com/vmvault/vmvault/repo/backend/local"
	"github.com/vmvault/vmvault/repo/format"
	"github.com/vmvault/vmvault/repo/keys"
)

// copySource is a repository with three restore points: vm a full, vm a
// after a one-chunk change, vm b (shares half its chunks with a).
type copySource struct {
	r          *Repository
	dir        string
	rps        []*RestorePoint
	imgs       [][]byte
	changedLen int64 // raw bytes of the chunk rp[1] changed
}

func newCopySource(t *testing.T, opts InitOptions) *copySource {
	t.Helper()
	r, dir := newLocalRepoWith(t, opts)
	chunk := r.cfg.ChunkSize
	a := testImage(7, int(40*chunk+1234))
	a2 := bytes.Clone(a)
	copy(a2[5*chunk:], bytes.Repeat([]byte("changed "), 64)) // chunk 5 (random) changes
	b := bytes.Clone(a[:20*chunk])
	b = append(b, testImage(8, int(20*chunk))...)
	s := &copySource{r: r, dir: dir, imgs: [][]byte{a, a2, b}, changedLen: chunk}
	rp1 := capture(t, r, "a", nil, DiskSource{Name: "d", Reader: bytes.NewReader(a), Size: int64(len(a))})
	rp2 := capture(t, r, "a", rp1, DiskSource{Name: "d", Reader: bytes.NewReader(a2), Size: int64(len(a2))})
	rp3 := capture(t, r, "b", nil, DiskSource{Name: "d", Reader: bytes.NewReader(b), Size: int64(len(b))},
		DiskSource{Name: "e", Reader: bytes.NewReader(a[:3*chunk]), Size: 3 * chunk})
	s.rps = []*RestorePoint{rp1, rp2, rp3}
	return s
}

// checkCopies restores every copied restore point at dst and compares.
func (s *copySource) checkCopies(t *testing.T, dst *Repository, rep *CopyReport) {
	t.Helper()
	for _, c := range rep.Copied {
		i := slicesIndex(s.rps, c.Source)
		restoreEquals(t, dst, c.Copy, "d", s.imgs[i])
		if i == 2 {
			restoreEquals(t, dst, c.Copy, "e", s.imgs[0][:3*s.r.cfg.ChunkSize])
		}
	}
	vr, err := dst.Verify(context.Background(), VerifyOptions{})
	if err != nil || !vr.OK() {
		t.Fatalf("verify at the destination: %v %+v", err, vr)
	}
}

func slicesIndex(rps []*RestorePoint, rp *RestorePoint) int {
	for i, r := range rps {
		if r.ID == rp.ID {
			return i
		}
	}
	return -1
}

// TestCopy copies between every kind of pair: frames between repositories
// whose chunk ids agree, encoded anew otherwise. Each copy restores
// byte-identical, the incremental sends only its new chunk (frames) or
// stores only it (anew), and copying again is a no-op.
func TestCopy(t *testing.T) {
	ctx := context.Background()
	enc := func(pw string) InitOptions {
		return InitOptions{ChunkSize: cs, Password: []byte(pw), KDF: fastKDF}
	}
	for _, tc := range []struct {
		name     string
		src, dst InitOptions
		twin     bool // dst made with Like: src
		mode     string
	}{
		{"packs to packs", InitOptions{ChunkSize: cs}, InitOptions{ChunkSize: cs}, false, CopyFrames},
		{"packs to loose", InitOptions{ChunkSize: cs}, InitOptions{ChunkSize: cs, PackSize: -1}, false, CopyFrames},
		{"loose to packs", InitOptions{ChunkSize: cs, PackSize: -1}, InitOptions{ChunkSize: cs}, false, CopyFrames},
		{"encrypted to its twin", enc("one"), enc("two"), true, CopyFrames},
		{"encrypted to other keys", enc("one"), enc("two"), false, CopyReencode},
		{"plain to encrypted", InitOptions{ChunkSize: cs}, enc("two"), false, CopyReencode},
		{"encrypted to plain", enc("one"), InitOptions{ChunkSize: cs}, false, CopyReencode},
		{"other chunk size", InitOptions{ChunkSize: cs}, InitOptions{ChunkSize: 2 * cs}, false, CopyReencode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newCopySource(t, tc.src)
			dopts := tc.dst
			if tc.twin {
				dopts.Like = s.r
			}
			dst, _ := newLocalRepoWith(t, dopts)
			if mode, reason := CopyMode(s.r, dst); mode != tc.mode {
				t.Fatalf("mode %s (%s), want %s", mode, reason, tc.mode)
			}

			// The first restore point alone, then all: the first is present.
			rep, err := Copy(ctx, s.r, dst, CopyOptions{RestorePoints: s.rps[:1]})
			if err != nil || len(rep.Copied) != 1 {
				t.Fatalf("copy rp1: %v %+v", err, rep)
			}
			s.checkCopies(t, dst, rep)
			first := rep.Copied[0].Copy

			dry, err := Copy(ctx, s.r, dst, CopyOptions{RestorePoints: s.rps, DryRun: true})
			if err != nil || len(dry.Copied) != 2 || len(dry.Present) != 1 {
				t.Fatalf("dry run: %v %+v", err, dry)
			}
			if rps, _, _ := dst.ListRestorePoints(ctx); len(rps) != 1 {
				t.Fatalf("a dry run wrote %d restore points", len(rps)-1)
			}

			p := &CopyProgress{}
			rep, err = Copy(ctx, s.r, dst, CopyOptions{RestorePoints: s.rps, Progress: p})
			if err != nil || len(rep.Copied) != 2 || len(rep.Present) != 1 || len(rep.Skipped) != 0 {
				t.Fatalf("copy all: %v %+v", err, rep)
			}
			s.checkCopies(t, dst, rep)
			// Sent: exactly the chunks the copies of rp2 and rp3 use that
			// the copy of rp1 does not.
			copies := map[format.ID]*RestorePoint{s.rps[0].ID: first}
			for _, c := range rep.Copied {
				copies[c.Source.ID] = c.Copy
			}
			newIDs := map[format.ID]bool{}
			for _, rp := range []*RestorePoint{copies[s.rps[1].ID], copies[s.rps[2].ID]} {
				for _, d := range rp.Disks {
					idx, err := dst.loadIndex(ctx, d.Index)
					if err != nil {
						t.Fatal(err)
					}
					for id := range uniqueData(idx) {
						newIDs[id] = true
					}
				}
			}
			for id := range uniqueData(mustIndex(t, dst, first)) {
				delete(newIDs, id)
			}
			if rep.ChunksSent != int64(len(newIDs)) || len(newIDs) < 2 {
				t.Fatalf("sent %d chunks; the copies use %d chunks the first copy does not", rep.ChunksSent, len(newIDs))
			}
			if tc.mode == CopyFrames {
				for _, c := range rep.Copied {
					if c.Copy.ID != c.Source.ID {
						t.Fatalf("a frame copy got another id: %s, source %s", c.Copy.ID.Short(), c.Source.ID.Short())
					}
				}
				if dry.ChunksSent != rep.ChunksSent || dry.BytesSent != rep.BytesSent {
					t.Fatalf("dry run planned %d chunks, %d bytes; the copy sent %d, %d", dry.ChunksSent, dry.BytesSent, rep.ChunksSent, rep.BytesSent)
				}
				if p.Sent.Load() != rep.BytesSent || p.ChunksDone.Load() != p.Chunks.Load() || p.Done.Load() != p.Total.Load() ||
					p.RestorePointsDone.Load() != 2 {
					t.Fatalf("progress %d sent of %d, %d/%d chunks, %d/%d bytes, %d restore points", p.Sent.Load(), rep.BytesSent,
						p.ChunksDone.Load(), p.Chunks.Load(), p.Done.Load(), p.Total.Load(), p.RestorePointsDone.Load())
				}
			} else {
				for _, c := range rep.Copied {
					o := c.Copy.Origin
					if o == nil || o.Repository != s.r.cfg.ID || o.RestorePoint != c.Source.ID.String() {
						t.Fatalf("copy of %s: origin %+v", c.Source.ID.Short(), o)
					}
					if !c.Copy.Time.Equal(c.Source.Time) || c.Copy.VM != c.Source.VM {
						t.Fatalf("copy of %s changed its VM or time", c.Source.ID.Short())
					}
				}
				if p := copies[s.rps[1].ID].Disks[0].Parent; p != first.ID.String() {
					t.Fatalf("the copy of rp2 names parent %q, want the copy of rp1 %s", p, first.ID.Short())
				}
			}

			again, err := Copy(ctx, s.r, dst, CopyOptions{RestorePoints: s.rps})
			if err != nil || len(again.Copied) != 0 || len(again.Present) != 3 || again.BytesSent != 0 {
				t.Fatalf("copy again: %v %+v", err, again)
			}
		})
	}
}

// TestCopyDamagedSource: a restore point using a damaged chunk is skipped
// and reported with disk and offset; the others are copied; once the
// chunk is stored good again, a rerun copies it.
func TestCopyDamagedSource(t *testing.T) {
	ctx := context.Background()
	for _, loose := range []bool{false, true} {
		opts := InitOptions{ChunkSize: cs}
		if loose {
			opts.PackSize = -1
		}
		s := newCopySource(t, opts)
		idx2 := mustIndex(t, s.r, s.rps[1])
		victim := idx2.IDs[5] // only rp2 has it
		flipChunkByte(t, s.r, s.dir, victim, format.ChunkHeaderSize+10)
		dst, _ := newLocalRepoWith(t, InitOptions{ChunkSize: cs})
		rep, err := Copy(ctx, s.r, dst, CopyOptions{RestorePoints: s.rps})
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Copied) != 2 || len(rep.Skipped) != 1 || rep.Skipped[0].ID != s.rps[1].ID {
			t.Fatalf("loose %v: copied %d, skipped %v", loose, len(rep.Copied), rep.Skipped)
		}
		if len(rep.Damage) != 1 || rep.Damage[0].Disk != "d" || rep.Damage[0].Offset != 5*cs {
			t.Fatalf("damage %+v, want rp2 disk d offset %d", rep.Damage, 5*cs)
		}
		s.checkCopies(t, dst, rep)
		if _, err := dst.be.Stat(ctx, chunkHandle(victim)); err == nil {
			t.Fatal("the damaged chunk was sent")
		}
		// A capture of the same data stores the chunk again; then rp2 copies.
		if _, err := s.r.Verify(ctx, VerifyOptions{}); err != nil {
			t.Fatal(err)
		}
		capture(t, s.r, "a", s.rps[1], DiskSource{Name: "d", Reader: bytes.NewReader(s.imgs[1]), Size: int64(len(s.imgs[1]))})
		rep, err = Copy(ctx, s.r, dst, CopyOptions{RestorePoints: s.rps})
		if err != nil || len(rep.Copied) != 1 || rep.ChunksSent != 1 {
			t.Fatalf("rerun after healing: %v %+v", err, rep)
		}
		s.checkCopies(t, dst, rep)
	}
}

// countingBackend counts what reaches the destination's storage and
// cancels a copy after a number of stored bytes.
type countingBackend struct {
	backend.Backend
	mu      sync.Mutex
	chunks  map[format.ID]int // chunk saves seen, by id (through Repository.be)
	bytes   atomic.Int64
	cancel  func()
	cutoff  int64
	flusher backend.Flusher
}

func (c *countingBackend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	if h.Type == backend.ChunkFile {
		id, _ := format.ParseID(h.Name)
		c.mu.Lock()
		c.chunks[id]++
		c.mu.Unlock()
		if n := c.bytes.Add(int64(len(data))); c.cancel != nil && n >= c.cutoff {
			c.cancel()
		}
	}
	return c.Backend.Save(ctx, h, data)
}

func (c *countingBackend) Flush(ctx context.Context) error { return c.flusher.Flush(ctx) }

// TestCopyInterrupted: a copy cancelled at random moments ten times, each
// time in a fresh process (repository), then run to the end: the
// destination verifies clean, every restore point restores, and no rerun
// sends again more than what was in flight when the previous one stopped
// (the open pack, packs sealed or uploading, and uploaded packs not yet
// named in a pack index).
func TestCopyInterrupted(t *testing.T) {
	ctx := context.Background()
	chunk := int64(cs)
	r, dir := newLocalRepoWith(t, InitOptions{ChunkSize: chunk, PackSize: -1})
	img := make([]byte, 48<<20) // incompressible: frame bytes = data bytes
	rng := rand.New(rand.NewPCG(5, 5))
	for i := range img {
		img[i] = byte(rng.Uint32())
	}
	rp := capture(t, r, "big", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))})
	s := &copySource{r: r, dir: dir, rps: []*RestorePoint{rp}, imgs: [][]byte{img}}

	const packSize = 1 << 20
	_, ddir := newLocalRepoWith(t, InitOptions{ChunkSize: chunk, PackSize: packSize})
	open := func() *Repository {
		be, err := local.Open(ddir)
		if err != nil {
			t.Fatal(err)
		}
		// Two uploads at a time: one upload slot.
		d, err := Open(ctx, oneUpload{be}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	// In flight when a copy stops: the open pack, two sealed packs
	// waiting for the one upload slot, the one uploading, and up to
	// indexEveryPacks uploaded but not yet indexed.
	window := int64((4 + indexEveryPacks) * (packSize + chunk))
	sentBefore := map[format.ID]bool{}
	for run := range 11 {
		d := open()
		cb := &countingBackend{Backend: d.be, chunks: map[format.ID]int{}, flusher: d.be.(backend.Flusher)}
		d.be = cb
		cctx, cancel := context.WithCancel(ctx)
		if run < 10 {
			cb.cancel, cb.cutoff = cancel, rng.Int64N(int64(len(img))/8)+1
		}
		rep, err := Copy(cctx, r, d, CopyOptions{RestorePoints: s.rps})
		cancel()
		if run < 10 && err == nil {
			// Finished before the cutoff: nothing left to interrupt.
			t.Logf("run %d finished (copied %d)", run, len(rep.Copied))
		} else if run < 10 && !errors.Is(err, context.Canceled) {
			t.Fatalf("run %d: %v", run, err)
		}
		again := int64(0)
		for id := range cb.chunks {
			if sentBefore[id] {
				again += chunk
			}
			sentBefore[id] = true
		}
		t.Logf("run %d: stopped after %d bytes; sent %d chunks, %d of them again", run, cb.cutoff, len(cb.chunks), again/chunk)
		if again > window {
			t.Errorf("run %d sent %d bytes again, more than the %d in flight when the previous run stopped", run, again, window)
		}
		if run == 10 {
			if err != nil || len(rep.Copied)+len(rep.Present) != 1 {
				t.Fatalf("final run: %v %+v", err, rep)
			}
			d.be = cb.Backend
			s.checkCopies(t, d, &CopyReport{Copied: []CopiedRestorePoint{{Source: rp, Copy: rp}}})
		}
		d.Close()
	}
}

// oneUpload is a local backend that takes two writes at a time: its
// pack layer runs one upload.
type oneUpload struct{ *local.Backend }

func (o oneUpload) Properties() backend.Properties {
	p := o.Backend.Properties()
	p.WriteParallelism = 2
	return p
}

// TestCopyDestinationFull: a destination that runs out of space stops the
// copy with an error; what it committed before stays good, and a rerun
// after space is freed completes.
func TestCopyDestinationFull(t *testing.T) {
	ctx := context.Background()
	s := newCopySource(t, InitOptions{ChunkSize: cs})
	_, ddir := newLocalRepoWith(t, InitOptions{ChunkSize: cs, PackSize: 1 << 20})
	be, err := local.Open(ddir)
	if err != nil {
		t.Fatal(err)
	}
	fb := faulty.New(be, 1)
	dst, err := Open(ctx, fb, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Copy(ctx, s.r, dst, CopyOptions{RestorePoints: s.rps[:1]}); err != nil {
		t.Fatal(err)
	}
	enospc := errors.New("no space left on device")
	fb.AddRule(faulty.Rule{Method: faulty.Save, Type: backend.PackFile, From: 1, Effect: faulty.Fail(enospc)})
	rep, err := Copy(ctx, s.r, dst, CopyOptions{RestorePoints: s.rps})
	if !errors.Is(err, enospc) || !strings.Contains(err.Error(), "destination") {
		t.Fatalf("copy into a full destination: %v", err)
	}
	if rep == nil || len(rep.Copied) != 0 {
		t.Fatalf("report after the failure: %+v", rep)
	}
	fb.ClearRules()
	dst2, err := Open(ctx, fb, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rep, err = Copy(ctx, s.r, dst2, CopyOptions{RestorePoints: s.rps})
	if err != nil || len(rep.Copied) != 2 {
		t.Fatalf("rerun: %v %+v", err, rep)
	}
	s.checkCopies(t, dst2, rep)
}

// TestCopyWaitsForDestinationGC: a copy waits while a gc at the
// destination removes objects, then completes.
func TestCopyWaitsForDestinationGC(t *testing.T) {
	ctx := context.Background()
	s := newCopySource(t, InitOptions{ChunkSize: cs})
	dst, _ := newLocalRepoWith(t, InitOptions{ChunkSize: cs})
	gcLock, err := dst.Lock(ctx, LockOptions{Kind: format.LockMaintenance, Operation: "gc"})
	if err != nil {
		t.Fatal(err)
	}
	if err := gcLock.setPhase(ctx, format.LockPhaseDeleting); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := Copy(ctx, s.r, dst, CopyOptions{RestorePoints: s.rps})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("copy ran while a gc was deleting: %v", err)
	case <-time.After(1500 * time.Millisecond):
	}
	if err := gcLock.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if rps, _, _ := dst.ListRestorePoints(ctx); len(rps) != 3 {
		t.Fatalf("%d restore points copied, want 3", len(rps))
	}
}

// TestCopyCaptureKeys: between twins, a host holding only capture keys
// copies (frames checked by checksum); the copy reads with the full key.
func TestCopyCaptureKeys(t *testing.T) {
	ctx := context.Background()
	s := newCopySource(t, InitOptions{ChunkSize: cs, Password: []byte("one"), KDF: fastKDF})
	dst, ddir := newLocalRepoWith(t, InitOptions{ChunkSize: cs, Password: []byte("two"), KDF: fastKDF, Like: s.r})
	if _, err := s.r.AddKey(ctx, keys.KindCapture, []byte("cap"), fastKDF); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.AddKey(ctx, keys.KindCapture, []byte("cap"), fastKDF); err != nil {
		t.Fatal(err)
	}
	csrc, err := openAs(t, s.dir, "cap")
	if err != nil {
		t.Fatal(err)
	}
	cdst, err := openAs(t, ddir, "cap")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Copy(ctx, csrc, cdst, CopyOptions{RestorePoints: s.rps})
	if err != nil || len(rep.Copied) != 3 {
		t.Fatalf("capture-key copy: %v %+v", err, rep)
	}
	full, err := openAs(t, ddir, "two")
	if err != nil {
		t.Fatal(err)
	}
	s.checkCopies(t, full, rep)

	// Different keys need the source's full key.
	other, _ := newLocalRepoWith(t, InitOptions{ChunkSize: cs, Password: []byte("three"), KDF: fastKDF})
	if _, err := Copy(ctx, csrc, other, CopyOptions{RestorePoints: s.rps}); !errors.Is(err, keys.ErrCaptureKey) {
		t.Fatalf("re-encoding copy with a capture key: %v", err)
	}
	// A twin needs the full key too.
	if _, err := Init(ctx, mustLocal(t), InitOptions{Password: []byte("x"), KDF: fastKDF, Like: csrc}); !errors.Is(err, keys.ErrCaptureKey) {
		t.Fatalf("twin of a capture key: %v", err)
	}
}

func mustLocal(t *testing.T) backend.Backend {
	t.Helper()
	be, err := local.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return be
}

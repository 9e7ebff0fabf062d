package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
)

// TestGCWaitsForAMomentWithoutWriters: a running capture defers removal
// (reported, nothing removed); a gc removing objects makes a starting
// capture wait until it is done.
func TestGCWaitsForAMomentWithoutWriters(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	img := testImage(21, 8*cs)
	rp := capture(t, r, "vm", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))})
	if err := r.Forget(ctx, []string{rp.ID.String()}); err != nil {
		t.Fatal(err)
	}
	w, err := r.Lock(ctx, LockOptions{Kind: format.LockWriter, Operation: "capture other"})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := r.GC(ctx, GCOptions{LockWait: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Deferred || len(rep.Writers) != 1 || rep.RemovedChunks == 0 {
		t.Fatalf("gc beside a writer: %+v", rep)
	}
	stored := 0
	r.be.List(ctx, backend.ChunkFile, func(backend.FileInfo) error { stored++; return nil })
	if stored != rep.RemovedChunks {
		t.Fatalf("a deferred gc removed chunks: %d left of %d", stored, rep.RemovedChunks)
	}
	_ = w.Unlock()

	// A gc in its deleting phase (as another host's would be) holds off a
	// new capture until its lock goes.
	gcLock := format.Lock{Exclusive: true, Kind: format.LockMaintenance, Operation: "gc", Hostname: "elsewhere", PID: 1,
		Started: time.Now(), Refreshed: time.Now(), Phase: format.LockPhaseDeleting}
	b, _ := gcLock.Marshal()
	h := backend.Handle{Type: backend.LockFile, Name: newLockName()}
	if err := r.be.Save(ctx, h, b); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		l, err := r.Lock(ctx, LockOptions{Kind: format.LockWriter, Operation: "capture"})
		if err == nil {
			err = l.Unlock()
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("a capture started while a gc was deleting: %v", err)
	case <-time.After(700 * time.Millisecond):
	}
	if err := r.be.Remove(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if rep, err := r.GC(ctx, GCOptions{}); err != nil || rep.Deferred || rep.RemovedChunks != stored {
		t.Fatalf("gc without writers: %+v %v", rep, err)
	}
}

// TestGCKeepsChunksACaptureReused: a capture that reuses a chunk no
// restore point referenced when gc marked (found stored, checked) and
// commits while gc sweeps keeps it: gc marks again before it removes.
func TestGCKeepsChunksACaptureReused(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	img := testImage(31, 8*cs)
	old := capture(t, r, "old", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))})
	if err := r.Forget(ctx, []string{old.ID.String()}); err != nil {
		t.Fatal(err)
	}
	// Mark sees no restore point; the capture commits before removal.
	m := &marker{r: r, indexes: map[string]bool{}, manifests: map[format.ID]bool{}, live: newBloom(100)}
	if err := m.mark(ctx); err != nil {
		t.Fatal(err)
	}
	reused := capture(t, r, "new", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))})
	if reused.Disks[0].Stats.NewChunks != 0 {
		t.Fatalf("the capture stored %d chunks instead of reusing the stored ones", reused.Disks[0].Stats.NewChunks)
	}
	if err := m.mark(ctx); err != nil {
		t.Fatal(err)
	}
	idx := mustIndex(t, r, reused)
	for _, id := range idx.IDs {
		if !id.IsZero() && !m.live.has(id) {
			t.Fatalf("chunk %s of a restore point committed during gc is not marked", id.Short())
		}
	}
	if rep, err := r.GC(ctx, GCOptions{}); err != nil || rep.RemovedChunks != 0 {
		t.Fatalf("gc: %+v %v", rep, err)
	}
	restoreEquals(t, r, reused, "d", img)
}

func restoreEquals(t *testing.T, r *Repository, rp *RestorePoint, disk string, want []byte) {
	t.Helper()
	d, err := r.OpenDisk(context.Background(), rp, disk)
	if err != nil {
		t.Fatal(err)
	}
	w := &memWriterAt{}
	if err := d.Restore(context.Background(), w, RestoreOptions{}); err != nil {
		t.Fatalf("restore %s: %v", rp.ID.Short(), err)
	}
	if !bytes.Equal(w.bytes(int64(len(want))), want) {
		t.Fatalf("restore point %s differs from what was captured", rp.ID.Short())
	}
}

// TestGCRaces runs captures (full, dedup and extents, of VMs that share
// content, so captures reuse chunks of forgotten restore points), forgets,
// gc with no grace, and pinned readers at once, many rounds. Every
// restore point left restores to what it captured, and every read by a
// pinned reader returns what was captured or fails with an error.
func TestGCRaces(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	r, _ := newLocalRepo(t)
	ctx := context.Background()
	const size = 12 * cs
	var mu sync.Mutex
	content := map[format.ID][]byte{}
	var ids []format.ID
	rounds := 40
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 2 { // two capture hosts
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			var base *RestorePoint
			img := testImage(uint64(40+w), size)
			for i := range rounds {
				next := append([]byte(nil), img...)
				var changed []extent.Range
				for range 2 {
					off := rng.IntN(size - 5000)
					copy(next[off:], bytes.Repeat([]byte{byte(i), byte(w)}, 2500))
					changed = append(changed, extent.Range{Offset: int64(off), Length: 5000})
				}
				if i%5 == 0 { // content another VM had: reuse of stored chunks
					copy(next, testImage(uint64(41-w), size)[:4*cs])
					changed = append(changed, extent.Range{Offset: 0, Length: 4 * cs})
				}
				src := DiskSource{Name: "d", Reader: bytes.NewReader(next), Size: size, Base: base}
				if base != nil && i%3 != 0 {
					src.Changed = changed
				}
				rp, err := r.Capture(ctx, CaptureOptions{VM: fmt.Sprintf("vm%d", w)}, []DiskSource{src})
				if err != nil {
					errs <- fmt.Errorf("capture vm%d round %d: %w", w, i, err)
					return
				}
				mu.Lock()
				content[rp.ID] = next
				ids = append(ids, rp.ID)
				mu.Unlock()
				base, img = rp, next
			}
		}()
	}
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(2)
	go func() { // forget old ones and gc
		defer bg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			rps, _, err := r.ListRestorePoints(ctx)
			if err != nil {
				errs <- err
				return
			}
			byVM := map[string][]*RestorePoint{}
			for _, rp := range rps {
				byVM[rp.VM] = append(byVM[rp.VM], rp)
			}
			var names []string
			for _, list := range byVM {
				for i := 0; i < len(list)-3; i++ {
					names = append(names, list[i].ID.String())
				}
			}
			if err := r.Forget(ctx, names); err != nil {
				errs <- err
				return
			}
			if _, err := r.GC(ctx, GCOptions{LockWait: 50 * time.Millisecond}); err != nil {
				errs <- fmt.Errorf("gc: %w", err)
				return
			}
		}
	}()
	go func() { // a reader: pin the newest restore point and read it whole
		defer bg.Done()
		l, err := r.Lock(ctx, LockOptions{Kind: format.LockReader, Operation: "serve"})
		if err != nil {
			errs <- err
			return
		}
		defer l.Unlock()
		for {
			select {
			case <-stop:
				return
			default:
			}
			rps, _, err := r.ListRestorePoints(ctx)
			if err != nil || len(rps) == 0 {
				continue
			}
			rp := rps[len(rps)-1]
			if err := l.Pin(ctx, rp); errors.Is(err, ErrNotFoundRP) {
				continue // forgotten before the pin: a clear error
			} else if err != nil {
				errs <- err
				return
			}
			d, err := r.OpenDisk(ctx, rp, "d")
			if err != nil {
				errs <- fmt.Errorf("open pinned %s: %w", rp.ID.Short(), err)
				return
			}
			got := make([]byte, size)
			if _, err := d.ReadAt(got, 0); err != nil {
				errs <- fmt.Errorf("read pinned %s: %w", rp.ID.Short(), err)
				return
			}
			mu.Lock()
			want, known := content[rp.ID]
			mu.Unlock()
			if known && !bytes.Equal(got, want) { // unknown: its capture has not returned yet
				errs <- fmt.Errorf("pinned %s read wrong data", rp.ID.Short())
				return
			}
			_ = l.Unpin(ctx, rp)
		}
	}()
	wg.Wait()
	close(stop)
	bg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	if _, err := r.GC(ctx, GCOptions{}); err != nil {
		t.Fatal(err)
	}
	rps, _, err := r.ListRestorePoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rps) < 2 {
		t.Fatalf("%d restore points left", len(rps))
	}
	for _, rp := range rps {
		restoreEquals(t, r, rp, "d", content[rp.ID])
	}
	rep, err := r.Verify(ctx, VerifyOptions{})
	if err != nil || !rep.OK() {
		t.Fatalf("verify after the races: %v %+v", err, rep)
	}
}

// TestVerifyRecordsAndHeals: a damaged chunk is recorded and copied aside;
// a capture of the same data stores a good copy (it is not born damaged);
// the next verify takes it off the list.
func TestVerifyRecordsAndHeals(t *testing.T) {
	r, dir := newLocalRepo(t)
	ctx := context.Background()
	img := testImage(51, 8*cs)
	rp1 := capture(t, r, "vm", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))})
	victim := mustIndex(t, r, rp1).IDs[4] // a random chunk
	frame, err := r.be.Load(ctx, chunkHandle(victim), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	flipChunkByte(t, r, dir, victim, int64(len(frame)-1))
	b, _ := r.be.Load(ctx, chunkHandle(victim), 0, -1) // as damaged
	rep, err := r.Verify(ctx, VerifyOptions{})
	if err != nil || rep.OK() || rep.Quarantined != 1 {
		t.Fatalf("verify of a damaged chunk: %v %+v", err, rep)
	}
	list, _, err := r.DamagedChunks(ctx)
	if err != nil || len(list) != 1 || list[victim].Quarantine == "" {
		t.Fatalf("damaged list: %+v %v", list, err)
	}
	q, err := r.be.Load(ctx, stateHandle(list[victim].Quarantine), 0, -1)
	if err != nil || !bytes.Equal(q, b) {
		t.Fatalf("quarantined copy: %v", err)
	}
	if st, err := r.Stats(ctx); err != nil || st.DamagedChunks != 1 {
		t.Fatalf("stats after verify found a damaged chunk: %+v %v", st, err)
	}

	// A dedup capture of the same data must not trust rp1's index for it,
	// and an extents capture that does not touch it reads it again too.
	rp2 := capture(t, r, "vm", rp1, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))})
	if rp2.Disks[0].Stats.NewChunks != 1 {
		t.Fatalf("dedup capture stored %d chunks, want the damaged one again", rp2.Disks[0].Stats.NewChunks)
	}
	restoreEquals(t, r, rp2, "d", img)
	restoreEquals(t, r, rp1, "d", img) // same chunk id: healed for every restore point
	rep, err = r.Verify(ctx, VerifyOptions{})
	if err != nil || !rep.OK() || len(rep.Healed) != 1 || rep.Healed[0] != victim {
		t.Fatalf("verify after the capture: %v %+v", err, rep)
	}
	if list, _, _ := r.DamagedChunks(ctx); len(list) != 0 {
		t.Fatalf("healed chunk still listed: %+v", list)
	}

	// Extents: damage it again; a capture whose changes lie elsewhere reads it.
	flipChunkByte(t, r, dir, victim, int64(len(frame)-1))
	if rep, _ := r.Verify(ctx, VerifyOptions{}); rep.OK() {
		t.Fatal("second damage not found")
	}
	rp3 := capture(t, r, "vm", rp2, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img)), Changed: []extent.Range{{Offset: 0, Length: 10}}})
	if s := rp3.Disks[0].Stats; s.NewChunks != 1 || s.BytesRead != 2*cs {
		t.Fatalf("extents capture with a damaged base chunk: %+v", s)
	}
	restoreEquals(t, r, rp3, "d", img)
}

// TestVerifySelectorsAndRecords: only the chosen restore points are read;
// a clean full verify is recorded and skipped within the window.
func TestVerifySelectorsAndRecords(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	a := capture(t, r, "a", nil, DiskSource{Name: "d", Reader: bytes.NewReader(testImage(61, 4*cs)), Size: 4 * cs})
	b := capture(t, r, "b", nil, DiskSource{Name: "d", Reader: bytes.NewReader(testImage(62, 8*cs)), Size: 8 * cs})
	rep, err := r.Verify(ctx, VerifyOptions{RestorePoints: []*RestorePoint{a}})
	if err != nil || !rep.OK() || rep.RestorePoints != 1 || rep.Chunks != len(uniqueData(mustIndex(t, r, a))) {
		t.Fatalf("verify of a: %v %+v", err, rep)
	}
	rec, err := r.VerifyRecords(ctx)
	if err != nil || rec[a.ID] == nil || !rec[a.ID].OK || !rec[a.ID].AllData || rec[b.ID] != nil {
		t.Fatalf("records: %+v %v", rec, err)
	}
	rep, err = r.Verify(ctx, VerifyOptions{SkipVerifiedWithin: time.Hour})
	if err != nil || len(rep.Skipped) != 1 || rep.Skipped[0].ID != a.ID || rep.RestorePoints != 1 {
		t.Fatalf("verify skipping a: %v %+v", err, rep)
	}
	// b was verified in full just now; a subset check of it then
	// records no skip-worthy verification.
	if rep, _ := r.Verify(ctx, VerifyOptions{SkipVerifiedWithin: time.Hour}); len(rep.Skipped) != 2 {
		t.Fatalf("after full checks of both: %+v", rep)
	}
	if _, err := r.Verify(ctx, VerifyOptions{RestorePoints: []*RestorePoint{b}, Subset: 0.5}); err != nil {
		t.Fatal(err)
	}
	if rec, _ := r.VerifyRecords(ctx); rec[b.ID].AllData {
		t.Fatal("a subset verify recorded as a check of all data")
	}
	if rep, _ := r.Verify(ctx, VerifyOptions{SkipVerifiedWithin: time.Hour}); len(rep.Skipped) != 1 || rep.Skipped[0].ID != a.ID {
		t.Fatalf("after a subset check of b: %+v", rep)
	}
}

func uniqueData(idx *format.Index) map[format.ID]bool {
	out := map[format.ID]bool{}
	for _, id := range idx.IDs {
		if !id.IsZero() {
			out[id] = true
		}
	}
	return out
}

// TestObjectLock: forget and gc leave what the object lock protects alone
// and say until when; once the retention ends they remove it.
func TestObjectLock(t *testing.T) {
	ctx := context.Background()
	r, dir := newLocalRepoWith(t, InitOptions{ChunkSize: cs, ObjectLock: time.Hour})
	img := testImage(71, 6*cs)
	rp := capture(t, r, "vm", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))})
	err := r.Forget(ctx, []string{rp.ID.String()})
	var prot *ProtectedError
	if !errors.As(err, &prot) || !errors.Is(err, ErrProtected) {
		t.Fatalf("forget of a protected restore point: %v", err)
	}
	if until := prot.Until[rp.ID.String()]; until.Before(time.Now().Add(59*time.Minute)) || until.After(time.Now().Add(61*time.Minute)) {
		t.Fatalf("protected until %v, want about an hour from now", until)
	}
	if rps, _, _ := r.ListRestorePoints(ctx); len(rps) != 1 {
		t.Fatal("a protected restore point was forgotten")
	}
	// Two hours later (on the storage's clock) the retention is over.
	past := time.Now().Add(-2 * time.Hour)
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			os.Chtimes(p, past, past)
		}
		return nil
	})
	if err := r.Forget(ctx, []string{rp.ID.String()}); err != nil {
		t.Fatalf("forget after the retention: %v", err)
	}
	rep, err := r.GC(ctx, GCOptions{})
	if err != nil || rep.KeptProtected != 0 || rep.RemovedPacks == 0 || rep.RemovedIndexes != 1 {
		t.Fatalf("gc after the retention: %+v %v", rep, err)
	}
}

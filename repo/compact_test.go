package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/local"
	"github.com/vmvault/vmvault/repo/backend/mem"
	"github.com/vmvault/vmvault/repo/format"
	"github.com/vmvault/vmvault/repo/keys"
)

// compactImage is n chunks of text (unique to seed, compressible), random
// and zero data in turn.
func compactImage(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 3))
	b := make([]byte, n*cs)
	for i := range n {
		c := b[i*cs : (i+1)*cs]
		switch i % 3 {
		case 0:
			var text []byte
			for k := 0; len(text) < cs; k++ {
				text = fmt.Appendf(text, "%d/%d/%d some log line that repeats itself with a counter %d\n", seed, i, k, rng.IntN(1000))
			}
			copy(c, text)
		case 1:
			for j := range c {
				c[j] = byte(rng.Uint32())
			}
		}
	}
	return b
}

// payloads counts the payload types of every stored chunk frame.
func payloads(t *testing.T, r *Repository) map[byte]int {
	t.Helper()
	ctx := context.Background()
	out := map[byte]int{}
	if err := r.be.List(ctx, backend.ChunkFile, func(fi backend.FileInfo) error {
		id, _ := format.ParseID(fi.Name)
		frame, err := r.be.Load(ctx, chunkHandle(id), 0, -1)
		if err != nil {
			return err
		}
		p, err := format.FramePayload(frame)
		out[p]++
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func storedPacks(t *testing.T, be backend.Backend) (n int, size int64) {
	t.Helper()
	if err := be.List(context.Background(), backend.PackFile, func(fi backend.FileInfo) error {
		n++
		size += fi.Size
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n, size
}

func verifyClean(t *testing.T, r *Repository) {
	t.Helper()
	rep, err := r.Verify(context.Background(), VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Damage) > 0 || len(rep.BadChunks) > 0 || len(rep.BadManifests) > 0 {
		t.Fatalf("verify found damage: %+v", rep.Damage)
	}
}

func captureWith(t *testing.T, r *Repository, vm, codec string, img []byte) *RestorePoint {
	t.Helper()
	rp, err := r.Capture(context.Background(), CaptureOptions{VM: vm, Compression: codec},
		[]DiskSource{{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))}})
	if err != nil {
		t.Fatal(err)
	}
	return rp
}

// TestCompactRecompresses: s2 frames become dense zstd frames (raw ones
// stay raw, they do not compress), the repository shrinks, every restore
// point reads back the same, and a second run reads nothing: the packs
// are recorded as done.
func TestCompactRecompresses(t *testing.T) {
	r, dir := newLocalRepoWith(t, InitOptions{ChunkSize: cs, PackSize: format.MinPackSize})
	ctx := context.Background()
	var rps []*RestorePoint
	var imgs [][]byte
	for i := range 3 {
		img := compactImage(uint64(i), 60)
		rps, imgs = append(rps, captureWith(t, r, "vm", format.CompressionS2, img)), append(imgs, img)
	}
	before := payloads(t, r)
	if before[format.PayloadS2] != 60 || before[format.PayloadRaw] != 60 {
		t.Fatalf("before: %v", before)
	}
	_, sizeBefore := storedPacks(t, r.packs.Inner())

	dry, err := r.Compact(ctx, CompactOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := storedPacks(t, r.packs.Inner()); dry.Packs != n || dry.PacksRewritten != 0 || payloads(t, r)[format.PayloadS2] != 60 {
		t.Fatalf("dry run: %+v of %d packs", dry, n)
	}

	var batches int
	rep, err := r.Compact(ctx, CompactOptions{Codec: format.CompressionZstdBest, BatchBytes: 2 << 20, Workers: 3,
		OnBatch: func(CompactReport) { batches++ }})
	if err != nil {
		t.Fatal(err)
	}
	after := payloads(t, r)
	if after[format.PayloadZstdDense] != 60 || after[format.PayloadRaw] != 60 || after[format.PayloadS2] != 0 {
		t.Fatalf("after: %v (report %+v)", after, rep)
	}
	_, sizeAfter := storedPacks(t, r.packs.Inner())
	if sizeAfter >= sizeBefore || rep.BytesAfter >= rep.BytesBefore || rep.Chunks != 120 || rep.DamagedChunks != 0 {
		t.Fatalf("packs %d → %d bytes; report %+v", sizeBefore, sizeAfter, rep)
	}
	if rep.Batches < 2 || batches != rep.Batches {
		t.Fatalf("%d batches (%d reported) of at most 2 MiB for %d bytes of packs", rep.Batches, batches, sizeBefore)
	}
	for i, rp := range rps {
		if !bytes.Equal(restoreBytes(t, r, rp, "d"), imgs[i]) {
			t.Fatalf("restore point %d differs after compaction", i)
		}
	}
	verifyClean(t, r)

	// Another process sees the same.
	be, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Open(ctx, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if !bytes.Equal(restoreBytes(t, r2, rps[2], "d"), imgs[2]) {
		t.Fatal("another process reads wrong data after compaction")
	}
	again, err := r2.Compact(ctx, CompactOptions{Codec: format.CompressionZstdBetter})
	if err != nil {
		t.Fatal(err)
	}
	if again.Packs != 0 || again.PackBytesRead != 0 || again.PacksKnown == 0 {
		t.Fatalf("second run: %+v", again)
	}
	// Another codec is other work: back to s2.
	back, err := r2.Compact(ctx, CompactOptions{Codec: format.CompressionS2})
	if err != nil {
		t.Fatal(err)
	}
	if back.PacksRewritten == 0 || payloads(t, r2)[format.PayloadS2] != 60 {
		t.Fatalf("back to s2: %+v %v", back, payloads(t, r2))
	}
	if !bytes.Equal(restoreBytes(t, r2, rps[0], "d"), imgs[0]) {
		t.Fatal("wrong data after compacting back to s2")
	}
}

// TestCompactOlderThan: only packs at least OlderThan old are rewritten,
// and MaxDuration stops a run between batches, leaving the rest for the
// next run.
func TestCompactOlderThan(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	old := compactImage(1, 30)
	rpOld := captureWith(t, r, "vm", format.CompressionS2, old)
	time.Sleep(1500 * time.Millisecond)
	young := compactImage(2, 30)
	rpYoung := captureWith(t, r, "vm", format.CompressionS2, young)
	rep, err := r.Compact(ctx, CompactOptions{OlderThan: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.PacksRewritten != 1 || rep.PacksYoung != 1 || rep.Chunks != 20 {
		t.Fatalf("report %+v", rep)
	}
	if p := payloads(t, r); p[format.PayloadS2] != 10 || p[format.PayloadZstdDense] != 10 {
		t.Fatalf("payloads %v", p)
	}
	if !bytes.Equal(restoreBytes(t, r, rpOld, "d"), old) || !bytes.Equal(restoreBytes(t, r, rpYoung, "d"), young) {
		t.Fatal("wrong data")
	}
	for i := range 3 {
		captureWith(t, r, "other", format.CompressionS2, compactImage(uint64(10+i), 6))
	}
	rep, err = r.Compact(ctx, CompactOptions{MaxDuration: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Stopped || rep.Batches != 0 || rep.PacksLeft != 4 {
		t.Fatalf("a run past its duration: %+v", rep)
	}
}

// TestCompactAfterACrash: a batch that fails after its new packs are
// indexed (the old packs could not be retired) leaves every chunk
// readable; the next run finds the old copies superseded and removes
// their packs without recompressing anything again, leaving one frame
// per chunk.
func TestCompactAfterACrash(t *testing.T) {
	ctx := context.Background()
	inner := &failGone{Backend: mem.New()}
	r, err := Init(ctx, inner, InitOptions{ChunkSize: cs, PackSize: format.MinPackSize})
	if err != nil {
		t.Fatal(err)
	}
	img := compactImage(7, 90)
	rp := captureWith(t, r, "vm", format.CompressionS2, img)
	inner.armed.Store(true)
	if _, err := r.Compact(ctx, CompactOptions{}); !errors.Is(err, errPowerCut) {
		t.Fatalf("compaction went on past a failed pack index: %v", err)
	}
	inner.armed.Store(false)
	if !bytes.Equal(restoreBytes(t, r, rp, "d"), img) {
		t.Fatal("wrong data after a failed batch")
	}
	// The new packs hold every chunk of the packs that changed (a pack of
	// raw frames only is left as it is).
	twice := storedFrames(t, inner) - 60
	if twice < 50 {
		t.Fatalf("%d frames stored twice after the failed batch", twice)
	}
	rep, err := r.Compact(ctx, CompactOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.PacksWritten != 0 || rep.Chunks != 0 || rep.DroppedChunks != twice || rep.PacksRewritten == 0 {
		t.Fatalf("the run after the failed one (%d frames stored twice): %+v", twice, rep)
	}
	if n := storedFrames(t, inner); n != 60 {
		t.Fatalf("%d frames stored for 60 chunks", n)
	}
	if p := payloads(t, r); p[format.PayloadZstdDense] != 30 || p[format.PayloadRaw] != 30 {
		t.Fatalf("payloads %v", p)
	}
	if !bytes.Equal(restoreBytes(t, r, rp, "d"), img) {
		t.Fatal("wrong data after compaction")
	}
	verifyClean(t, r)
}

var errPowerCut = errors.New("power cut")

// failGone fails, while armed, the save of every pack index that says
// packs are gone: a crash after a batch's new packs were indexed and
// before its old packs were retired.
type failGone struct {
	*mem.Backend
	armed atomic.Bool
}

func (f *failGone) Save(ctx context.Context, h backend.Handle, data []byte) error {
	if h.Type == backend.PackIndexFile && f.armed.Load() {
		if x, err := format.ParsePackIndex(data); err == nil && len(x.GonePacks) > 0 {
			return errPowerCut
		}
	}
	return f.Backend.Save(ctx, h, data)
}

// storedFrames counts the frames the stored packs hold (their trailers'
// entries).
func storedFrames(t *testing.T, be backend.Backend) int {
	t.Helper()
	ctx := context.Background()
	n := 0
	if err := be.List(ctx, backend.PackFile, func(fi backend.FileInfo) error {
		data, err := be.Load(ctx, backend.Handle{Type: backend.PackFile, Name: fi.Name}, 0, -1)
		if err != nil {
			return err
		}
		size, err := format.PackTrailerSize(data[len(data)-16:], int64(len(data)))
		if err != nil {
			return err
		}
		entries, err := format.ParsePackTrailer(data[int64(len(data))-size:], int64(len(data)))
		n += len(entries)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCompactLeavesDamageAlone: a chunk whose frame does not decode to its
// id is copied as it is, counted, and still found by verify; the others
// are recompressed.
func TestCompactLeavesDamageAlone(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	img := compactImage(3, 12)
	rp := captureWith(t, r, "vm", format.CompressionS2, img)
	d, err := r.OpenDisk(ctx, rp, "d")
	if err != nil {
		t.Fatal(err)
	}
	victim := d.Index().IDs[0]
	pk, off, _, ok, err := r.packs.Locate(ctx, victim)
	if err != nil || !ok {
		t.Fatalf("locate: %v %v", ok, err)
	}
	inner := r.packs.Inner()
	ph := backend.Handle{Type: backend.PackFile, Name: pk.String()}
	data, err := inner.Load(ctx, ph, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	data[off+format.ChunkHeaderSize+100] ^= 0x55 // the payload: its checksum no longer matches
	if err := inner.Save(ctx, ph, data); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Compact(ctx, CompactOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.DamagedChunks != 1 || rep.Chunks != 8 {
		t.Fatalf("report %+v", rep)
	}
	if p := payloads(t, r); p[format.PayloadS2] != 1 || p[format.PayloadZstdDense] != 3 {
		t.Fatalf("payloads %v", p)
	}
	v, err := r.Verify(ctx, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, bad := v.BadChunks[victim]; !bad || len(v.BadChunks) != 1 {
		t.Fatalf("verify after compaction: %v", v.BadChunks)
	}
}

// TestCompactBesideCapturesAndReaders runs compaction in one "process"
// (Repository) while another captures and a third reads restore points
// through a small cache, all on one local repository; compaction takes
// the maintenance lock so gc cannot run beside it. Every restore point
// reads back the same during and after, and verify is clean. Run it
// under -race.
func TestCompactBesideCapturesAndReaders(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	ctx := context.Background()
	_, dir := newLocalRepoWith(t, InitOptions{ChunkSize: cs, PackSize: format.MinPackSize})
	open := func(cache int64) *Repository {
		be, err := local.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		r, err := Open(ctx, be, Options{CacheSize: cache})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return r
	}
	writer, reader, compactor := open(0), open(2*cs), open(0)

	var mu sync.Mutex
	content := map[format.ID][]byte{}
	var order []*RestorePoint
	add := func(rp *RestorePoint, img []byte) {
		mu.Lock()
		defer mu.Unlock()
		content[rp.ID], order = img, append(order, rp)
	}
	for i := range 4 {
		img := compactImage(uint64(100+i), 24)
		add(captureWith(t, writer, "vm", format.CompressionS2, img), img)
	}
	stop := make(chan struct{})
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // captures, some sharing chunks with earlier ones
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			img := compactImage(uint64(200+i), 24)
			copy(img, compactImage(uint64(100+i%4), 6))
			rp, err := writer.Capture(ctx, CaptureOptions{VM: "vm", Compression: format.CompressionAuto},
				[]DiskSource{{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))}})
			if err != nil {
				errs <- fmt.Errorf("capture %d: %w", i, err)
				return
			}
			add(rp, img)
		}
	}()
	go func() { // readers of every restore point, again and again
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			rps := append([]*RestorePoint(nil), order...)
			mu.Unlock()
			for _, rp := range rps {
				d, err := reader.OpenDisk(ctx, rp, "d")
				if err != nil {
					errs <- err
					return
				}
				got := make([]byte, d.Size())
				if _, err := d.ReadAt(got, 0); err != nil {
					errs <- fmt.Errorf("read %s: %w", rp.ID.Short(), err)
					return
				}
				mu.Lock()
				want := content[rp.ID]
				mu.Unlock()
				if !bytes.Equal(got, want) {
					errs <- fmt.Errorf("restore point %s reads wrong data during compaction", rp.ID.Short())
					return
				}
			}
		}
	}()
	var reps []*CompactReport
	for range 3 {
		rep, err := compactor.Compact(ctx, CompactOptions{BatchBytes: 1 << 20, Workers: 2})
		if err != nil {
			t.Error(err)
			break
		}
		reps = append(reps, rep)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(reps) == 0 || reps[0].PacksRewritten == 0 {
		t.Fatalf("compaction rewrote nothing: %+v", reps)
	}
	final := open(0)
	for _, rp := range order {
		if !bytes.Equal(restoreBytes(t, final, rp, "d"), content[rp.ID]) {
			t.Errorf("restore point %s differs after compaction", rp.ID.Short())
		}
	}
	verifyClean(t, final)
	t.Logf("%d restore points; compaction runs: %d, %d, %d packs rewritten", len(order), reps[0].PacksRewritten, reps[min(1, len(reps)-1)].PacksRewritten, reps[len(reps)-1].PacksRewritten)
}

// TestCompactTakesTheMaintenanceLock: compaction does not start while gc
// (or another compaction) holds the maintenance lock.
func TestCompactTakesTheMaintenanceLock(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	captureWith(t, r, "vm", format.CompressionS2, compactImage(5, 6))
	l, err := r.Lock(ctx, LockOptions{Kind: format.LockMaintenance, Operation: "gc"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Compact(ctx, CompactOptions{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("compaction beside gc: %v", err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	if rep, err := r.Compact(ctx, CompactOptions{}); err != nil || rep.PacksRewritten != 1 {
		t.Fatalf("after gc: %+v %v", rep, err)
	}
}

// TestCompactEncrypted: in an encrypted repository compaction decrypts,
// recompresses and seals every frame anew (raw ones stay as they are);
// restore points read back the same and verify is clean; a capture key
// cannot compact.
func TestCompactEncrypted(t *testing.T) {
	ctx := context.Background()
	r, dir := newEncryptedRepo(t)
	img := compactImage(9, 30)
	rp := captureWith(t, r, "vm", format.CompressionS2, img)
	const enc = 0x80
	if p := payloads(t, r); p[enc|format.PayloadS2] != 10 || p[enc|format.PayloadRaw] != 10 {
		t.Fatalf("before: %v", p)
	}
	rep, err := r.Compact(ctx, CompactOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p := payloads(t, r); p[enc|format.PayloadZstdDense] != 10 || p[enc|format.PayloadRaw] != 10 || rep.Chunks != 20 {
		t.Fatalf("after: %v, report %+v", p, rep)
	}
	restoreEquals(t, r, rp, "d", img)
	verifyClean(t, r)
	if again, err := r.Compact(ctx, CompactOptions{Codec: format.CompressionZstdBetter}); err != nil || again.Packs != 0 {
		t.Fatalf("second run: %+v %v", again, err)
	}
	// Without the record the packs are read again and found done: raw
	// frames are not sealed anew.
	recs, err := r.listState(ctx, compactRecordPrefix)
	if err != nil || len(recs) == 0 {
		t.Fatalf("records: %v %v", recs, err)
	}
	for _, fi := range recs {
		if err := r.be.Remove(ctx, stateHandle(fi.Name)); err != nil {
			t.Fatal(err)
		}
	}
	if again, err := r.Compact(ctx, CompactOptions{}); err != nil || again.PacksRewritten != 0 || again.PacksUnchanged == 0 {
		t.Fatalf("run without the record: %+v %v", again, err)
	}
	if _, err := r.AddKey(ctx, keys.KindCapture, []byte("hypervisor"), fastKDF); err != nil {
		t.Fatal(err)
	}
	cr, err := openAs(t, dir, "hypervisor")
	if err != nil {
		t.Fatal(err)
	}
	defer cr.Close()
	if _, err := cr.Compact(ctx, CompactOptions{Codec: format.CompressionS2}); !errors.Is(err, keys.ErrCaptureKey) {
		t.Fatalf("compaction with a capture key: %v", err)
	}
}

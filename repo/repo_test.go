package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/faulty"
	"github.com/vmvault/vmvault/repo/backend/local"
	"github.com/vmvault/vmvault/repo/backend/mem"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
)

const cs = format.MinChunkSize

func newRepo(t *testing.T) *Repository {
	t.Helper()
	r, err := Init(context.Background(), mem.New(), InitOptions{ChunkSize: cs})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func newLocalRepo(t *testing.T) (*Repository, string) {
	t.Helper()
	return newLocalRepoWith(t, InitOptions{ChunkSize: cs})
}

// newLooseRepo is a local repository of format version 1: one object per
// chunk, so a test can damage one chunk's object in every way.
func newLooseRepo(t *testing.T) (*Repository, string) {
	t.Helper()
	return newLocalRepoWith(t, InitOptions{ChunkSize: cs, PackSize: -1})
}

func newLocalRepoWith(t *testing.T, opts InitOptions) (*Repository, string) {
	t.Helper()
	dir := t.TempDir()
	be, err := local.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Init(context.Background(), be, opts)
	if err != nil {
		t.Fatal(err)
	}
	return r, dir
}

// testImage makes a disk image with data, text and zero regions.
func testImage(seed uint64, size int) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, size)
	for off := 0; off < size; off += cs {
		end := min(off+cs, size)
		switch (off / cs) % 4 {
		case 0: // random
			for i := off; i < end; i++ {
				b[i] = byte(rng.Uint32())
			}
		case 1: // text
			copy(b[off:end], bytes.Repeat([]byte("the quick brown fox "), cs/20+1))
		case 2: // zero
		case 3: // half zero
			for i := off; i < off+(end-off)/2; i++ {
				b[i] = byte(rng.Uint32())
			}
		}
	}
	return b
}

func restoreBytes(t *testing.T, r *Repository, rp *RestorePoint, disk string) []byte {
	t.Helper()
	d, err := r.OpenDisk(context.Background(), rp, disk)
	if err != nil {
		t.Fatal(err)
	}
	out := &memWriterAt{}
	if err := d.Restore(context.Background(), out, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	// Also through ReadAt in odd pieces.
	viaReadAt := make([]byte, d.Size())
	for off := 0; off < len(viaReadAt); off += 7777 {
		end := min(off+7777, len(viaReadAt))
		if n, err := d.ReadAt(viaReadAt[off:end], int64(off)); n != end-off || (err != nil && !(err.Error() == "EOF" && end == len(viaReadAt))) {
			t.Fatalf("ReadAt(%d) = %d, %v", off, n, err)
		}
	}
	got := out.bytes(d.Size())
	if !bytes.Equal(got, viaReadAt) {
		t.Fatal("Restore and ReadAt disagree")
	}
	return got
}

type memWriterAt struct {
	mu  sync.Mutex
	buf []byte
}

func (w *memWriterAt) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if need := int(off) + len(p); need > len(w.buf) {
		w.buf = append(w.buf, make([]byte, need-len(w.buf))...)
	}
	copy(w.buf[off:], p)
	return len(p), nil
}

func (w *memWriterAt) bytes(size int64) []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append(w.buf, make([]byte, int(size)-len(w.buf))...)
}

func capture(t *testing.T, r *Repository, vm string, base *RestorePoint, disks ...DiskSource) *RestorePoint {
	t.Helper()
	for i := range disks {
		disks[i].Base = base
	}
	rp, err := r.Capture(context.Background(), CaptureOptions{VM: vm}, disks)
	if err != nil {
		t.Fatal(err)
	}
	return rp
}

func TestCaptureRestoreSizes(t *testing.T) {
	for _, size := range []int{0, 1, cs - 1, cs, cs + 1, 7*cs + 12345} {
		r := newRepo(t)
		img := testImage(uint64(size), size)
		rp := capture(t, r, "vm", nil, DiskSource{Name: "disk0", Reader: bytes.NewReader(img), Size: int64(size)})
		if got := restoreBytes(t, r, rp, "disk0"); sha256.Sum256(got) != sha256.Sum256(img) {
			t.Fatalf("size %d: restore differs", size)
		}
	}
}

func TestIncrementals(t *testing.T) {
	r := newRepo(t)
	size := 40*cs + 999
	img := testImage(1, size)
	rp1 := capture(t, r, "vm", nil, DiskSource{Name: "disk0", Reader: bytes.NewReader(img), Size: int64(size)})
	v1 := append([]byte(nil), img...)

	// Dedup incremental: change two places; only their chunks are new.
	copy(img[3*cs+10:], []byte("changed!"))
	copy(img[size-5:], []byte("tail!"))
	rp2 := capture(t, r, "vm", rp1, DiskSource{Name: "disk0", Reader: bytes.NewReader(img), Size: int64(size)})
	st := rp2.Disks[0].Stats
	if st.Mode != "dedup" || st.NewChunks != 2 || st.BytesRead != int64(size) {
		t.Errorf("dedup incremental stats %+v; want mode dedup, 2 new chunks, whole disk read", st)
	}
	v2 := append([]byte(nil), img...)

	// Extents incremental: the reader only sees the declared ranges.
	copy(img[20*cs+100:], bytes.Repeat([]byte{0xAB}, 3*cs))
	changed := []extent.Range{{Offset: 20*cs + 100, Length: 3 * cs}}
	src := &countingReader{r: bytes.NewReader(img)}
	rp3 := capture(t, r, "vm", rp2, DiskSource{Name: "disk0", Reader: src, Size: int64(size), Changed: changed})
	st = rp3.Disks[0].Stats
	if st.Mode != "extents" || st.BytesRead != 4*cs || src.n.Load() != 4*cs {
		t.Errorf("extents incremental read %d bytes (stats %+v), want %d", src.n.Load(), st, 4*cs)
	}
	if rp3.Disks[0].Parent != rp2.ID.String() {
		t.Errorf("parent = %s", rp3.Disks[0].Parent)
	}
	for _, c := range []struct {
		rp   *RestorePoint
		want []byte
	}{{rp1, v1}, {rp2, v2}, {rp3, img}} {
		if got := restoreBytes(t, r, c.rp, "disk0"); !bytes.Equal(got, c.want) {
			t.Errorf("restore point %s differs from the source as of its capture", c.rp.ID.Short())
		}
	}

	// Grown disk with extents: the new tail is read too.
	grown := append(append([]byte(nil), img...), testImage(9, 3*cs)...)
	rp4 := capture(t, r, "vm", rp3, DiskSource{Name: "disk0", Reader: bytes.NewReader(grown), Size: int64(len(grown)), Changed: []extent.Range{}})
	if got := restoreBytes(t, r, rp4, "disk0"); !bytes.Equal(got, grown) {
		t.Error("grown disk restore differs")
	}
	if rp4.Disks[0].Stats.Reason == "" {
		t.Error("size change not recorded as a reason")
	}
}

type countingReader struct {
	r interface {
		ReadAt([]byte, int64) (int, error)
	}
	n atomicInt
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

func TestCorruptChunk(t *testing.T) {
	r, dir := newLocalRepo(t)
	size := 8 * cs
	imgA := testImage(1, size)
	imgB := testImage(2, size)
	rpA := capture(t, r, "a", nil, DiskSource{Name: "disk0", Reader: bytes.NewReader(imgA), Size: int64(size)})
	rpB := capture(t, r, "b", nil, DiskSource{Name: "disk0", Reader: bytes.NewReader(imgB), Size: int64(size)})

	// Flip one byte in the chunk at offset 4*cs of A (random data, unique to A).
	d, err := r.OpenDisk(context.Background(), rpA, "disk0")
	if err != nil {
		t.Fatal(err)
	}
	victim := d.Index().IDs[4]
	flipChunkByte(t, r, dir, victim, 100)

	rep, err := r.Verify(context.Background(), VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.DamagedPoints) != 1 || rep.DamagedPoints[0].ID != rpA.ID || len(rep.Damage) != 1 || rep.Damage[0].Offset != 4*cs {
		t.Fatalf("verify: damaged %v, damage %+v; want restore point a at offset %d", rep.DamagedPoints, rep.Damage, 4*cs)
	}
	buf := make([]byte, 10)
	_, err = d.ReadAt(buf, 4*cs+5)
	var ce *ChunkError
	if !errors.As(err, &ce) || ce.Offset != 4*cs || ce.RestorePoint != rpA.ID.Short() || !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("read of damaged chunk: %v", err)
	}
	// A streaming read covering the whole chunk names it the same way.
	sd, err := r.OpenDisk(context.Background(), rpA, "disk0")
	if err != nil {
		t.Fatal(err)
	}
	sd.SetStreaming(true)
	_, err = sd.ReadAt(make([]byte, 2*cs), 3*cs)
	if !errors.As(err, &ce) || ce.Offset != 4*cs || !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("streaming read of damaged chunk: %v", err)
	}
	// Lending the damaged chunk fails the same way, before anything is
	// lent, and leaves nothing pinned.
	err = d.ReadSlices(context.Background(), 3*cs, 2*cs, func([][]byte) error {
		t.Error("ReadSlices lent a range holding a damaged chunk")
		return nil
	})
	if !errors.As(err, &ce) || ce.Offset != 4*cs || !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("ReadSlices of damaged chunk: %v", err)
	}
	assertUnpinned(t, r)
	// Other chunks of A still read, and B restores.
	if _, err := d.ReadAt(buf, 0); err != nil {
		t.Fatalf("read of a good chunk after a bad one: %v", err)
	}
	if got := restoreBytes(t, r, rpB, "disk0"); !bytes.Equal(got, imgB) {
		t.Fatal("undamaged restore point differs")
	}
	// A later capture of the same content repairs the store: the damaged
	// object is not trusted for dedup.
	rpA2 := capture(t, r, "a2", nil, DiskSource{Name: "disk0", Reader: bytes.NewReader(imgA), Size: int64(size)})
	if got := restoreBytes(t, r, rpA2, "disk0"); !bytes.Equal(got, imgA) {
		t.Fatal("capture after damage restores wrong data")
	}
}

// TestStreamingReads checks that streaming reads (whole chunks decoded
// into the caller's buffer, uncached) return the same bytes as cached ones
// for every alignment, and leave the cache alone.
func TestStreamingReads(t *testing.T) {
	r := newRepo(t)
	size := 6*cs + 1000 // a short last chunk
	img := testImage(7, size)
	rp := capture(t, r, "s", nil, DiskSource{Name: "disk0", Reader: bytes.NewReader(img), Size: int64(size)})
	d, err := r.OpenDisk(context.Background(), rp, "disk0")
	if err != nil {
		t.Fatal(err)
	}
	d.SetStreaming(true)
	for _, c := range []struct{ off, n int64 }{
		{0, int64(size)}, {0, cs}, {cs, 2 * cs}, {cs - 7, 2*cs + 14}, {5 * cs, cs + 1000}, {6 * cs, 1000}, {100, 10},
	} {
		p := make([]byte, c.n)
		if n, err := d.ReadAt(p, c.off); err != nil || int64(n) != c.n || !bytes.Equal(p, img[c.off:c.off+c.n]) {
			t.Fatalf("ReadAt(%d, +%d) = %d, %v (equal %v)", c.off, c.n, n, err, bytes.Equal(p, img[c.off:c.off+c.n]))
		}
	}
	if n := r.cache.lru.Len(); n > 3 {
		t.Errorf("%d chunks cached by streaming reads; only partial reads should fill the cache", n)
	}
}

// flipChunkByte flips byte at of a chunk's frame, in its pack or its own
// object.
func flipChunkByte(t *testing.T, r *Repository, dir string, id format.ID, at int64) {
	t.Helper()
	pb := r.packs
	if pb == nil {
		flipByte(t, filepath.Join(dir, "chunks", id.String()[:2], id.String()), at)
		return
	}
	name, off, _, found, err := pb.Locate(context.Background(), id)
	if err != nil || !found {
		t.Fatalf("locate chunk %s: %v", id.Short(), err)
	}
	flipByte(t, filepath.Join(dir, "packs", name.String()), off+at)
}

func flipByte(t *testing.T, p string, at int64) {
	t.Helper()
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentCapturesThenGC(t *testing.T) {
	r, _ := newLocalRepo(t)
	size := 30*cs + 77
	var wg sync.WaitGroup
	imgs := map[string][]byte{}
	rps := map[string]*RestorePoint{}
	var mu sync.Mutex
	for _, vm := range []string{"alpha", "beta", "gamma"} {
		img := testImage(uint64(len(vm)), size)
		copy(img, vm) // shares most chunks with the others
		imgs[vm] = img
		wg.Add(1)
		go func() {
			defer wg.Done()
			rp, err := r.Capture(context.Background(), CaptureOptions{VM: vm}, []DiskSource{{Name: "disk0", Reader: bytes.NewReader(img), Size: int64(size)}})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			rps[vm] = rp
			mu.Unlock()
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	// A capture that fails part-way (its pack is stored, but the backend
	// reports an error) leaves orphans; gc with no grace removes only those.
	fb := faulty.New(r.packs.Inner(), 1)
	fb.AddRule(faulty.Rule{Method: faulty.Save, Type: backend.PackFile, From: 1, Effect: faulty.FailAfter(errInjected)})
	fr := newRepository(fb, r.cfg, nil, Options{})
	orphan := testImage(77, size)
	_, err := fr.Capture(context.Background(), CaptureOptions{VM: "delta"}, []DiskSource{{Name: "disk0", Reader: bytes.NewReader(orphan), Size: int64(size)}})
	if !errors.Is(err, errInjected) {
		t.Fatalf("capture with failing saves: %v", err)
	}
	// File times advance by the kernel's coarse clock tick: an orphan
	// stamped in the tick of gc's lock is not older than gc, and stays.
	time.Sleep(20 * time.Millisecond)
	rep, err := r.GC(context.Background(), GCOptions{Grace: 0})
	if err != nil {
		t.Fatal(err)
	}
	if rep.RemovedPacks == 0 || rep.RemovedBytes == 0 {
		t.Errorf("gc removed nothing after an abandoned capture: %+v", rep)
	}
	for vm, rp := range rps {
		if got := restoreBytes(t, r, rp, "disk0"); !bytes.Equal(got, imgs[vm]) {
			t.Errorf("%s differs after gc", vm)
		}
	}
	v, err := r.Verify(context.Background(), VerifyOptions{})
	if err != nil || !v.OK() {
		t.Fatalf("verify after gc: %v %+v", err, v)
	}
}

var errInjected = errors.New("injected save failure")

type cancelAfter struct {
	r      *bytes.Reader
	cancel func()
	after  int64
	n      atomicInt
}

func (c *cancelAfter) ReadAt(p []byte, off int64) (int, error) {
	if c.n.Add(int64(len(p))) > c.after {
		c.cancel()
	}
	return c.r.ReadAt(p, off)
}

func TestForgetBaseDuringCapture(t *testing.T) {
	r := newRepo(t)
	img := testImage(3, 4*cs)
	rp1 := capture(t, r, "vm", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))})
	if err := r.Forget(context.Background(), []string{rp1.ID.String()}); err != nil {
		t.Fatal(err)
	}
	_, err := r.Capture(context.Background(), CaptureOptions{VM: "vm"}, []DiskSource{{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img)), Base: rp1}})
	if err == nil {
		t.Fatal("capture against a forgotten base committed")
	}
}

func TestLocks(t *testing.T) {
	r, dir := newLocalRepo(t)
	ctx := context.Background()
	take := func(kind, op string) (*Lock, error) {
		return r.Lock(ctx, LockOptions{Kind: kind, Operation: op})
	}
	reader, err := take(format.LockReader, "serve")
	if err != nil {
		t.Fatal(err)
	}
	writer, err := take(format.LockWriter, "capture")
	if err != nil {
		t.Fatalf("writer beside a reader: %v", err)
	}
	gc, err := take(format.LockMaintenance, "gc")
	if err != nil {
		t.Fatalf("gc beside a reader and a writer: %v", err)
	}
	if _, err := take(format.LockMaintenance, "gc"); !errors.Is(err, ErrLocked) {
		t.Fatalf("a second gc: %v", err)
	}
	if reader.Epoch().IsZero() || gc.Epoch().Before(reader.Epoch()) {
		t.Fatalf("epochs: reader %v gc %v", reader.Epoch(), gc.Epoch())
	}
	_ = gc.Unlock()
	_ = writer.Unlock()
	_ = reader.Unlock()

	// A build that knows only shared and exclusive locks: its exclusive
	// lock (an old gc) keeps everybody out; its shared ones count as writers.
	old := format.Lock{Exclusive: true, Hostname: "elsewhere", PID: 1, Started: time.Now(), Refreshed: time.Now()}
	b, _ := old.Marshal()
	name := newLockName()
	if err := r.be.Save(ctx, backend.Handle{Type: backend.LockFile, Name: name}, b); err != nil {
		t.Fatal(err)
	}
	if _, err := take(format.LockReader, "serve"); !errors.Is(err, ErrLocked) {
		t.Fatalf("reader beside an old exclusive lock: %v", err)
	}
	// Stale: not refreshed for StaleLockAge on the storage's clock (the
	// lock's object time, not the Refreshed field a host's clock wrote).
	path := filepath.Join(dir, "locks", name)
	past := time.Now().Add(-2 * StaleLockAge)
	if err := os.Chtimes(path, past, past); err != nil {
		t.Fatal(err)
	}
	if l, err := take(format.LockMaintenance, "gc"); err != nil {
		t.Fatalf("a stale lock blocks: %v", err)
	} else {
		_ = l.Unlock()
	}
	// A dead process on this host is stale at once.
	dead := format.Lock{Exclusive: true, Hostname: r.hostname, PID: 1 << 22, Started: time.Now(), Refreshed: time.Now()}
	b, _ = dead.Marshal()
	if err := r.be.Save(ctx, backend.Handle{Type: backend.LockFile, Name: newLockName()}, b); err != nil {
		t.Fatal(err)
	}
	// A garbage lock object is reported (not silently ignored) and counts
	// as a possible writer until it is stale.
	if err := r.be.Save(ctx, backend.Handle{Type: backend.LockFile, Name: newLockName()}, []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	locks, err := r.Locks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	garbage := 0
	for _, l := range locks {
		if l.Garbage && !l.Stale {
			garbage++
		}
	}
	if garbage != 1 {
		t.Fatalf("locks: %+v", locks)
	}
	if w, _ := r.runningWriters(ctx); len(w) != 1 || !strings.Contains(w[0], "unreadable lock") {
		t.Fatalf("running writers with a garbage lock: %v", w)
	}
	if n, err := r.RemoveLocks(ctx, false); err != nil || n != 2 {
		t.Fatalf("RemoveLocks = %d, %v; want 2 (the stale and the dead)", n, err)
	}
	if n, err := r.RemoveLocks(ctx, true); err != nil || n != 1 {
		t.Fatalf("RemoveLocks(all) = %d, %v; want 1 (the garbage)", n, err)
	}
}

func mustIndex(t *testing.T, r *Repository, rp *RestorePoint) *format.Index {
	t.Helper()
	idx, err := r.loadIndex(context.Background(), rp.Disks[0].Index)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// TestPinThenCheck: a pin on a restore point forgotten before the pin was
// visible fails; one forgotten after keeps its data through gc.
func TestPinThenCheck(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	img := testImage(11, 6*cs)
	rp1 := capture(t, r, "vm", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))})
	rp2 := capture(t, r, "other", nil, DiskSource{Name: "d", Reader: bytes.NewReader(testImage(12, 3*cs)), Size: 3 * cs})
	l, err := r.Lock(ctx, LockOptions{Kind: format.LockReader, Operation: "serve"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	if err := l.Pin(ctx, rp1); err != nil {
		t.Fatal(err)
	}
	only2 := map[format.ID]bool{}
	for _, id := range mustIndex(t, r, rp2).IDs {
		only2[id] = !id.IsZero()
	}
	for _, id := range mustIndex(t, r, rp1).IDs {
		delete(only2, id)
	}
	want := 0
	for _, ok := range only2 {
		if ok {
			want++
		}
	}
	if err := r.Forget(ctx, []string{rp1.ID.String(), rp2.ID.String()}); err != nil {
		t.Fatal(err)
	}
	if err := l.Pin(ctx, rp2); !errors.Is(err, ErrNotFoundRP) {
		t.Fatalf("pin of a forgotten restore point: %v", err)
	}
	rep, err := r.GC(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.PinnedIndexes != 1 || rep.RemovedIndexes != 1 || rep.RemovedChunks != want || want == 0 {
		t.Fatalf("gc with a pin: %+v", rep)
	}
	d, err := r.OpenDisk(ctx, rp1, "d")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(img))
	if _, err := d.ReadAt(got, 0); err != nil || !bytes.Equal(got, img) {
		t.Fatalf("read of a pinned, forgotten restore point after gc: %v", err)
	}
	if err := l.Unpin(ctx, rp1); err != nil {
		t.Fatal(err)
	}
	if rep, err = r.GC(ctx, GCOptions{}); err != nil || rep.RemovedIndexes != 1 || rep.RemovedChunks == 0 {
		t.Fatalf("gc after unpin: %+v %v", rep, err)
	}
}

func TestResolve(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	mk := func(vm string, h int, id byte) *RestorePoint {
		var x format.ID
		x[0], x[1] = id, id
		return &RestorePoint{ID: x, Manifest: &format.Manifest{VM: vm, Time: t0.Add(time.Duration(h) * time.Hour)}}
	}
	rps := []*RestorePoint{mk("web", 0, 0xa1), mk("web", 24, 0xa2), mk("db", 5, 0xb1)}
	cases := []struct {
		name string
		want int // index into rps, -1 error
	}{
		{"web@latest", 1},
		{"db@latest", 2},
		{"web@2026-11-01", -1},
		{"web@2026-11-01T12:00", 0},
		{"web@2026-11-02T10:00:00Z", 1},
		{"nope@latest", -1},
		{rps[0].ID.String(), 0},
		{"a2a2", 1},
		{"a", -1},
		{"ffff", -1},
	}
	for _, c := range cases {
		got, err := Resolve(rps, c.name)
		if c.want < 0 {
			if err == nil {
				t.Errorf("Resolve(%q) = %s, want error", c.name, got.ID.Short())
			}
			continue
		}
		if err != nil || got != rps[c.want] {
			t.Errorf("Resolve(%q) = %v, %v; want %d", c.name, got, err, c.want)
		}
	}
}

func TestApplyPolicy(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 23, 0, 0, 0, time.UTC)
	var rps []*RestorePoint
	// Every 6 hours for 20 days for one VM, and 3 for another.
	for i := 0; i < 80; i++ {
		var id format.ID
		id[0], id[1] = byte(i), 1
		rps = append(rps, &RestorePoint{ID: id, Manifest: &format.Manifest{VM: "web", Time: t0.Add(-time.Duration(i) * 6 * time.Hour)}})
	}
	for i := 0; i < 3; i++ {
		var id format.ID
		id[0], id[1] = byte(i), 2
		rps = append(rps, &RestorePoint{ID: id, Manifest: &format.Manifest{VM: "db", Time: t0.Add(-time.Duration(i) * time.Hour)}})
	}
	cases := []struct {
		p        Policy
		keepWeb  int
		keepDB   int
		newestIn bool
	}{
		{Policy{Last: 3}, 3, 3, true},
		{Policy{Daily: 7}, 7, 1, true},
		{Policy{Last: 2, Daily: 7}, 8, 2, true}, // the two newest are on the same day
		{Policy{Hourly: 100}, 80, 3, true},
		{Policy{Weekly: 2}, 2, 1, true},
		{Policy{Monthly: 12}, 1, 1, true}, // all 20 days are in November
	}
	for _, c := range cases {
		ds := ApplyPolicy(rps, c.p)
		kept := map[string]int{}
		for _, d := range ds {
			if d.Keep {
				kept[d.RestorePoint.VM]++
			}
		}
		if kept["web"] != c.keepWeb || kept["db"] != c.keepDB {
			t.Errorf("policy %v: kept web %d db %d, want %d %d", c.p, kept["web"], kept["db"], c.keepWeb, c.keepDB)
		}
	}
}

func TestWriteChunkSparse(t *testing.T) {
	data := make([]byte, 5*holeBlock+100)
	copy(data[holeBlock+7:], "x")             // block 1
	copy(data[3*holeBlock:], "yy")            // block 3
	copy(data[5*holeBlock+50:], "tail bytes") // short last block
	for _, sparse := range []bool{false, true} {
		w := &recordingWriter{}
		if err := writeChunk(w, data, 1000, sparse); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(data))
		written := 0
		for _, wr := range w.writes {
			copy(got[wr.off-1000:], wr.p)
			written += len(wr.p)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("sparse=%v: content differs", sparse)
		}
		if want := map[bool]int{false: len(data), true: 2*holeBlock + 100}[sparse]; written != want {
			t.Errorf("sparse=%v: wrote %d bytes, want %d", sparse, written, want)
		}
	}
}

type recordingWriter struct {
	writes []struct {
		p   []byte
		off int64
	}
}

func (w *recordingWriter) WriteAt(p []byte, off int64) (int, error) {
	w.writes = append(w.writes, struct {
		p   []byte
		off int64
	}{append([]byte(nil), p...), off})
	return len(p), nil
}

func TestSparseSourceSkipsHoles(t *testing.T) {
	r := newRepo(t)
	size := 10 * cs
	img := make([]byte, size)
	copy(img[2*cs+5:], "data in chunk two")
	copy(img[7*cs:], bytes.Repeat([]byte{9}, cs+10)) // chunks 7 and 8
	src := &countingReader{r: bytes.NewReader(img)}
	rp := capture(t, r, "vm", nil, DiskSource{Name: "d", Reader: src, Size: int64(size),
		Data: []extent.Range{{Offset: 2 * cs, Length: 100}, {Offset: 7 * cs, Length: cs + 10}}})
	if got := src.n.Load(); got != 3*cs {
		t.Errorf("read %d bytes, want only the 3 chunks with data (%d)", got, 3*cs)
	}
	if got := restoreBytes(t, r, rp, "d"); !bytes.Equal(got, img) {
		t.Fatal("restore differs")
	}
}

func TestCancelledCaptureCreatesNothing(t *testing.T) {
	r := newRepo(t)
	size := 40 * cs
	first := testImage(5, size)
	rp1 := capture(t, r, "vm", nil, DiskSource{Name: "d", Reader: bytes.NewReader(first), Size: int64(size)})
	ctx, cancel := context.WithCancel(context.Background())
	_, err := r.Capture(ctx, CaptureOptions{VM: "vm"}, []DiskSource{{Name: "d", Base: rp1,
		Reader: &cancelAfter{r: bytes.NewReader(testImage(6, size)), cancel: cancel, after: 10 * cs}, Size: int64(size)}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled capture: %v", err)
	}
	rps, bad, err := r.ListRestorePoints(context.Background())
	if err != nil || len(bad) != 0 || len(rps) != 1 || rps[0].ID != rp1.ID {
		t.Fatalf("after a cancelled capture: %v %v %d restore points", err, bad, len(rps))
	}
	if got := restoreBytes(t, r, rp1, "d"); !bytes.Equal(got, first) {
		t.Fatal("earlier restore point changed")
	}
	if locks, _ := r.Locks(context.Background()); len(locks) != 0 {
		t.Fatalf("cancelled capture left %d locks", len(locks))
	}
}

// TestDamagedMetadata truncates and garbles the config, a manifest and an
// index on disk: every operation fails with an error naming the object, and
// nothing panics or deletes data.
func TestDamagedMetadata(t *testing.T) {
	ctx := context.Background()
	r, dir := newLocalRepo(t)
	img := testImage(8, 6*cs)
	rpA := capture(t, r, "a", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))})
	rpB := capture(t, r, "b", nil, DiskSource{Name: "d", Reader: bytes.NewReader(testImage(9, 6*cs)), Size: int64(6 * cs)})

	damage := func(p string, f func([]byte) []byte) {
		t.Helper()
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, 0o600)
		if err := os.WriteFile(p, f(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	truncate := func(b []byte) []byte { return b[:len(b)/2] }
	garble := func(b []byte) []byte { b[len(b)/3] ^= 0x55; return b }

	// A garbled manifest: listed as bad, the others still load; gc refuses.
	damage(filepath.Join(dir, "snapshots", rpB.ID.String()), garble)
	rps, bad, err := r.ListRestorePoints(ctx)
	if err != nil || len(rps) != 1 || len(bad) != 1 || !strings.Contains(bad[0].Err.Error(), rpB.ID.Short()) {
		t.Fatalf("list with a garbled manifest: %v, %d good, bad %v", err, len(rps), bad)
	}
	if _, err := r.GC(ctx, GCOptions{}); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("gc with a garbled manifest: %v", err)
	}

	// A truncated index: opening the disk fails naming the restore point.
	md, _ := rpA.Disk("d")
	damage(filepath.Join(dir, "index", md.Index), truncate)
	if _, err := r.OpenDisk(ctx, rpA, "d"); err == nil || !strings.Contains(err.Error(), rpA.ID.Short()) || !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("open disk with truncated index: %v", err)
	}
	rep, err := r.Verify(ctx, VerifyOptions{})
	if err != nil || rep.OK() || len(rep.BadManifests) != 1 || len(rep.DamagedPoints) != 1 || rep.DamagedPoints[0].ID != rpA.ID {
		t.Fatalf("verify: %v %+v", err, rep)
	}

	// A truncated config: the repository does not open, with a clear error.
	damage(filepath.Join(dir, "config"), truncate)
	be, _ := local.Open(dir)
	if _, err := Open(ctx, be, Options{}); err == nil || !strings.Contains(err.Error(), "config") {
		t.Fatalf("open with truncated config: %v", err)
	}
	// Nothing was deleted.
	if n, _ := filepath.Glob(filepath.Join(dir, "packs", "*")); len(n) == 0 {
		t.Fatal("chunks gone")
	}
}

// assertUnpinned fails when a cached chunk is still pinned by a reader.
func assertUnpinned(t *testing.T, r *Repository) {
	t.Helper()
	r.cache.mu.Lock()
	defer r.cache.mu.Unlock()
	for el := r.cache.lru.Front(); el != nil; el = el.Next() {
		if e := el.Value.(*cacheEntry); e.refs != 0 {
			t.Fatalf("chunk %s still pinned %d times", e.id.Short(), e.refs)
		}
	}
}

// TestReadSlices checks that the slices ReadSlices lends hold exactly the
// range, at every alignment, for small chunks and for chunks larger than
// the shared zero buffer (a zero chunk is lent as several pieces of it),
// and that every chunk is unpinned afterwards.
func TestReadSlices(t *testing.T) {
	ctx := context.Background()
	for _, chunk := range []int64{cs, 2 << 20} {
		r, err := Init(ctx, mem.New(), InitOptions{ChunkSize: chunk})
		if err != nil {
			t.Fatal(err)
		}
		size := 3*chunk + 1000 // chunk 1 zero, a short last chunk
		img := testImage(9, int(size))
		clear(img[chunk : 2*chunk])
		rp := capture(t, r, "vm", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: size})
		d, err := r.OpenDisk(ctx, rp, "d")
		if err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name   string
			off, n int64
		}{
			{"whole disk", 0, size},
			{"inside a chunk", 5, 10},
			{"across a boundary", chunk - 3, 6},
			{"the zero chunk", chunk, chunk},
			{"zero into data", 2*chunk - 1, chunk + 2},
			{"last byte", size - 1, 1},
			{"empty at the end", size, 0},
			{"empty", 0, 0},
		}
		for _, c := range cases {
			t.Run(fmt.Sprintf("%d/%s", chunk, c.name), func(t *testing.T) {
				var got []byte
				err := d.ReadSlices(ctx, c.off, c.n, func(bs [][]byte) error {
					for _, b := range bs {
						got = append(got, b...)
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, img[c.off:c.off+c.n]) {
					t.Fatalf("lent %d bytes that differ from the image's %d", len(got), c.n)
				}
				assertUnpinned(t, r)
			})
		}
		called := false
		if err := d.ReadSlices(ctx, size-1, 2, func([][]byte) error { called = true; return nil }); err == nil || called {
			t.Errorf("a range past the end: err %v, fn called %v", err, called)
		}
		boom := errors.New("boom")
		if err := d.ReadSlices(ctx, 0, size, func([][]byte) error { return boom }); err != boom {
			t.Errorf("fn's error came back as %v", err)
		}
		assertUnpinned(t, r)
	}
}

func TestDiskExtentsAndPrefetch(t *testing.T) {
	r := newRepo(t)
	// Chunks: 0 data, 1-2 zero, 3 data, 4 short zero tail.
	size := 4*cs + 100
	img := make([]byte, size)
	img[10] = 1
	img[3*cs+7] = 1
	rp := capture(t, r, "vm", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(size)})
	d, err := r.OpenDisk(context.Background(), rp, "d")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		off, n int64
		want   []extent.Extent
	}{
		{0, int64(size), []extent.Extent{{Offset: 0, Length: cs, Zero: false}, {Offset: cs, Length: 2 * cs, Zero: true}, {Offset: 3 * cs, Length: cs, Zero: false}, {Offset: 4 * cs, Length: 100, Zero: true}}},
		{cs / 2, cs, []extent.Extent{{Offset: cs / 2, Length: cs / 2, Zero: false}, {Offset: cs, Length: cs / 2, Zero: true}}},
		{2*cs + 1, 10, []extent.Extent{{Offset: 2*cs + 1, Length: 10, Zero: true}}},
		{int64(size), 0, nil},
	}
	for _, c := range cases {
		got, err := d.Extents(c.off, c.n)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("Extents(%d, %d) = %v, %v; want %v", c.off, c.n, got, err, c.want)
		}
	}
	if _, err := d.Extents(int64(size)-5, 10); err == nil {
		t.Error("Extents past the end accepted")
	}
	// Prefetch loads data chunks into the shared cache: a later read needs
	// no backend access even when the backend has lost the chunk.
	if err := d.Prefetch(context.Background(), 0, int64(size)); err != nil {
		t.Fatal(err)
	}
	if err := r.be.Remove(context.Background(), chunkHandle(d.Index().IDs[3])); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := d.ReadAt(buf, 3*cs); err != nil || buf[7] != 1 {
		t.Fatalf("read after prefetch: %v", err)
	}
	if err := d.Prefetch(context.Background(), int64(size)-1, 2); err == nil {
		t.Error("Prefetch past the end accepted")
	}
}

// TestVerifyReportsEveryDamagedChunk damages more chunks than verify has
// workers, in four ways (header, payload, truncated, missing): the workers reuse their buffers from chunk to
// chunk, and a failure must neither stop a worker nor leak into the next
// chunk's check.
func TestVerifyReportsEveryDamagedChunk(t *testing.T) {
	r, dir := newLooseRepo(t)
	n := 4 * (r.props.ReadParallelism + 8) // every 4th chunk of testImage is random: unique
	img := testImage(7, n*cs)
	rp := capture(t, r, "vm", nil, DiskSource{Name: "disk0", Reader: bytes.NewReader(img), Size: int64(n * cs)})
	d, err := r.OpenDisk(context.Background(), rp, "disk0")
	if err != nil {
		t.Fatal(err)
	}
	damage := []struct {
		how     func(p string) error
		problem string
	}{
		{func(p string) error { flipByte(t, p, 5); return nil }, "zstd: invalid input"}, // payload type raw -> zstd
		{func(p string) error { flipByte(t, p, format.ChunkHeaderSize+5); return nil }, "content does not match"},
		{func(p string) error { return os.Truncate(p, 30) }, "raw payload of 14 bytes"},
		{func(p string) error { return os.Remove(p) }, "missing"},
	}
	want := map[int64]string{}
	for i := 0; i < n; i += 4 {
		id := d.Index().IDs[i]
		dm := damage[len(want)%len(damage)]
		if err := dm.how(filepath.Join(dir, "chunks", id.String()[:2], id.String())); err != nil {
			t.Fatal(err)
		}
		want[int64(i)*cs] = dm.problem
	}
	rep, err := r.Verify(context.Background(), VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ChunksChecked != rep.Chunks || len(rep.BadChunks) != len(want) {
		t.Fatalf("checked %d of %d chunks, %d bad; want all checked and %d bad", rep.ChunksChecked, rep.Chunks, len(rep.BadChunks), len(want))
	}
	got := map[int64]string{}
	for _, dm := range rep.Damage {
		got[dm.Offset] = dm.Problem
	}
	if len(got) != len(want) {
		t.Fatalf("damage at %d offsets, want %d", len(got), len(want))
	}
	for off, problem := range want {
		if !strings.Contains(got[off], problem) {
			t.Errorf("offset %d: problem %q, want it to mention %q", off, got[off], problem)
		}
	}
}

// costlyReads reports its backend as one where every request pays a round
// trip (object storage), so readers take their batched paths.
type costlyReads struct{ backend.Backend }

func (c costlyReads) Properties() backend.Properties {
	p := c.Backend.Properties()
	p.CheapRangedReads = false
	return p
}

// TestRestoreBatched: where requests are costly a restore asks for
// neighbouring chunks together (a request per run of frames, not per
// chunk), writes chunks that repeat wherever they are, leaves zero chunks
// as holes when sparse, and names the offset of a damaged chunk.
func TestRestoreBatched(t *testing.T) {
	ctx := context.Background()
	inner := faulty.New(mem.New(), 1)
	r, err := Init(ctx, costlyReads{inner}, InitOptions{ChunkSize: cs})
	if err != nil {
		t.Fatal(err)
	}
	size := 300*cs + 4321
	img := testImage(7, size)
	copy(img[200*cs:210*cs], img[10*cs:20*cs]) // chunks that repeat
	rp := capture(t, r, "vm", nil, DiskSource{Name: "disk0", Reader: bytes.NewReader(img), Size: int64(size)})
	d, err := r.OpenDisk(ctx, rp, "disk0")
	if err != nil {
		t.Fatal(err)
	}
	for _, sparse := range []bool{false, true} {
		inner.ResetCalls()
		out := &memWriterAt{}
		if err := d.Restore(ctx, out, RestoreOptions{Sparse: sparse}); err != nil {
			t.Fatalf("sparse %v: %v", sparse, err)
		}
		if !bytes.Equal(out.bytes(int64(size)), img) {
			t.Fatalf("sparse %v: restore differs", sparse)
		}
		if loads := inner.Calls(faulty.Load, backend.PackFile); loads > 300/8 {
			t.Fatalf("sparse %v: %d pack loads for about 225 data chunks", sparse, loads)
		}
	}
	inner.AddRule(faulty.Rule{Method: faulty.Load, Type: backend.PackFile, Effect: faulty.FlipByte(100)})
	err = d.Restore(ctx, &memWriterAt{}, RestoreOptions{})
	var ce *ChunkError
	if !errors.As(err, &ce) || ce.Disk != "disk0" || ce.Offset%cs != 0 || ce.Offset >= int64(size) {
		t.Fatalf("restore of a damaged pack: %v", err)
	}
}

// planReader records the plan a writer hands it and the reads it makes.
type planReader struct {
	r     io.ReaderAt
	mu    sync.Mutex
	plan  []extent.Range
	align int64
	read  []extent.Range
}

func (p *planReader) PlanReads(rs []extent.Range, align int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.read != nil {
		panic("PlanReads after a read")
	}
	p.plan, p.align = rs, align
}

func (p *planReader) ReadAt(b []byte, off int64) (int, error) {
	p.mu.Lock()
	p.read = append(p.read, extent.Range{Offset: off, Length: int64(len(b))})
	p.mu.Unlock()
	return p.r.ReadAt(b, off)
}

// TestWriterPlansReads: a ReadPlanner source is told, before the first
// read, exactly the chunks a capture reads (not those outside its data
// ranges, not unchanged ones of an extents incremental), in order.
func TestWriterPlansReads(t *testing.T) {
	r := newRepo(t)
	img := bytes.Repeat([]byte("0123456789abcdef"), 40*cs/16+100) // 40 chunks and a partial one
	data := []extent.Range{{Offset: 0, Length: 3 * cs}, {Offset: 10*cs + 5, Length: 4 * cs}, {Offset: 40 * cs, Length: 1600}}
	changed := []extent.Range{{Offset: cs + 1, Length: 10}, {Offset: 12 * cs, Length: cs + 1}, {Offset: 30 * cs, Length: 1}}
	var base *RestorePoint
	for _, tt := range []struct {
		name    string
		changed []extent.Range
		want    []extent.Range
	}{
		{"full", nil, []extent.Range{{Offset: 0, Length: 3 * cs}, {Offset: 10 * cs, Length: 5 * cs}, {Offset: 40 * cs, Length: 1600}}},
		{"extents", changed, []extent.Range{{Offset: cs, Length: cs}, {Offset: 12 * cs, Length: 2 * cs}}},
	} {
		pr := &planReader{r: bytes.NewReader(img)}
		ds := DiskSource{Name: "d", Reader: pr, Size: int64(len(img)), Data: data, Changed: tt.changed}
		base = capture(t, r, "vm", base, ds)
		var read []extent.Range
		for _, x := range pr.read {
			if k := len(read); k > 0 && read[k-1].End() == x.Offset {
				read[k-1].Length += x.Length
			} else {
				read = append(read, x)
			}
		}
		if fmt.Sprint(pr.plan) != fmt.Sprint(tt.want) || fmt.Sprint(read) != fmt.Sprint(tt.want) || pr.align != cs {
			t.Errorf("%s: planned %v (align %d), read %v; want %v", tt.name, pr.plan, pr.align, read, tt.want)
		}
	}
}

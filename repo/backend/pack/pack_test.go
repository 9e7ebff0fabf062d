package pack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/backendtest"
	"github.com/vmvault/vmvault/repo/backend/faulty"
	"github.com/vmvault/vmvault/repo/backend/mem"
	"github.com/vmvault/vmvault/repo/format"
)

// flushing makes every Save durable at once, so the pack layer meets the
// plain backend contract the conformance suite checks.
type flushing struct{ *Backend }

func (f flushing) Save(ctx context.Context, h backend.Handle, data []byte) error {
	if err := f.Backend.Save(ctx, h, data); err != nil {
		return err
	}
	return f.Backend.Flush(ctx)
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		return flushing{New(mem.New(), Options{PackSize: 1 << 20})}
	})
}

func chunk(i int, size int) (backend.Handle, []byte) {
	data := bytes.Repeat([]byte{byte(i), byte(i >> 8), 7}, size/3+1)[:size]
	return backend.Handle{Type: backend.ChunkFile, Name: format.Hash(data).String()}, data
}

func count(t *testing.T, be backend.Backend, typ backend.FileType) int {
	t.Helper()
	n := 0
	if err := be.List(context.Background(), typ, func(backend.FileInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPacksAndPUTs: chunks go into packs of about PackSize, one PUT each
// plus one pack index per Flush; another process sees them after it
// refreshes.
func TestPacksAndPUTs(t *testing.T) {
	ctx := context.Background()
	inner := faulty.New(mem.New(), 1)
	w := New(inner, Options{PackSize: 1 << 20})
	var hs []backend.Handle
	var datas [][]byte
	for i := range 100 {
		h, d := chunk(i, 100<<10)
		hs, datas = append(hs, h), append(datas, d)
		if err := w.Save(ctx, h, d); err != nil {
			t.Fatal(err)
		}
	}
	// Readable before Flush (the writer reuses what it stored).
	if got, err := w.Load(ctx, hs[99], 0, -1); err != nil || !bytes.Equal(got, datas[99]) {
		t.Fatalf("load before flush: %v", err)
	}
	r := New(inner, Options{})
	if _, err := r.Stat(ctx, hs[0]); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("another process sees an unflushed chunk: %v", err)
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	packs, idx := count(t, inner, backend.PackFile), count(t, inner, backend.PackIndexFile)
	if packs != 10 || idx != 1 {
		t.Fatalf("100 chunks of 100 KiB in 1 MiB packs: %d packs, %d pack indexes; want 10 and 1", packs, idx)
	}
	if puts := inner.Calls(faulty.Save, backend.ChunkFile); puts != 0 {
		t.Fatalf("%d chunk objects saved", puts)
	}
	// The reader's Stat miss above rate-limits Stat's refreshes, not a
	// read's: a read looks again at once.
	for i, h := range hs {
		got, err := r.Load(ctx, h, 0, -1)
		if err != nil || !bytes.Equal(got, datas[i]) {
			t.Fatalf("reader: chunk %d: %v", i, err)
		}
	}
	if n := count(t, r, backend.ChunkFile); n != 100 {
		t.Fatalf("listed %d chunks, want 100", n)
	}
}

// TestReaderFindsNewChunksAtOnce: a reader (vmvault serve, mount) whose
// view is loaded reads a restore point captured a moment later: every
// miss looks again, and readers missing at once share one listing.
func TestReaderFindsNewChunksAtOnce(t *testing.T) {
	ctx := context.Background()
	inner := faulty.New(mem.New(), 1)
	w := New(inner, Options{PackSize: 1 << 20})
	r := New(inner, Options{})
	for round := range 5 {
		var hs []backend.Handle
		var datas [][]byte
		for i := range 20 {
			h, d := chunk(round*100+i, 60<<10)
			hs, datas = append(hs, h), append(datas, d)
			if err := w.Save(ctx, h, d); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		inner.ResetCalls()
		var wg sync.WaitGroup
		errs := make([]error, len(hs))
		for i, h := range hs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got, err := r.Load(ctx, h, 0, -1)
				if err == nil && !bytes.Equal(got, datas[i]) {
					err = errors.New("wrong bytes")
				}
				errs[i] = err
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: chunk %d, flushed before the read: %v", round, i, err)
			}
		}
		// 20 readers missing at once: a listing or two, not one each.
		if n := inner.Calls(faulty.List, backend.PackIndexFile); n > 3 {
			t.Fatalf("round %d: %d listings of pack indexes for 20 concurrent misses", round, n)
		}
	}
	// A chunk that is nowhere is still not found.
	h, _ := chunk(9999, 1000)
	if _, err := r.Load(ctx, h, 0, -1); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("a chunk stored nowhere: %v", err)
	}
}

// TestFailedUploadLosesOnlyUnreferenced: a pack upload that fails makes
// Flush fail and names no missing pack; the chunks are not found, so the
// next capture stores them again.
func TestFailedUploadLosesOnlyUnreferenced(t *testing.T) {
	ctx := context.Background()
	inner := faulty.New(mem.New(), 1)
	w := New(inner, Options{PackSize: 1 << 20})
	inner.AddRule(faulty.Rule{Method: faulty.Save, Type: backend.PackFile, Nth: 1, Effect: faulty.Fail(errors.New("disk full"))})
	h, d := chunk(1, 5000)
	if err := w.Save(ctx, h, d); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(ctx); err == nil {
		t.Fatal("flush after a failed upload succeeded")
	}
	if n := count(t, inner, backend.PackIndexFile); n != 0 {
		t.Fatalf("%d pack indexes after a failed upload", n)
	}
	if _, err := w.Stat(ctx, h); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("a chunk of a failed pack is still found: %v", err)
	}
	if err := w.Save(ctx, h, d); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatalf("flush after storing again: %v", err)
	}
}

// TestCompact: removed chunks' space is reclaimed, live chunks stay
// readable, also by a reader whose view predates the compaction; pack
// indexes are merged; orphaned packs go.
func TestCompact(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	w := New(inner, Options{PackSize: 1 << 20})
	rng := rand.New(rand.NewPCG(1, 1))
	live := map[backend.Handle][]byte{}
	var all []backend.Handle
	for i := range 200 {
		h, d := chunk(i, 10<<10+rng.IntN(100<<10))
		if err := w.Save(ctx, h, d); err != nil {
			t.Fatal(err)
		}
		live[h] = d
		all = append(all, h)
		if i%20 == 19 {
			if err := w.Flush(ctx); err != nil { // many small pack indexes
				t.Fatal(err)
			}
		}
	}
	stale := New(inner, Options{})
	if _, err := stale.Load(ctx, all[0], 0, -1); err != nil { // loads its view now
		t.Fatal(err)
	}
	// An orphan: a pack no index names (a crashed capture's).
	orphan := append(bytes.Repeat([]byte{1}, 100), format.PackTrailer(nil)...)
	inner.Save(ctx, backend.Handle{Type: backend.PackFile, Name: format.Hash(orphan).String()}, orphan)
	for i, h := range all {
		if i%3 != 0 { // two thirds dead
			if err := w.Remove(ctx, h); err != nil {
				t.Fatal(err)
			}
			delete(live, h)
		}
	}
	before := storedBytes(t, inner)
	rep, err := w.Compact(ctx, CompactOptions{OrphansBefore: time.Now().Add(time.Hour), MaxIndexes: 4})
	if err != nil {
		t.Fatal(err)
	}
	after := storedBytes(t, inner)
	if rep.PacksRepacked == 0 || rep.IndexesMerged == 0 || after >= before/2 {
		t.Fatalf("compact: %+v; %d → %d bytes", rep, before, after)
	}
	if n := count(t, inner, backend.PackIndexFile); n != 1 {
		t.Fatalf("%d pack indexes after merging", n)
	}
	for _, r := range []*Backend{w, stale, New(inner, Options{})} {
		for h, d := range live {
			got, err := r.Load(ctx, h, 0, -1)
			if err != nil || !bytes.Equal(got, d) {
				t.Fatalf("after compact: %v", err)
			}
		}
		n := 0
		r.List(ctx, backend.ChunkFile, func(backend.FileInfo) error { n++; return nil })
		if n != len(live) {
			t.Fatalf("after compact: %d chunks listed, want %d", n, len(live))
		}
	}
	for _, h := range all[1:3] {
		if _, err := w.Stat(ctx, h); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("a removed chunk is still found: %v", err)
		}
	}
}

func storedBytes(t *testing.T, be backend.Backend) int64 {
	t.Helper()
	var n int64
	for _, typ := range []backend.FileType{backend.PackFile, backend.PackIndexFile} {
		be.List(context.Background(), typ, func(fi backend.FileInfo) error { n += fi.Size; return nil })
	}
	return n
}

// TestLooseChunksStillRead: chunks stored one per object (format version
// 1) are found, listed and removed through the pack layer.
func TestLooseChunksStillRead(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	h, d := chunk(5, 3000)
	inner.Save(ctx, h, d)
	p := New(inner, Options{})
	if got, err := p.Load(ctx, h, 10, 20); err != nil || !bytes.Equal(got, d[10:30]) {
		t.Fatalf("loose chunk: %v", err)
	}
	if n := count(t, p, backend.ChunkFile); n != 1 {
		t.Fatalf("listed %d", n)
	}
	if err := p.Remove(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := inner.Stat(ctx, h); !errors.Is(err, backend.ErrNotFound) {
		t.Fatal("loose chunk not removed")
	}
}

// TestMissesCostNoRequests: a capture stats every chunk it has not seen;
// where no chunk is stored as its own object, a chunk the view lacks is
// not found without a request per chunk (a HEAD each on object storage),
// and removing a packed chunk deletes no object.
func TestMissesCostNoRequests(t *testing.T) {
	ctx := context.Background()
	inner := faulty.New(mem.New(), 1)
	w := New(inner, Options{PackSize: 1 << 20})
	// A new repository's first capture: the view is loaded (empty) once.
	for i := range 200 {
		h, _ := chunk(2000+i, 1000)
		if _, err := w.Stat(ctx, h); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("stat in an empty repository: %v", err)
		}
	}
	if n := inner.Calls(faulty.List, backend.PackIndexFile); n != 1 {
		t.Fatalf("%d listings of pack indexes for 200 misses in an empty repository", n)
	}
	var stored []backend.Handle
	for i := range 10 {
		h, d := chunk(i, 50<<10)
		if err := w.Save(ctx, h, d); err != nil {
			t.Fatal(err)
		}
		stored = append(stored, h)
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r := New(inner, Options{})
	inner.ResetCalls()
	for i := range 500 {
		h, _ := chunk(1000+i, 1000)
		if _, err := r.Stat(ctx, h); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("stat of a chunk stored nowhere: %v", err)
		}
	}
	if n := inner.Calls(faulty.Stat, backend.ChunkFile); n != 0 {
		t.Fatalf("%d stats of chunk objects for 500 misses", n)
	}
	if n := inner.Calls(faulty.List, backend.ChunkFile); n != 1 {
		t.Fatalf("%d listings of chunk objects, want 1", n)
	}
	if err := r.Remove(ctx, stored[0]); err != nil {
		t.Fatal(err)
	}
	if n := inner.Calls(faulty.Remove, backend.ChunkFile); n != 0 {
		t.Fatalf("removing a packed chunk made %d requests for a chunk object", n)
	}
}

func BenchmarkLookup(b *testing.B) {
	v := newView()
	x := &format.PackIndex{Packs: []format.ID{{1}}}
	for i := range 1_000_000 {
		x.Entries = append(x.Entries, format.PackIndexEntry{ID: format.Hash([]byte(fmt.Sprint(i))), Length: 100})
	}
	x.Marshal() // sorts
	v.merge(x, time.Now())
	b.ResetTimer()
	for i := range b.N {
		v.find(x.Entries[i%len(x.Entries)].ID)
	}
}

// gated blocks pack uploads until released.
type gated struct {
	backend.Backend
	release chan struct{}
	started chan struct{}
}

func (g gated) Save(ctx context.Context, h backend.Handle, data []byte) error {
	if h.Type == backend.PackFile {
		g.started <- struct{}{}
		<-g.release
	}
	return g.Backend.Save(ctx, h, data)
}

// TestSaveWaitsForSlowUploads: a writer faster than the backend waits in
// Save once a sealed pack waits for an upload slot, instead of piling
// packs up in memory.
func TestSaveWaitsForSlowUploads(t *testing.T) {
	ctx := context.Background()
	g := gated{Backend: mem.New(), release: make(chan struct{}), started: make(chan struct{}, 100)}
	w := New(g, Options{PackSize: 1 << 20})
	limit := cap(w.slots) + 1
	saved := make(chan int, 1000)
	go func() {
		for i := range 40 {
			h, d := chunk(i, 1<<20) // one pack each
			if err := w.Save(ctx, h, d); err != nil {
				t.Error(err)
			}
			saved <- i
		}
		close(saved)
	}()
	time.Sleep(300 * time.Millisecond)
	if n := len(saved); n > limit+1 {
		t.Fatalf("%d one-pack saves returned while no upload finished; want at most %d", n, limit+1)
	}
	close(g.release)
	for range saved {
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(t, g, backend.PackFile); n != 40 {
		t.Fatalf("%d packs, want 40", n)
	}
}

// TestIndexEvery: with IndexEvery, uploaded packs are named in a pack
// index before Flush, so another process finds their chunks even if this
// writer never flushes.
func TestIndexEvery(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	w := New(inner, Options{PackSize: 1 << 20, IndexEvery: 2 << 20})
	var hs []backend.Handle
	for i := range 30 {
		h, d := chunk(i, 200<<10)
		hs = append(hs, h)
		if err := w.Save(ctx, h, d); err != nil {
			t.Fatal(err)
		}
	}
	// Five packs of six chunks: once 2 MiB of them are uploaded and
	// not indexed, a pack index names them; whatever uploads meanwhile
	// waits for the next one. So 24 chunks (4 packs) are found, or all 30
	// when the fifth pack was uploaded while the first index was written.
	found := 0
	for deadline := time.Now().Add(5 * time.Second); found < 24 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		r := New(inner, Options{})
		found = 0
		for _, h := range hs {
			if _, err := r.Stat(ctx, h); err == nil {
				found++
			}
		}
	}
	if found != 24 && found != 30 {
		t.Fatalf("another process finds %d of 30 unflushed chunks, want 24 or 30", found)
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r := New(inner, Options{})
	for i, h := range hs {
		if _, err := r.Stat(ctx, h); err != nil {
			t.Fatalf("chunk %d after flush: %v", i, err)
		}
	}
}

// TestRewritePacks: packs go through a transform into new packs; a reader
// whose view predates the rewrite finds the old packs gone and reads the
// new frames; packs the transform leaves as they are stay; frames whose
// chunk has a newer copy elsewhere are left behind, not copied; the chunk
// order of a pack is kept.
func TestRewritePacks(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	w := New(inner, Options{PackSize: 1 << 20})
	var hs []backend.Handle
	data := map[backend.Handle][]byte{}
	for i := range 40 {
		h, d := chunk(i, 105000) // ten to a pack
		if err := w.Save(ctx, h, d); err != nil {
			t.Fatal(err)
		}
		hs, data[h] = append(hs, h), d
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Chunk 0 stored again later, in a pack of its own: the copy in the
	// first pack is superseded.
	dup := New(inner, Options{PackSize: 1 << 20})
	if err := dup.Save(ctx, hs[0], data[hs[0]]); err != nil {
		t.Fatal(err)
	}
	if err := dup.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	stale := New(inner, Options{})
	if _, err := stale.Load(ctx, hs[1], 0, -1); err != nil { // loads its view now
		t.Fatal(err)
	}
	packs, err := w.Packs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(packs) != 5 {
		t.Fatalf("%d packs, want 4 of 10 chunks and 1 of the copy", len(packs))
	}
	first := map[format.ID]bool{}
	for _, h := range hs[1:10] {
		p, _, _, _, _ := w.Locate(ctx, mustID(h))
		first[p] = true
	}
	// Chunks 10..29 (two packs) get a marker byte appended; the rest stay.
	mark := func(id format.ID, frame []byte) ([]byte, error) {
		for _, h := range hs[10:30] {
			if mustID(h) == id {
				return append(bytes.Clone(frame), 0xAB), nil
			}
		}
		return frame, nil
	}
	var names []format.ID
	for _, p := range packs {
		names = append(names, p.Name)
	}
	rep, err := w.RewritePacks(ctx, names, mark, 3)
	if err != nil {
		t.Fatal(err)
	}
	// The first pack goes too: its copy of chunk 0 is left behind.
	if len(rep.Rewritten) != 3 || len(rep.Unchanged) != 2 || rep.Dropped != 1 || rep.Chunks != 29 || len(rep.Written) != 3 {
		t.Fatalf("report %+v", rep)
	}
	for p := range first {
		if !slices.Contains(rep.Rewritten, p) {
			t.Fatal("the pack holding a superseded copy was not rewritten")
		}
	}
	if n := count(t, inner, backend.PackFile); n != 5 {
		t.Fatalf("%d packs stored after the rewrite, want 5", n)
	}
	for _, r := range []*Backend{w, stale, New(inner, Options{})} {
		var prev int64 = -1
		var prevPack format.ID
		for i, h := range hs {
			want := data[h]
			if i >= 10 && i < 30 {
				want = append(bytes.Clone(want), 0xAB)
			}
			got, err := r.Load(ctx, h, 0, -1)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("chunk %d after the rewrite: %v", i, err)
			}
			p, off, _, _, _ := r.Locate(ctx, mustID(h))
			if i > 1 && p == prevPack && off <= prev {
				t.Fatalf("chunk %d before chunk %d in its new pack", i, i-1)
			}
			prev, prevPack = off, p
		}
	}
	// Nothing to do leaves everything as it is.
	again, err := w.RewritePacks(ctx, []format.ID{rep.Written[0].Name}, func(_ format.ID, f []byte) ([]byte, error) { return f, nil }, 1)
	if err != nil || len(again.Unchanged) != 1 || len(again.Rewritten) != 0 || len(again.Written) != 0 {
		t.Fatalf("identity rewrite: %+v %v", again, err)
	}
}

func mustID(h backend.Handle) format.ID {
	id, err := format.ParseID(h.Name)
	if err != nil {
		panic(err)
	}
	return id
}

// TestLoadMissRefreshes: a reader whose last refresh was a moment ago
// (Stat misses rate-limit refreshes) still loads a chunk that another
// process stored since: a load's miss refreshes at once.
func TestLoadMissRefreshes(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	w := New(inner, Options{})
	h0, d0 := chunk(0, 1000)
	w.Save(ctx, h0, d0)
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r := New(inner, Options{})
	h, d := chunk(1, 1000)
	if _, err := r.Stat(ctx, h); !errors.Is(err, backend.ErrNotFound) { // refreshes, then rate-limits
		t.Fatal(err)
	}
	w.Save(ctx, h, d)
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := r.Load(ctx, h, 0, -1); err != nil || !bytes.Equal(got, d) {
		t.Fatalf("load right after another process stored the chunk: %v", err)
	}
}

// mergeOnFirstIndexLoad merges the pack indexes (as gc's or compaction's
// merge in another process would) right before the first pack index is
// read through it.
type mergeOnFirstIndexLoad struct {
	backend.Backend
	once  sync.Once
	merge func()
}

func (m *mergeOnFirstIndexLoad) Load(ctx context.Context, h backend.Handle, off, n int64) ([]byte, error) {
	if h.Type == backend.PackIndexFile {
		m.once.Do(m.merge)
	}
	return m.Backend.Load(ctx, h, off, n)
}

// TestRefreshAfterMerge: the indexes a refresh listed are merged into one
// and removed before it reads them; the refresh lists again and finds
// every chunk.
func TestRefreshAfterMerge(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	w := New(inner, Options{})
	var hs []backend.Handle
	for i := range 6 {
		h, d := chunk(i, 1000)
		w.Save(ctx, h, d)
		if err := w.Flush(ctx); err != nil { // an index each
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	hook := &mergeOnFirstIndexLoad{Backend: inner, merge: func() {
		if n, err := New(inner, Options{}).MergeIndexes(ctx, 1, nil); err != nil || n != 6 {
			t.Errorf("merge: %d %v", n, err)
		}
	}}
	r := New(hook, Options{})
	for i, h := range hs {
		if _, err := r.Stat(ctx, h); err != nil {
			t.Fatalf("chunk %d after indexes were merged under the refresh: %v", i, err)
		}
	}
}

// TestSameFramesAfterRemoval: chunks removed, their pack compacted away,
// then stored again in the same order (the same VM captured again after
// gc, or compaction back to an earlier codec) are found: the new pack
// does not take the removed pack's name, which a pack index says is gone.
func TestSameFramesAfterRemoval(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	w := New(inner, Options{})
	var hs []backend.Handle
	var ds [][]byte
	store := func() {
		for i := range 3 {
			h, d := chunk(i, 5000)
			if err := w.Save(ctx, h, d); err != nil {
				t.Fatal(err)
			}
			if len(hs) < 3 {
				hs, ds = append(hs, h), append(ds, d)
			}
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	store()
	for _, h := range hs {
		if err := w.Remove(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	if rep, err := w.Compact(ctx, CompactOptions{}); err != nil || rep.PacksRemoved != 1 {
		t.Fatalf("compact: %+v %v", rep, err)
	}
	store()
	for _, r := range []*Backend{w, New(inner, Options{})} {
		for i, h := range hs {
			if got, err := r.Load(ctx, h, 0, -1); err != nil || !bytes.Equal(got, ds[i]) {
				t.Fatalf("chunk %d stored again: %v", i, err)
			}
		}
	}
}

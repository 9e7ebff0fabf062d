// Package pack stores a repository's chunks in packs: a Backend wrapper
// that turns chunk objects (backend.ChunkFile) into frames appended to
// packs of about PackSize bytes (backend.PackFile), and records where each
// chunk sits in pack indexes (backend.PackIndexFile); every other object
// type passes through to the inner backend. On object storage a capture
// then costs one PUT per pack, not one per chunk, and a chunk read is one
// ranged GET. Formats are in repo/format/pack.go.
//
// Invariants:
//   - Save of a chunk only buffers it; Flush (backend.Flusher) returns once
//     every chunk saved before it is in a durable pack named in a durable
//     pack index. Writers flush before they save anything that references
//     chunks (an index), so a crash loses only unreferenced chunks.
//   - A pack is uploaded before any pack index names it, and a pack is
//     deleted only after a durable pack index says it is gone: a reader
//     with an older view finds a missing pack, refreshes its view and
//     reads the chunk where it is now.
//   - Objects are immutable and named by the hash of their bytes. Every
//     pack carries random bytes, so no two packs ever share a name: a
//     pack index that says a pack is gone speaks of that pack alone.
//   - Memory is bounded: Save waits while a sealed pack waits for an
//     upload slot, so a writer holds at most the open pack, the uploading
//     ones and one waiting.
//   - Chunks stored one per object (repositories of format version 1, or
//     written before packs) are still found, listed and removed.
//
// Memory: the view of where chunks are is a sorted array of 44-byte
// entries (176 MB for 4 million chunks, 1 TB of 256 KiB chunks) plus the
// pack names.
package pack

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/format"
)

// Options tune the pack layer.
type Options struct {
	// PackSize is the target size of a pack (format.DefaultPackSize if 0).
	PackSize int64
	// IndexCacheDir, when set, keeps local copies of pack indexes (they
	// are immutable), so opening the repository again reads them from
	// here instead of from the backend.
	IndexCacheDir string
	// SealTrailer, when set, encrypts pack trailers (they list the chunk
	// ids and sizes of a pack).
	SealTrailer func([]byte) []byte
	// IndexEvery, when positive, writes a pack index (Checkpoint) once
	// that many bytes of uploaded packs are not named in one, instead of
	// only at Flush: a long writer that is interrupted and runs again then
	// finds what it stored, less at most the packs open or in flight.
	IndexEvery int64
	Log        *slog.Logger
}

// Backend is the pack layer over an inner backend.
type Backend struct {
	be   backend.Backend
	opts Options
	log  *slog.Logger

	// write side
	fmu           sync.Mutex // one Flush at a time
	wmu           sync.Mutex
	done          *sync.Cond // on wmu: an upload ended
	cur           *openPack
	maxFrame      int64         // the largest chunk frame saved, for sizing packs
	slots         chan struct{} // uploads in flight, at most its capacity
	inflight      int
	upErr         error       // the first upload error, reported by Save and Flush
	uploaded      []*openPack // uploaded since the last pack index
	unindexed     int64       // their bytes
	checkpointing bool        // a Checkpoint for IndexEvery runs
	dead          []format.PackIndexDead
	deadPack      []format.ID // names of packs in dead, by index
	pending       map[format.ID]*openPack
	recording     bool       // between recordWritten and takeWritten:
	wrote         []PackInfo // the packs uploaded

	// read side
	rmu    sync.RWMutex
	view   *view
	loaded map[string]bool // pack index objects merged into view
	stale  time.Time       // last refresh
	listed time.Time       // when the last refresh began listing indexes
	refmu  sync.Mutex      // one refresh at a time

	// Whether chunk objects stored one per object exist beside the packs
	// (looked up once: this layer never writes one, so none appear later).
	looseMu    sync.Mutex
	looseKnown bool
	looseAny   bool
}

var (
	_ backend.Backend      = (*Backend)(nil)
	_ backend.Flusher      = (*Backend)(nil)
	_ backend.BufferLoader = (*Backend)(nil)
	_ backend.Prefetcher   = (*Backend)(nil)
	_ backend.TempCleaner  = (*Backend)(nil)
)

// packNonceSize is the number of random bytes between a pack's frames
// and its trailer.
const packNonceSize = 16

// openPack is a pack being filled or uploaded.
type openPack struct {
	data    []byte
	entries []format.PackEntry
	byID    map[format.ID]int // entry index
	name    format.ID         // set when sealed
}

// New returns the pack layer over be. It loads the pack indexes lazily, on
// the first chunk lookup.
func New(be backend.Backend, opts Options) *Backend {
	if opts.PackSize <= 0 {
		opts.PackSize = format.DefaultPackSize
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	b := &Backend{be: be, opts: opts, log: opts.Log, pending: map[format.ID]*openPack{}, loaded: map[string]bool{}, view: newView(),
		slots: make(chan struct{}, max(1, be.Properties().WriteParallelism/2))}
	b.done = sync.NewCond(&b.wmu)
	return b
}

// Inner returns the wrapped backend.
func (b *Backend) Inner() backend.Backend { return b.be }

// Location implements backend.Backend.
func (b *Backend) Location() string { return b.be.Location() }

// Properties implements backend.Backend: the inner backend's.
func (b *Backend) Properties() backend.Properties { return b.be.Properties() }

// Close implements backend.Backend; unflushed chunks are lost.
func (b *Backend) Close() error { return b.be.Close() }

func chunkID(h backend.Handle) (format.ID, bool) {
	if h.Type != backend.ChunkFile {
		return format.ID{}, false
	}
	id, err := format.ParseID(h.Name)
	return id, err == nil
}

// Save implements backend.Backend. A chunk is appended to the open pack;
// it is durable after Flush.
func (b *Backend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	id, ok := chunkID(h)
	if !ok {
		return b.be.Save(ctx, h, data)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if int64(len(data)) > format.MaxPackSize/2 {
		return fmt.Errorf("save %v: %d bytes do not fit a pack", h, len(data))
	}
	b.wmu.Lock()
	defer b.wmu.Unlock()
	// Sealed packs wait for an upload slot in memory: a writer faster
	// than the backend waits here, so at most one pack waits.
	for b.inflight > cap(b.slots) && b.upErr == nil {
		b.done.Wait()
	}
	if b.upErr != nil {
		return fmt.Errorf("save %v: an earlier pack upload failed: %w", h, b.upErr)
	}
	b.maxFrame = max(b.maxFrame, int64(len(data)))
	if b.cur == nil {
		// Room for the frames (the last one crosses PackSize), the nonce
		// and a trailer of 40-byte entries for frames of 2.5 KiB on
		// average: the pack is not copied while it grows.
		room := b.opts.PackSize + b.maxFrame + packNonceSize + b.opts.PackSize/64
		b.cur = &openPack{data: make([]byte, 0, room), byID: map[format.ID]int{}}
	}
	p := b.cur
	p.byID[id] = len(p.entries)
	p.entries = append(p.entries, format.PackEntry{ID: id, Offset: uint32(len(p.data)), Length: uint32(len(data))})
	p.data = append(p.data, data...)
	b.pending[id] = p
	if int64(len(p.data)) >= b.opts.PackSize {
		b.sealLocked()
	}
	return nil
}

// sealLocked closes the open pack and starts its upload; b.wmu is held.
func (b *Backend) sealLocked() {
	p := b.cur
	b.cur = nil
	if p == nil || len(p.entries) == 0 {
		return
	}
	// Random bytes after the frames (in the frames area, where no entry
	// points) give every pack a name of its own, also when its frames
	// equal those of a pack that was removed: a pack index's "gone" for a
	// name is then never contradicted by a later pack of that name.
	var nonce [packNonceSize]byte
	_, _ = rand.Read(nonce[:])
	p.data = append(p.data, nonce[:]...)
	trailer := format.PackTrailer(p.entries)
	if b.opts.SealTrailer != nil {
		trailer = format.SealedPackTrailer(b.opts.SealTrailer(trailer))
	}
	p.data = append(p.data, trailer...)
	p.name = format.Hash(p.data)
	b.inflight++
	go func() {
		b.slots <- struct{}{}
		err := b.be.Save(context.Background(), backend.Handle{Type: backend.PackFile, Name: p.name.String()}, p.data)
		<-b.slots
		b.wmu.Lock()
		defer b.wmu.Unlock()
		if err != nil && b.upErr == nil {
			b.upErr = err
		}
		if err == nil {
			if b.recording {
				b.wrote = append(b.wrote, PackInfo{Name: p.name, Size: int64(len(p.data)), ModTime: time.Now()})
			}
			b.uploaded = append(b.uploaded, p)
			b.unindexed += int64(len(p.data))
			if b.opts.IndexEvery > 0 && b.unindexed >= b.opts.IndexEvery && !b.checkpointing {
				b.checkpointing = true
				go b.checkpoints()
			}
		}
		b.inflight--
		b.done.Broadcast()
	}()
}

// Flush implements backend.Flusher: it seals the open pack, waits for
// every upload, writes a pack index naming the new packs (and the frames
// Remove marked dead), and flushes the inner backend.
func (b *Backend) Flush(ctx context.Context) error {
	b.fmu.Lock()
	defer b.fmu.Unlock()
	b.wmu.Lock()
	defer b.wmu.Unlock()
	b.sealLocked()
	for b.inflight > 0 {
		b.done.Wait()
	}
	if b.upErr != nil {
		err := b.upErr
		b.upErr = nil
		// Chunks of failed packs are gone: drop them so Stat says so and
		// the next capture stores them again.
		for id, p := range b.pending {
			if !slices.Contains(b.uploaded, p) {
				delete(b.pending, id)
			}
		}
		return fmt.Errorf("upload packs: %w", err)
	}
	if len(b.uploaded) == 0 && len(b.dead) == 0 {
		return b.flushInner(ctx)
	}
	x := &format.PackIndex{}
	packNo := map[format.ID]uint32{}
	ref := func(name format.ID) uint32 {
		n, ok := packNo[name]
		if !ok {
			n = uint32(len(x.Packs))
			packNo[name] = n
			x.Packs = append(x.Packs, name)
		}
		return n
	}
	for _, p := range b.uploaded {
		n := ref(p.name)
		for _, e := range p.entries {
			x.Entries = append(x.Entries, format.PackIndexEntry{ID: e.ID, Pack: n, Offset: e.Offset, Length: e.Length})
		}
	}
	for i, d := range b.dead {
		x.Dead = append(x.Dead, format.PackIndexDead{ID: d.ID, Pack: ref(b.deadPack[i])})
	}
	if err := b.flushInner(ctx); err != nil { // packs durable before the index naming them
		return err
	}
	if err := b.saveIndex(ctx, x); err != nil {
		return err
	}
	for _, p := range b.uploaded {
		for _, e := range p.entries {
			if b.pending[e.ID] == p {
				delete(b.pending, e.ID)
			}
		}
	}
	b.uploaded, b.unindexed, b.dead, b.deadPack = nil, 0, nil, nil
	return nil
}

// Checkpoint makes the packs uploaded so far durable and findable: it
// writes a pack index naming them, without sealing the open pack. A long
// writer calls it now and then, so one that is interrupted and runs again
// finds what it stored before (only chunks in the open pack and in packs
// still uploading are lost).
func (b *Backend) Checkpoint(ctx context.Context) error {
	b.fmu.Lock()
	defer b.fmu.Unlock()
	b.wmu.Lock()
	ups := b.uploaded
	b.uploaded, b.unindexed = nil, 0
	b.wmu.Unlock()
	if len(ups) == 0 {
		return nil
	}
	x := &format.PackIndex{}
	for n, p := range ups {
		x.Packs = append(x.Packs, p.name)
		for _, e := range p.entries {
			x.Entries = append(x.Entries, format.PackIndexEntry{ID: e.ID, Pack: uint32(n), Offset: e.Offset, Length: e.Length})
		}
	}
	err := b.flushInner(ctx)
	if err == nil {
		err = b.saveIndex(ctx, x)
	}
	b.wmu.Lock()
	defer b.wmu.Unlock()
	if err != nil {
		b.uploaded = append(ups, b.uploaded...) // the next Flush indexes them
		for _, p := range ups {
			b.unindexed += int64(len(p.data))
		}
		return err
	}
	for _, p := range ups {
		for _, e := range p.entries {
			if b.pending[e.ID] == p {
				delete(b.pending, e.ID)
			}
		}
	}
	return nil
}

// checkpoints writes pack indexes while IndexEvery bytes of uploaded
// packs wait for one (b.checkpointing is set).
func (b *Backend) checkpoints() {
	for {
		if err := b.Checkpoint(context.Background()); err != nil {
			b.log.Warn("pack index not written now: the next flush writes it", "err", err)
			b.wmu.Lock()
			b.checkpointing = false
			b.wmu.Unlock()
			return
		}
		b.wmu.Lock()
		if b.unindexed < b.opts.IndexEvery {
			b.checkpointing = false
			b.wmu.Unlock()
			return
		}
		b.wmu.Unlock()
	}
}

// recordWritten starts recording the packs uploaded from now on.
func (b *Backend) recordWritten() {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	b.recording, b.wrote = true, nil
}

// takeWritten returns the packs uploaded since recordWritten and stops
// recording (nil when nothing recorded).
func (b *Backend) takeWritten() []PackInfo {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	w := b.wrote
	b.recording, b.wrote = false, nil
	return w
}

func (b *Backend) flushInner(ctx context.Context) error {
	if f, ok := b.be.(backend.Flusher); ok {
		return f.Flush(ctx)
	}
	return nil
}

// saveIndex writes a pack index and merges it into the view.
func (b *Backend) saveIndex(ctx context.Context, x *format.PackIndex) error {
	data := x.Marshal()
	name := format.Hash(data).String()
	if err := b.be.Save(ctx, backend.Handle{Type: backend.PackIndexFile, Name: name}, data); err != nil {
		return fmt.Errorf("save pack index: %w", err)
	}
	b.cacheIndex(name, data)
	b.rmu.Lock()
	defer b.rmu.Unlock()
	b.view.merge(x, time.Now())
	b.loaded[name] = true
	return nil
}

// lookup returns the places a chunk may be read from, newest first.
func (b *Backend) lookup(ctx context.Context, id format.ID) ([]location, error) {
	b.rmu.RLock()
	locs := b.view.find(id)
	never := b.stale.IsZero() // the view was never loaded (an empty one was)
	b.rmu.RUnlock()
	if len(locs) > 0 || !never && !b.mayRefresh() {
		return locs, nil
	}
	if err := b.refresh(ctx); err != nil {
		return nil, err
	}
	b.rmu.RLock()
	defer b.rmu.RUnlock()
	return b.view.find(id), nil
}

// mayRefresh rate-limits refreshes caused by misses (a capture stats many
// chunks that are not stored).
func (b *Backend) mayRefresh() bool {
	b.rmu.RLock()
	defer b.rmu.RUnlock()
	return time.Since(b.stale) > 2*time.Second
}

// Refresh reads the pack indexes written since the view was last brought
// up to date (by other processes and hosts).
func (b *Backend) Refresh(ctx context.Context) error { return b.refresh(ctx) }

func (b *Backend) refresh(ctx context.Context) error { return b.refreshSince(ctx, time.Now()) }

// refreshSince brings the view up to date with the pack indexes that
// existed at asked: a refresh that began listing at or after asked already
// did, so readers missing at once share one listing.
func (b *Backend) refreshSince(ctx context.Context, asked time.Time) error {
	b.refmu.Lock()
	defer b.refmu.Unlock()
	b.rmu.RLock()
	done := !b.listed.IsZero() && !b.listed.Before(asked)
	b.rmu.RUnlock()
	if done {
		return nil
	}
	began := time.Now()
	// An index listed but gone when read was merged into one this listing
	// did not show (gc's or compaction's merge): list again, up to a few
	// times, so the view never lacks what the merged index says.
	for try := 0; ; try++ {
		vanished, err := b.refreshOnce(ctx)
		if err != nil {
			return err
		}
		if !vanished || try == 4 {
			b.rmu.Lock()
			b.listed = began
			b.rmu.Unlock()
			return nil
		}
	}
}

// refreshOnce merges the pack indexes listed now into the view and
// reports whether one of them vanished before it was read.
func (b *Backend) refreshOnce(ctx context.Context) (vanished bool, err error) {
	var names []backend.FileInfo
	if err := b.be.List(ctx, backend.PackIndexFile, func(fi backend.FileInfo) error {
		names = append(names, fi)
		return nil
	}); err != nil {
		return false, fmt.Errorf("list pack indexes: %w", err)
	}
	// Indexes merged into one and removed took their removals with them:
	// then the view is built anew from what is listed.
	listed := make(map[string]bool, len(names))
	for _, fi := range names {
		listed[fi.Name] = true
	}
	b.rmu.RLock()
	rebuild := false
	for name := range b.loaded {
		if !listed[name] {
			rebuild = true
			break
		}
	}
	var todo []backend.FileInfo
	for _, fi := range names {
		if rebuild || !b.loaded[fi.Name] {
			todo = append(todo, fi)
		}
	}
	b.rmu.RUnlock()
	// Oldest first: a later index's removals apply to earlier entries.
	sort.Slice(todo, func(i, j int) bool { return todo[i].ModTime.Before(todo[j].ModTime) })
	type got struct {
		x   *format.PackIndex
		err error
	}
	res := make([]got, len(todo))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(b.be.Properties().ReadParallelism)
	for i, fi := range todo {
		g.Go(func() error {
			x, err := b.loadIndex(gctx, fi.Name)
			res[i] = got{x, err}
			return nil
		})
	}
	_ = g.Wait()
	b.rmu.Lock()
	defer b.rmu.Unlock()
	if rebuild {
		b.view, b.loaded = newView(), map[string]bool{}
	}
	for i, fi := range todo {
		switch {
		case errors.Is(res[i].err, backend.ErrNotFound):
			vanished = true // merged into another and removed meanwhile
			continue
		case res[i].err != nil:
			return false, res[i].err
		}
		b.view.merge(res[i].x, fi.ModTime)
		b.loaded[fi.Name] = true
	}
	b.stale = time.Now()
	return vanished, nil
}

// loadIndex reads one pack index, from the local copy when there is one.
func (b *Backend) loadIndex(ctx context.Context, name string) (*format.PackIndex, error) {
	var data []byte
	if b.opts.IndexCacheDir != "" {
		if d, err := os.ReadFile(filepath.Join(b.opts.IndexCacheDir, name)); err == nil && format.Hash(d).String() == name {
			data = d
		}
	}
	if data == nil {
		d, err := b.be.Load(ctx, backend.Handle{Type: backend.PackIndexFile, Name: name}, 0, -1)
		if err != nil {
			return nil, fmt.Errorf("load pack index %s: %w", name[:8], err)
		}
		if format.Hash(d).String() != name {
			return nil, fmt.Errorf("pack index %s: content does not match its name: %w", name[:8], format.ErrCorrupt)
		}
		data = d
		b.cacheIndex(name, data)
	}
	x, err := format.ParsePackIndex(data)
	if err != nil {
		return nil, fmt.Errorf("pack index %s: %w", name[:8], err)
	}
	return x, nil
}

func (b *Backend) cacheIndex(name string, data []byte) {
	if b.opts.IndexCacheDir == "" {
		return
	}
	if err := os.MkdirAll(b.opts.IndexCacheDir, 0o700); err != nil {
		return
	}
	tmp := filepath.Join(b.opts.IndexCacheDir, ".tmp-"+name)
	if os.WriteFile(tmp, data, 0o600) == nil {
		_ = os.Rename(tmp, filepath.Join(b.opts.IndexCacheDir, name))
	}
}

// pendingFrame returns a chunk's frame that is saved but not yet in a
// durable pack index.
func (b *Backend) pendingFrame(id format.ID) []byte {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	p := b.pending[id]
	if p == nil {
		return nil
	}
	e := p.entries[p.byID[id]]
	return bytes.Clone(p.data[e.Offset : e.Offset+e.Length])
}

// Load implements backend.Backend.
func (b *Backend) Load(ctx context.Context, h backend.Handle, off, length int64) ([]byte, error) {
	return b.load(ctx, h, off, length, nil)
}

// LoadInto implements backend.BufferLoader.
func (b *Backend) LoadInto(ctx context.Context, h backend.Handle, buf []byte) ([]byte, error) {
	return b.load(ctx, h, 0, -1, buf)
}

func (b *Backend) load(ctx context.Context, h backend.Handle, off, length int64, buf []byte) ([]byte, error) {
	id, ok := chunkID(h)
	if !ok {
		if bl, ok := b.be.(backend.BufferLoader); ok && off == 0 && length < 0 {
			return bl.LoadInto(ctx, h, buf)
		}
		return b.be.Load(ctx, h, off, length)
	}
	if f := b.pendingFrame(id); f != nil {
		return sub(h, f, off, length)
	}
	// A reader's miss always looks again, so a chunk whose pack index was
	// written before this read began is found (lookup rate-limits the
	// refreshes of Stat's misses instead: a capture stats many chunks
	// that are not stored).
	asked := time.Now()
	var looseErr error
	for attempt := 0; ; attempt++ {
		locs, err := b.lookup(ctx, id)
		if err != nil {
			return nil, err
		}
		for _, l := range locs {
			if off < 0 || off > int64(l.length) || length >= 0 && off+length > int64(l.length) {
				return nil, fmt.Errorf("load %v [%d,+%d) of %d bytes: %w", h, off, length, l.length, backend.ErrShortRead)
			}
			n := length
			if n < 0 {
				n = int64(l.length) - off
			}
			ph := backend.Handle{Type: backend.PackFile, Name: l.pack.String()}
			data, err := b.loadRangeInto(ctx, ph, int64(l.offset)+off, n, buf)
			if err == nil {
				return data, nil
			}
			if !errors.Is(err, backend.ErrNotFound) {
				return nil, fmt.Errorf("load %v from pack %s: %w", h, l.pack.Short(), err)
			}
		}
		if attempt == 1 {
			break
		}
		if len(locs) == 0 {
			// A chunk stored one per object (format version 1).
			data, err := b.loadLoose(ctx, h, off, length, buf)
			if !errors.Is(err, backend.ErrNotFound) {
				return data, err
			}
			looseErr = err
		}
		// A pack was repacked away, or the chunk is newer than the view.
		if err := b.refreshSince(ctx, asked); err != nil {
			return nil, err
		}
	}
	if looseErr != nil {
		return nil, looseErr
	}
	return b.loadLoose(ctx, h, off, length, buf)
}

func (b *Backend) loadLoose(ctx context.Context, h backend.Handle, off, length int64, buf []byte) ([]byte, error) {
	if any, err := b.anyLoose(ctx); err != nil || !any {
		return nil, notFound("load", h, err)
	}
	if bl, ok := b.be.(backend.BufferLoader); ok && off == 0 && length < 0 {
		return bl.LoadInto(ctx, h, buf)
	}
	return b.be.Load(ctx, h, off, length)
}

func (b *Backend) loadRangeInto(ctx context.Context, h backend.Handle, off, n int64, buf []byte) ([]byte, error) {
	if rl, ok := b.be.(backend.RangeLoader); ok {
		return rl.LoadRangeInto(ctx, h, off, n, buf)
	}
	return b.be.Load(ctx, h, off, n)
}

func sub(h backend.Handle, data []byte, off, length int64) ([]byte, error) {
	if off < 0 || off > int64(len(data)) || length >= 0 && off+length > int64(len(data)) {
		return nil, fmt.Errorf("load %v [%d,+%d) of %d bytes: %w", h, off, length, len(data), backend.ErrShortRead)
	}
	if length < 0 {
		return data[off:], nil
	}
	return data[off : off+length], nil
}

// Prefetch implements backend.Prefetcher: a chunk's hint becomes a hint
// for its frame's range of the pack (when the inner backend takes range
// hints), without refreshing the view; other objects' hints pass through.
func (b *Backend) Prefetch(h backend.Handle) {
	id, ok := chunkID(h)
	if !ok {
		if p, ok := b.be.(backend.Prefetcher); ok {
			p.Prefetch(h)
		}
		return
	}
	rp, ok := b.be.(backend.RangePrefetcher)
	if !ok {
		return
	}
	b.rmu.RLock()
	locs := b.view.find(id)
	b.rmu.RUnlock()
	if len(locs) > 0 {
		rp.PrefetchRange(backend.Handle{Type: backend.PackFile, Name: locs[0].pack.String()}, int64(locs[0].offset), int64(locs[0].length))
	}
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	id, ok := chunkID(h)
	if !ok {
		return b.be.Stat(ctx, h)
	}
	if f := b.pendingFrame(id); f != nil {
		return backend.FileInfo{Name: h.Name, Size: int64(len(f)), ModTime: time.Now()}, nil
	}
	locs, err := b.lookup(ctx, id)
	if err != nil {
		return backend.FileInfo{}, err
	}
	if len(locs) > 0 {
		return backend.FileInfo{Name: h.Name, Size: int64(locs[0].length), ModTime: locs[0].mtime}, nil
	}
	if any, err := b.anyLoose(ctx); err != nil || !any {
		return backend.FileInfo{}, notFound("stat", h, err)
	}
	return b.be.Stat(ctx, h)
}

// anyLoose says whether any chunk is stored as its own object. A capture
// stats every chunk it has not seen: without loose chunks a miss in the
// view is final, and costs no request (a HEAD each on object storage).
func (b *Backend) anyLoose(ctx context.Context) (bool, error) {
	b.looseMu.Lock()
	defer b.looseMu.Unlock()
	if b.looseKnown {
		return b.looseAny, nil
	}
	errFound := errors.New("found")
	err := b.be.List(ctx, backend.ChunkFile, func(backend.FileInfo) error { return errFound })
	switch {
	case errors.Is(err, errFound):
		b.looseAny = true
	case err != nil:
		return false, fmt.Errorf("list chunk objects: %w", err)
	}
	b.looseKnown = true
	return b.looseAny, nil
}

// notFound is the error for a chunk the view lacks and no object holds
// (err, when the lookup for loose chunks failed).
func notFound(op string, h backend.Handle, err error) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("%s %v: %w", op, h, backend.ErrNotFound)
}

// List implements backend.Backend: chunks in packs (once each, as of the
// view after a refresh) and chunks stored one per object.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	if t != backend.ChunkFile {
		return b.be.List(ctx, t, fn)
	}
	if err := b.refresh(ctx); err != nil {
		return err
	}
	b.rmu.RLock()
	items := b.view.live()
	b.rmu.RUnlock()
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(backend.FileInfo{Name: it.id.String(), Size: int64(it.length), ModTime: it.mtime}); err != nil {
			return err
		}
	}
	return b.be.List(ctx, t, fn)
}

// Remove implements backend.Backend: a chunk's frames are marked dead in
// the next pack index (written by Flush); the space is reclaimed by
// Compact. A chunk stored as its own object is removed.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	id, ok := chunkID(h)
	if !ok {
		return b.be.Remove(ctx, h)
	}
	if _, err := b.lookup(ctx, id); err != nil { // the view is loaded
		return err
	}
	b.rmu.Lock()
	locs := b.view.remove(id)
	b.rmu.Unlock()
	b.wmu.Lock()
	for _, l := range locs {
		b.dead = append(b.dead, format.PackIndexDead{ID: id})
		b.deadPack = append(b.deadPack, l.pack)
	}
	b.wmu.Unlock()
	if any, err := b.anyLoose(ctx); err != nil || !any {
		return err // removing what is not there succeeds
	}
	return b.be.Remove(ctx, h)
}

// RemoveTemp implements backend.TempCleaner through the inner backend.
func (b *Backend) RemoveTemp(ctx context.Context, olderThan time.Time) (int, error) {
	if tc, ok := b.be.(backend.TempCleaner); ok {
		return tc.RemoveTemp(ctx, olderThan)
	}
	return 0, nil
}

// Count implements backend.Counter.
func (b *Backend) Count(ctx context.Context, t backend.FileType) (int, error) {
	if t != backend.ChunkFile {
		if c, ok := b.be.(backend.Counter); ok {
			return c.Count(ctx, t)
		}
		n := 0
		err := b.be.List(ctx, t, func(backend.FileInfo) error { n++; return nil })
		return n, err
	}
	n := 0
	err := b.List(ctx, t, func(backend.FileInfo) error { n++; return nil })
	return n, err
}

// Locate says where a chunk's newest frame is: the pack's name, and the
// frame's offset and length in it (ok false when no pack index names it).
func (b *Backend) Locate(ctx context.Context, id format.ID) (pack format.ID, off, length int64, ok bool, err error) {
	locs, err := b.lookup(ctx, id)
	if err != nil || len(locs) == 0 {
		return format.ID{}, 0, 0, false, err
	}
	return locs[0].pack, int64(locs[0].offset), int64(locs[0].length), true, nil
}

// maxRun bounds one coalesced read of neighbouring frames, and maxGap the
// unwanted bytes between two wanted frames such a read may carry;
// batchMemory bounds the runs one LoadBatch holds loaded and not yet
// handed on.
const (
	maxRun      = 16 << 20
	maxGap      = 1 << 20
	batchMemory = 64 << 20
)

// LoadBatch implements backend.BatchLoader for chunks: frames that sit
// near each other in a pack (a sequential reader's next chunks, captured
// in disk order) come with one ranged read. Other types load one by one.
func (b *Backend) LoadBatch(ctx context.Context, t backend.FileType, names []string, fn func(string, []byte) error) error {
	type want struct {
		name string
		loc  location
	}
	byPack := map[format.ID][]want{}
	var loose []string
	if t == backend.ChunkFile {
		// The view may never have been loaded (nothing looked a chunk up
		// yet): load it, or every frame would be read on its own.
		b.rmu.RLock()
		never := b.stale.IsZero()
		b.rmu.RUnlock()
		if never {
			if err := b.refresh(ctx); err != nil {
				return err
			}
		}
	}
	for _, n := range names {
		id, err := format.ParseID(n)
		if t != backend.ChunkFile || err != nil {
			loose = append(loose, n)
			continue
		}
		if f := b.pendingFrame(id); f != nil {
			if err := fn(n, f); err != nil {
				return err
			}
			continue
		}
		b.rmu.RLock()
		locs := b.view.find(id)
		b.rmu.RUnlock()
		if len(locs) == 0 {
			loose = append(loose, n)
			continue
		}
		byPack[locs[0].pack] = append(byPack[locs[0].pack], want{n, locs[0]})
	}
	type run struct {
		pack       format.ID
		start, end int64
		items      []want
	}
	var runs []run
	for p, ws := range byPack {
		slices.SortFunc(ws, func(a, b want) int { return int(int64(a.loc.offset) - int64(b.loc.offset)) })
		cur := run{pack: p, start: -1}
		for _, w := range ws {
			s, e := int64(w.loc.offset), int64(w.loc.offset)+int64(w.loc.length)
			if cur.start >= 0 && (s-cur.end > maxGap || e-cur.start > maxRun) {
				runs = append(runs, cur)
				cur = run{pack: p, start: -1}
			}
			if cur.start < 0 {
				cur.start = s
			}
			cur.end = max(cur.end, e)
			cur.items = append(cur.items, w)
		}
		runs = append(runs, cur)
	}
	var mu sync.Mutex // fn runs on one goroutine at a time
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(b.be.Properties().ReadParallelism)
	// Runs loaded and not yet handed to fn hold at most batchMemory.
	mem := semaphore.NewWeighted(batchMemory)
	for _, r := range runs {
		n := min(r.end-r.start, batchMemory)
		if err := mem.Acquire(gctx, n); err != nil {
			break // g.Wait reports why
		}
		g.Go(func() error {
			defer mem.Release(n)
			data, err := b.be.Load(gctx, backend.Handle{Type: backend.PackFile, Name: r.pack.String()}, r.start, r.end-r.start)
			if errors.Is(err, backend.ErrNotFound) {
				return nil // repacked meanwhile: left out, loaded one by one later
			}
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			for _, w := range r.items {
				s := int64(w.loc.offset) - r.start
				if err := fn(w.name, data[s:s+int64(w.loc.length)]); err != nil {
					return err
				}
			}
			return nil
		})
	}
	for _, n := range loose {
		g.Go(func() error {
			data, err := b.Load(gctx, backend.Handle{Type: t, Name: n}, 0, -1)
			if errors.Is(err, backend.ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			return fn(n, data)
		})
	}
	return g.Wait()
}

// RemoveForeign implements backend.ForeignRemover through the inner backend.
func (b *Backend) RemoveForeign(ctx context.Context, t backend.FileType, name string) error {
	if fr, ok := b.be.(backend.ForeignRemover); ok {
		return fr.RemoveForeign(ctx, t, name)
	}
	return fmt.Errorf("remove %s/%q: the backend cannot remove what it did not write", t, name)
}

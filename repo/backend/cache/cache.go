// Package cache keeps copies of a remote repository's immutable objects
// on a local disk: a Backend wrapper for object storage, where every read
// is a round trip. Chunk frames, disk indexes and manifests are cached
// whole, named as in the repository (their names are hashes of what they
// hold, or of what they decode to); everything else passes through.
//
// Sequential readers send fetch hints (backend.Prefetcher) well ahead of
// their reads: hinted chunks are fetched in the background, many at once
// and, where the inner backend can (backend.BatchLoader: the pack layer),
// with one ranged read for neighbouring frames. Random readers fetch just
// the chunk they read.
//
// Invariants: the cache never serves what it cannot vouch for — a cached
// chunk frame must pass its checksum (format.CheckFrame), a cached index
// or manifest must hash to its name, else it is dropped and fetched
// again; files are written to a temporary name and renamed, so a crash
// leaves no partial copy under an object's name; it holds at most Size
// bytes, dropping the least recently used objects first. Removing an
// object through the cache removes its copy.
package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/format"
)

// Options configure the cache.
type Options struct {
	Dir  string
	Size int64 // bytes kept at most (default 4 GiB)
	// Fetchers is how many loads background fetching keeps in flight
	// (default: the inner backend's ReadParallelism); they go out as
	// Fetchers/4 batches at once, each of up to 64 objects.
	Fetchers int
	Log      *slog.Logger
}

// Backend is a disk cache over an inner backend.
type Backend struct {
	be   backend.Backend
	opts Options

	mu       sync.Mutex
	entries  map[key]*entry
	lruHead  *entry // most recently used
	lruTail  *entry
	used     int64
	inflight map[key]chan struct{} // closed when a fetch of the key ends

	queue   chan key // hinted, to fetch
	stop    chan struct{}
	workers sync.WaitGroup

	// Hits and Misses count loads served from the cache and from the
	// inner backend; Fetched counts objects fetched ahead.
	Hits, Misses, Fetched atomic.Int64
}

type key struct {
	t    backend.FileType
	name string
}

type entry struct {
	key
	size       int64
	prev, next *entry
}

var (
	_ backend.Backend      = (*Backend)(nil)
	_ backend.Prefetcher   = (*Backend)(nil)
	_ backend.BufferLoader = (*Backend)(nil)
	_ backend.Flusher      = (*Backend)(nil)
)

// cached says which types are cached: immutable, content-named objects.
func cached(t backend.FileType) bool {
	return t == backend.ChunkFile || t == backend.IndexFile || t == backend.SnapshotFile
}

// New opens (or makes) a cache in opts.Dir over be and starts its
// fetchers; Close stops them.
func New(be backend.Backend, opts Options) (*Backend, error) {
	if opts.Size <= 0 {
		opts.Size = 4 << 30
	}
	if opts.Fetchers <= 0 {
		opts.Fetchers = be.Properties().ReadParallelism
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cache directory: %w", err)
	}
	c := &Backend{be: be, opts: opts, entries: map[key]*entry{}, inflight: map[key]chan struct{}{},
		queue: make(chan key, 4096), stop: make(chan struct{})}
	if err := c.scan(); err != nil {
		return nil, err
	}
	batches := make(chan []key)
	c.workers.Add(1)
	go c.gatherer(batches)
	for range max(1, opts.Fetchers/4) {
		c.workers.Add(1)
		go c.fetcher(batches)
	}
	return c, nil
}

// scan rebuilds the index of what is cached from the directory, oldest
// access first, and removes leftover temporary files.
func (c *Backend) scan() error {
	type found struct {
		k     key
		size  int64
		atime time.Time
	}
	var all []found
	err := filepath.WalkDir(c.opts.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasPrefix(d.Name(), ".tmp-") {
			return os.Remove(p)
		}
		rel, _ := filepath.Rel(c.opts.Dir, p)
		parts := strings.Split(rel, string(filepath.Separator))
		t, ok := typeOf(parts[0])
		if !ok || len(parts) != 3 {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		all = append(all, found{key{t, parts[2]}, info.Size(), info.ModTime()})
		return nil
	})
	if err != nil {
		return fmt.Errorf("scan cache %s: %w", c.opts.Dir, err)
	}
	// ModTime is bumped on every use (see get): oldest first.
	sort.Slice(all, func(i, j int) bool { return all[i].atime.Before(all[j].atime) })
	for _, f := range all {
		c.insertLocked(f.k, f.size)
	}
	c.evictLocked()
	return nil
}

func typeOf(dir string) (backend.FileType, bool) {
	for _, t := range backend.Types() {
		if t.String() == dir && cached(t) {
			return t, true
		}
	}
	return 0, false
}

func (c *Backend) path(k key) string {
	return filepath.Join(c.opts.Dir, k.t.String(), k.name[:min(2, len(k.name))], k.name)
}

// LRU list: head most recent.
func (c *Backend) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		c.lruHead = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		c.lruTail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (c *Backend) pushFront(e *entry) {
	e.next = c.lruHead
	if c.lruHead != nil {
		c.lruHead.prev = e
	}
	c.lruHead = e
	if c.lruTail == nil {
		c.lruTail = e
	}
}

func (c *Backend) insertLocked(k key, size int64) {
	if e := c.entries[k]; e != nil {
		c.unlink(e)
		c.used -= e.size
	}
	e := &entry{key: k, size: size}
	c.entries[k] = e
	c.pushFront(e)
	c.used += size
}

// evictLocked drops least recently used objects until the cache fits.
func (c *Backend) evictLocked() {
	for c.used > c.opts.Size && c.lruTail != nil {
		e := c.lruTail
		c.unlink(e)
		delete(c.entries, e.key)
		c.used -= e.size
		_ = os.Remove(c.path(e.key))
	}
}

func (c *Backend) dropLocked(k key) {
	if e := c.entries[k]; e != nil {
		c.unlink(e)
		delete(c.entries, k)
		c.used -= e.size
	}
	_ = os.Remove(c.path(k))
}

// get returns a cached object that passes its check, or nil.
func (c *Backend) get(k key) []byte {
	c.mu.Lock()
	e := c.entries[k]
	if e != nil {
		c.unlink(e)
		c.pushFront(e)
	}
	c.mu.Unlock()
	if e == nil {
		return nil
	}
	data, err := os.ReadFile(c.path(k))
	if err == nil && valid(k, data) {
		now := time.Now()
		_ = os.Chtimes(c.path(k), now, now)
		return data
	}
	c.mu.Lock()
	c.dropLocked(k)
	c.mu.Unlock()
	if err == nil {
		c.opts.Log.Warn("cached copy failed its check: dropped, fetching it again", "object", k.t.String()+"/"+k.name)
	}
	return nil
}

// valid checks a copy against what its name promises.
func valid(k key, data []byte) bool {
	if k.t == backend.ChunkFile {
		return format.CheckFrame(data) == nil
	}
	return format.Hash(data).String() == k.name
}

// put stores a copy (best effort: a full or failing disk only costs reads).
func (c *Backend) put(k key, data []byte) {
	if int64(len(data)) > c.opts.Size/8 {
		return
	}
	p := c.path(k)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(filepath.Dir(p), ".tmp-"+hex.EncodeToString(rnd[:]))
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		_ = os.Remove(tmp)
		return
	}
	if err := os.Rename(tmp, p); err != nil {
		_ = os.Remove(tmp)
		return
	}
	c.mu.Lock()
	c.insertLocked(k, int64(len(data)))
	c.evictLocked()
	c.mu.Unlock()
}

// begin claims a fetch of k: it returns nil when the caller fetches it
// (and must call end), or a channel closed when another fetch of it ends.
func (c *Backend) begin(k key) chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch, ok := c.inflight[k]; ok {
		return ch
	}
	c.inflight[k] = make(chan struct{})
	return nil
}

func (c *Backend) end(k key) {
	c.mu.Lock()
	ch := c.inflight[k]
	delete(c.inflight, k)
	c.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// Load implements backend.Backend.
func (c *Backend) Load(ctx context.Context, h backend.Handle, off, length int64) ([]byte, error) {
	if !cached(h.Type) {
		return c.be.Load(ctx, h, off, length)
	}
	data, err := c.whole(ctx, h)
	if err != nil {
		return nil, err
	}
	if off < 0 || off > int64(len(data)) || length >= 0 && off+length > int64(len(data)) {
		return nil, fmt.Errorf("load %v [%d,+%d) of %d bytes: %w", h, off, length, len(data), backend.ErrShortRead)
	}
	if length < 0 {
		return data[off:], nil
	}
	return data[off : off+length], nil
}

// LoadInto implements backend.BufferLoader.
func (c *Backend) LoadInto(ctx context.Context, h backend.Handle, buf []byte) ([]byte, error) {
	if !cached(h.Type) {
		if bl, ok := c.be.(backend.BufferLoader); ok {
			return bl.LoadInto(ctx, h, buf)
		}
		return c.be.Load(ctx, h, 0, -1)
	}
	data, err := c.whole(ctx, h)
	if err != nil {
		return nil, err
	}
	if cap(buf) >= len(data) {
		return append(buf[:0], data...), nil
	}
	return data, nil
}

// whole returns the object from the cache, from a fetch in flight, or from
// the inner backend (and caches it).
func (c *Backend) whole(ctx context.Context, h backend.Handle) ([]byte, error) {
	k := key{h.Type, h.Name}
	for {
		if data := c.get(k); data != nil {
			c.Hits.Add(1)
			return data, nil
		}
		wait := c.begin(k)
		if wait == nil {
			break
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if data := c.get(k); data != nil {
			c.Hits.Add(1)
			return data, nil
		}
		// the fetch it waited for failed or was not cached: try itself
	}
	defer c.end(k)
	c.Misses.Add(1)
	data, err := c.be.Load(ctx, h, 0, -1)
	if err != nil {
		return nil, err
	}
	c.put(k, data)
	return data, nil
}

// Prefetch implements backend.Prefetcher: a hinted object is fetched in
// the background unless it is cached or on its way; hints beyond the
// queue's capacity are dropped. A queued object counts as on its way from
// the hint on: a read of it waits for its batch instead of loading it on
// its own (one request per chunk on object storage).
func (c *Backend) Prefetch(h backend.Handle) {
	if !cached(h.Type) {
		if p, ok := c.be.(backend.Prefetcher); ok {
			p.Prefetch(h)
		}
		return
	}
	k := key{h.Type, h.Name}
	c.mu.Lock()
	_, have := c.entries[k]
	c.mu.Unlock()
	if have || c.begin(k) != nil {
		return
	}
	select {
	case c.queue <- k:
	default:
		c.end(k)
	}
}

// gatherer takes hinted objects off the queue in batches for the
// fetchers. A reader's hints arrive one by one, microseconds apart: a batch
// takes what comes until the queue has been quiet for gather, so a window
// of hints becomes one batch (a ranged read or two) rather than many.
func (c *Backend) gatherer(batches chan<- []key) {
	defer c.workers.Done()
	defer close(batches)
	const (
		batch  = 64
		gather = time.Millisecond
	)
	quiet := time.NewTimer(gather)
	for {
		var ks []key
		select {
		case <-c.stop:
			return
		case k := <-c.queue:
			ks = append(ks, k)
		}
		quiet.Reset(gather)
	drain:
		for len(ks) < batch {
			select {
			case k := <-c.queue:
				ks = append(ks, k)
			case <-quiet.C:
				break drain
			}
		}
		quiet.Stop()
		select {
		case batches <- ks:
		case <-c.stop:
			for _, k := range ks {
				c.end(k)
			}
			return
		}
	}
}

// fetcher fetches the gatherer's batches.
func (c *Backend) fetcher(batches <-chan []key) {
	defer c.workers.Done()
	for ks := range batches {
		c.fetch(ks)
	}
}

// fetch loads ks (claimed by Prefetch) with one batch call per type where
// the inner backend batches, else one by one, and ends every claim.
func (c *Backend) fetch(ks []key) {
	ctx := context.Background()
	byType := map[backend.FileType][]string{}
	for _, k := range ks {
		byType[k.t] = append(byType[k.t], k.name)
	}
	for t, names := range byType {
		done := map[string]bool{}
		store := func(name string, data []byte) error {
			c.put(key{t, name}, data)
			c.Fetched.Add(1)
			done[name] = true
			c.end(key{t, name})
			return nil
		}
		var err error
		if bl, ok := c.be.(backend.BatchLoader); ok {
			err = bl.LoadBatch(ctx, t, names, store)
		} else {
			for _, n := range names {
				data, lerr := c.be.Load(ctx, backend.Handle{Type: t, Name: n}, 0, -1)
				if lerr == nil {
					_ = store(n, data)
				}
			}
		}
		if err != nil {
			c.opts.Log.Debug("fetch ahead failed; reads will fetch what they need", "err", err)
		}
		for _, n := range names {
			if !done[n] {
				c.end(key{t, n})
			}
		}
	}
}

// Save implements backend.Backend (through to the inner backend; a saved
// chunk is not cached, readers rarely come back to what a capture wrote).
func (c *Backend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	return c.be.Save(ctx, h, data)
}

// Stat implements backend.Backend.
func (c *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	return c.be.Stat(ctx, h)
}

// List implements backend.Backend.
func (c *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	return c.be.List(ctx, t, fn)
}

// Remove implements backend.Backend, dropping the cached copy too.
func (c *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if cached(h.Type) {
		c.mu.Lock()
		c.dropLocked(key{h.Type, h.Name})
		c.mu.Unlock()
	}
	return c.be.Remove(ctx, h)
}

// RemoveTemp implements backend.TempCleaner through the inner backend.
func (c *Backend) RemoveTemp(ctx context.Context, olderThan time.Time) (int, error) {
	if tc, ok := c.be.(backend.TempCleaner); ok {
		return tc.RemoveTemp(ctx, olderThan)
	}
	return 0, nil
}

// Count implements backend.Counter through the inner backend.
func (c *Backend) Count(ctx context.Context, t backend.FileType) (int, error) {
	if cn, ok := c.be.(backend.Counter); ok {
		return cn.Count(ctx, t)
	}
	n := 0
	err := c.be.List(ctx, t, func(backend.FileInfo) error { n++; return nil })
	return n, err
}

// Flush implements backend.Flusher through the inner backend.
func (c *Backend) Flush(ctx context.Context) error {
	if f, ok := c.be.(backend.Flusher); ok {
		return f.Flush(ctx)
	}
	return nil
}

// Location implements backend.Backend.
func (c *Backend) Location() string { return c.be.Location() }

// Properties implements backend.Backend.
func (c *Backend) Properties() backend.Properties { return c.be.Properties() }

// Inner returns the wrapped backend.
func (c *Backend) Inner() backend.Backend { return c.be }

// Used returns the bytes the cache holds.
func (c *Backend) Used() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}

// Close stops the fetchers and closes the inner backend.
func (c *Backend) Close() error {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.workers.Wait()
	for { // hints left queued: their claims end unfetched
		select {
		case k := <-c.queue:
			c.end(k)
			continue
		default:
		}
		break
	}
	return c.be.Close()
}

// RemoveForeign implements backend.ForeignRemover through the inner backend.
func (c *Backend) RemoveForeign(ctx context.Context, t backend.FileType, name string) error {
	if fr, ok := c.be.(backend.ForeignRemover); ok {
		return fr.RemoveForeign(ctx, t, name)
	}
	return fmt.Errorf("remove %s/%q: the backend cannot remove what it did not write", t, name)
}

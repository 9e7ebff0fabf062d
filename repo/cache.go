package repo

import (
	"container/list"
	"context"
	"sync"

	"github.com/vmvault/vmvault/repo/bufpool"
	"github.com/vmvault/vmvault/repo/format"
)

// chunkCache is a bounded LRU of decoded chunks shared by all readers of a
// Repository. Concurrent requests for one chunk share one load.
//
// Entries are pinned while a reader copies out of them (acquire/release),
// so an evicted chunk's buffer is recycled for the next load once its last
// reader is done, instead of becoming garbage: a server streaming a disk
// through a cache smaller than the disk then allocates almost nothing per
// chunk, and the GC has nothing to chase. Cached bytes are read-only.
type chunkCache struct {
	mu       sync.Mutex
	max      int64
	size     int64
	lru      *list.List // of *cacheEntry, most recent at front
	entries  map[format.ID]*list.Element
	inflight map[format.ID]*cacheCall
	bufs     *bufpool.Pool // where evicted buffers go and loads take theirs
}

type cacheEntry struct {
	id      format.ID
	data    []byte
	refs    int  // readers holding data
	evicted bool // out of the LRU: recycle data when refs drops to 0
}

type cacheCall struct {
	done    chan struct{}
	entry   *cacheEntry
	err     error
	waiters int // readers that joined the load; each holds a reference
}

func newChunkCache(max int64, bufs *bufpool.Pool) *chunkCache {
	return &chunkCache{max: max, lru: list.New(), entries: map[format.ID]*list.Element{}, inflight: map[format.ID]*cacheCall{}, bufs: bufs}
}

// acquire returns the cache entry for id, pinned, loading it with load on
// a miss; load decodes into the buffer it is given (empty, capacity ≥
// want). The caller must release the entry once it no longer reads e.data.
// A waiter whose ctx ends stops waiting; the load itself goes on for the
// others.
func (c *chunkCache) acquire(ctx context.Context, id format.ID, want int64, load func(buf []byte) ([]byte, error)) (*cacheEntry, error) {
	c.mu.Lock()
	if el, ok := c.entries[id]; ok {
		c.lru.MoveToFront(el)
		e := el.Value.(*cacheEntry)
		e.refs++
		c.mu.Unlock()
		return e, nil
	}
	if call, ok := c.inflight[id]; ok {
		call.waiters++
		c.mu.Unlock()
		select {
		case <-call.done:
			return call.entry, call.err
		case <-ctx.Done():
			// The loader counted this waiter's reference: give it back.
			go func() {
				<-call.done
				if call.err == nil {
					c.release(call.entry)
				}
			}()
			return nil, ctx.Err()
		}
	}
	call := &cacheCall{done: make(chan struct{})}
	c.inflight[id] = call
	c.mu.Unlock()
	buf := c.bufs.Get(int(want))[:0]

	data, err := load(buf)

	c.mu.Lock()
	delete(c.inflight, id)
	call.err = err
	if err == nil {
		e := &cacheEntry{id: id, data: data, refs: 1 + call.waiters}
		call.entry = e
		c.add(e)
	} else {
		c.bufs.Put(buf)
	}
	c.mu.Unlock()
	close(call.done)
	return call.entry, err
}

// release drops one reference taken by acquire.
func (c *chunkCache) release(e *cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.refs--
	if e.refs == 0 && e.evicted {
		c.bufs.Put(e.data)
		e.data = nil
	}
}

// has reports whether a chunk is cached or being loaded.
func (c *chunkCache) has(id format.ID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.entries[id]
	_, loading := c.inflight[id]
	return ok || loading
}

// add puts e in the LRU (or marks it evicted when it cannot fit) and
// evicts from the back to stay within max. Called with mu held.
func (c *chunkCache) add(e *cacheEntry) {
	if _, ok := c.entries[e.id]; ok || int64(len(e.data)) > c.max {
		e.evicted = true
		return
	}
	c.entries[e.id] = c.lru.PushFront(e)
	c.size += int64(len(e.data))
	for c.size > c.max {
		el := c.lru.Back()
		old := el.Value.(*cacheEntry)
		c.lru.Remove(el)
		delete(c.entries, old.id)
		c.size -= int64(len(old.data))
		old.evicted = true
		if old.refs == 0 {
			c.bufs.Put(old.data)
			old.data = nil
		}
	}
}

package repo

import (
	"container/list"
	"context"
	"sync"

	"github.com/vmvault/vmvault/repo/format"
)

// chunkCache is a bounded LRU of decoded chunks shared by all readers of a
// Repository. Concurrent requests for one chunk share one load. Cached
// slices are read-only.
type chunkCache struct {
	mu       sync.Mutex
	max      int64
	size     int64
	lru      *list.List // of *cacheEntry, most recent at front
	entries  map[format.ID]*list.Element
	inflight map[format.ID]*cacheCall
}

type cacheEntry struct {
	id   format.ID
	data []byte
}

type cacheCall struct {
	done chan struct{}
	data []byte
	err  error
}

func newChunkCache(max int64) *chunkCache {
	return &chunkCache{max: max, lru: list.New(), entries: map[format.ID]*list.Element{}, inflight: map[format.ID]*cacheCall{}}
}

// get returns the chunk id, loading it with load on a miss. A waiter whose
// ctx ends stops waiting; the load itself goes on for the others.
func (c *chunkCache) get(ctx context.Context, id format.ID, load func() ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	if el, ok := c.entries[id]; ok {
		c.lru.MoveToFront(el)
		data := el.Value.(*cacheEntry).data
		c.mu.Unlock()
		return data, nil
	}
	if call, ok := c.inflight[id]; ok {
		c.mu.Unlock()
		select {
		case <-call.done:
			return call.data, call.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	call := &cacheCall{done: make(chan struct{})}
	c.inflight[id] = call
	c.mu.Unlock()

	call.data, call.err = load()

	c.mu.Lock()
	delete(c.inflight, id)
	if call.err == nil {
		c.add(id, call.data)
	}
	c.mu.Unlock()
	close(call.done)
	return call.data, call.err
}

// has reports whether a chunk is cached or being loaded.
func (c *chunkCache) has(id format.ID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.entries[id]
	_, loading := c.inflight[id]
	return ok || loading
}

func (c *chunkCache) add(id format.ID, data []byte) {
	if int64(len(data)) > c.max {
		return
	}
	if _, ok := c.entries[id]; ok {
		return
	}
	c.entries[id] = c.lru.PushFront(&cacheEntry{id: id, data: data})
	c.size += int64(len(data))
	for c.size > c.max {
		el := c.lru.Back()
		e := el.Value.(*cacheEntry)
		c.lru.Remove(el)
		delete(c.entries, e.id)
		c.size -= int64(len(e.data))
	}
}

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

	"github.com/vmvault/vmvault/repo/bufpool"
	"github.com/vmvault/vmvault/repo/format"
)

// cacheChunk is the content the test loader produces for chunk n.
func cacheChunk(n int, size int) []byte {
	return bytes.Repeat([]byte{byte(n), byte(n >> 8), 0xa5, byte(n * 7)}, size/4)
}

func cacheID(n int) format.ID { return format.Hash([]byte(fmt.Sprint("chunk", n))) }

// TestChunkCacheRecycling checks the pin/evict/recycle rules step by step.
func TestChunkCacheRecycling(t *testing.T) {
	const size = 1024
	c := newChunkCache(2*size, bufpool.New(1<<20))
	ctx := context.Background()
	loads := 0
	var gotBuf []byte
	get := func(n int) *cacheEntry {
		t.Helper()
		e, err := c.acquire(ctx, cacheID(n), size, func(buf []byte) ([]byte, error) {
			loads++
			gotBuf = buf
			return append(buf, cacheChunk(n, size)...), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(e.data, cacheChunk(n, size)) {
			t.Fatalf("chunk %d: wrong content", n)
		}
		return e
	}
	same := func(a, b []byte) bool { return cap(a) > 0 && cap(b) > 0 && &a[:1][0] == &b[:1][0] }
	a := get(1) // pinned
	aBuf := a.data
	b := get(2)
	bBuf := b.data
	c.release(b)
	c.release(get(3)) // evicts 1 (pinned: its buffer must survive)
	if same(gotBuf, aBuf) || same(gotBuf, bBuf) {
		t.Fatal("a load reused the buffer of a chunk still in the cache or pinned")
	}
	if !a.evicted || !bytes.Equal(a.data, cacheChunk(1, size)) {
		t.Fatal("an evicted chunk changed while a reader held it")
	}
	c.release(a)
	if a.data != nil {
		t.Fatal("the evicted chunk kept its buffer after the last release")
	}
	c.release(get(4)) // evicts 2; reuses 1's buffer, recycled at the release
	if !same(gotBuf, aBuf) {
		t.Fatal("the load after the last release did not get the recycled buffer")
	}
	c.release(get(4)) // hit
	if loads != 4 {
		t.Fatalf("loads = %d, want 4 (the last get is a hit)", loads)
	}
	// A failed load caches nothing and keeps its buffer for the next one.
	boom := errors.New("boom")
	if _, err := c.acquire(ctx, cacheID(9), size, func(buf []byte) ([]byte, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("failed load: %v", err)
	}
	if c.has(cacheID(9)) {
		t.Fatal("a failed load was cached")
	}
	// A chunk bigger than the cache is served but never kept.
	big, err := c.acquire(ctx, cacheID(10), 3*size, func(buf []byte) ([]byte, error) { return make([]byte, 3*size), nil })
	if err != nil || !big.evicted || c.has(cacheID(10)) {
		t.Fatalf("oversized chunk: err %v, evicted %v, cached %v", err, big.evicted, c.has(cacheID(10)))
	}
	c.release(big)
}

// TestChunkCacheConcurrentRecycling hammers a cache much smaller than the
// working set from many readers, some of which give up waiting: every
// reader must see exactly its chunk's bytes for as long as it holds the
// entry (a buffer recycled too early shows up as foreign content), and
// every reference must be returned in the end.
func TestChunkCacheConcurrentRecycling(t *testing.T) {
	const size, chunks, readers, rounds = 4096, 16, 8, 2000
	c := newChunkCache(3*size, bufpool.New(1<<20))
	var bad, loads atomic.Int64
	var wg sync.WaitGroup
	for g := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range rounds {
				n := rng.IntN(chunks)
				ctx, cancel := context.WithCancel(context.Background())
				if rng.IntN(8) == 0 {
					cancel() // a reader that stops waiting at once
				}
				e, err := c.acquire(ctx, cacheID(n), size, func(buf []byte) ([]byte, error) {
					loads.Add(1)
					return append(buf, cacheChunk(n, size)...), nil
				})
				cancel()
				if err != nil {
					continue
				}
				want := cacheChunk(n, size)
				for range 3 { // keep reading while others evict and load
					if !bytes.Equal(e.data, want) {
						bad.Add(1)
						break
					}
				}
				c.release(e)
			}
		}()
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d reads saw another chunk's bytes (buffer recycled while pinned)", bad.Load())
	}
	// Let the goroutines of cancelled waiters hand back their references.
	for range 1000 {
		if pinned(c) == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if n := pinned(c); n != 0 {
		t.Fatalf("%d references never released", n)
	}
	t.Logf("%d loads for %d reads", loads.Load(), readers*rounds)
}

func pinned(c *chunkCache) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for el := c.lru.Front(); el != nil; el = el.Next() {
		n += el.Value.(*cacheEntry).refs
	}
	return n
}

// BenchmarkChunkCacheChurn streams chunks through a cache a quarter of
// their number: every load evicts one. With recycling, a load allocates
// no chunk buffer (B/op stays far below the 64 KiB chunk size).
func BenchmarkChunkCacheChurn(b *testing.B) {
	const size = 64 << 10
	c := newChunkCache(16*size, bufpool.New(4*size))
	ctx := context.Background()
	src := cacheChunk(1, size)
	b.ReportAllocs()
	b.SetBytes(size)
	for i := 0; b.Loop(); i++ {
		e, err := c.acquire(ctx, cacheID(i%64), size, func(buf []byte) ([]byte, error) {
			return append(buf, src...), nil
		})
		if err != nil {
			b.Fatal(err)
		}
		c.release(e)
	}
}

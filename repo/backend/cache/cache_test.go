package cache

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/faulty"
	"github.com/vmvault/vmvault/repo/backend/mem"
	"github.com/vmvault/vmvault/repo/backend/pack"
	"github.com/vmvault/vmvault/repo/format"
)

// frames stores n chunk frames in packs over a counting backend.
func frames(t *testing.T, n int) (*faulty.Backend, *pack.Backend, []backend.Handle, [][]byte) {
	t.Helper()
	ctx := context.Background()
	inner := faulty.New(mem.New(), 1)
	p := pack.New(inner, pack.Options{PackSize: 4 << 20})
	var hs []backend.Handle
	var fs [][]byte
	for i := range n {
		raw := bytes.Repeat([]byte{byte(i), byte(i >> 8), 1, 2, 3}, 10000)
		fr, err := format.EncodeChunk(nil, raw, format.CompressionNone)
		if err != nil {
			t.Fatal(err)
		}
		h := backend.Handle{Type: backend.ChunkFile, Name: format.Hash(raw).String()}
		if err := p.Save(ctx, h, fr); err != nil {
			t.Fatal(err)
		}
		hs, fs = append(hs, h), append(fs, fr)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	inner.ResetCalls()
	return inner, p, hs, fs
}

func newCache(t *testing.T, be backend.Backend, size int64) (*Backend, string) {
	t.Helper()
	dir := t.TempDir()
	c, err := New(be, Options{Dir: dir, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, dir
}

// TestHitsAndChecks: a second load is a hit; a damaged copy is dropped
// and fetched again, never served; a new cache over the same directory
// finds what is there.
func TestHitsAndChecks(t *testing.T) {
	ctx := context.Background()
	inner, p, hs, fs := frames(t, 20)
	c, dir := newCache(t, p, 1<<30)
	for round := range 2 {
		for i, h := range hs {
			got, err := c.Load(ctx, h, 0, -1)
			if err != nil || !bytes.Equal(got, fs[i]) {
				t.Fatalf("round %d chunk %d: %v", round, i, err)
			}
		}
	}
	if c.Hits.Load() != 20 || c.Misses.Load() != 20 || inner.Calls(faulty.Load, backend.PackFile) != 20 {
		t.Fatalf("hits %d misses %d, pack reads %d", c.Hits.Load(), c.Misses.Load(), inner.Calls(faulty.Load, backend.PackFile))
	}
	copyPath := c.path(key{backend.ChunkFile, hs[3].Name})
	b, _ := os.ReadFile(copyPath)
	b[len(b)-1] ^= 1
	os.WriteFile(copyPath, b, 0o600)
	if got, err := c.Load(ctx, hs[3], 0, -1); err != nil || !bytes.Equal(got, fs[3]) {
		t.Fatalf("a damaged cached copy was served: %v", err)
	}
	c.Close()
	again, err := New(p, Options{Dir: dir, Size: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if again.Used() != c.Used() || again.Used() == 0 {
		t.Fatalf("reopened cache holds %d bytes, the first %d", again.Used(), c.Used())
	}
	if _, err := again.Load(ctx, hs[0], 0, -1); err != nil || again.Hits.Load() != 1 {
		t.Fatalf("reopened cache missed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "chunks")); err != nil {
		t.Fatal(err)
	}
}

// TestEviction: the cache never holds more than its size; the least
// recently used objects go first.
func TestEviction(t *testing.T) {
	ctx := context.Background()
	_, p, hs, fs := frames(t, 30)
	size := int64(10 * len(fs[0]))
	c, _ := newCache(t, p, size)
	for i, h := range hs {
		if i == 25 {
			c.Load(ctx, hs[0], 0, -1) // keep the first one in use
		}
		if _, err := c.Load(ctx, h, 0, -1); err != nil {
			t.Fatal(err)
		}
		if c.Used() > size {
			t.Fatalf("cache holds %d bytes, its size is %d", c.Used(), size)
		}
	}
	c.mu.Lock()
	_, first := c.entries[key{backend.ChunkFile, hs[0].Name}]
	_, second := c.entries[key{backend.ChunkFile, hs[1].Name}]
	c.mu.Unlock()
	if !first || second {
		t.Fatalf("LRU: recently used first chunk kept %v, unused second kept %v", first, second)
	}
}

// TestFetchAhead: hinted chunks are fetched in the background with few
// ranged reads of their packs; a load waiting on a fetch in flight does
// not fetch again.
func TestFetchAhead(t *testing.T) {
	ctx := context.Background()
	inner, p, hs, fs := frames(t, 60) // 60 frames of 50 kB: one 4 MiB pack or so
	c, _ := newCache(t, p, 1<<30)
	for _, h := range hs {
		c.Prefetch(h)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.Fetched.Load() < int64(len(hs)) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if c.Fetched.Load() != int64(len(hs)) {
		t.Fatalf("fetched %d of %d hinted chunks", c.Fetched.Load(), len(hs))
	}
	if reads := inner.Calls(faulty.Load, backend.PackFile); reads > 4 {
		t.Fatalf("%d pack reads for 60 neighbouring frames, want a few coalesced ones", reads)
	}
	var wg sync.WaitGroup
	for i, h := range hs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got, err := c.Load(ctx, h, 0, -1); err != nil || !bytes.Equal(got, fs[i]) {
				t.Errorf("chunk %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if c.Misses.Load() != 0 {
		t.Fatalf("%d misses after fetching ahead", c.Misses.Load())
	}
}

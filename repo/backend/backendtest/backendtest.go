// Package backendtest is the conformance suite every backend.Backend must
// pass. A backend's own test calls Run with a factory that returns a fresh,
// empty backend for each subtest.
package backendtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"

	"github.com/vmvault/vmvault/repo/backend"
)

// Factory returns a new empty backend; it registers its own cleanup.
type Factory func(t *testing.T) backend.Backend

func randomName() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func randomData(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// Run runs every conformance test against backends made by newBackend.
func Run(t *testing.T, newBackend Factory) {
	tests := []struct {
		name string
		fn   func(*testing.T, backend.Backend)
	}{
		{"RoundTrip", testRoundTrip},
		{"RangeLoads", testRangeLoads},
		{"Missing", testMissing},
		{"List", testList},
		{"ListStops", testListStops},
		{"IdempotentSaveRemove", testIdempotent},
		{"InvalidHandles", testInvalidHandles},
		{"Concurrent", testConcurrent},
		{"Cancelled", testCancelled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			be := newBackend(t)
			t.Cleanup(func() { _ = be.Close() })
			tc.fn(t, be)
		})
	}
}

func testRoundTrip(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	for _, size := range []int{0, 1, 4095, 65536, 1 << 20} {
		for _, typ := range backend.Types() {
			name := randomName()
			if typ == backend.ConfigFile {
				name = "config"
			}
			h := backend.Handle{Type: typ, Name: name}
			data := randomData(size)
			if err := be.Save(ctx, h, data); err != nil {
				t.Fatalf("save %v (%d bytes): %v", h, size, err)
			}
			got, err := be.Load(ctx, h, 0, -1)
			if err != nil {
				t.Fatalf("load %v: %v", h, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("load %v: got %d bytes, want %d identical bytes", h, len(got), size)
			}
			fi, err := be.Stat(ctx, h)
			if err != nil || fi.Size != int64(size) || fi.Name != name {
				t.Fatalf("stat %v = %+v, %v; want size %d", h, fi, err, size)
			}
		}
	}
}

func testRangeLoads(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	data := randomData(10000)
	h := backend.Handle{Type: backend.ChunkFile, Name: randomName()}
	if err := be.Save(ctx, h, data); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		off, length int64
		short       bool
	}{
		{0, 10000, false},
		{0, 1, false},
		{9999, 1, false},
		{10000, 0, false},
		{10000, -1, false},
		{5000, -1, false},
		{123, 4567, false},
		{9999, 2, true},
		{0, 10001, true},
		{10001, 0, true},
		{20000, 5, true},
	}
	for _, c := range cases {
		got, err := be.Load(ctx, h, c.off, c.length)
		if c.short {
			if !errors.Is(err, backend.ErrShortRead) {
				t.Errorf("load [%d,+%d): err = %v, want ErrShortRead", c.off, c.length, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("load [%d,+%d): %v", c.off, c.length, err)
			continue
		}
		end := c.off + c.length
		if c.length < 0 {
			end = int64(len(data))
		}
		if !bytes.Equal(got, data[c.off:end]) {
			t.Errorf("load [%d,+%d): wrong bytes", c.off, c.length)
		}
	}
}

func testMissing(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	h := backend.Handle{Type: backend.SnapshotFile, Name: randomName()}
	if _, err := be.Load(ctx, h, 0, -1); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("load missing: err = %v, want ErrNotFound", err)
	}
	if _, err := be.Load(ctx, h, 10, 5); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("range load missing: err = %v, want ErrNotFound", err)
	}
	if _, err := be.Stat(ctx, h); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("stat missing: err = %v, want ErrNotFound", err)
	}
	if err := be.Remove(ctx, h); err != nil {
		t.Errorf("remove missing: %v", err)
	}
}

func listNames(t *testing.T, be backend.Backend, typ backend.FileType) []string {
	t.Helper()
	var names []string
	err := be.List(context.Background(), typ, func(fi backend.FileInfo) error {
		names = append(names, fi.Name)
		return nil
	})
	if err != nil {
		t.Fatalf("list %v: %v", typ, err)
	}
	sort.Strings(names)
	return names
}

func testList(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	want := map[backend.FileType][]string{}
	for _, typ := range []backend.FileType{backend.ChunkFile, backend.IndexFile, backend.SnapshotFile, backend.LockFile} {
		if got := listNames(t, be, typ); len(got) != 0 {
			t.Fatalf("new backend lists %v for %v", got, typ)
		}
		for i := 0; i < 40; i++ {
			name := randomName()
			if err := be.Save(ctx, backend.Handle{Type: typ, Name: name}, randomData(i)); err != nil {
				t.Fatal(err)
			}
			want[typ] = append(want[typ], name)
		}
		sort.Strings(want[typ])
	}
	for typ, names := range want {
		got := listNames(t, be, typ)
		if fmt.Sprint(got) != fmt.Sprint(names) {
			t.Errorf("list %v: got %d names, want %d (mismatch)", typ, len(got), len(names))
		}
	}
	// Removing shows in the next listing.
	victim := want[backend.ChunkFile][7]
	if err := be.Remove(ctx, backend.Handle{Type: backend.ChunkFile, Name: victim}); err != nil {
		t.Fatal(err)
	}
	for _, n := range listNames(t, be, backend.ChunkFile) {
		if n == victim {
			t.Errorf("removed %s still listed", victim)
		}
	}
}

func testListStops(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	for i := 0; i < 10; i++ {
		if err := be.Save(ctx, backend.Handle{Type: backend.IndexFile, Name: randomName()}, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	stop := errors.New("stop")
	calls := 0
	err := be.List(ctx, backend.IndexFile, func(backend.FileInfo) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("list with failing callback: err = %v after %d calls, want the callback's error after 1", err, calls)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := be.List(cctx, backend.IndexFile, func(backend.FileInfo) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("list with cancelled context: err = %v, want context.Canceled", err)
	}
}

func testIdempotent(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	h := backend.Handle{Type: backend.ChunkFile, Name: randomName()}
	data := randomData(1000)
	for i := 0; i < 3; i++ {
		if err := be.Save(ctx, h, data); err != nil {
			t.Fatalf("save #%d: %v", i, err)
		}
	}
	if got := listNames(t, be, backend.ChunkFile); len(got) != 1 {
		t.Fatalf("after saving one name 3 times, list shows %d objects", len(got))
	}
	got, err := be.Load(ctx, h, 0, -1)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("load after repeated save: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := be.Remove(ctx, h); err != nil {
			t.Fatalf("remove #%d: %v", i, err)
		}
	}
	if _, err := be.Stat(ctx, h); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("stat after remove: %v", err)
	}
}

func testInvalidHandles(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	for _, h := range []backend.Handle{
		{Type: backend.ChunkFile, Name: ""},
		{Type: backend.ChunkFile, Name: "../config"},
		{Type: backend.ChunkFile, Name: "a/b"},
		{Type: backend.ChunkFile, Name: ".tmp-x"},
		{Type: 0, Name: "abc"},
		{Type: backend.SnapshotFile, Name: "ABC"},
	} {
		if err := be.Save(ctx, h, []byte("x")); err == nil {
			t.Errorf("save %q accepted", h.Name)
		}
		if _, err := be.Load(ctx, h, 0, -1); err == nil {
			t.Errorf("load %q accepted", h.Name)
		}
	}
}

func testConcurrent(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	const workers, perWorker = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker*4)
	shared := backend.Handle{Type: backend.ChunkFile, Name: randomName()}
	sharedData := randomData(4096)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				h := backend.Handle{Type: backend.ChunkFile, Name: randomName()}
				data := randomData(100 + i)
				if err := be.Save(ctx, h, data); err != nil {
					errs <- err
					continue
				}
				// Everybody saves the same content-addressed object too.
				if err := be.Save(ctx, shared, sharedData); err != nil {
					errs <- err
				}
				got, err := be.Load(ctx, h, 0, -1)
				if err != nil || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("read-after-write %v: %v", h, err)
				}
				if got, err := be.Load(ctx, shared, 0, -1); err != nil || !bytes.Equal(got, sharedData) {
					errs <- fmt.Errorf("load shared object while others save it: %v", err)
				}
				if err := be.List(ctx, backend.ChunkFile, func(backend.FileInfo) error { return nil }); err != nil {
					errs <- err
				}
				if i%2 == 0 {
					if err := be.Remove(ctx, h); err != nil {
						errs <- err
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	kept := workers*(perWorker/2) + 1 // odd i survive, plus the shared object
	if n := len(listNames(t, be, backend.ChunkFile)); n != kept {
		t.Errorf("after concurrent use: %d objects listed, want %d", n, kept)
	}
}

func testCancelled(t *testing.T, be backend.Backend) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h := backend.Handle{Type: backend.ChunkFile, Name: randomName()}
	if err := be.Save(ctx, h, []byte("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("save with cancelled context: %v", err)
	}
	if _, err := be.Stat(context.Background(), h); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("cancelled save left an object: %v", err)
	}
}

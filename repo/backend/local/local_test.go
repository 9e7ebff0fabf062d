package local_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/backendtest"
	"github.com/vmvault/vmvault/repo/backend/local"
)

// newBackend creates a local backend in a fresh temporary directory.
func newBackend(t *testing.T) (*local.Backend, string) {
	t.Helper()
	root := t.TempDir()
	be, err := local.Create(root)
	if err != nil {
		t.Fatal(err)
	}
	return be, root
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		be, _ := newBackend(t)
		return be
	})
}

func TestTempFilesHiddenAndCleaned(t *testing.T) {
	be, root := newBackend(t)
	ctx := context.Background()
	// A crash between write and rename leaves a temp file behind.
	tmp := filepath.Join(root, "chunks", "ab", ".tmp-abcd-123456")
	if err := os.WriteFile(tmp, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(tmp, old, old); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := be.List(ctx, backend.ChunkFile, func(fi backend.FileInfo) error {
		if strings.HasPrefix(fi.Name, ".tmp") {
			t.Errorf("temp file listed: %s", fi.Name)
		}
		n++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	removed, err := be.RemoveTemp(ctx, time.Now().Add(-time.Hour))
	if err != nil || removed != 1 {
		t.Fatalf("RemoveTemp = %d, %v; want 1", removed, err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatalf("temp file still there: %v", err)
	}
}

func TestCreateRefusesExisting(t *testing.T) {
	be, root := newBackend(t)
	if err := be.Save(context.Background(), backend.Handle{Type: backend.ConfigFile, Name: "config"}, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if _, err := local.Create(root); err == nil {
		t.Fatal("Create over an existing repository succeeded")
	}
}

// resident counts the pages of path that are in the page cache.
func resident(t *testing.T, path string) (n, pages int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	mm, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mm)
	vec := make([]byte, (len(mm)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mm[0])), uintptr(len(mm)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	for _, v := range vec {
		n += int(v & 1)
	}
	return n, len(vec)
}

// TestPrefetch checks that a fetch hint brings an object's pages into the
// page cache, and that hints for missing or invalid objects are ignored.
func TestPrefetch(t *testing.T) {
	be, root := newBackend(t)
	ctx := context.Background()
	h := backend.Handle{Type: backend.ChunkFile, Name: strings.Repeat("ab", 32)}
	if err := be.Save(ctx, h, bytes.Repeat([]byte{7}, 1<<20)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, "chunks", "ab", h.Name)
	// Save leaves the object's pages out of the cache (it drops them after
	// the fsync); a filesystem that keeps them (tmpfs) cannot show a hint.
	if n, _ := resident(t, path); n != 0 {
		t.Skipf("the filesystem of %s keeps dropped pages (%d resident): cannot observe prefetching", root, n)
	}
	be.Prefetch(h)
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, pages := resident(t, path)
		if n == pages {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d pages resident 10 s after the hint", n, pages)
		}
		time.Sleep(5 * time.Millisecond)
	}
	be.Prefetch(backend.Handle{Type: backend.ChunkFile, Name: strings.Repeat("cd", 32)}) // missing
	be.Prefetch(backend.Handle{Type: backend.ChunkFile, Name: "../../etc/passwd"})       // invalid
}

// TestCount counts what List lists, without temporary files.
func TestCount(t *testing.T) {
	b, root := newBackend(t)
	ctx := context.Background()
	for i := range 300 {
		name := fmt.Sprintf("%064x", i*7919)
		if err := b.Save(ctx, backend.Handle{Type: backend.ChunkFile, Name: name}, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "chunks", "00", ".tmp-leftover"), nil, 0o600)
	for _, tc := range []struct {
		t    backend.FileType
		want int
	}{{backend.ChunkFile, 300}, {backend.IndexFile, 0}, {backend.StateFile, 0}, {backend.ConfigFile, 0}} {
		n, err := b.Count(ctx, tc.t)
		listed := 0
		b.List(ctx, tc.t, func(backend.FileInfo) error { listed++; return nil })
		if err != nil || n != tc.want || n != listed {
			t.Errorf("Count(%v) = %d, %v; listed %d, want %d", tc.t, n, err, listed, tc.want)
		}
	}
}

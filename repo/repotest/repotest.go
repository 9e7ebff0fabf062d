// Package repotest makes repositories and restore points for the tests of
// any package (nbd, mount, cmd, ...), so none of them sets up a
// repository by hand. It is for tests only: it imports testing and the
// backend implementations, and every helper fails the test (t.Fatal)
// instead of returning an error.
//
// Repositories are initialised with Options (small chunks by default, so
// tests stay fast and still span many chunks) and closed when the test
// ends.
package repotest

import (
	"bytes"
	"context"
	"io"
	"os"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/local"
	"github.com/vmvault/vmvault/repo/backend/mem"
	"github.com/vmvault/vmvault/repo/format"
)

// Options shape a test repository. The zero value is a repository with
// format.MinChunkSize chunks, the default compression and cache, in
// memory.
type Options struct {
	ChunkSize   int64  // 0: format.MinChunkSize
	Compression string // "": the repository default
	CacheSize   int64  // the chunk cache of the returned Repository; 0: repo's default
	// Loose makes a repository of format version 1 (one object per chunk)
	// instead of packs, for tests that act on single chunk objects below
	// the repository (faulty rules on backend.ChunkFile).
	Loose bool
	// Backend, when set, holds the repository instead of a new in-memory
	// one (New) — e.g. a faulty.Backend wrapped around mem.New().
	Backend backend.Backend
}

// New returns a new repository on opts.Backend, or in memory.
func New(t testing.TB, opts Options) *repo.Repository {
	t.Helper()
	be := opts.Backend
	if be == nil {
		be = mem.New()
	}
	return initOpen(t, be, opts)
}

// NewLocal returns a new repository in a fresh directory below
// t.TempDir() (local backend; opts.Backend must be nil) and the
// directory, which is also the repository's location.
func NewLocal(t testing.TB, opts Options) (*repo.Repository, string) {
	t.Helper()
	if opts.Backend != nil {
		t.Fatal("repotest.NewLocal: Options.Backend is set; use New for a repository on a given backend")
	}
	dir := t.TempDir()
	be, err := local.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	return initOpen(t, be, opts), dir
}

func initOpen(t testing.TB, be backend.Backend, opts Options) *repo.Repository {
	t.Helper()
	if opts.ChunkSize == 0 {
		opts.ChunkSize = format.MinChunkSize
	}
	ctx := context.Background()
	init := repo.InitOptions{ChunkSize: opts.ChunkSize, Compression: opts.Compression}
	if opts.Loose {
		init.PackSize = -1
	}
	if _, err := repo.Init(ctx, be, init); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, be, repo.Options{CacheSize: opts.CacheSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// Disk is one disk to capture: Data, or the file at Path.
type Disk struct {
	Name string
	Data []byte
	Path string
}

// Bytes is a disk holding data.
func Bytes(name string, data []byte) Disk { return Disk{Name: name, Data: data} }

// File is a disk read from the file (or block device) at path.
func File(name, path string) Disk { return Disk{Name: name, Path: path} }

// Point describes a restore point to capture.
type Point struct {
	VM    string
	Tags  []string
	Time  time.Time          // zero: now
	Base  *repo.RestorePoint // dedup every disk against it; nil: full
	Disks []Disk
}

// Capture captures disks as a restore point of vm, now.
func Capture(t testing.TB, r *repo.Repository, vm string, disks ...Disk) *repo.RestorePoint {
	t.Helper()
	return CapturePoint(t, r, Point{VM: vm, Disks: disks})
}

// CapturePoint captures p.
func CapturePoint(t testing.TB, r *repo.Repository, p Point) *repo.RestorePoint {
	t.Helper()
	srcs := make([]repo.DiskSource, 0, len(p.Disks))
	for _, d := range p.Disks {
		var ra io.ReaderAt
		var size int64
		if d.Path != "" {
			f, err := os.Open(d.Path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if size, err = f.Seek(0, io.SeekEnd); err != nil { // block devices too
				t.Fatal(err)
			}
			ra = f
		} else {
			ra, size = bytes.NewReader(d.Data), int64(len(d.Data))
		}
		srcs = append(srcs, repo.DiskSource{Name: d.Name, Reader: ra, Size: size, Base: p.Base})
	}
	rp, err := r.Capture(context.Background(), repo.CaptureOptions{VM: p.VM, Tags: p.Tags, Time: p.Time}, srcs)
	if err != nil {
		t.Fatalf("capture %s: %v", p.VM, err)
	}
	return rp
}

// OpenDisk opens disk of rp.
func OpenDisk(t testing.TB, r *repo.Repository, rp *repo.RestorePoint, disk string) *repo.Disk {
	t.Helper()
	d, err := r.OpenDisk(context.Background(), rp, disk)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// ReadAll returns the whole content of d.
func ReadAll(t testing.TB, d *repo.Disk) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if _, err := d.ReadAt(b, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return b
}

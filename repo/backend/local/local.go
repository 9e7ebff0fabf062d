// Package local is the Backend for a repository in a local directory (or a
// network filesystem mounted here).
//
// Layout: ROOT/config, ROOT/locks/NAME, ROOT/snapshots/NAME, ROOT/index/NAME
// and ROOT/chunks/XX/NAME where XX is the first two characters of NAME.
//
// Every Save writes a temporary file beside the final name (".tmp-" prefix),
// fsyncs it, renames it into place and fsyncs the directory, so a crash never
// leaves a partial object under a final name. For chunks the directory fsync
// is batched: Flush fsyncs every chunk directory touched since the last
// Flush (one journal commit for thousands of chunks instead of one each).
// Temporary files left by a crash are never listed; RemoveTemp deletes them.
// Stored objects are created read-only (0400): they are never modified in
// place.
//
// The package registers the scheme "local" with backend.Register: a
// location "local:PATH", or a plain PATH, is the directory PATH.
package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/repo/backend"
)

const tempPrefix = ".tmp-"

// Backend stores objects below a root directory.
type Backend struct {
	root string

	mu        sync.Mutex
	dirtyDirs map[string]struct{} // chunk directories with unsynced renames
}

var (
	_ backend.Backend         = (*Backend)(nil)
	_ backend.TempCleaner     = (*Backend)(nil)
	_ backend.Flusher         = (*Backend)(nil)
	_ backend.Prefetcher      = (*Backend)(nil)
	_ backend.Counter         = (*Backend)(nil)
	_ backend.RangeLoader     = (*Backend)(nil)
	_ backend.RangePrefetcher = (*Backend)(nil)
	_ backend.ForeignRemover  = (*Backend)(nil)
)

func init() {
	backend.Register(backend.LocalScheme, backend.Factory{
		Open: func(_ context.Context, loc backend.Location) (backend.Backend, error) {
			be, err := Open(loc.Path)
			if err != nil {
				return nil, err // not a nil *Backend in a non-nil interface
			}
			return be, nil
		},
		Create: func(_ context.Context, loc backend.Location) (backend.Backend, error) {
			be, err := Create(loc.Path)
			if err != nil {
				return nil, err
			}
			return be, nil
		},
	})
}

// Create makes the directory layout at root (which may exist but must not
// already hold a repository) and returns the backend.
func Create(root string) (*Backend, error) {
	if _, err := os.Stat(filepath.Join(root, "config")); err == nil {
		return nil, fmt.Errorf("create repository at %s: a repository already exists there", root)
	}
	dirs := []string{root}
	for _, t := range backend.Types() {
		if t != backend.ConfigFile {
			dirs = append(dirs, filepath.Join(root, t.String()))
		}
	}
	for i := 0; i < 256; i++ {
		dirs = append(dirs, filepath.Join(root, backend.ChunkFile.String(), fmt.Sprintf("%02x", i)))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create repository at %s: %w", root, err)
		}
	}
	if err := syncDir(root); err != nil {
		return nil, fmt.Errorf("create repository at %s: %w", root, err)
	}
	return &Backend{root: root, dirtyDirs: map[string]struct{}{}}, nil
}

// Open returns the backend for an existing directory layout.
func Open(root string) (*Backend, error) {
	fi, err := os.Stat(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open repository at %s: %w", root, backend.NotFound("no such directory"))
	}
	if err != nil {
		return nil, fmt.Errorf("open repository at %s: %w", root, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("open repository at %s: %w", root, backend.NotFound("not a directory"))
	}
	return &Backend{root: root, dirtyDirs: map[string]struct{}{}}, nil
}

func (b *Backend) dir(h backend.Handle) string {
	switch h.Type {
	case backend.ConfigFile:
		return b.root
	case backend.ChunkFile:
		prefix := h.Name
		if len(prefix) > 2 {
			prefix = prefix[:2]
		}
		return filepath.Join(b.root, h.Type.String(), prefix)
	default:
		return filepath.Join(b.root, h.Type.String())
	}
}

func (b *Backend) path(h backend.Handle) string { return filepath.Join(b.dir(h), h.Name) }

// Save implements backend.Backend: temp file, fsync, rename, fsync dir.
func (b *Backend) Save(ctx context.Context, h backend.Handle, data []byte) (err error) {
	if err := h.Valid(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dir := b.dir(h)
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fmt.Errorf("save %v: %w", h, err)
	}
	tmp := filepath.Join(dir, tempPrefix+h.Name+"-"+hex.EncodeToString(rnd[:]))
	// Created read-only: the descriptor is still writable, and the object
	// never needs changing once renamed into place.
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o400)
	if errors.Is(err, fs.ErrNotExist) && h.Type != backend.ConfigFile {
		// The type's directory is missing (a chunk prefix of an unusual
		// name, or a type newer than the repository): create it durably.
		if err = os.MkdirAll(dir, 0o700); err == nil {
			if err = syncDir(filepath.Dir(dir)); err == nil {
				f, err = os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o400)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("save %v: %w", h, err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
			err = fmt.Errorf("save %v: %w", h, err)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	// The pages are clean now: drop them so the next objects reuse hot
	// pages instead of growing the page cache (objects are read back rarely,
	// and readers keep their own cache of decoded chunks).
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, b.path(h)); err != nil {
		return err
	}
	if h.Type == backend.ChunkFile {
		b.mu.Lock()
		b.dirtyDirs[dir] = struct{}{}
		b.mu.Unlock()
		return nil
	}
	return syncDir(dir)
}

// Flush implements backend.Flusher: it fsyncs the chunk directories that
// have renames since the last Flush, flushParallel at a time (a capture
// touches most of the 256; one after another they took 35–50 ms).
func (b *Backend) Flush(ctx context.Context) error {
	b.mu.Lock()
	dirs := b.dirtyDirs
	b.dirtyDirs = map[string]struct{}{}
	b.mu.Unlock()
	var g errgroup.Group // no context: every directory is tried
	g.SetLimit(flushParallel)
	for d := range dirs {
		g.Go(func() error {
			err := syncDir(d)
			if err != nil {
				b.mu.Lock()
				b.dirtyDirs[d] = struct{}{} // retry on the next Flush
				b.mu.Unlock()
			}
			return err
		})
	}
	return g.Wait() // the first error
}

// flushParallel is how many directory fsyncs Flush runs at once.
const flushParallel = 8

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

func notFound(op string, h backend.Handle, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s %v: %w", op, h, backend.ErrNotFound)
	}
	return fmt.Errorf("%s %v: %w", op, h, err)
}

// Load implements backend.Backend.
func (b *Backend) Load(ctx context.Context, h backend.Handle, off, length int64) ([]byte, error) {
	return b.load(ctx, h, off, length, nil)
}

// LoadRangeInto implements backend.RangeLoader.
func (b *Backend) LoadRangeInto(ctx context.Context, h backend.Handle, off, length int64, buf []byte) ([]byte, error) {
	return b.load(ctx, h, off, length, buf)
}

// LoadInto implements backend.BufferLoader.
func (b *Backend) LoadInto(ctx context.Context, h backend.Handle, buf []byte) ([]byte, error) {
	return b.load(ctx, h, 0, -1, buf)
}

func (b *Backend) load(ctx context.Context, h backend.Handle, off, length int64, buf []byte) ([]byte, error) {
	if err := h.Valid(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(b.path(h))
	if err != nil {
		return nil, notFound("load", h, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("load %v: %w", h, err)
	}
	size := fi.Size()
	if off < 0 || off > size {
		return nil, fmt.Errorf("load %v at %d of %d bytes: %w", h, off, size, backend.ErrShortRead)
	}
	if length < 0 {
		length = size - off
	}
	if length > size-off {
		return nil, fmt.Errorf("load %v [%d,+%d) of %d bytes: %w", h, off, length, size, backend.ErrShortRead)
	}
	if int64(cap(buf)) >= length {
		buf = buf[:length]
	} else {
		buf = make([]byte, length)
	}
	n, err := f.ReadAt(buf, off)
	if err == io.EOF && int64(n) < length {
		return nil, fmt.Errorf("load %v [%d,+%d): %w", h, off, length, backend.ErrShortRead)
	}
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("load %v: %w", h, err)
	}
	return buf, nil
}

// Prefetch implements backend.Prefetcher: it asks the kernel to read the
// object into the page cache in the background (POSIX_FADV_WILLNEED).
func (b *Backend) Prefetch(h backend.Handle) {
	if h.Valid() != nil {
		return
	}
	fd, err := unix.Open(b.path(h), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	_ = unix.Fadvise(fd, 0, 0, unix.FADV_WILLNEED)
	_ = unix.Close(fd)
}

// PrefetchRange implements backend.RangePrefetcher like Prefetch, for a
// range of the object.
func (b *Backend) PrefetchRange(h backend.Handle, off, length int64) {
	if h.Valid() != nil {
		return
	}
	fd, err := unix.Open(b.path(h), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	_ = unix.Fadvise(fd, off, length, unix.FADV_WILLNEED)
	_ = unix.Close(fd)
}

// RemoveForeign implements backend.ForeignRemover for the flat type
// directories (not chunks).
func (b *Backend) RemoveForeign(ctx context.Context, t backend.FileType, name string) error {
	if t == backend.ChunkFile || t == backend.ConfigFile || name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("remove %s/%q: %w", t, name, backend.ErrInvalidHandle)
	}
	if err := os.Remove(filepath.Join(b.root, t.String(), name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s/%s: %w", t, name, err)
	}
	return syncDir(filepath.Join(b.root, t.String()))
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	if err := h.Valid(); err != nil {
		return backend.FileInfo{}, err
	}
	fi, err := os.Stat(b.path(h))
	if err != nil {
		return backend.FileInfo{}, notFound("stat", h, err)
	}
	return backend.FileInfo{Name: h.Name, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List implements backend.Backend.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	if t == backend.ConfigFile {
		fi, err := b.Stat(ctx, backend.Handle{Type: t, Name: "config"})
		if errors.Is(err, backend.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return fn(fi)
	}
	base := filepath.Join(b.root, t.String())
	dirs := []string{base}
	if t == backend.ChunkFile {
		ents, err := os.ReadDir(base)
		if err != nil {
			return fmt.Errorf("list %v: %w", t, err)
		}
		dirs = dirs[:0]
		for _, e := range ents {
			if e.IsDir() {
				dirs = append(dirs, filepath.Join(base, e.Name()))
			}
		}
	}
	for _, d := range dirs {
		err := listDir(ctx, d, fn)
		if errors.Is(err, fs.ErrNotExist) && d == base && newerType(t) {
			continue // a repository from before the type existed
		}
		if err != nil {
			return fmt.Errorf("list %v: %w", t, err)
		}
	}
	return nil
}

// Count implements backend.Counter from directory entries alone (no stat
// per object).
func (b *Backend) Count(ctx context.Context, t backend.FileType) (int, error) {
	if t == backend.ConfigFile {
		n := 0
		err := b.List(ctx, t, func(backend.FileInfo) error { n++; return nil })
		return n, err
	}
	base := filepath.Join(b.root, t.String())
	dirs := []string{base}
	if t == backend.ChunkFile {
		ents, err := os.ReadDir(base)
		if err != nil {
			return 0, fmt.Errorf("count %v: %w", t, err)
		}
		dirs = dirs[:0]
		for _, e := range ents {
			if e.IsDir() {
				dirs = append(dirs, filepath.Join(base, e.Name()))
			}
		}
	}
	n := 0
	for _, d := range dirs {
		f, err := os.Open(d)
		if errors.Is(err, fs.ErrNotExist) && newerType(t) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("count %v: %w", t, err)
		}
		for {
			ents, err := f.ReadDir(4096)
			for _, e := range ents {
				if !strings.HasPrefix(e.Name(), tempPrefix) && e.Type().IsRegular() {
					n++
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				f.Close()
				return n, fmt.Errorf("count %v: %w", t, err)
			}
			if err := ctx.Err(); err != nil {
				f.Close()
				return n, err
			}
		}
		f.Close()
	}
	return n, nil
}

// newerType reports whether repositories created before the type existed
// lack its directory (it is made by the first Save of the type).
func newerType(t backend.FileType) bool {
	return t == backend.StateFile || t == backend.PackFile || t == backend.PackIndexFile || t == backend.KeyFile
}

func listDir(ctx context.Context, dir string, fn func(backend.FileInfo) error) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		ents, err := f.ReadDir(1024)
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return err
			}
			if strings.HasPrefix(e.Name(), tempPrefix) || !e.Type().IsRegular() {
				continue
			}
			info, ierr := e.Info()
			if errors.Is(ierr, fs.ErrNotExist) {
				continue // removed while listing
			}
			if ierr != nil {
				return ierr
			}
			if err := fn(backend.FileInfo{Name: e.Name(), Size: info.Size(), ModTime: info.ModTime()}); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Remove implements backend.Backend.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if err := h.Valid(); err != nil {
		return err
	}
	err := os.Remove(b.path(h))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %v: %w", h, err)
	}
	return nil
}

// RemoveTemp implements backend.TempCleaner.
func (b *Backend) RemoveTemp(ctx context.Context, olderThan time.Time) (int, error) {
	n := 0
	err := filepath.WalkDir(b.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasPrefix(d.Name(), tempPrefix) {
			return ctx.Err()
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if info.ModTime().Before(olderThan) {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("remove temporary files below %s: %w", b.root, err)
	}
	return n, nil
}

// Location implements backend.Backend.
func (b *Backend) Location() string { return b.root }

// Close implements backend.Backend.
func (b *Backend) Close() error { return nil }

// Properties implements backend.Backend: a local disk keeps a deep queue
// busy with 16 reads in flight, and more than 8 concurrent Saves did not
// make captures faster.
func (b *Backend) Properties() backend.Properties {
	return backend.Properties{ReadParallelism: 16, WriteParallelism: 8, CheapRangedReads: true, ConsistentListing: true}
}

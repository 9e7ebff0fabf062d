// Package crypt encrypts a repository's metadata objects: a Backend
// wrapper that seals manifests, disk indexes, pack indexes, locks and
// repository state (repo/keys: AES-256-GCM, bound to the object's type and
// name) on their way to the inner backend and opens them on their way
// back. Chunk frames are sealed by the repository itself (with data keys
// capture hosts cannot open); packs, the config and key objects pass
// through as they are.
//
// Invariant: no sealed type is ever stored in the clear, and an object
// that fails to open (changed, truncated, or moved under another name) is
// an error wrapping keys.ErrTampered, never data.
package crypt

import (
	"context"
	"fmt"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/keys"
)

// Backend seals metadata objects of the inner backend.
type Backend struct {
	be   backend.Backend
	keys *keys.Set
}

var (
	_ backend.Backend        = (*Backend)(nil)
	_ backend.Flusher        = (*Backend)(nil)
	_ backend.TempCleaner    = (*Backend)(nil)
	_ backend.RangeLoader    = (*Backend)(nil)
	_ backend.ForeignRemover = (*Backend)(nil)
)

// New wraps be.
func New(be backend.Backend, k *keys.Set) *Backend { return &Backend{be: be, keys: k} }

// Sealed reports whether objects of type t are stored encrypted.
func Sealed(t backend.FileType) bool {
	switch t {
	case backend.SnapshotFile, backend.IndexFile, backend.PackIndexFile, backend.LockFile, backend.StateFile:
		return true
	}
	return false
}

// Save implements backend.Backend.
func (b *Backend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	if Sealed(h.Type) {
		data = b.keys.Seal(h.Type.String(), h.Name, data)
	}
	return b.be.Save(ctx, h, data)
}

// Load implements backend.Backend: a sealed object is loaded whole,
// opened, then the range is taken.
func (b *Backend) Load(ctx context.Context, h backend.Handle, off, length int64) ([]byte, error) {
	if !Sealed(h.Type) {
		return b.be.Load(ctx, h, off, length)
	}
	sealed, err := b.be.Load(ctx, h, 0, -1)
	if err != nil {
		return nil, err
	}
	plain, err := b.keys.Open(h.Type.String(), h.Name, sealed)
	if err != nil {
		return nil, fmt.Errorf("load %v: %w", h, err)
	}
	if off < 0 || off > int64(len(plain)) || length >= 0 && off+length > int64(len(plain)) {
		return nil, fmt.Errorf("load %v [%d,+%d) of %d bytes: %w", h, off, length, len(plain), backend.ErrShortRead)
	}
	if length < 0 {
		return plain[off:], nil
	}
	return plain[off : off+length], nil
}

// LoadRangeInto implements backend.RangeLoader (chunk frames in packs).
func (b *Backend) LoadRangeInto(ctx context.Context, h backend.Handle, off, length int64, buf []byte) ([]byte, error) {
	if rl, ok := b.be.(backend.RangeLoader); ok && !Sealed(h.Type) {
		return rl.LoadRangeInto(ctx, h, off, length, buf)
	}
	return b.Load(ctx, h, off, length)
}

// PrefetchRange implements backend.RangePrefetcher through the inner backend.
func (b *Backend) PrefetchRange(h backend.Handle, off, length int64) {
	if rp, ok := b.be.(backend.RangePrefetcher); ok {
		rp.PrefetchRange(h, off, length)
	}
}

// Prefetch implements backend.Prefetcher through the inner backend.
func (b *Backend) Prefetch(h backend.Handle) {
	if p, ok := b.be.(backend.Prefetcher); ok {
		p.Prefetch(h)
	}
}

// Stat implements backend.Backend (sizes are the stored, sealed sizes).
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	return b.be.Stat(ctx, h)
}

// List implements backend.Backend.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	return b.be.List(ctx, t, fn)
}

// Remove implements backend.Backend.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error { return b.be.Remove(ctx, h) }

// Flush implements backend.Flusher.
func (b *Backend) Flush(ctx context.Context) error {
	if f, ok := b.be.(backend.Flusher); ok {
		return f.Flush(ctx)
	}
	return nil
}

// RemoveTemp implements backend.TempCleaner.
func (b *Backend) RemoveTemp(ctx context.Context, olderThan time.Time) (int, error) {
	if tc, ok := b.be.(backend.TempCleaner); ok {
		return tc.RemoveTemp(ctx, olderThan)
	}
	return 0, nil
}

// Count implements backend.Counter.
func (b *Backend) Count(ctx context.Context, t backend.FileType) (int, error) {
	if c, ok := b.be.(backend.Counter); ok {
		return c.Count(ctx, t)
	}
	n := 0
	err := b.be.List(ctx, t, func(backend.FileInfo) error { n++; return nil })
	return n, err
}

// RemoveForeign implements backend.ForeignRemover.
func (b *Backend) RemoveForeign(ctx context.Context, t backend.FileType, name string) error {
	if fr, ok := b.be.(backend.ForeignRemover); ok {
		return fr.RemoveForeign(ctx, t, name)
	}
	return fmt.Errorf("remove %s/%q: the backend cannot remove what it did not write", t, name)
}

// Location implements backend.Backend.
func (b *Backend) Location() string { return b.be.Location() }

// Properties implements backend.Backend.
func (b *Backend) Properties() backend.Properties { return b.be.Properties() }

// Inner returns the wrapped backend.
func (b *Backend) Inner() backend.Backend { return b.be }

// Close implements backend.Backend.
func (b *Backend) Close() error { return b.be.Close() }

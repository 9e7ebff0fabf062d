// Package readonly wraps a backend.Backend so that nothing can change
// the repository through it: Save, Remove and RemoveTemp fail with an
// error that matches backend.ErrReadOnly and names the operation and the
// object, without reaching the inner backend. Everything else (loads,
// listings, Flush, fetch hints, Location, Properties, Close) is passed
// on; Flush changes no object, it only makes earlier saves durable.
package readonly

import (
	"context"
	"fmt"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
)

// Backend is a read-only view of another backend.
type Backend struct{ be backend.Backend }

var (
	_ backend.Backend         = (*Backend)(nil)
	_ backend.Flusher         = (*Backend)(nil)
	_ backend.TempCleaner     = (*Backend)(nil)
	_ backend.Prefetcher      = (*Backend)(nil)
	_ backend.BufferLoader    = (*Backend)(nil)
	_ backend.RangeLoader     = (*Backend)(nil)
	_ backend.RangePrefetcher = (*Backend)(nil)
)

// New returns a read-only view of be.
func New(be backend.Backend) *Backend { return &Backend{be: be} }

// Inner returns the wrapped backend.
func (b *Backend) Inner() backend.Backend { return b.be }

// Save implements backend.Backend: it always fails.
func (b *Backend) Save(_ context.Context, h backend.Handle, _ []byte) error {
	return fmt.Errorf("save %v at %s: %w", h, b.be.Location(), backend.ErrReadOnly)
}

// Remove implements backend.Backend: it always fails.
func (b *Backend) Remove(_ context.Context, h backend.Handle) error {
	return fmt.Errorf("remove %v at %s: %w", h, b.be.Location(), backend.ErrReadOnly)
}

// RemoveTemp implements backend.TempCleaner: it always fails.
func (b *Backend) RemoveTemp(context.Context, time.Time) (int, error) {
	return 0, fmt.Errorf("remove temporary files below %s: %w", b.be.Location(), backend.ErrReadOnly)
}

// Flush implements backend.Flusher: the inner backend's, if it has one.
func (b *Backend) Flush(ctx context.Context) error {
	if f, ok := b.be.(backend.Flusher); ok {
		return f.Flush(ctx)
	}
	return nil
}

// Load implements backend.Backend.
func (b *Backend) Load(ctx context.Context, h backend.Handle, off, length int64) ([]byte, error) {
	return b.be.Load(ctx, h, off, length)
}

// LoadInto implements backend.BufferLoader with the inner backend's
// LoadInto, or its Load when it has none.
func (b *Backend) LoadInto(ctx context.Context, h backend.Handle, buf []byte) ([]byte, error) {
	if bl, ok := b.be.(backend.BufferLoader); ok {
		return bl.LoadInto(ctx, h, buf)
	}
	return b.be.Load(ctx, h, 0, -1)
}

// LoadRangeInto implements backend.RangeLoader with the inner backend's
// LoadRangeInto, or its Load when it has none.
func (b *Backend) LoadRangeInto(ctx context.Context, h backend.Handle, off, length int64, buf []byte) ([]byte, error) {
	if rl, ok := b.be.(backend.RangeLoader); ok {
		return rl.LoadRangeInto(ctx, h, off, length, buf)
	}
	return b.be.Load(ctx, h, off, length)
}

// PrefetchRange implements backend.RangePrefetcher: passed on when the
// inner backend takes range hints.
func (b *Backend) PrefetchRange(h backend.Handle, off, length int64) {
	if p, ok := b.be.(backend.RangePrefetcher); ok {
		p.PrefetchRange(h, off, length)
	}
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	return b.be.Stat(ctx, h)
}

// List implements backend.Backend.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	return b.be.List(ctx, t, fn)
}

// Prefetch implements backend.Prefetcher: passed on when the inner
// backend takes hints.
func (b *Backend) Prefetch(h backend.Handle) {
	if p, ok := b.be.(backend.Prefetcher); ok {
		p.Prefetch(h)
	}
}

// Location implements backend.Backend: the inner backend's.
func (b *Backend) Location() string { return b.be.Location() }

// Properties implements backend.Backend: the inner backend's.
func (b *Backend) Properties() backend.Properties { return b.be.Properties() }

// Close implements backend.Backend.
func (b *Backend) Close() error { return b.be.Close() }

// Count implements backend.Counter through the inner backend when it
// counts, else by listing.
func (b *Backend) Count(ctx context.Context, t backend.FileType) (int, error) {
	if c, ok := b.be.(backend.Counter); ok {
		return c.Count(ctx, t)
	}
	n := 0
	err := b.be.List(ctx, t, func(backend.FileInfo) error { n++; return nil })
	return n, err
}

package nbd

import (
	"context"
	"errors"
	"io"

	"github.com/vmvault/vmvault/nbd/overlay"
	"github.com/vmvault/vmvault/repo/extent"
)

// Device is what an export serves. Implementations are safe for concurrent
// use; the server validates every range against Size before calling them.
type Device interface {
	Size() int64
	// ReadAt fills p from off; len(p) bytes or an error.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// Extents describes [off, off+length) in order, without gaps.
	Extents(ctx context.Context, off, length int64) ([]extent.Extent, error)
	// Prefetch warms whatever cache lies behind ReadAt (NBD_CMD_CACHE,
	// read-ahead); it may do nothing.
	Prefetch(ctx context.Context, off, length int64) error
}

// SliceReader is a Device that can lend the bytes of a range instead of
// copying them into the server's buffer: fn gets slices holding [off,
// off+length) in order, valid only until it returns. The server writes
// read replies straight from them, so a read needs no payload buffer and
// no copy (repo.Disk lends its cached chunks). An error means fn was not
// called.
type SliceReader interface {
	ReadSlices(ctx context.Context, off, length int64, fn func([][]byte) error) error
}

// WritableDevice is a Device that accepts writes. The server advertises
// write support only for devices that implement it.
type WritableDevice interface {
	Device
	WriteAt(ctx context.Context, p []byte, off int64) error
	// WriteZeroes makes [off, off+length) read as zeroes. With fast set it
	// fails with ErrNotFast instead of doing work as slow as a write.
	WriteZeroes(ctx context.Context, off, length int64, fast bool) error
	// Trim discards [off, off+length); it reads as zeroes afterwards.
	Trim(ctx context.Context, off, length int64) error
	// Flush makes every completed write durable.
	Flush(ctx context.Context) error
}

// ErrNotFast is returned by WriteZeroes(fast=true) when zeroing the range
// would cost as much as writing it. It is overlay.ErrNotFast, so that the
// overlay package can return it without importing the server.
var ErrNotFast = overlay.ErrNotFast

// Export is an opened export: a device plus what the handshake tells the
// client about it.
type Export struct {
	Name        string // canonical name
	Description string
	Device      Device
	// MultiConn tells clients they may use several connections: flushes on
	// one are visible on all (true when connections share one device).
	MultiConn bool
	// Close releases the export (one call per Open).
	Close func() error
}

// ExportInfo describes an export for NBD_OPT_LIST.
type ExportInfo struct {
	Name, Description string
}

// Catalog names the exports a server offers.
type Catalog interface {
	// List returns every export the client may open.
	List(ctx context.Context) ([]ExportInfo, error)
	// Open opens one export by name ("" is the default export). An unknown
	// name returns an error wrapping ErrUnknownExport.
	Open(ctx context.Context, name string) (*Export, error)
}

// ErrUnknownExport means a name matches no export.
var ErrUnknownExport = errors.New("no such export")

// ReaderDevice adapts an io.ReaderAt of known size (an image file) to a
// read-only Device that reports no zero extents.
type ReaderDevice struct {
	R io.ReaderAt
	N int64
}

// Size implements Device.
func (d ReaderDevice) Size() int64 { return d.N }

// ReadAt implements Device.
func (d ReaderDevice) ReadAt(_ context.Context, p []byte, off int64) error {
	n, err := d.R.ReadAt(p, off)
	return fullRead(n, len(p), err)
}

// fullRead turns an io.ReaderAt result into Device.ReadAt's: nil only when
// all want bytes were read.
func fullRead(n, want int, err error) error {
	if n == want {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// Extents implements Device.
func (d ReaderDevice) Extents(_ context.Context, off, length int64) ([]extent.Extent, error) {
	return []extent.Extent{{Offset: off, Length: length}}, nil
}

// Prefetch implements Device.
func (d ReaderDevice) Prefetch(context.Context, int64, int64) error { return nil }

package overlay

import (
	"context"
	"fmt"
	"io"
)

// ReaderAt returns an io.ReaderAt over the overlay's content (the base
// with the overlay's writes applied) whose reads use ctx: what a
// repository writer stores as "restore point + overlay". It reads short
// only at the end of the disk, with io.EOF.
func (o *Overlay) ReaderAt(ctx context.Context) io.ReaderAt {
	return readerAt{ctx: ctx, ov: o}
}

type readerAt struct {
	ctx context.Context
	ov  *Overlay
}

func (r readerAt) ReadAt(p []byte, off int64) (int, error) {
	size := r.ov.Size()
	if off < 0 {
		return 0, fmt.Errorf("overlay %s: read at negative offset %d", r.ov.dir, off)
	}
	if off >= size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), size-off)
	if err := r.ov.ReadAt(r.ctx, p[:n], off); err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

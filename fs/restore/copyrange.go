package restore

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
)

const (
	// readBlock is the size of one read of CopyRange.
	readBlock = 1 << 20
	// readWorkers is how many blocks CopyRange reads ahead.
	readWorkers = 4
)

// CopyRange streams r[off:off+n] to w in order, reading up to readWorkers
// 1 MiB blocks ahead in parallel, so decompression and hashing of a
// repository's chunks use several cores while w consumes the data. Memory
// is bounded by readWorkers+1 blocks. A short read is an error naming the
// offset. done, if not nil, counts the bytes written.
func CopyRange(ctx context.Context, w io.Writer, r io.ReaderAt, off, n int64, done *atomic.Int64) error {
	if n <= 0 {
		return nil
	}
	type block struct {
		buf []byte
		err error
		ok  chan struct{}
	}
	blocks := (n + readBlock - 1) / readBlock
	queue := make(chan *block, readWorkers)
	free := make(chan []byte, readWorkers+1)
	for i := 0; i < readWorkers+1; i++ {
		free <- make([]byte, readBlock)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		defer close(queue)
		for i := int64(0); i < blocks; i++ {
			var buf []byte
			select {
			case buf = <-free:
			case <-ctx.Done():
				return
			}
			pos := off + i*readBlock
			size := min(int64(readBlock), off+n-pos)
			b := &block{buf: buf[:size], ok: make(chan struct{})}
			go func() {
				m, err := r.ReadAt(b.buf, pos)
				if m == len(b.buf) {
					err = nil
				} else if err == nil || err == io.EOF {
					err = fmt.Errorf("short read at %d: %d of %d bytes", pos+int64(m), m, len(b.buf))
				}
				b.err = err
				close(b.ok)
			}()
			select {
			case queue <- b:
			case <-ctx.Done():
				return
			}
		}
	}()
	for b := range queue {
		select {
		case <-b.ok:
		case <-ctx.Done():
			return ctx.Err()
		}
		if b.err != nil {
			return b.err
		}
		if _, err := w.Write(b.buf); err != nil {
			return err
		}
		if done != nil {
			done.Add(int64(len(b.buf)))
		}
		free <- b.buf[:cap(b.buf)]
	}
	return ctx.Err()
}

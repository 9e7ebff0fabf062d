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
// is bounded by readWorkers+1 blocks. done, if not nil, counts the bytes
// written.
//
// A read error stops the copy, but not before everything in front of it
// is written: when a block fails, the longest prefix of it that reads
// without error is found (goodPrefix) and written, so w holds exactly
// r[off:p], and the error names p, the first offset that cannot be read.
// A short read is an error naming the offset where the data ended.
func CopyRange(ctx context.Context, w io.Writer, r io.ReaderAt, off, n int64, done *atomic.Int64) error {
	if n <= 0 {
		return nil
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
			b := &block{buf: buf[:size], pos: pos, ok: make(chan struct{})}
			go func() {
				m, err := r.ReadAt(b.buf, pos)
				if m == len(b.buf) {
					err = nil
				} else if err == nil || err == io.EOF {
					// the source ends early: its first m bytes are good
					err = fmt.Errorf("short read at %d: %d of %d bytes", pos+int64(m), m, len(b.buf))
					b.short = m
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
			return b.fail(w, r, done)
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

// block is one read of CopyRange.
type block struct {
	buf []byte
	pos int64 // offset of buf[0] in the source
	err error
	// short is the length read when the source ended early (err says so)
	short int
	ok    chan struct{}
}

// fail writes the readable prefix of a failed block and returns the error
// of the first byte after it.
func (b *block) fail(w io.Writer, r io.ReaderAt, done *atomic.Int64) error {
	good, err := b.short, b.err
	if good == 0 {
		good, err = goodPrefix(r, b.buf, b.pos, b.err)
	}
	if good > 0 {
		if _, werr := w.Write(b.buf[:good]); werr != nil {
			return werr
		}
		if done != nil {
			done.Add(int64(good))
		}
	}
	if b.short > 0 {
		return err // names the offset already
	}
	return fmt.Errorf("read at offset %d: %w", b.pos+int64(good), err)
}

// goodPrefix finds the longest prefix of buf (whose read at pos failed
// with err) that reads without error, leaves its bytes in buf and returns
// its length and the error that stops it. Reading a prefix fails exactly
// when it reaches a failing byte, so a binary search over the prefix
// length finds the boundary to the byte in about log2(len(buf)) reads.
func goodPrefix(r io.ReaderAt, buf []byte, pos int64, err error) (int, error) {
	lo, hi := 0, len(buf) // the prefix of length lo reads; hi does not
	fresh := true         // buf[:lo] holds the bytes of the read of lo
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		m, rerr := r.ReadAt(buf[:mid], pos)
		if m == mid {
			lo, fresh = mid, true
			continue
		}
		if rerr == nil || rerr == io.EOF {
			rerr = fmt.Errorf("short read: %d of %d bytes", m, mid)
		}
		hi, err, fresh = mid, rerr, false
	}
	if lo > 0 && !fresh {
		// a longer failed read wrote over buf[:lo]: read it again
		if m, rerr := r.ReadAt(buf[:lo], pos); m != lo {
			if rerr == nil || rerr == io.EOF {
				rerr = fmt.Errorf("short read: %d of %d bytes", m, lo)
			}
			return 0, rerr
		}
	}
	return lo, err
}

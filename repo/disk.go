package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
)

// Disk is one disk of one restore point, readable at any offset. It is safe
// for concurrent ReadAt and keeps no position. Zero chunks are served
// without I/O; other chunks come through the repository's shared cache and
// are checked against their IDs.
type Disk struct {
	r    *Repository
	rp   *RestorePoint
	name string
	idx  *format.Index
	// streaming: reads covering whole uncached chunks decode straight into
	// the caller's buffer and leave the cache alone (one-pass readers).
	streaming bool

	hint hinter // fetch hints ahead of sequential readers (hint.go)
}

// parallelChunkLoads bounds the chunks one ReadAt loads at once.
const parallelChunkLoads = 4

// SetStreaming makes reads that cover whole chunks not in the cache
// decode directly into the caller's buffer without caching them: for a
// one-pass reader (cat, cp, restore of a file) this saves an allocation and
// a copy per chunk and keeps the cache for the metadata it re-reads. Call
// it before the Disk is shared.
func (d *Disk) SetStreaming(on bool) { d.streaming = on }

// OpenDisk opens a disk of a restore point, checking its index.
func (r *Repository) OpenDisk(ctx context.Context, rp *RestorePoint, name string) (*Disk, error) {
	md, err := rp.Disk(name)
	if err != nil {
		return nil, err
	}
	idx, err := r.loadIndex(ctx, md.Index)
	if err != nil {
		return nil, fmt.Errorf("restore point %s disk %s: %w", rp.ID.Short(), name, err)
	}
	if idx.DiskSize != md.Size || idx.ChunkSize != md.ChunkSize {
		return nil, fmt.Errorf("restore point %s disk %s: index describes %d bytes in %d-byte chunks, manifest %d in %d: %w",
			rp.ID.Short(), name, idx.DiskSize, idx.ChunkSize, md.Size, md.ChunkSize, format.ErrCorrupt)
	}
	return &Disk{r: r, rp: rp, name: name, idx: idx}, nil
}

func (r *Repository) loadIndex(ctx context.Context, name string) (*format.Index, error) {
	_, idx, err := r.loadIndexBytes(ctx, name)
	return idx, err
}

// loadIndexBytes loads, checks and parses a disk index; it returns the
// stored content too.
func (r *Repository) loadIndexBytes(ctx context.Context, name string) ([]byte, *format.Index, error) {
	id, err := format.ParseID(name)
	if err != nil {
		return nil, nil, err
	}
	b, err := r.be.Load(ctx, backend.Handle{Type: backend.IndexFile, Name: name}, 0, -1)
	if err != nil {
		return nil, nil, fmt.Errorf("load index %s: %w", id.Short(), err)
	}
	if r.nameID(b) != id {
		return nil, nil, fmt.Errorf("index %s: content does not match its name: %w", id.Short(), format.ErrCorrupt)
	}
	idx, err := format.ParseIndex(b)
	if err != nil {
		return nil, nil, fmt.Errorf("index %s: %w", id.Short(), err)
	}
	return b, idx, nil
}

// Name returns the disk's name.
func (d *Disk) Name() string { return d.name }

// RestorePoint returns the restore point the disk belongs to.
func (d *Disk) RestorePoint() *RestorePoint { return d.rp }

// Size returns the disk size in bytes.
func (d *Disk) Size() int64 { return d.idx.DiskSize }

// ChunkSize returns the chunk size of the disk's index.
func (d *Disk) ChunkSize() int64 { return d.idx.ChunkSize }

// Index returns the disk's chunk IDs (read-only).
func (d *Disk) Index() *format.Index { return d.idx }

// Close releases the disk. Cached chunks stay in the repository cache.
func (d *Disk) Close() error { return nil }

func (d *Disk) chunkErr(i int, err error) error {
	return &ChunkError{RestorePoint: d.rp.ID.Short(), Disk: d.name, Offset: int64(i) * d.idx.ChunkSize, Chunk: d.idx.IDs[i], Err: err}
}

// chunk returns the cache entry holding chunk i (a data chunk), pinned:
// the caller must release it with d.r.cache.release once it has copied
// what it needs.
func (d *Disk) chunk(ctx context.Context, i int) (*cacheEntry, error) {
	id := d.idx.IDs[i]
	want := d.idx.ChunkLen(i)
	e, err := d.r.cache.acquire(ctx, id, want, func(buf []byte) ([]byte, error) {
		return d.r.loadChunk(context.WithoutCancel(ctx), id, buf)
	})
	if err == nil && int64(len(e.data)) != want {
		d.r.cache.release(e)
		err = fmt.Errorf("chunk holds %d bytes where the index needs %d: %w", len(e.data), want, format.ErrCorrupt)
	}
	if err != nil {
		return nil, d.chunkErr(i, err)
	}
	return e, nil
}

// ReadAt implements io.ReaderAt.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	return d.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt with a context for cancellation.
func (d *Disk) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read disk %s at %d: negative offset", d.name, off)
	}
	size := d.idx.DiskSize
	if off >= size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > size-off {
		p = p[:size-off]
		eof = io.EOF
	}
	d.hintAhead(off, int64(len(p)))
	segs := d.segments(off, int64(len(p)))
	read := func(_ int, sg segment) error {
		dst := p[sg.at : sg.at+sg.n]
		id := d.idx.IDs[sg.i]
		if id.IsZero() {
			clear(dst)
			return nil
		}
		if d.streaming && sg.in == 0 && sg.n == d.idx.ChunkLen(sg.i) && !d.r.cache.has(id) {
			out, err := d.r.loadChunk(ctx, id, dst[:0:len(dst)])
			if err == nil && int64(len(out)) != sg.n {
				err = fmt.Errorf("chunk holds %d bytes where the index needs %d: %w", len(out), sg.n, format.ErrCorrupt)
			}
			if err != nil {
				return d.chunkErr(sg.i, err)
			}
			return nil
		}
		e, err := d.chunk(ctx, sg.i)
		if err != nil {
			return err
		}
		copy(dst, e.data[sg.in:])
		d.r.cache.release(e)
		return nil
	}
	if k, err := forSegments(segs, read); err != nil {
		return int(segs[k].at), err
	}
	return len(p), eof
}

// segment is the part of a read that falls in one chunk.
type segment struct {
	i      int   // chunk
	at, in int64 // offset in the read, offset in the chunk
	n      int64
}

// segments cuts [off, off+n) (inside the disk) at chunk boundaries.
func (d *Disk) segments(off, n int64) []segment {
	cs := d.idx.ChunkSize
	var segs []segment
	for at := int64(0); at < n; {
		pos := off + at
		i := int(pos / cs)
		in := pos - int64(i)*cs
		m := min(n-at, d.idx.ChunkLen(i)-in)
		segs = append(segs, segment{i, at, in, m})
		at += m
	}
	return segs
}

// forSegments runs f on every segment; a read spanning several chunks
// loads them in parallel (both cores decode and hash). It returns the
// first failing segment in read order and its error.
func forSegments(segs []segment, f func(k int, sg segment) error) (int, error) {
	if len(segs) == 1 {
		return 0, f(0, segs[0])
	}
	errs := make([]error, len(segs))
	sem := make(chan struct{}, parallelChunkLoads)
	var wg sync.WaitGroup
	for k, sg := range segs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[k] = f(k, sg)
		}()
	}
	wg.Wait()
	for k, err := range errs {
		if err != nil {
			return k, err
		}
	}
	return 0, nil
}

// zeros backs the slices ReadSlices lends for zero chunks. Read-only.
var zeros [1 << 20]byte

// ReadSlices lends the bytes of [off, off+length) instead of copying them:
// it pins the cached chunks the range covers (loading them in parallel, as
// ReadAt does), calls fn with slices that hold the range in order, and
// unpins the chunks when fn returns. The slices are read-only and must not
// be used after fn returns. A server can so write replies straight from
// the cache, with no buffer per request. fn is not called when a chunk
// cannot be read; the error names the restore point, disk and offset.
func (d *Disk) ReadSlices(ctx context.Context, off, length int64, fn func([][]byte) error) error {
	if off < 0 || length < 0 || off > d.idx.DiskSize-length {
		return fmt.Errorf("read disk %s [%d,+%d): out of range", d.name, off, length)
	}
	d.hintAhead(off, length)
	segs := d.segments(off, length)
	pinned := make([]*cacheEntry, len(segs))
	defer func() {
		for _, e := range pinned {
			if e != nil {
				d.r.cache.release(e)
			}
		}
	}()
	pin := func(k int, sg segment) error {
		if d.idx.IDs[sg.i].IsZero() {
			return nil
		}
		e, err := d.chunk(ctx, sg.i)
		pinned[k] = e
		return err
	}
	if _, err := forSegments(segs, pin); err != nil {
		return err
	}
	bufs := make([][]byte, 0, len(segs))
	for k, sg := range segs {
		if e := pinned[k]; e != nil {
			bufs = append(bufs, e.data[sg.in:sg.in+sg.n])
			continue
		}
		for n := sg.n; n > 0; {
			m := min(n, int64(len(zeros)))
			bufs = append(bufs, zeros[:m])
			n -= m
		}
	}
	return fn(bufs)
}

// Prefetch loads the chunks covering [off, off+length) into the cache.
func (d *Disk) Prefetch(ctx context.Context, off, length int64) error {
	if off < 0 || length < 0 || off > d.idx.DiskSize-length {
		return fmt.Errorf("prefetch disk %s [%d,+%d): out of range", d.name, off, length)
	}
	cs := d.idx.ChunkSize
	for i := off / cs; i*cs < off+length; i++ {
		if d.idx.IDs[i].IsZero() {
			continue
		}
		e, err := d.chunk(ctx, int(i))
		if err != nil {
			return err
		}
		d.r.cache.release(e)
	}
	return nil
}

// Extents describes [off, off+length) as maximal runs of zero and data
// chunks, from the index alone (no chunk is read). A data chunk may still
// contain zero bytes.
func (d *Disk) Extents(off, length int64) ([]extent.Extent, error) {
	if off < 0 || length < 0 || off > d.idx.DiskSize-length {
		return nil, fmt.Errorf("extents of disk %s [%d,+%d): out of range", d.name, off, length)
	}
	var out []extent.Extent
	cs := d.idx.ChunkSize
	end := off + length
	for pos := off; pos < end; {
		i := pos / cs
		zero := d.idx.IDs[i].IsZero()
		next := min((i+1)*cs, end)
		if n := len(out); n > 0 && out[n-1].Zero == zero {
			out[n-1].Length += next - pos
		} else {
			out = append(out, extent.Extent{Offset: pos, Length: next - pos, Zero: zero})
		}
		pos = next
	}
	return out, nil
}

// IsChunkError reports whether err comes from a damaged or missing chunk.
func IsChunkError(err error) bool {
	var ce *ChunkError
	return errors.As(err, &ce)
}

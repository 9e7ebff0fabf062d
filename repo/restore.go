package repo

import (
	"context"
	"io"

	"golang.org/x/sync/errgroup"

	"github.com/vmvault/vmvault/repo/format"
)

// RestoreOptions tune Disk.Restore.
type RestoreOptions struct {
	// Sparse skips all-zero chunks: the target must already read as zeros
	// there (a freshly truncated file), which leaves holes.
	Sparse   bool
	Progress *Progress
	Workers  int // 0: the backend's ReadParallelism
}

// Restore writes the whole disk to w. Every chunk is checked against its
// ID; the first damaged chunk stops the restore with a *ChunkError naming
// the restore point, disk and offset. Chunks bypass the shared cache so a
// restore does not evict what interactive readers use.
func (d *Disk) Restore(ctx context.Context, w io.WriterAt, opts RestoreOptions) error {
	workers := opts.Workers
	if workers <= 0 {
		workers = d.r.props.ReadParallelism
	}
	if opts.Progress == nil {
		opts.Progress = &Progress{}
	}
	opts.Progress.Total.Add(d.Size())
	cs := d.idx.ChunkSize
	jobs := make(chan int, workers)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(jobs)
		for i := range d.idx.IDs {
			if opts.Sparse && d.idx.IDs[i].IsZero() {
				opts.Progress.Done.Add(d.idx.ChunkLen(i))
				continue
			}
			select {
			case jobs <- i:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range workers {
		g.Go(func() error {
			buf := make([]byte, 0, cs+format.DecodeSlack)
			zeros := make([]byte, cs)
			for i := range jobs {
				n := d.idx.ChunkLen(i)
				data := zeros[:n]
				if id := d.idx.IDs[i]; !id.IsZero() {
					var err error
					if data, err = d.r.loadChunk(gctx, id, buf[:0]); err != nil {
						return d.chunkErr(i, err)
					}
					if int64(len(data)) != n {
						return d.chunkErr(i, io.ErrUnexpectedEOF)
					}
				}
				if err := writeChunk(w, data, int64(i)*cs, opts.Sparse); err != nil {
					return err
				}
				opts.Progress.Done.Add(n)
			}
			return nil
		})
	}
	return g.Wait()
}

// holeBlock is the granularity at which a sparse restore leaves zero runs
// inside data chunks unwritten: the filesystem block size.
const holeBlock = 4096

// writeChunk writes data at off; when sparse, runs of all-zero blocks are
// skipped so they stay holes in the (freshly truncated) target.
func writeChunk(w io.WriterAt, data []byte, off int64, sparse bool) error {
	if !sparse {
		_, err := w.WriteAt(data, off)
		return err
	}
	start := -1 // start of the current run of data blocks
	for pos := 0; pos < len(data); pos += holeBlock {
		end := min(pos+holeBlock, len(data))
		zero := format.IsZero(data[pos:end])
		if !zero && start < 0 {
			start = pos
		}
		if zero && start >= 0 {
			if _, err := w.WriteAt(data[start:pos], off+int64(start)); err != nil {
				return err
			}
			start = -1
		}
	}
	if start >= 0 {
		_, err := w.WriteAt(data[start:], off+int64(start))
		return err
	}
	return nil
}

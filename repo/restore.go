package repo

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/vmvault/vmvault/repo/backend"
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
	if bl, ok := d.r.frameSource().(backend.BatchLoader); ok && !d.r.props.CheapRangedReads {
		return d.restoreBatched(ctx, w, opts, bl)
	}
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

// restoreBatch is how many distinct chunks one batch of a restore from
// object storage asks for: neighbours in the disk are neighbours in the
// packs a capture wrote, so a batch is a ranged read or two instead of a
// request per chunk. restoreBatches batches run at once.
const (
	restoreBatch   = 64
	restoreBatches = 4
)

// restoreBatched is Restore for backends where every request pays a round
// trip: chunks are asked for in batches of neighbours (the pack layer's
// coalesced ranged reads), decoded and checked on every core, and written
// wherever the disk holds them. A chunk a batch does not deliver (repacked
// meanwhile, or damaged) is loaded on its own, which names what is wrong.
func (d *Disk) restoreBatched(ctx context.Context, w io.WriterAt, opts RestoreOptions, bl backend.BatchLoader) error {
	type batch struct {
		ids   []format.ID
		where map[format.ID][]int // chunk indexes holding each id
	}
	type frameJob struct {
		b     *batch
		id    format.ID
		frame []byte
	}
	batches := make(chan *batch)
	frames := make(chan frameJob, 2*restoreBatch)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(batches)
		cur := &batch{where: map[format.ID][]int{}}
		var zeros []byte
		for i, id := range d.idx.IDs {
			if id.IsZero() {
				if !opts.Sparse {
					if zeros == nil {
						zeros = make([]byte, d.idx.ChunkSize)
					}
					if err := writeChunk(w, zeros[:d.idx.ChunkLen(i)], int64(i)*d.idx.ChunkSize, false); err != nil {
						return err
					}
				}
				opts.Progress.Done.Add(d.idx.ChunkLen(i))
				continue
			}
			if _, seen := cur.where[id]; !seen {
				if len(cur.ids) == restoreBatch {
					select {
					case batches <- cur:
					case <-gctx.Done():
						return gctx.Err()
					}
					cur = &batch{where: map[format.ID][]int{}}
				}
				cur.ids = append(cur.ids, id)
			}
			cur.where[id] = append(cur.where[id], i)
		}
		if len(cur.ids) > 0 {
			select {
			case batches <- cur:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	var loaders sync.WaitGroup
	for range restoreBatches {
		loaders.Add(1)
		g.Go(func() error {
			defer loaders.Done()
			for b := range batches {
				names := make([]string, len(b.ids))
				for j, id := range b.ids {
					names[j] = id.String()
				}
				got := make(map[string]bool, len(names))
				err := bl.LoadBatch(gctx, backend.ChunkFile, names, func(name string, frame []byte) error {
					id, err := format.ParseID(name)
					if err != nil {
						return err
					}
					got[name] = true
					select {
					case frames <- frameJob{b, id, frame}:
						return nil
					case <-gctx.Done():
						return gctx.Err()
					}
				})
				if err != nil {
					return fmt.Errorf("restore point %s disk %s: %w", d.rp.ID.Short(), d.name, err)
				}
				for j, n := range names {
					if !got[n] {
						select {
						case frames <- frameJob{b, b.ids[j], nil}:
						case <-gctx.Done():
							return gctx.Err()
						}
					}
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		loaders.Wait()
		close(frames)
		return nil
	})
	for range runtime.GOMAXPROCS(0) {
		g.Go(func() error {
			buf := make([]byte, 0, d.idx.ChunkSize+format.DecodeSlack)
			for j := range frames {
				at := j.b.where[j.id]
				var data []byte
				var err error
				if j.frame != nil {
					data, err = d.r.decodeFrame(gctx, buf[:0], j.frame, j.id)
					if err != nil {
						err = fmt.Errorf("chunk %s: %w", j.id, err)
					}
				} else {
					data, err = d.r.loadChunk(gctx, j.id, buf[:0])
				}
				if err != nil {
					return d.chunkErr(at[0], err)
				}
				for _, i := range at {
					n := d.idx.ChunkLen(i)
					if int64(len(data)) != n {
						return d.chunkErr(i, io.ErrUnexpectedEOF)
					}
					if err := writeChunk(w, data, int64(i)*d.idx.ChunkSize, opts.Sparse); err != nil {
						return err
					}
					opts.Progress.Done.Add(n)
				}
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

package repo

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/format"
)

// DefaultGCGrace is how old an unreferenced object must be before gc
// removes it.
const DefaultGCGrace = time.Hour

// GCOptions tune GC.
type GCOptions struct {
	// Grace protects unreferenced objects younger than this: chunks and
	// indexes of a capture that is still running without a valid lock.
	Grace    time.Duration
	DryRun   bool
	LockWait time.Duration
	// Ignore lists restore points to treat as already forgotten, so a
	// dry run of prune can show what the sweep after forgetting would do.
	Ignore []format.ID
}

// GCReport is what GC did (or would do, with DryRun).
type GCReport struct {
	RestorePoints     int
	ReferencedChunks  int
	ReferencedIndexes int
	RemovedChunks     int
	RemovedIndexes    int
	RemovedBytes      int64
	KeptYoung         int
	RemovedTemp       int
}

// GC removes chunks and indexes no restore point references (mark and
// sweep) under an exclusive lock. It refuses to sweep when any manifest or
// index cannot be read, since the chunks it references are then unknown.
func (r *Repository) GC(ctx context.Context, opts GCOptions) (*GCReport, error) {
	lock, err := r.Lock(ctx, true, "gc", opts.LockWait)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	start := r.now()
	cutoff := start.Add(-opts.Grace)
	rps, bad, err := r.ListRestorePoints(ctx)
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("gc: manifest %s cannot be read (%v); refusing to sweep: remove it with 'vmvault forget %s' if it is beyond repair", bad[0].Name, bad[0].Err, bad[0].Name)
	}
	ignore := map[format.ID]bool{}
	for _, id := range opts.Ignore {
		ignore[id] = true
	}
	kept := rps[:0]
	for _, rp := range rps {
		if !ignore[rp.ID] {
			kept = append(kept, rp)
		}
	}
	rps = kept
	rep := &GCReport{RestorePoints: len(rps)}
	liveChunks := map[format.ID]struct{}{}
	liveIndexes := map[string]struct{}{}
	for _, rp := range rps {
		for _, d := range rp.Disks {
			if _, ok := liveIndexes[d.Index]; ok {
				continue
			}
			liveIndexes[d.Index] = struct{}{}
			idx, err := r.loadIndex(ctx, d.Index)
			if errors.Is(err, backend.ErrNotFound) {
				continue // nothing left to protect for this disk; verify reports it
			}
			if err != nil {
				return nil, fmt.Errorf("gc: restore point %s disk %s: %w; refusing to sweep", rp.ID.Short(), d.Name, err)
			}
			for _, id := range idx.IDs {
				liveChunks[id] = struct{}{}
			}
		}
	}
	delete(liveChunks, format.ZeroID)
	rep.ReferencedChunks, rep.ReferencedIndexes = len(liveChunks), len(liveIndexes)

	sweep := func(t backend.FileType, live func(name string) bool, removed *int) error {
		var victims []backend.FileInfo
		if err := r.be.List(ctx, t, func(fi backend.FileInfo) error {
			if live(fi.Name) {
				return nil
			}
			if fi.ModTime.After(cutoff) {
				rep.KeptYoung++
				return nil
			}
			victims = append(victims, fi)
			return nil
		}); err != nil {
			return err
		}
		for _, fi := range victims {
			if !opts.DryRun {
				if err := r.be.Remove(ctx, backend.Handle{Type: t, Name: fi.Name}); err != nil {
					return err
				}
			}
			*removed++
			rep.RemovedBytes += fi.Size
		}
		return nil
	}
	if err := sweep(backend.IndexFile, func(n string) bool { _, ok := liveIndexes[n]; return ok }, &rep.RemovedIndexes); err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	if err := sweep(backend.ChunkFile, func(n string) bool {
		id, err := format.ParseID(n)
		if err != nil {
			return true // not ours to judge
		}
		_, ok := liveChunks[id]
		return ok
	}, &rep.RemovedChunks); err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	if tc, ok := r.be.(backend.TempCleaner); ok && !opts.DryRun {
		if rep.RemovedTemp, err = tc.RemoveTemp(ctx, cutoff); err != nil {
			return nil, fmt.Errorf("gc: %w", err)
		}
	}
	return rep, nil
}

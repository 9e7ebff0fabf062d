package repo

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/pack"
	"github.com/vmvault/vmvault/repo/format"
)

// DefaultGCGrace is how old an unreferenced object must be before gc
// removes it.
const DefaultGCGrace = time.Hour

// tempAge is the age past which a backend's temporary file (a save that
// crashed) is removed: saves last seconds.
const tempAge = time.Hour

// GCOptions tune GC.
type GCOptions struct {
	// Grace protects unreferenced objects younger than this (on the
	// storage's clock): the objects of captures by builds that do not
	// announce themselves, and of captures that crashed only just.
	Grace  time.Duration
	DryRun bool
	// LockWait is how long gc waits for another gc, and then for a moment
	// when no capture runs, before it gives up removing (it still reports
	// what it would remove).
	LockWait time.Duration
	// Ignore lists restore points to treat as already forgotten, so a
	// dry run of prune can show what the sweep after forgetting would do.
	Ignore []format.ID
}

// GCReport is what GC did (or would do, with DryRun).
type GCReport struct {
	RestorePoints     int
	PinnedIndexes     int // indexes kept only because a lock pins them
	ReferencedIndexes int
	LiveChunks        int // stored chunks the mark filter holds
	RemovedChunks     int
	RemovedIndexes    int
	RemovedBytes      int64
	KeptYoung         int
	KeptProtected     int // unreferenced, but an object lock protects them still
	RemovedTemp       int
	// Pack compaction (repositories that store chunks in packs).
	RemovedPacks   int   // packs with nothing live, and orphans
	RepackedPacks  int   // packs whose live chunks were copied into new packs
	RewrittenBytes int64 // live bytes so copied
	// Deferred is set when removal did not happen because captures kept
	// running for the whole of LockWait; Writers names them.
	Deferred     bool
	Writers      []string
	FilterBytes  int // memory of the mark filter
	MarkSeconds  float64
	SweepSeconds float64
}

// GC removes chunks and indexes that no restore point references and no
// lock pins (mark and sweep). It runs beside readers and captures; see the
// package doc for the protocol. It refuses to sweep when any manifest or
// index cannot be read, since the chunks it references are then unknown.
func (r *Repository) GC(ctx context.Context, opts GCOptions) (*GCReport, error) {
	// A dry run removes nothing and takes no lock.
	var lock *Lock
	if !opts.DryRun {
		var err error
		if lock, err = r.Lock(ctx, LockOptions{Kind: format.LockMaintenance, Operation: "gc", Wait: opts.LockWait}); err != nil {
			return nil, err
		}
		defer lock.Unlock()
	}
	markStart := time.Now()
	cutoff := r.storageNow().Add(-opts.Grace)
	if lock != nil && !lock.Epoch().IsZero() {
		cutoff = lock.Epoch().Add(-opts.Grace)
	}
	ignore := map[format.ID]bool{}
	for _, id := range opts.Ignore {
		ignore[id] = true
	}
	m := &marker{r: r, indexes: map[string]bool{}, manifests: map[format.ID]bool{}, ignore: ignore}

	// Size the filter by what is stored: live chunks are at most that.
	stored, err := r.countObjects(ctx, backend.ChunkFile)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	m.live = newBloom(stored)
	if err := m.mark(ctx); err != nil {
		return nil, err
	}
	rep := &GCReport{FilterBytes: m.live.bytes()}
	rep.MarkSeconds = time.Since(markStart).Seconds()

	sweepStart := time.Now()
	// Dead objects, 40 bytes each (a repository of 40 million chunks with a
	// tenth dead keeps 160 MB here).
	var chunks, indexes []deadObject
	if err := r.be.List(ctx, backend.ChunkFile, func(fi backend.FileInfo) error {
		id, err := format.ParseID(fi.Name)
		switch {
		case err != nil: // not ours to judge
		case m.live.has(id):
			rep.LiveChunks++
		case fi.ModTime.After(cutoff):
			rep.KeptYoung++
		case r.packs == nil && !r.removable(backend.ChunkFile, fi.ModTime): // a pack's lock is the pack's business
			rep.KeptProtected++
		default:
			chunks = append(chunks, deadObject{id, fi.Size})
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	if err := r.be.List(ctx, backend.IndexFile, func(fi backend.FileInfo) error {
		id, err := format.ParseID(fi.Name)
		switch {
		case err != nil || m.indexes[fi.Name]:
		case fi.ModTime.After(cutoff):
			rep.KeptYoung++
		case !r.removable(backend.IndexFile, fi.ModTime):
			rep.KeptProtected++
		default:
			indexes = append(indexes, deadObject{id, fi.Size})
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}

	// Removal needs a moment without captures. gc announces its deleting
	// phase, then looks for writers; a writer announces itself, then looks
	// for a deleting gc (and waits, marked as waiting, while there is one):
	// each looks after announcing, so at least one sees the other. New
	// captures wait from here; running ones are given LockWait to finish.
	// Whatever was committed or pinned while the sweep ran is marked
	// before anything is removed.
	if !opts.DryRun {
		// Writers waiting for an earlier gc go first.
		if err := r.letWaitingWritersStart(ctx); err != nil {
			return nil, fmt.Errorf("gc: %w", err)
		}
		if err := lock.setPhase(ctx, format.LockPhaseDeleting); err != nil {
			return nil, fmt.Errorf("gc: %w", err)
		}
		deadline := time.Now().Add(opts.LockWait)
		for {
			writers, err := r.runningWriters(ctx)
			if err != nil {
				return nil, fmt.Errorf("gc: %w", err)
			}
			if len(writers) == 0 {
				break
			}
			if time.Now().After(deadline) {
				rep.Deferred, rep.Writers = true, writers
				if err := lock.setPhase(ctx, ""); err != nil {
					return nil, fmt.Errorf("gc: %w", err)
				}
				break
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
		}
		if !rep.Deferred {
			defer lock.setPhase(context.WithoutCancel(ctx), "")
			if err := m.mark(ctx); err != nil { // what appeared meanwhile
				return nil, err
			}
			chunks = slices.DeleteFunc(chunks, func(o deadObject) bool { return m.live.has(o.id) })
			indexes = slices.DeleteFunc(indexes, func(o deadObject) bool { return m.indexes[o.id.String()] })
		}
	}
	rep.RestorePoints, rep.ReferencedIndexes, rep.PinnedIndexes = len(m.manifests), len(m.indexes), m.pinned
	remove := !opts.DryRun && !rep.Deferred
	for _, set := range []struct {
		t       backend.FileType
		objs    []deadObject
		removed *int
	}{{backend.IndexFile, indexes, &rep.RemovedIndexes}, {backend.ChunkFile, chunks, &rep.RemovedChunks}} {
		if remove {
			g, gctx := errgroup.WithContext(ctx)
			g.SetLimit(r.props.WriteParallelism)
			for _, o := range set.objs {
				g.Go(func() error { return r.be.Remove(gctx, backend.Handle{Type: set.t, Name: o.id.String()}) })
			}
			if err := g.Wait(); err != nil {
				return nil, fmt.Errorf("gc: %w", err)
			}
		}
		*set.removed += len(set.objs)
		for _, o := range set.objs {
			rep.RemovedBytes += o.size
		}
	}
	if c := r.packs; c != nil {
		// Removed chunks only leave the pack index; compaction frees
		// their space (and that of packs orphaned by crashed captures).
		if remove {
			if f, ok := r.be.(backend.Flusher); ok {
				if err := f.Flush(ctx); err != nil {
					return nil, fmt.Errorf("gc: %w", err)
				}
			}
		}
		copts := pack.CompactOptions{OrphansBefore: cutoff, DryRun: !remove}
		if r.lockPeriod() > 0 {
			copts.Protected = func(mtime time.Time) bool { return !r.removable(backend.PackFile, mtime) }
		}
		crep, err := c.Compact(ctx, copts)
		if err != nil {
			return nil, fmt.Errorf("gc: compact packs: %w", err)
		}
		rep.RemovedPacks, rep.RepackedPacks, rep.RewrittenBytes = crep.PacksRemoved, crep.PacksRepacked, crep.BytesRewritten
		rep.KeptProtected += crep.PacksProtected
		if remove {
			rep.RemovedBytes = crep.BytesFreed + indexBytes(indexes)
		}
	}
	if remove {
		if err := r.forgetState(ctx, func(id format.ID) bool { return m.manifests[id] }); err != nil {
			return nil, fmt.Errorf("gc: verify records: %w", err)
		}
	}
	if tc, ok := r.be.(backend.TempCleaner); ok && remove {
		// Readers and writers save objects while gc runs: only temporary
		// files no live save can own go.
		tempCutoff := r.storageNow().Add(-tempAge)
		if cutoff.Before(tempCutoff) {
			tempCutoff = cutoff
		}
		var err error
		if rep.RemovedTemp, err = tc.RemoveTemp(ctx, tempCutoff); err != nil {
			return nil, fmt.Errorf("gc: %w", err)
		}
	}
	rep.SweepSeconds = time.Since(sweepStart).Seconds()
	return rep, nil
}

func indexBytes(objs []deadObject) int64 {
	var n int64
	for _, o := range objs {
		n += o.size
	}
	return n
}

// deadObject is a chunk or index the sweep found unreferenced.
type deadObject struct {
	id   format.ID
	size int64
}

// marker is gc's mark phase; mark may run again to add what appeared
// since the last run.
type marker struct {
	r         *Repository
	ignore    map[format.ID]bool
	live      *bloom
	indexes   map[string]bool    // marked indexes
	manifests map[format.ID]bool // restore points marked
	pinned    int
}

// mark adds the chunks of every restore point and every pinned index not
// marked yet. Pins are read before the manifests: a reader pins, then
// checks that its restore point still exists, so either its pin is seen
// here or its restore point's manifest is.
func (m *marker) mark(ctx context.Context) error {
	locks, err := m.r.Locks(ctx)
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	rps, bad, err := m.r.ListRestorePoints(ctx)
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("gc: manifest %s cannot be read (%v); refusing to sweep: remove it with 'vmvault forget %s' if it is beyond repair", bad[0].Name, bad[0].Err, bad[0].Name)
	}
	for _, rp := range rps {
		if m.ignore[rp.ID] || m.manifests[rp.ID] {
			continue
		}
		m.manifests[rp.ID] = true
		for _, d := range rp.Disks {
			if err := m.markIndex(ctx, d.Index, false); err != nil {
				return fmt.Errorf("gc: restore point %s disk %s: %w; refusing to sweep", rp.ID.Short(), d.Name, err)
			}
		}
	}
	for _, l := range locks {
		if l.Stale || l.Garbage {
			continue
		}
		for _, idx := range l.Indexes {
			if !m.indexes[idx] {
				m.pinned++
			}
			if err := m.markIndex(ctx, idx, true); err != nil {
				return fmt.Errorf("gc: index %s pinned by %q on %s: %w; refusing to sweep", idx[:8], l.Operation, l.Hostname, err)
			}
		}
	}
	return nil
}

func (m *marker) markIndex(ctx context.Context, name string, pinned bool) error {
	if m.indexes[name] {
		return nil
	}
	idx, err := m.r.loadIndex(ctx, name)
	if errors.Is(err, backend.ErrNotFound) {
		if !pinned {
			m.indexes[name] = true // nothing left to protect for this disk; verify reports it
		}
		return nil
	}
	if err != nil {
		return err
	}
	m.indexes[name] = true
	for _, id := range idx.IDs {
		if !id.IsZero() {
			m.live.add(id)
		}
	}
	return nil
}

// runningWriters names the live locks of writers that are not waiting for
// a gc (and lock objects that cannot be read and are not yet stale: they
// may be writers).
func (r *Repository) runningWriters(ctx context.Context) ([]string, error) {
	locks, err := r.Locks(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range locks {
		switch {
		case l.Stale:
		case l.Garbage:
			out = append(out, fmt.Sprintf("unreadable lock %s (%s)", l.Name[:min(8, len(l.Name))], strings.TrimSpace(l.StaleReason)))
		case l.EffectiveKind() == format.LockWriter && l.Phase != format.LockPhaseWaiting:
			out = append(out, fmt.Sprintf("%q on %s (pid %d) since %s", l.Operation, l.Hostname, l.PID, l.Started.Format(time.RFC3339)))
		}
	}
	return out, nil
}

// letWaitingWritersStart gives writers that wait for a gc's deletions (an
// earlier run's, or another host's) a few seconds to announce themselves
// active, so back-to-back gc runs do not starve captures.
func (r *Repository) letWaitingWritersStart(ctx context.Context) error {
	for range 10 {
		locks, err := r.Locks(ctx)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(locks, func(l LockInfo) bool { return !l.Stale && l.Phase == format.LockPhaseWaiting }) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
	return nil
}

// countObjects counts a type's objects, cheaply where the backend can.
func (r *Repository) countObjects(ctx context.Context, t backend.FileType) (int, error) {
	if c, ok := r.be.(backend.Counter); ok {
		return c.Count(ctx, t)
	}
	n := 0
	err := r.be.List(ctx, t, func(backend.FileInfo) error { n++; return nil })
	return n, err
}

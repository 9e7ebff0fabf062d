package pack

import (
	"context"
	"fmt"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/format"
)

// CompactOptions tune Compact.
type CompactOptions struct {
	// MinLive is the share of a pack's bytes that must still be live for
	// it to stay as it is; emptier packs are rewritten (0: 0.5).
	MinLive float64
	// OrphansBefore: packs no pack index names and older than this are
	// leftovers of crashed captures and are removed.
	OrphansBefore time.Time
	// MaxIndexes: with more pack indexes than this they are merged into
	// one (0: 32).
	MaxIndexes int
	DryRun     bool
	// Protected, when set, says whether an object lock still protects an
	// object written at mtime: such packs are neither removed nor
	// rewritten, and pack indexes are not merged while any is protected.
	Protected func(mtime time.Time) bool
}

// CompactReport is what Compact did (or would do).
type CompactReport struct {
	PacksRemoved   int   // packs with nothing live, and orphans
	PacksRepacked  int   // packs whose live chunks were rewritten
	BytesRewritten int64 // live bytes copied into new packs
	BytesFreed     int64
	IndexesMerged  int // pack indexes replaced by one
	PacksProtected int // would go, but an object lock protects them
}

// Compactor is what gc asks of a backend that packs chunks.
type Compactor interface {
	Compact(ctx context.Context, opts CompactOptions) (*CompactReport, error)
}

var _ Compactor = (*Backend)(nil)

// Compact reclaims the space of removed chunks: packs with nothing live
// are removed, packs mostly dead have their live chunks copied into new
// packs and are removed, orphaned packs go, and many pack indexes are
// merged into one. The order keeps every chunk readable at every moment:
// new packs, then a pack index naming them and saying which packs are
// gone, then removal. It must not run while chunks are being saved by
// another process (gc runs it in its deleting phase).
func (b *Backend) Compact(ctx context.Context, opts CompactOptions) (*CompactReport, error) {
	if opts.MinLive <= 0 {
		opts.MinLive = 0.5
	}
	if opts.MaxIndexes <= 0 {
		opts.MaxIndexes = 32
	}
	if err := b.Flush(ctx); err != nil {
		return nil, err
	}
	if err := b.refresh(ctx); err != nil {
		return nil, err
	}
	stored := map[format.ID]backend.FileInfo{}
	if err := b.be.List(ctx, backend.PackFile, func(fi backend.FileInfo) error {
		if id, err := format.ParseID(fi.Name); err == nil {
			stored[id] = fi
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("compact: list packs: %w", err)
	}
	b.rmu.RLock()
	live := map[format.ID]int64{}
	known := map[format.ID]bool{}
	for _, p := range b.view.packs {
		known[p.name] = !p.gone
	}
	for _, e := range b.view.entries {
		live[b.view.packs[e.pack].name] += int64(e.length)
	}
	b.rmu.RUnlock()

	rep := &CompactReport{}
	var remove, repack []format.ID
	for name, fi := range stored {
		named, ok := known[name]
		if opts.Protected != nil && opts.Protected(fi.ModTime) {
			if !ok || !named || live[name] == 0 || float64(live[name]) < opts.MinLive*float64(fi.Size) {
				rep.PacksProtected++
			}
			continue
		}
		switch {
		case !ok && fi.ModTime.Before(opts.OrphansBefore), ok && !named, named && live[name] == 0:
			remove = append(remove, name)
			rep.BytesFreed += fi.Size
		case named && float64(live[name]) < opts.MinLive*float64(fi.Size):
			repack = append(repack, name)
			rep.BytesFreed += fi.Size - live[name]
			rep.BytesRewritten += live[name]
		}
	}
	rep.PacksRemoved, rep.PacksRepacked = len(remove), len(repack)
	if opts.DryRun {
		return rep, nil
	}
	for _, name := range repack {
		if err := b.rewrite(ctx, name); err != nil {
			return nil, err
		}
	}
	if err := b.Flush(ctx); err != nil { // the new packs and their index
		return nil, err
	}
	gone := append(append([]format.ID(nil), remove...), repack...)
	if len(gone) > 0 {
		x := &format.PackIndex{Packs: gone}
		for i := range gone {
			x.GonePacks = append(x.GonePacks, uint32(i))
		}
		if err := b.saveIndex(ctx, x); err != nil {
			return nil, err
		}
		if f, ok := b.be.(backend.Flusher); ok {
			if err := f.Flush(ctx); err != nil {
				return nil, err
			}
		}
		for _, name := range gone {
			if err := b.be.Remove(ctx, backend.Handle{Type: backend.PackFile, Name: name.String()}); err != nil {
				return nil, fmt.Errorf("compact: %w", err)
			}
		}
	}
	n, err := b.mergeIndexes(ctx, opts.MaxIndexes, opts.Protected)
	rep.IndexesMerged = n
	return rep, err
}

// rewrite copies a pack's live chunks into the open pack.
func (b *Backend) rewrite(ctx context.Context, name format.ID) error {
	data, err := b.be.Load(ctx, backend.Handle{Type: backend.PackFile, Name: name.String()}, 0, -1)
	if err != nil {
		return fmt.Errorf("compact: read pack %s: %w", name.Short(), err)
	}
	b.rmu.RLock()
	n, ok := b.view.packNo[name]
	var keep []entry
	for _, e := range b.view.entries {
		if ok && e.pack == n {
			keep = append(keep, e)
		}
	}
	b.rmu.RUnlock()
	for _, e := range keep {
		if int64(e.offset)+int64(e.length) > int64(len(data)) {
			return fmt.Errorf("compact: pack %s is shorter than its index says: %w", name.Short(), format.ErrCorrupt)
		}
		if err := b.Save(ctx, backend.Handle{Type: backend.ChunkFile, Name: e.id.String()}, data[e.offset:e.offset+e.length]); err != nil {
			return err
		}
	}
	return nil
}

// mergeIndexes replaces the pack indexes with one naming every live entry
// when there are more than max of them, and returns how many it replaced.
func (b *Backend) mergeIndexes(ctx context.Context, max int, protected func(time.Time) bool) (int, error) {
	var names []string
	locked := false
	if err := b.be.List(ctx, backend.PackIndexFile, func(fi backend.FileInfo) error {
		names = append(names, fi.Name)
		locked = locked || protected != nil && protected(fi.ModTime)
		return nil
	}); err != nil {
		return 0, fmt.Errorf("compact: list pack indexes: %w", err)
	}
	if len(names) <= max || locked {
		return 0, nil
	}
	if err := b.refresh(ctx); err != nil { // every listed index is in the view
		return 0, err
	}
	b.rmu.RLock()
	x := &format.PackIndex{}
	packNo := map[uint32]uint32{}
	for _, e := range b.view.entries {
		n, ok := packNo[e.pack]
		if !ok {
			n = uint32(len(x.Packs))
			packNo[e.pack] = n
			x.Packs = append(x.Packs, b.view.packs[e.pack].name)
		}
		x.Entries = append(x.Entries, format.PackIndexEntry{ID: e.id, Pack: n, Offset: e.offset, Length: e.length})
	}
	b.rmu.RUnlock()
	data := x.Marshal()
	merged := format.Hash(data).String()
	if err := b.be.Save(ctx, backend.Handle{Type: backend.PackIndexFile, Name: merged}, data); err != nil {
		return 0, fmt.Errorf("compact: save merged pack index: %w", err)
	}
	if f, ok := b.be.(backend.Flusher); ok {
		if err := f.Flush(ctx); err != nil {
			return 0, err
		}
	}
	b.rmu.Lock()
	b.loaded[merged] = true
	b.rmu.Unlock()
	b.cacheIndex(merged, data)
	for _, n := range names {
		if n == merged {
			continue
		}
		if err := b.be.Remove(ctx, backend.Handle{Type: backend.PackIndexFile, Name: n}); err != nil {
			return 0, fmt.Errorf("compact: %w", err)
		}
	}
	return len(names), nil
}

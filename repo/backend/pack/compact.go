package pack

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

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
	plan := b.entriesOf(repack, allEntries)
	for _, name := range repack {
		if _, err := b.rewrite(ctx, name, plan[name], nil, 1); err != nil {
			return nil, err
		}
	}
	if _, err := b.retire(ctx, append(append([]format.ID(nil), remove...), repack...)); err != nil {
		return nil, err
	}
	n, err := b.mergeIndexes(ctx, opts.MaxIndexes, opts.Protected)
	rep.IndexesMerged = n
	return rep, err
}

// retire takes the packs in gone out of the repository in the order that
// keeps every chunk readable at every moment: what was saved since the
// last Flush (the live chunks copied out of them) goes into durable packs
// named by a durable pack index; then a durable pack index says the packs
// in gone are gone; then they are removed. It returns the packs uploaded
// since recordWritten (RewritePacks's; nil for gc's Compact). A pack so
// uploaded is never retired (packs have names of their own, so this only
// guards the invariant).
func (b *Backend) retire(ctx context.Context, gone []format.ID) ([]PackInfo, error) {
	if err := b.Flush(ctx); err != nil {
		return nil, err
	}
	written := b.takeWritten()
	gone = slices.DeleteFunc(slices.Clone(gone), func(id format.ID) bool {
		return slices.ContainsFunc(written, func(p PackInfo) bool { return p.Name == id })
	})
	if len(gone) == 0 {
		return written, nil
	}
	x := &format.PackIndex{Packs: gone}
	for i := range gone {
		x.GonePacks = append(x.GonePacks, uint32(i))
	}
	if err := b.saveIndex(ctx, x); err != nil {
		return nil, err
	}
	if err := b.flushInner(ctx); err != nil {
		return nil, err
	}
	for _, name := range gone {
		if err := b.be.Remove(ctx, backend.Handle{Type: backend.PackFile, Name: name.String()}); err != nil {
			return nil, fmt.Errorf("compact: %w", err)
		}
	}
	return written, nil
}

// Transform turns a chunk's stored frame into the frame to store in its
// place (the same chunk, so the same content once decoded), or returns
// frame itself (or equal bytes) to keep it. It is called on several
// goroutines at once; frame is only valid during the call.
type Transform func(id format.ID, frame []byte) ([]byte, error)

// entrySel chooses which of a pack's entries a rewrite stores again.
type entrySel int

const (
	allEntries    entrySel = iota // every entry the view has for the pack (gc)
	newestEntries                 // only chunks whose newest frame is in this pack, or whose newer packs are missing
)

// rewriteResult is what rewriting one pack did.
type rewriteResult struct {
	changed       bool // false: nothing stored, the pack stays as it is
	chunks        int  // frames stored again
	dropped       int  // frames left behind: a newer copy of the chunk is stored
	before, after int64
}

// rewrite stores a pack's entries again (as entriesOf chose them),
// through transform when it is set, using workers goroutines for
// transform. With a transform, a pack none of whose frames changes and
// none dropped is left alone (changed false, nothing stored).
func (b *Backend) rewrite(ctx context.Context, name format.ID, pe packEntries, transform Transform, workers int) (rewriteResult, error) {
	var res rewriteResult
	data, err := b.be.Load(ctx, backend.Handle{Type: backend.PackFile, Name: name.String()}, 0, -1)
	if err != nil {
		return res, fmt.Errorf("compact: read pack %s: %w", name.Short(), err)
	}
	keep := slices.Clone(pe.keep)
	for _, sup := range pe.newer {
		// Left behind only when the newer copy is really there.
		_, err := b.be.Stat(ctx, backend.Handle{Type: backend.PackFile, Name: sup.pack.String()})
		switch {
		case err == nil:
			res.dropped++
		case errors.Is(err, backend.ErrNotFound):
			keep = append(keep, sup.e)
		default:
			return res, fmt.Errorf("compact: %w", err)
		}
	}
	slices.SortFunc(keep, func(x, y entry) int { return cmp.Compare(x.offset, y.offset) })
	frames := make([][]byte, len(keep))
	for i, e := range keep {
		if int64(e.offset)+int64(e.length) > int64(len(data)) {
			return res, fmt.Errorf("compact: pack %s is shorter than its index says: %w", name.Short(), format.ErrCorrupt)
		}
		frames[i] = data[e.offset : e.offset+e.length]
	}
	res.changed = res.dropped > 0 || transform == nil
	if transform != nil {
		out := make([][]byte, len(frames))
		var changed atomic.Bool
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(max(1, workers))
		for i := range frames {
			g.Go(func() error {
				if err := gctx.Err(); err != nil {
					return err
				}
				f, err := transform(keep[i].id, frames[i])
				if err != nil {
					return fmt.Errorf("compact: pack %s chunk %s: %w", name.Short(), keep[i].id.Short(), err)
				}
				if !bytes.Equal(f, frames[i]) {
					changed.Store(true)
				}
				out[i] = f
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return res, err
		}
		res.changed = res.changed || changed.Load()
		if !res.changed {
			return res, nil
		}
		for i := range frames {
			res.before += int64(len(frames[i]))
		}
		frames = out
	}
	for i, e := range keep {
		if err := b.Save(ctx, backend.Handle{Type: backend.ChunkFile, Name: e.id.String()}, frames[i]); err != nil {
			return res, err
		}
		res.chunks++
		res.after += int64(len(frames[i]))
	}
	if transform == nil {
		res.before = res.after
	}
	return res, nil
}

// superseded is a pack's entry whose chunk has a newer frame in pack.
type superseded struct {
	e    entry
	pack format.ID
}

// packEntries are the entries of one pack a rewrite stores again (keep)
// and, for newestEntries, those whose chunk has a newer frame elsewhere.
type packEntries struct {
	keep  []entry
	newer []superseded
}

// entriesOf chooses the entries a rewrite of each named pack stores
// again, in one pass over the view (its entries are sorted by chunk, a
// chunk's newest last): allEntries keeps every entry the view has for the
// pack (gc's repacks of mostly dead packs); newestEntries keeps a chunk's
// entry only where the pack holds its newest frame.
func (b *Backend) entriesOf(names []format.ID, sel entrySel) map[format.ID]packEntries {
	b.rmu.RLock()
	defer b.rmu.RUnlock()
	want := map[uint32]format.ID{}
	for _, name := range names {
		if n, ok := b.view.packNo[name]; ok {
			want[n] = name
		}
	}
	out := map[format.ID]packEntries{}
	es := b.view.entries
	for lo := 0; lo < len(es); {
		hi := lo + 1
		for hi < len(es) && es[hi].id == es[lo].id {
			hi++
		}
		newest := -1
		for i := lo; i < hi; i++ {
			if !b.view.packs[es[i].pack].gone {
				newest = i
			}
		}
		for i := lo; i < hi; i++ {
			e := es[i]
			name, ok := want[e.pack]
			if !ok {
				continue
			}
			pe := out[name]
			switch {
			case sel == allEntries || newest < 0 || i == newest:
				pe.keep = append(pe.keep, e)
			case es[newest].pack == e.pack: // the chunk twice in this pack: its newest entry is kept
			default:
				pe.newer = append(pe.newer, superseded{e, b.view.packs[es[newest].pack].name})
			}
			out[name] = pe
		}
		lo = hi
	}
	return out
}

// PackInfo is a stored pack that the pack indexes name.
type PackInfo struct {
	Name    format.ID
	Size    int64
	ModTime time.Time // the pack object's, on the storage's clock
}

// Packs lists the stored packs that pack indexes name and do not say are
// gone, as of a refresh now.
func (b *Backend) Packs(ctx context.Context) ([]PackInfo, error) {
	if err := b.refresh(ctx); err != nil {
		return nil, err
	}
	b.rmu.RLock()
	named := map[format.ID]bool{}
	for _, p := range b.view.packs {
		if !p.gone {
			named[p.name] = true
		}
	}
	b.rmu.RUnlock()
	var out []PackInfo
	if err := b.be.List(ctx, backend.PackFile, func(fi backend.FileInfo) error {
		if id, err := format.ParseID(fi.Name); err == nil && named[id] {
			out = append(out, PackInfo{Name: id, Size: fi.Size, ModTime: fi.ModTime})
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	return out, nil
}

// RewriteReport is what RewritePacks did.
type RewriteReport struct {
	Rewritten []format.ID // packs whose frames went into new packs; removed
	Unchanged []format.ID // packs the transform changed nothing in; left as they are
	Written   []PackInfo  // the new packs
	Chunks    int         // frames stored again
	Dropped   int         // frames not stored again: a newer copy of the chunk is stored elsewhere
	// BytesBefore and BytesAfter are the sizes of the frames stored again,
	// as they were and as they are now.
	BytesBefore, BytesAfter int64
}

// RewritePacks rewrites the named packs through transform as one batch:
// of each pack, the frames that are their chunk's newest copy go through
// transform (workers at once) into new packs, in the order they had; the
// new packs and a pack index naming them become durable, then a pack
// index says the old packs are gone, then they are removed (Compact's
// order: a reader with an older view finds a pack missing, refreshes and
// reads the chunk from its new pack). Frames whose chunk has a newer copy
// in another stored pack are left behind (what a batch interrupted after
// its new packs were indexed leaves). A pack whose frames transform
// leaves as they are, and that has nothing to leave behind, is not
// touched. A crash at any point leaves every chunk readable: at worst the
// new packs are orphans (gc removes them) or the old ones are kept beside
// them until a rewrite finds them superseded.
//
// It must not run beside another RewritePacks or Compact on the same
// repository (the maintenance lock); captures, which only add packs, and
// readers may run.
func (b *Backend) RewritePacks(ctx context.Context, names []format.ID, transform Transform, workers int) (*RewriteReport, error) {
	if err := b.Flush(ctx); err != nil {
		return nil, err
	}
	b.recordWritten()
	defer b.takeWritten() // stops recording when the batch fails
	if err := b.refresh(ctx); err != nil {
		return nil, err
	}
	rep := &RewriteReport{}
	plan := b.entriesOf(names, newestEntries)
	for _, name := range names {
		res, err := b.rewrite(ctx, name, plan[name], transform, workers)
		if err != nil {
			return nil, err
		}
		if !res.changed {
			rep.Unchanged = append(rep.Unchanged, name)
			continue
		}
		rep.Rewritten = append(rep.Rewritten, name)
		rep.Chunks += res.chunks
		rep.Dropped += res.dropped
		rep.BytesBefore += res.before
		rep.BytesAfter += res.after
	}
	written, err := b.retire(ctx, rep.Rewritten)
	if err != nil {
		return nil, err
	}
	rep.Written = written
	return rep, nil
}

// MergeIndexes replaces the pack indexes with one when there are more
// than max of them (and none is protected), as Compact does; it returns
// how many it replaced. It is safe beside captures: an index written
// while it runs is left as it is.
func (b *Backend) MergeIndexes(ctx context.Context, max int, protected func(time.Time) bool) (int, error) {
	return b.mergeIndexes(ctx, max, protected)
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

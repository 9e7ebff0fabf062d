package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
	"github.com/vmvault/vmvault/repo/keys"
)

// Copying restore points between repositories (vmvault copy).
//
// Two repositories with the same chunk size whose chunk ids agree (both
// unencrypted, or encrypted with the same key material: a twin made with
// InitOptions.Like) are copied frame by frame: a chunk missing at the
// destination goes across as it is stored (compressed, sealed), is checked
// against its id on the way (decoded and hashed; with only capture keys on
// both sides, its checksum), and a restore point's indexes and manifest
// follow byte for byte, so it has the same id on both sides. Any other
// pair is copied by encoding anew: each disk is read through the source's
// Disk and written like a capture that deduplicates against the copy's
// previous restore point of the VM; the new manifest keeps the source's
// and records its Origin.
//
// Commit order at the destination is its own: chunks (made durable), then
// indexes, then the manifest, per restore point, oldest first. An
// interrupted copy leaves no partial restore point; the destination's pack
// layer writes a pack index after every four packs uploaded, so a copy
// run again finds the chunks that reached durable packs and sends only
// the rest (what was in open, uploading or not yet indexed packs goes
// again).
//
// The copy holds a reader lock on the source pinning the restore points
// it copies, and a writer lock on the destination: gc on either side runs
// beside it and keeps what it needs.

// Copy modes.
const (
	CopyFrames   = "frames"   // stored frames go across as they are
	CopyReencode = "reencode" // chunks are decoded and encoded anew
)

// CopyOptions choose what Copy copies and how.
type CopyOptions struct {
	// RestorePoints are the source's restore points to copy (any order).
	RestorePoints []*RestorePoint
	// DryRun plans the copy (restore points, chunks, bytes) and sends
	// nothing.
	DryRun bool
	// LimitRate bounds the stored bytes moved per second (0: no bound).
	// Reads and writes follow it on average, in bursts of up to a pack.
	LimitRate int64
	Progress  *CopyProgress
	LockWait  time.Duration
}

// CopyProgress counts a running copy; safe to read while it runs.
// Progress counts chunk data (raw bytes) to move and moved.
type CopyProgress struct {
	Progress
	RestorePoints, RestorePointsDone atomic.Int64
	Chunks, ChunksDone               atomic.Int64
	Sent                             atomic.Int64 // stored bytes written to the destination
}

// CopyReport is what Copy did (or, dry, would do).
type CopyReport struct {
	Mode   string // CopyFrames or CopyReencode
	Reason string // why CopyReencode
	DryRun bool
	// Present lists selected restore points the destination has already.
	Present []*RestorePoint
	// Copied lists the restore points copied (would be, dry), oldest first.
	Copied []CopiedRestorePoint
	// Skipped lists restore points not copied because source data is
	// damaged; Damage says where.
	Skipped []*RestorePoint
	Damage  []Damage
	// Chunks the copied restore points need that the destination lacked,
	// and what was sent for them (stored bytes); ChunksPresent were at the
	// destination already.
	ChunksSent    int64
	BytesSent     int64
	DataBytesSent int64 // their raw size
	ChunksPresent int64
	// BytesRead is what was read from the source (frames, and in
	// CopyFrames the gaps between wanted frames of a pack).
	BytesRead int64
}

// CopiedRestorePoint pairs a source restore point with its copy.
type CopiedRestorePoint struct {
	Source *RestorePoint
	Copy   *RestorePoint
}

// CopyMode says how restore points of src would be copied into dst, and
// why when not as frames.
func CopyMode(src, dst *Repository) (mode, reason string) {
	switch {
	case src.cfg.ChunkSize != dst.cfg.ChunkSize:
		return CopyReencode, fmt.Sprintf("the chunk sizes differ (%d and %d bytes)", src.cfg.ChunkSize, dst.cfg.ChunkSize)
	case src.cfg.Hash != dst.cfg.Hash:
		return CopyReencode, "the chunk hashes differ"
	case src.keys == nil && dst.keys != nil:
		return CopyReencode, "the destination is encrypted, the source is not"
	case src.keys != nil && dst.keys == nil:
		return CopyReencode, "the source is encrypted, the destination is not"
	case src.keys != nil && !src.keys.SameMaterial(dst.keys):
		return CopyReencode, "the repositories have different keys (vmvault init --like SOURCE makes a destination that shares them)"
	}
	return CopyFrames, ""
}

// Copy copies restore points from src to dst. Restore points dst has
// already are left alone; ones whose source data is damaged are skipped
// and reported. An error means the copy stopped: the report then says
// what was committed before.
func Copy(ctx context.Context, src, dst *Repository, opts CopyOptions) (*CopyReport, error) {
	if src.cfg.ID == dst.cfg.ID {
		return nil, fmt.Errorf("copy: %s and %s are the same repository", src.be.Location(), dst.be.Location())
	}
	if opts.Progress == nil {
		opts.Progress = &CopyProgress{}
	}
	mode, reason := CopyMode(src, dst)
	rep := &CopyReport{Mode: mode, Reason: reason, DryRun: opts.DryRun}
	if mode == CopyReencode && src.keys != nil && !src.keys.CanRead() {
		return nil, fmt.Errorf("copy: %s, so chunks are decrypted and encrypted again, which needs a full key of the source: %w", reason, keys.ErrCaptureKey)
	}
	rps := slices.Clone(opts.RestorePoints)
	sort.SliceStable(rps, func(i, j int) bool { return rps[i].Time.Before(rps[j].Time) })
	rps = slices.CompactFunc(rps, func(a, b *RestorePoint) bool { return a.ID == b.ID })

	slock, err := src.Lock(ctx, LockOptions{Kind: format.LockReader, Operation: "copy to " + dst.be.Location(), Pins: rps, Wait: opts.LockWait})
	if err != nil {
		return nil, fmt.Errorf("copy: source: %w", err)
	}
	defer slock.Unlock()
	var dlock *Lock
	if !opts.DryRun {
		if dlock, err = dst.Lock(ctx, LockOptions{Kind: format.LockWriter, Operation: "copy from " + src.be.Location(), Wait: opts.LockWait}); err != nil {
			return nil, fmt.Errorf("copy: destination: %w", err)
		}
		defer dlock.Unlock()
	}
	c := &copier{src: src, dst: dst, opts: opts, rep: rep, lock: dlock}
	if opts.LimitRate > 0 {
		// A burst of two chunks: a frame (a chunk and its header) passes
		// at once, and the rate holds from the first second on.
		c.limit = rate.NewLimiter(rate.Limit(opts.LimitRate), int(2*max(src.cfg.ChunkSize, dst.cfg.ChunkSize)))
	}
	todo, err := c.present(ctx, rps)
	if err != nil {
		return nil, fmt.Errorf("copy: %w", err)
	}
	opts.Progress.RestorePoints.Store(int64(len(todo)))
	if mode == CopyFrames {
		err = c.frames(ctx, todo)
	} else {
		err = c.reencode(ctx, todo)
	}
	if err != nil {
		return rep, fmt.Errorf("copy: %w", err)
	}
	return rep, nil
}

type copier struct {
	src, dst *Repository
	opts     CopyOptions
	rep      *CopyReport
	lock     *Lock // the destination's writer lock (nil when dry)
	limit    *rate.Limiter
	copies   map[string]*RestorePoint // dst restore points by the source id they copy
	dstRPs   []*RestorePoint
}

// present splits off the restore points the destination has already.
func (c *copier) present(ctx context.Context, rps []*RestorePoint) ([]*RestorePoint, error) {
	drps, bad, err := c.dst.ListRestorePoints(ctx)
	if err != nil {
		return nil, fmt.Errorf("destination: %w", err)
	}
	c.dstRPs = drps
	c.copies = map[string]*RestorePoint{}
	for _, d := range drps {
		if d.Origin != nil && d.Origin.Repository == c.src.cfg.ID {
			c.copies[d.Origin.RestorePoint] = d
		}
		if c.rep.Mode == CopyFrames {
			c.copies[d.ID.String()] = d
		}
	}
	var todo []*RestorePoint
	for _, rp := range rps {
		if _, ok := c.copies[rp.ID.String()]; ok {
			c.rep.Present = append(c.rep.Present, rp)
			continue
		}
		if c.rep.Mode == CopyFrames && slices.ContainsFunc(bad, func(b BadRestorePoint) bool { return b.Name == rp.ID.String() }) {
			return nil, fmt.Errorf("destination: restore point %s is there but cannot be read", rp.ID.Short())
		}
		todo = append(todo, rp)
	}
	return todo, nil
}

// frameSource is where the source's chunk frames are read: below any disk
// cache (a copy reads each frame once).
func (r *Repository) frameSource() backend.Backend {
	if r.packs != nil {
		return r.packs
	}
	return r.be
}

// copyIndex is one source index a restore point needs: bytes and content.
type copyIndex struct {
	name string
	raw  []byte
	idx  *format.Index
}

func (c *copier) frames(ctx context.Context, todo []*RestorePoint) error {
	// What the destination has: its listed chunks, less those its verify
	// found damaged (sent again).
	var have []format.ID
	if err := c.dst.be.List(ctx, backend.ChunkFile, func(fi backend.FileInfo) error {
		if id, err := format.ParseID(fi.Name); err == nil {
			have = append(have, id)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("list destination chunks: %w", err)
	}
	slices.SortFunc(have, func(a, b format.ID) int { return bytes.Compare(a[:], b[:]) })
	have = slices.Compact(have)
	dstDamaged, _, err := c.dst.DamagedChunks(ctx)
	if err != nil {
		return fmt.Errorf("destination: %w", err)
	}
	srcDamaged, _, err := c.src.DamagedChunks(ctx)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	hasChunk := func(id format.ID) bool {
		if _, bad := dstDamaged[id]; bad {
			return false
		}
		_, ok := slices.BinarySearchFunc(have, id, func(a, b format.ID) int { return bytes.Compare(a[:], b[:]) })
		return ok
	}

	// Plan: each restore point's indexes and the chunks it adds to what
	// the destination has and what earlier restore points of this copy
	// send.
	type plan struct {
		rp      *RestorePoint
		indexes []copyIndex
		need    []format.ID
		size    map[format.ID]int64
	}
	planned := map[format.ID]bool{}
	loaded := map[string]*copyIndex{}
	var plans []*plan
	for _, rp := range todo {
		p := &plan{rp: rp, size: map[format.ID]int64{}}
		var damage []Damage
		for _, d := range rp.Disks {
			ci, ok := loaded[d.Index]
			if !ok {
				raw, idx, err := c.src.loadIndexBytes(ctx, d.Index)
				if err != nil && ctx.Err() != nil {
					return err
				}
				if err == nil && (idx.DiskSize != d.Size || idx.ChunkSize != d.ChunkSize) {
					err = fmt.Errorf("index describes %d bytes in %d-byte chunks, the manifest %d in %d: %w", idx.DiskSize, idx.ChunkSize, d.Size, d.ChunkSize, format.ErrCorrupt)
				}
				if err != nil {
					damage = append(damage, Damage{RestorePoint: rp, Disk: d.Name, Offset: -1, Problem: err.Error()})
					loaded[d.Index] = nil
					continue
				}
				ci = &copyIndex{name: d.Index, raw: raw, idx: idx}
				loaded[d.Index] = ci
			}
			if ci == nil {
				damage = append(damage, Damage{RestorePoint: rp, Disk: d.Name, Offset: -1, Problem: "index unreadable (see above)"})
				continue
			}
			p.indexes = append(p.indexes, *ci)
		}
		if len(damage) > 0 {
			c.rep.Skipped = append(c.rep.Skipped, rp)
			c.rep.Damage = append(c.rep.Damage, damage...)
			c.opts.Progress.RestorePointsDone.Add(1)
			continue
		}
		for _, ci := range p.indexes {
			for i, id := range ci.idx.IDs {
				if id.IsZero() || planned[id] {
					continue
				}
				planned[id] = true
				if hasChunk(id) {
					c.rep.ChunksPresent++
					continue
				}
				p.need = append(p.need, id)
				p.size[id] = ci.idx.ChunkLen(i)
			}
		}
		for _, id := range p.need {
			c.opts.Progress.Total.Add(p.size[id])
		}
		c.opts.Progress.Chunks.Add(int64(len(p.need)))
		plans = append(plans, p)
	}
	if c.opts.DryRun {
		fsrc := c.src.frameSource()
		for _, p := range plans {
			for _, id := range p.need {
				c.rep.ChunksSent++
				c.rep.DataBytesSent += p.size[id]
				if fi, err := fsrc.Stat(ctx, chunkHandle(id)); err == nil {
					c.rep.BytesSent += fi.Size
				}
			}
			c.rep.Copied = append(c.rep.Copied, CopiedRestorePoint{Source: p.rp, Copy: p.rp})
		}
		return nil
	}

	// Data keys travel first: every frame sealed with one is then
	// readable at the destination (and checkable there with a full key).
	if c.src.keys != nil {
		if err := c.copyDataKeys(ctx); err != nil {
			return err
		}
	}
	bad := map[format.ID]error{}
	for _, p := range plans {
		problems, err := c.sendFrames(ctx, p.need, p.size, srcDamaged)
		if err != nil {
			return err
		}
		for id, e := range problems {
			bad[id] = e
		}
		var damage []Damage
		for _, ci := range p.indexes {
			name := diskOfIndex(p.rp, ci.name)
			for i, id := range ci.idx.IDs {
				if e, ok := bad[id]; ok {
					damage = append(damage, Damage{RestorePoint: p.rp, Disk: name, Offset: int64(i) * ci.idx.ChunkSize, Problem: e.Error()})
				}
			}
		}
		if len(damage) > 0 {
			c.rep.Skipped = append(c.rep.Skipped, p.rp)
			c.rep.Damage = append(c.rep.Damage, damage...)
			c.opts.Progress.RestorePointsDone.Add(1)
			continue
		}
		if err := c.commitFrames(ctx, p.rp, p.indexes); err != nil {
			return err
		}
	}
	return nil
}

// diskOfIndex names the disk of rp whose index is name.
func diskOfIndex(rp *RestorePoint, name string) string {
	var out []string
	for _, d := range rp.Disks {
		if d.Index == name {
			out = append(out, d.Name)
		}
	}
	return strings.Join(out, ",")
}

// copyDataKeys stores at the destination the source's data keys it lacks.
func (c *copier) copyDataKeys(ctx context.Context) error {
	list := func(r *Repository) (map[string]bool, error) {
		out := map[string]bool{}
		err := r.be.List(ctx, backend.KeyFile, func(fi backend.FileInfo) error {
			if strings.HasPrefix(fi.Name, "dk-") {
				out[fi.Name] = true
			}
			return nil
		})
		return out, err
	}
	have, err := list(c.dst)
	if err != nil {
		return fmt.Errorf("destination: list data keys: %w", err)
	}
	want, err := list(c.src)
	if err != nil {
		return fmt.Errorf("source: list data keys: %w", err)
	}
	for name := range want {
		if have[name] {
			continue
		}
		b, err := c.src.be.Load(ctx, keyHandle(name), 0, -1)
		if err != nil {
			return fmt.Errorf("source: data key %s: %w", name, err)
		}
		if err := c.dst.be.Save(ctx, keyHandle(name), b); err != nil {
			return fmt.Errorf("destination: data key %s: %w", name, err)
		}
	}
	return nil
}

// sendFrames moves the frames of need from the source to the destination,
// checking each, and makes them durable. It returns the chunks it could not
// copy (damaged or missing at the source), which it did not send.
func (c *copier) sendFrames(ctx context.Context, need []format.ID, size map[format.ID]int64, srcDamaged map[format.ID]format.DamagedChunk) (map[format.ID]error, error) {
	if len(need) == 0 {
		return nil, nil
	}
	// The checking side: a key that reads chunks if either side has one
	// (their key material is the same), else checksums only.
	checker := c.src
	if c.src.keys != nil && !c.src.keys.CanRead() && c.dst.keys.CanRead() {
		checker = c.dst
	}
	fullCheck := checker.keys == nil || checker.keys.CanRead()
	type frameJob struct {
		id    format.ID
		frame []byte
	}
	var (
		mu       sync.Mutex
		problems = map[format.ID]error{}
		got      = map[format.ID]bool{}
	)
	fail := func(id format.ID, err error) {
		mu.Lock()
		problems[id] = err
		mu.Unlock()
	}
	g, gctx := errgroup.WithContext(ctx)
	checks := make(chan frameJob, 64)
	saves := make(chan frameJob, 64)
	g.Go(func() error { // reader
		defer close(checks)
		deliver := func(name string, frame []byte) error {
			id, err := format.ParseID(name)
			if err != nil {
				return err
			}
			if c.limit != nil {
				if err := c.limit.WaitN(gctx, min(len(frame), c.limit.Burst())); err != nil {
					return err
				}
			}
			mu.Lock()
			got[id] = true
			c.rep.BytesRead += int64(len(frame))
			mu.Unlock()
			select {
			case checks <- frameJob{id, frame}:
				return nil
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		fsrc := c.src.frameSource()
		names := make([]string, len(need))
		for i, id := range need {
			names[i] = id.String()
		}
		if bl, ok := fsrc.(backend.BatchLoader); ok {
			return bl.LoadBatch(gctx, backend.ChunkFile, names, deliver)
		}
		lg, lctx := errgroup.WithContext(gctx)
		lg.SetLimit(c.src.props.ReadParallelism)
		var dmu sync.Mutex // deliver runs on one goroutine at a time
		for _, n := range names {
			lg.Go(func() error {
				b, err := fsrc.Load(lctx, backend.Handle{Type: backend.ChunkFile, Name: n}, 0, -1)
				if errors.Is(err, backend.ErrNotFound) {
					return nil
				}
				if err != nil {
					return err
				}
				dmu.Lock()
				defer dmu.Unlock()
				return deliver(n, b)
			})
		}
		return lg.Wait()
	})
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		g.Go(func() error { // checkers
			defer wg.Done()
			buf := make([]byte, 0, c.src.cfg.ChunkSize+format.DecodeSlack)
			for j := range checks {
				var err error
				buf, err = checker.checkFrame(gctx, j.id, j.frame, size[j.id], buf)
				if err == nil && !fullCheck {
					if d, listed := srcDamaged[j.id]; listed {
						err = fmt.Errorf("on the source's damaged list (%s) and this key cannot check its content", d.Problem)
					}
				}
				if err != nil {
					if gctx.Err() != nil {
						return gctx.Err()
					}
					fail(j.id, err)
					continue
				}
				select {
				case saves <- j:
				case <-gctx.Done():
					return gctx.Err()
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		wg.Wait()
		close(saves)
		return nil
	})
	for range max(1, c.dst.props.WriteParallelism) {
		g.Go(func() error { // savers
			for j := range saves {
				if err := c.dst.be.Save(gctx, chunkHandle(j.id), j.frame); err != nil {
					return fmt.Errorf("destination: store chunk %s: %w", j.id.Short(), err)
				}
				n := int64(len(j.frame))
				c.opts.Progress.Sent.Add(n)
				c.opts.Progress.ChunksDone.Add(1)
				c.opts.Progress.Done.Add(size[j.id])
				mu.Lock()
				c.rep.ChunksSent++
				c.rep.BytesSent += n
				c.rep.DataBytesSent += size[j.id]
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	for _, id := range need {
		if !got[id] {
			problems[id] = errors.New("missing at the source")
		}
	}
	for id := range problems {
		c.opts.Progress.ChunksDone.Add(1)
		c.opts.Progress.Done.Add(size[id])
	}
	if fl, ok := c.dst.be.(backend.Flusher); ok {
		if err := fl.Flush(ctx); err != nil {
			return nil, fmt.Errorf("destination: make chunks durable: %w", err)
		}
	}
	return problems, nil
}

// checkFrame checks a stored chunk frame of n raw bytes against its id:
// decoded and hashed when the repository's key reads chunks (or it is not
// encrypted), else the frame's checksum. buf is scratch space for the
// decoded chunk; the (possibly grown) buffer is returned for reuse.
func (r *Repository) checkFrame(ctx context.Context, id format.ID, frame []byte, n int64, buf []byte) ([]byte, error) {
	var out []byte
	var err error
	switch {
	case r.keys == nil:
		out, err = format.DecodeChunkID(buf[:0], frame, id)
	case !r.keys.CanRead():
		return buf, keys.CheckFrame(frame)
	default:
		var plain []byte
		if plain, err = r.openFrame(ctx, frame, id); err != nil {
			return buf, err
		}
		out, err = format.DecodeChunkHashed(buf[:0], plain, id, r.keys.ChunkID)
		r.bufs.Put(plain)
	}
	if err != nil {
		return buf, err
	}
	if int64(len(out)) != n {
		return out, fmt.Errorf("holds %d bytes, the index needs %d: %w", len(out), n, format.ErrCorrupt)
	}
	return out, nil
}

// commitFrames stores a restore point's indexes and manifest, byte for
// byte, after its chunks are durable.
func (c *copier) commitFrames(ctx context.Context, rp *RestorePoint, indexes []copyIndex) error {
	for _, ci := range indexes {
		h := backend.Handle{Type: backend.IndexFile, Name: ci.name}
		if _, err := c.dst.be.Stat(ctx, h); err == nil {
			continue
		}
		if c.dst.nameID(ci.raw).String() != ci.name {
			return fmt.Errorf("index %s would get another name at the destination (keys differ?)", ci.name[:12])
		}
		if err := c.dst.be.Save(ctx, h, ci.raw); err != nil {
			return fmt.Errorf("destination: store index: %w", err)
		}
	}
	b, err := c.src.be.Load(ctx, snapshotHandle(rp.ID), 0, -1)
	if err != nil {
		return fmt.Errorf("source restore point %s: %w", rp.ID.Short(), err)
	}
	if c.dst.nameID(b) != rp.ID {
		return fmt.Errorf("restore point %s would get another id at the destination (keys differ?)", rp.ID.Short())
	}
	if err := c.dst.be.Save(ctx, snapshotHandle(rp.ID), b); err != nil {
		return fmt.Errorf("destination: store restore point %s: %w", rp.ID.Short(), err)
	}
	c.rep.Copied = append(c.rep.Copied, CopiedRestorePoint{Source: rp, Copy: rp})
	c.copies[rp.ID.String()] = rp
	c.opts.Progress.RestorePointsDone.Add(1)
	return nil
}

// reencode copies each restore point by reading its disks at the source
// and writing them like a deduplicating capture.
func (c *copier) reencode(ctx context.Context, todo []*RestorePoint) error {
	if c.opts.DryRun {
		// What is new at the destination is known only after hashing:
		// report what would be read.
		for _, rp := range todo {
			for _, d := range rp.Disks {
				idx, err := c.src.loadIndex(ctx, d.Index)
				if err != nil {
					return fmt.Errorf("source restore point %s disk %s: %w", rp.ID.Short(), d.Name, err)
				}
				for i, id := range idx.IDs {
					if !id.IsZero() {
						c.rep.BytesRead += idx.ChunkLen(i)
					}
				}
			}
			c.rep.Copied = append(c.rep.Copied, CopiedRestorePoint{Source: rp})
		}
		return nil
	}
	for _, rp := range todo {
		cp, err := c.reencodeOne(ctx, rp)
		var ce *ChunkError
		var de *damagedDiskError
		switch {
		case ctx.Err() != nil:
		case errors.As(err, &ce):
			c.rep.Skipped = append(c.rep.Skipped, rp)
			c.rep.Damage = append(c.rep.Damage, Damage{RestorePoint: rp, Disk: ce.Disk, Offset: ce.Offset, Problem: ce.Err.Error()})
			c.opts.Progress.RestorePointsDone.Add(1)
			continue
		case errors.As(err, &de):
			c.rep.Skipped = append(c.rep.Skipped, rp)
			c.rep.Damage = append(c.rep.Damage, Damage{RestorePoint: rp, Disk: de.disk, Offset: -1, Problem: de.err.Error()})
			c.opts.Progress.RestorePointsDone.Add(1)
			continue
		}
		if err != nil {
			return err
		}
		c.rep.Copied = append(c.rep.Copied, CopiedRestorePoint{Source: rp, Copy: cp})
		c.copies[rp.ID.String()] = cp
		c.dstRPs = append(c.dstRPs, cp)
		c.opts.Progress.RestorePointsDone.Add(1)
	}
	return nil
}

func (c *copier) reencodeOne(ctx context.Context, rp *RestorePoint) (*RestorePoint, error) {
	// The base: the destination's newest restore point of the VM, so
	// chunks it holds are not stored again.
	base := Latest(c.dstRPs, rp.VM)
	if base != nil {
		if err := c.lock.Pin(ctx, base); err != nil {
			base = nil // forgotten meanwhile: a full copy
		} else {
			defer c.lock.Unpin(ctx, base)
		}
	}
	var disks []DiskSource
	for _, d := range rp.Disks {
		disk, err := c.src.OpenDisk(ctx, rp, d.Name)
		if err != nil {
			return nil, &damagedDiskError{d.Name, err}
		}
		disk.SetStreaming(true)
		var data []extent.Range // non-zero chunks only are read
		for i, id := range disk.idx.IDs {
			if !id.IsZero() {
				data = append(data, extent.Range{Offset: int64(i) * disk.idx.ChunkSize, Length: disk.idx.ChunkLen(i)})
			}
		}
		ds := DiskSource{Name: d.Name, Reader: limitedReader{disk, c.limit, ctx}, Size: d.Size, Data: extent.Normalize(data),
			ChangeToken: d.ChangeToken, Identity: d.Identity, Reason: d.Stats.Reason}
		if base != nil {
			if _, err := base.Disk(d.Name); err == nil {
				ds.Base = base
			}
		}
		disks = append(disks, ds)
	}
	mds, err := c.dst.writeDisks(ctx, &CaptureOptions{VM: rp.VM, Progress: &c.opts.Progress.Progress}, disks)
	if err != nil {
		return nil, err
	}
	m := *rp.Manifest
	m.Disks = slices.Clone(rp.Disks)
	for i := range m.Disks {
		m.Disks[i].Index, m.Disks[i].ChunkSize = mds[i].Index, mds[i].ChunkSize
		if p, ok := c.copies[m.Disks[i].Parent]; ok {
			m.Disks[i].Parent = p.ID.String()
		} else {
			m.Disks[i].Parent = ""
		}
		c.rep.ChunksSent += mds[i].Stats.NewChunks
		c.rep.BytesSent += mds[i].Stats.BytesStored
		c.rep.BytesRead += mds[i].Stats.BytesRead
		c.opts.Progress.Sent.Add(mds[i].Stats.BytesStored)
	}
	m.Origin = &format.Origin{Repository: c.src.cfg.ID, RestorePoint: rp.ID.String()}
	b, err := m.Marshal()
	if err != nil {
		return nil, err
	}
	id := c.dst.nameID(b)
	if err := c.dst.be.Save(ctx, snapshotHandle(id), b); err != nil {
		return nil, fmt.Errorf("destination: store restore point: %w", err)
	}
	return &RestorePoint{ID: id, Manifest: &m}, nil
}

// damagedDiskError is a source disk whose index cannot be used.
type damagedDiskError struct {
	disk string
	err  error
}

func (e *damagedDiskError) Error() string { return "source disk " + e.disk + ": " + e.err.Error() }

// limitedReader paces reads of a source disk to a copy's rate limit.
type limitedReader struct {
	d     *Disk
	limit *rate.Limiter
	ctx   context.Context
}

func (l limitedReader) ReadAt(p []byte, off int64) (int, error) {
	if l.limit != nil {
		if err := l.limit.WaitN(l.ctx, min(len(p), l.limit.Burst())); err != nil {
			return 0, err
		}
	}
	return l.d.ReadAt(p, off)
}

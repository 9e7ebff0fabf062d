package repo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
	"github.com/vmvault/vmvault/repo/keys"
)

// writeBehind bounds the memory of compressed chunks queued for saving.
const writeBehind = 64 << 20

// DiskSource is one disk to capture, with the decision a capture source
// made for it (cbt.Capture decides; the writer carries it out).
type DiskSource struct {
	Name   string
	Reader io.ReaderAt
	Size   int64
	// Base is the earlier restore point holding a disk of the same name
	// that this capture builds on; nil means a full capture.
	Base *RestorePoint
	// Changed lists the byte ranges that changed since Base's disk (an
	// extents incremental: only chunks these ranges touch are read). Nil
	// means "unknown": every chunk is read and only chunks whose content
	// is not in Base are stored (dedup).
	Changed []extent.Range
	// Data, when not nil, lists the only ranges that may hold non-zero
	// bytes (a sparse file's allocated extents): chunks outside them are
	// recorded as zero without being read.
	Data []extent.Range
	// ChangeToken is the source's change marker (e.g. a vSphere changeId)
	// as of this capture, stored for the next incremental.
	ChangeToken string
	// Identity is the source's stable identity of the disk, stored.
	Identity string
	// Reason explains the mode (why not an incremental), recorded.
	Reason string
	// Skip lists the ranges the capture skips because the guest does not
	// use them (free space, swap), normalized: Reader already reads them
	// as zeros and Data already leaves them out. Skipped, when set, is
	// recorded in the disk's stats, its Bytes and Scope filled in from the
	// chunks actually read.
	Skip    []extent.Range
	Skipped *format.SkipStats
}

// ReadPlanner is implemented by disk readers that read ahead (an NBD
// export): before its first read the writer hands PlanReads every range
// it will read, in the order it reads them, each read lying within one
// block of align bytes (a chunk), so the reader can ask its server for
// large pieces of exactly those ranges.
type ReadPlanner interface {
	PlanReads(rs []extent.Range, align int64)
}

// Progress counts bytes a capture has to process and has processed; safe
// to read while the capture runs.
type Progress struct {
	Total atomic.Int64
	Done  atomic.Int64
}

// CaptureOptions describe a restore point to create.
type CaptureOptions struct {
	VM      string
	Source  string // what captured it, for people ("file", "vsphere direct")
	Lineage string // the chain of captures it continues (see format.Manifest)
	Tags    []string
	Time    time.Time // zero means now
	Config  json.RawMessage
	Labels  map[string]string
	// Progress, when set, counts the bytes to read and read.
	Progress *Progress
	LockWait time.Duration
	// Workers is the number of hashing/compression goroutines (0: GOMAXPROCS).
	Workers int
	// Compression is the codec for the chunks this capture stores (a
	// format.Compression* name; "": the repository's default). Each frame
	// records how it was compressed, so codecs mix freely.
	Compression string
}

type diskPlan struct {
	src     DiskSource
	ids     []format.ID
	read    []int // chunk numbers to read, ascending
	mode    string
	reason  string
	parent  string
	total   int64
	changed int64       // bytes the source reported changed (extents mode)
	known   []format.ID // chunks known stored and good (dedup mode)
	damaged map[format.ID]format.DamagedChunk
	dk      *keys.DataKey // seals new chunks (encrypted repositories)
}

// Capture stores a new restore point of disks and returns it. On any error
// (including cancellation) no restore point is created; objects already
// stored stay unreferenced until gc.
func (r *Repository) Capture(ctx context.Context, opts CaptureOptions, disks []DiskSource) (*RestorePoint, error) {
	if err := format.ValidName("VM", opts.VM); err != nil {
		return nil, err
	}
	if len(disks) == 0 {
		return nil, errors.New("capture: no disks")
	}
	if opts.Compression != "" {
		if err := format.ValidCompression(opts.Compression); err != nil {
			return nil, fmt.Errorf("capture %s: %w", opts.VM, err)
		}
	}
	if opts.Progress == nil {
		opts.Progress = &Progress{}
	}
	// The writer's lock announces it to gc and pins the bases: their
	// chunks stay even if they are forgotten while this runs.
	var bases []*RestorePoint
	for _, src := range disks {
		if src.Base != nil && !slices.ContainsFunc(bases, func(b *RestorePoint) bool { return b.ID == src.Base.ID }) {
			bases = append(bases, src.Base)
		}
	}
	lock, err := r.Lock(ctx, LockOptions{Kind: format.LockWriter, Operation: "capture " + opts.VM, Pins: bases, Wait: opts.LockWait})
	if err != nil {
		return nil, fmt.Errorf("capture %s: %w", opts.VM, err)
	}
	defer lock.Unlock()

	m := &format.Manifest{
		Version: format.ManifestVersion, VM: opts.VM, Time: opts.Time, Source: opts.Source, Lineage: opts.Lineage,
		Hostname: r.hostname, Tags: opts.Tags, Config: opts.Config, Labels: opts.Labels,
	}
	if m.Time.IsZero() {
		m.Time = r.now()
	}
	m.Time = m.Time.UTC()
	if m.Disks, err = r.writeDisks(ctx, &opts, disks); err != nil {
		return nil, fmt.Errorf("capture %s: %w", opts.VM, err)
	}
	b, err := m.Marshal()
	if err != nil {
		return nil, fmt.Errorf("capture %s: %w", opts.VM, err)
	}
	id := r.nameID(b)
	if err := r.be.Save(ctx, snapshotHandle(id), b); err != nil {
		return nil, fmt.Errorf("capture %s: commit manifest: %w", opts.VM, err)
	}
	return &RestorePoint{ID: id, Manifest: m}, nil
}

// writeDisks stores the chunks and indexes of disks and returns their
// manifest entries; the caller holds a writer lock that pins the bases.
func (r *Repository) writeDisks(ctx context.Context, opts *CaptureOptions, disks []DiskSource) ([]format.ManifestDisk, error) {
	if opts.Progress == nil {
		opts.Progress = &Progress{}
	}
	if opts.Compression == "" {
		opts.Compression = r.cfg.Compression
	}
	if err := format.ValidCompression(opts.Compression); err != nil {
		return nil, err
	}
	// Chunks verify found damaged are stored again, never taken from a
	// base index.
	damagedList, _, err := r.DamagedChunks(ctx)
	if err != nil {
		return nil, err
	}
	var dk *keys.DataKey
	if r.keys != nil {
		if dk, err = r.newDataKey(ctx); err != nil {
			return nil, err
		}
	}
	plans := make([]*diskPlan, len(disks))
	seen := map[string]bool{}
	for i, src := range disks {
		if err := format.ValidName("disk", src.Name); err != nil {
			return nil, err
		}
		if seen[src.Name] {
			return nil, fmt.Errorf("disk %q given twice", src.Name)
		}
		seen[src.Name] = true
		p, err := r.planDisk(ctx, src, damagedList)
		if err != nil {
			return nil, err
		}
		p.dk = dk
		plans[i] = p
		opts.Progress.Total.Add(p.total)
	}
	var out []format.ManifestDisk
	for _, p := range plans {
		md, err := r.writeDisk(ctx, p, opts)
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", p.src.Name, err)
		}
		out = append(out, *md)
	}
	return out, nil
}

// planDisk works out what to read for one disk from the decision in src.
func (r *Repository) planDisk(ctx context.Context, src DiskSource, damaged map[format.ID]format.DamagedChunk) (*diskPlan, error) {
	if src.Size < 0 || src.Size > format.MaxDiskSize {
		return nil, fmt.Errorf("capture disk %s: size %d out of range", src.Name, src.Size)
	}
	cs := r.cfg.ChunkSize
	n := int(format.ChunkCount(src.Size, cs))
	p := &diskPlan{src: src, ids: make([]format.ID, n), mode: "full", reason: src.Reason, damaged: damaged}
	all := func(reason string) *diskPlan {
		p.read = make([]int, n)
		for i := range p.read {
			p.read[i] = i
		}
		p.total = src.Size
		if p.reason == "" {
			p.reason = reason
		}
		return p
	}
	if err := extent.Check(src.Changed, src.Size); err != nil {
		return nil, fmt.Errorf("capture disk %s: changed %w", src.Name, err)
	}
	if err := extent.Check(src.Data, src.Size); err != nil {
		return nil, fmt.Errorf("capture disk %s: data %w", src.Name, err)
	}
	if err := extent.Check(src.Skip, src.Size); err != nil {
		return nil, fmt.Errorf("capture disk %s: skipped %w", src.Name, err)
	}
	base := src.Base
	if base == nil {
		return all("no previous restore point"), nil
	}
	bd, err := base.Disk(src.Name)
	if err != nil {
		return all("disk not in the previous restore point"), nil
	}
	bidx, err := r.loadIndex(ctx, bd.Index)
	if err != nil {
		return nil, fmt.Errorf("capture disk %s: base restore point %s: %w", src.Name, base.ID.Short(), err)
	}
	if bidx.ChunkSize != cs {
		return all(fmt.Sprintf("previous restore point uses %d-byte chunks", bidx.ChunkSize)), nil
	}
	p.parent = base.ID.String()
	if src.Changed == nil {
		// Read everything; chunks already in the base are not stored again.
		p.mode = "dedup"
		p.known = bidx.IDs
		return all(""), nil
	}
	// Incremental from changed ranges: reuse every base chunk the ranges do
	// not touch and that lies entirely within both disk sizes.
	p.mode = "extents"
	p.changed = extent.Sum(extent.Normalize(src.Changed))
	keep := min(src.Size, bidx.DiskSize) / cs // chunks fully inside both
	if src.Size == bidx.DiskSize {
		keep = int64(n) // the short last chunk too
	}
	copy(p.ids, bidx.IDs[:keep])
	mark := make([]bool, n)
	for i := int(keep); i < n; i++ {
		mark[i] = true
	}
	markChunks(mark, src.Changed, cs)
	for i, id := range p.ids {
		if _, bad := damaged[id]; bad && !id.IsZero() {
			mark[i] = true // read and store it again
		}
	}
	for i, m := range mark {
		if m {
			p.read = append(p.read, i)
			p.total += min(cs, src.Size-int64(i)*cs)
		}
	}
	if src.Size != bidx.DiskSize && p.reason == "" {
		p.reason = fmt.Sprintf("disk size changed from %d to %d bytes", bidx.DiskSize, src.Size)
	}
	return p, nil
}

// knownSet holds chunk IDs known to be stored and valid.
type knownSet struct {
	mu sync.Mutex
	m  map[format.ID]struct{}
}

// claim adds id and reports whether it was absent.
func (k *knownSet) claim(id format.ID) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.m[id]; ok {
		return false
	}
	k.m[id] = struct{}{}
	return true
}

type readJob struct {
	i   int
	buf []byte
}

type saveJob struct {
	id    format.ID
	frame []byte
}

// writeDisk runs the read → hash/compress → store pipeline for one disk and
// stores its index. Memory is bounded by the fixed number of buffers.
func (r *Repository) writeDisk(ctx context.Context, p *diskPlan, opts *CaptureOptions) (*format.ManifestDisk, error) {
	start := time.Now()
	cs := r.cfg.ChunkSize
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	savers := r.props.WriteParallelism
	known := &knownSet{m: make(map[format.ID]struct{}, len(p.ids)+len(p.known))}
	for _, ids := range [][]format.ID{p.ids, p.known} {
		for _, id := range ids {
			if _, bad := p.damaged[id]; !id.IsZero() && !bad {
				known.m[id] = struct{}{}
			}
		}
	}
	var (
		bytesRead, zero, newChunks, stored atomic.Int64
	)
	// The reader runs up to readAhead chunks ahead, so cheap stretches
	// (zero or incompressible chunks) are covered by what it read while the
	// workers compressed expensive ones.
	const readAhead = 32
	rawFree := make(chan []byte, readAhead+2*workers)
	for range cap(rawFree) {
		rawFree <- make([]byte, cs)
	}
	// Frames waiting for the savers: saving is bursty (incompressible
	// stretches produce data faster than the disk takes it, compressible
	// ones slower), so a write-behind queue of writeBehind bytes lets the
	// workers keep compressing. Frames are allocated on demand up to that.
	nframes := max(2*savers+workers, int(writeBehind/cs))
	frameFree := make(chan []byte, nframes)
	for range nframes {
		frameFree <- nil
	}
	reads := make(chan readJob, readAhead)
	saves := make(chan saveJob, nframes)
	g, gctx := errgroup.WithContext(ctx)

	hasData := dataMap(p.src.Data, cs, len(p.ids))
	if pl, ok := p.src.Reader.(ReadPlanner); ok {
		var rs []extent.Range
		for _, i := range p.read {
			if hasData != nil && !hasData[i] {
				continue
			}
			off := int64(i) * cs
			n := min(cs, p.src.Size-off)
			if k := len(rs); k > 0 && rs[k-1].End() == off {
				rs[k-1].Length += n
			} else {
				rs = append(rs, extent.Range{Offset: off, Length: n})
			}
		}
		pl.PlanReads(rs, cs)
	}
	g.Go(func() error { // reader
		defer close(reads)
		for _, i := range p.read {
			if hasData != nil && !hasData[i] {
				p.ids[i] = format.ZeroID
				opts.Progress.Done.Add(min(cs, p.src.Size-int64(i)*cs))
				continue
			}
			var buf []byte
			select {
			case buf = <-rawFree:
			case <-gctx.Done():
				return gctx.Err()
			}
			off := int64(i) * cs
			buf = buf[:min(cs, p.src.Size-off)]
			n, err := p.src.Reader.ReadAt(buf, off)
			if n < len(buf) {
				if err == nil || err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return fmt.Errorf("read source at offset %d: %w", off, err)
			}
			bytesRead.Add(int64(n))
			select {
			case reads <- readJob{i: i, buf: buf}:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})

	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		g.Go(func() error {
			defer wg.Done()
			for job := range reads {
				if err := r.processChunk(gctx, job, p, opts.Compression, known, &zero, saves, frameFree); err != nil {
					return err
				}
				opts.Progress.Done.Add(int64(len(job.buf)))
				rawFree <- job.buf[:cap(job.buf)]
			}
			return nil
		})
	}
	g.Go(func() error {
		wg.Wait()
		close(saves)
		return nil
	})
	for range savers {
		g.Go(func() error {
			for s := range saves {
				if err := r.be.Save(gctx, chunkHandle(s.id), s.frame); err != nil {
					return err
				}
				newChunks.Add(1)
				stored.Add(int64(len(s.frame)))
				frameFree <- s.frame[:0]
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if fl, ok := r.be.(backend.Flusher); ok {
		if err := fl.Flush(ctx); err != nil {
			return nil, fmt.Errorf("make chunks durable: %w", err)
		}
	}

	idx := &format.Index{DiskSize: p.src.Size, ChunkSize: cs, IDs: p.ids}
	b := idx.Marshal()
	idxID := r.nameID(b)
	if err := r.be.Save(ctx, backend.Handle{Type: backend.IndexFile, Name: idxID.String()}, b); err != nil {
		return nil, fmt.Errorf("store index: %w", err)
	}
	return &format.ManifestDisk{
		Name: p.src.Name, Size: p.src.Size, ChunkSize: cs, Index: idxID.String(),
		ChangeToken: p.src.ChangeToken, Identity: p.src.Identity, Parent: p.parent,
		Stats: format.DiskStats{
			Mode: p.mode, Reason: p.reason, BytesChanged: p.changed, BytesRead: bytesRead.Load(), Chunks: int64(len(p.ids)),
			ZeroChunks: countZero(p.ids), NewChunks: newChunks.Load(), BytesStored: stored.Load(),
			DurationSecs: format.Float3(time.Since(start).Seconds()), Skipped: p.skipped(cs),
		},
	}, nil
}

// skipped completes the source's skip record with the bytes skipped in
// the chunks this capture read.
func (p *diskPlan) skipped(cs int64) *format.SkipStats {
	if p.src.Skipped == nil {
		return nil
	}
	s := *p.src.Skipped
	var read []extent.Range
	for _, i := range p.read {
		off := int64(i) * cs
		n := min(cs, p.src.Size-off)
		if k := len(read); k > 0 && read[k-1].End() == off {
			read[k-1].Length += n
			continue
		}
		read = append(read, extent.Range{Offset: off, Length: n})
	}
	s.Bytes = extent.Sum(extent.Intersect(p.src.Skip, read))
	s.Scope = "disk"
	if p.mode == "extents" {
		s.Scope = "changed"
	}
	return &s
}

// markChunks sets mark[i] for every chunk i that a non-empty range touches
// (ranges rounded out to chunk boundaries; chunks past len(mark) ignored).
func markChunks(mark []bool, rs []extent.Range, cs int64) {
	for _, r := range rs {
		if r.Length <= 0 {
			continue
		}
		for i := r.Offset / cs; i <= (r.Offset+r.Length-1)/cs && i < int64(len(mark)); i++ {
			mark[i] = true
		}
	}
}

// dataMap marks the chunks that overlap a data range; nil means all may.
func dataMap(data []extent.Range, cs int64, n int) []bool {
	if data == nil {
		return nil
	}
	m := make([]bool, n)
	markChunks(m, data, cs)
	return m
}

func countZero(ids []format.ID) int64 {
	n := int64(0)
	for _, id := range ids {
		if id.IsZero() {
			n++
		}
	}
	return n
}

// processChunk hashes one chunk, decides whether it must be stored and, if
// so, frames it and hands it to the savers.
func (r *Repository) processChunk(ctx context.Context, job readJob, p *diskPlan, compression string, known *knownSet, zero *atomic.Int64,
	saves chan<- saveJob, frameFree chan []byte) error {
	if format.IsZero(job.buf) {
		p.ids[job.i] = format.ZeroID
		zero.Add(1)
		return nil
	}
	id := r.chunkID(job.buf)
	p.ids[job.i] = id
	if !known.claim(id) {
		return nil // in the base, or stored (or being stored) by this capture
	}
	// Not known: trust a stored object only after decoding and hashing it.
	// A damaged one is copied aside before the good copy replaces it.
	if _, err := r.be.Stat(ctx, chunkHandle(id)); err == nil {
		lerr := r.checkStored(ctx, id)
		if lerr == nil {
			return nil
		}
		if _, listed := p.damaged[id]; !listed {
			q, err := r.quarantine(ctx, id)
			if err != nil {
				return err
			}
			slog.Warn("stored chunk is damaged: copied aside, storing a good copy", "chunk", id.String(), "err", lerr, "copy", "state/"+q)
		}
	} else if !errors.Is(err, backend.ErrNotFound) {
		return err
	}
	var frame []byte
	select {
	case frame = <-frameFree:
	case <-ctx.Done():
		return ctx.Err()
	}
	if frame == nil {
		frame = make([]byte, 0, format.ChunkHeaderSize+len(job.buf)+len(job.buf)/8)
	}
	var err error
	if p.dk == nil {
		frame, err = format.EncodeChunk(frame, job.buf, compression)
	} else {
		plain := r.bufs.Get(len(job.buf) + format.ChunkHeaderSize)
		plain, err = format.EncodeChunk(plain[:0], job.buf, compression)
		if err == nil {
			frame = p.dk.SealFrame(frame, plain, id)
		}
		r.bufs.Put(plain)
	}
	if err != nil {
		return err
	}
	select {
	case saves <- saveJob{id: id, frame: frame}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// checkStored checks a chunk object a capture may reuse instead of storing
// it: decoded and hashed, or — with a capture key, which cannot decrypt —
// its frame's checksum over the stored bytes.
func (r *Repository) checkStored(ctx context.Context, id format.ID) error {
	if r.keys == nil || r.keys.CanRead() {
		_, err := r.loadChunk(ctx, id, nil)
		return err
	}
	frame, err := r.be.Load(ctx, chunkHandle(id), 0, -1)
	if err != nil {
		return err
	}
	return keys.CheckFrame(frame)
}

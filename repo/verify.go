package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/bufpool"
	"github.com/vmvault/vmvault/repo/format"
)

// VerifyOptions choose what verify checks and how much it reads.
type VerifyOptions struct {
	// RestorePoints to verify; nil means every restore point (and then
	// unreadable manifests are reported too).
	RestorePoints []*RestorePoint
	// Subset is the share of referenced chunks to read and re-hash, in
	// (0, 1]; 0 means 1 (all). With NoData chunks are only checked for
	// existence. Chunks on the damaged list are always read.
	Subset float64
	NoData bool
	// SkipVerifiedWithin skips restore points whose newest verify record
	// is clean, read all data and is younger than this (0: skip none).
	SkipVerifiedWithin time.Duration
	Progress           *Progress
	LockWait           time.Duration
}

// Damage is one problem found in one restore point's disk.
type Damage struct {
	RestorePoint *RestorePoint
	Disk         string
	Offset       int64 // -1 when the whole disk (its index) is affected
	Problem      string
}

// VerifyReport is what verify found.
type VerifyReport struct {
	RestorePoints  int
	Indexes        int
	Chunks         int // unique referenced chunks
	ChunksChecked  int
	BytesChecked   int64
	BadManifests   []BadRestorePoint
	BadChunks      map[format.ID]error
	Damage         []Damage
	DamagedPoints  []*RestorePoint
	CheckedAllData bool
	// Skipped lists restore points left out because a clean verify of all
	// their data is recorded within SkipVerifiedWithin.
	Skipped []*RestorePoint
	// Forgotten lists restore points that were forgotten while verify
	// started: they were not checked.
	Forgotten []*RestorePoint
	// Healed lists chunks the damaged list named that are good now (a
	// capture stored them again); they are off the list.
	Healed []format.ID
	// Quarantined counts damaged chunk objects copied aside this run.
	Quarantined int
	// ReadOnly is set when the repository could not be written: nothing
	// was pinned or recorded.
	ReadOnly bool
	// ContentsUnchecked is set when the key cannot decrypt chunks (a
	// capture key): chunk frames were checked against their checksums
	// (damage to stored bytes shows), not decrypted and hashed.
	ContentsUnchecked bool
}

// OK reports whether nothing was found.
func (v *VerifyReport) OK() bool {
	return len(v.BadManifests) == 0 && len(v.BadChunks) == 0 && len(v.Damage) == 0
}

// Verify checks restore points: manifests, indexes (checksums) and the
// referenced chunks (decoded and re-hashed). It pins what it checks (gc
// keeps it meanwhile), never deletes or overwrites anything, and records
// what it found: a verify record per restore point and the damaged list,
// with a copy of each newly damaged chunk object set aside
// ("quarantine"), so captures store good copies of those chunks.
func (r *Repository) Verify(ctx context.Context, opts VerifyOptions) (*VerifyReport, error) {
	if opts.Subset <= 0 || opts.Subset > 1 {
		opts.Subset = 1
	}
	if opts.Progress == nil {
		opts.Progress = &Progress{}
	}
	_, canRead := r.Encrypted()
	rep := &VerifyReport{BadChunks: map[format.ID]error{}, CheckedAllData: opts.Subset == 1 && !opts.NoData && canRead, ContentsUnchecked: !canRead}
	rps := opts.RestorePoints
	if rps == nil {
		all, bad, err := r.ListRestorePoints(ctx)
		if err != nil {
			return nil, err
		}
		rps, rep.BadManifests = all, bad
	}
	records, err := r.VerifyRecords(ctx)
	if err != nil {
		return nil, err
	}
	if opts.SkipVerifiedWithin > 0 {
		since := r.now().Add(-opts.SkipVerifiedWithin)
		rps = slices.DeleteFunc(slices.Clone(rps), func(rp *RestorePoint) bool {
			v := records[rp.ID]
			if v != nil && v.OK && v.AllData && v.Time.After(since) {
				rep.Skipped = append(rep.Skipped, rp)
				return true
			}
			return false
		})
	}
	// Pin what is checked, each restore point on its own: one forgotten
	// meanwhile is left out, not an error.
	lock, err := r.Lock(ctx, LockOptions{Kind: format.LockReader, Operation: "verify", Wait: opts.LockWait})
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	rep.ReadOnly = lock.ReadOnly()
	pinned := rps[:0:0]
	for _, rp := range rps {
		if err := lock.Pin(ctx, rp); errors.Is(err, ErrNotFoundRP) {
			rep.Forgotten = append(rep.Forgotten, rp)
			continue
		} else if err != nil {
			return nil, err
		}
		pinned = append(pinned, rp)
	}
	rps = pinned
	rep.RestorePoints = len(rps)
	damagedList, damagedObjs, err := r.DamagedChunks(ctx)
	if err != nil {
		return nil, err
	}

	// Pass 1: indexes and the set of referenced chunks.
	chunks := map[format.ID]int64{}
	indexes := map[string]*format.Index{}
	damaged := map[format.ID]bool{}
	for _, rp := range rps {
		for _, d := range rp.Disks {
			idx, ok := indexes[d.Index]
			if !ok {
				idx, err = r.loadIndex(ctx, d.Index)
				if err != nil {
					rep.Damage = append(rep.Damage, Damage{RestorePoint: rp, Disk: d.Name, Offset: -1, Problem: err.Error()})
					damaged[rp.ID] = true
					indexes[d.Index] = nil
					continue
				}
				indexes[d.Index] = idx
				rep.Indexes++
			}
			if idx == nil {
				rep.Damage = append(rep.Damage, Damage{RestorePoint: rp, Disk: d.Name, Offset: -1, Problem: "index unreadable (see above)"})
				damaged[rp.ID] = true
				continue
			}
			for i, id := range idx.IDs {
				if !id.IsZero() {
					chunks[id] = idx.ChunkLen(i)
				}
			}
		}
	}
	rep.Chunks = len(chunks)

	// Pass 2: check chunks in parallel.
	ids := make([]format.ID, 0, len(chunks))
	for id := range chunks {
		_, listed := damagedList[id]
		if opts.Subset == 1 || listed || rand.Float64() < opts.Subset {
			ids = append(ids, id)
			opts.Progress.Total.Add(chunks[id])
		}
	}
	// In name order: the local backend keeps a chunk under a directory
	// named by its first byte, so neighbouring names share directory and
	// inode-table blocks on a cold disk.
	slices.SortFunc(ids, func(a, b format.ID) int { return bytes.Compare(a[:], b[:]) })
	var (
		mu      sync.Mutex
		checked atomic.Int64
		nbytes  atomic.Int64
	)
	// Fixed workers, each with its own frame and chunk buffers: verify
	// decodes every chunk once and keeps none, so a buffer per chunk
	// would only feed the garbage collector. There are as many workers as
	// reads worth keeping in flight (the backend's ReadParallelism).
	g, gctx := errgroup.WithContext(ctx)
	next := make(chan format.ID)
	g.Go(func() error {
		defer close(next)
		for _, id := range ids {
			select {
			case next <- id:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range min(r.props.ReadParallelism, max(len(ids), 1)) {
		g.Go(func() error {
			var frameBuf, buf []byte
			if !opts.NoData {
				frameBuf = make([]byte, 0, r.cfg.ChunkSize+bufpool.Slack)
				buf = make([]byte, 0, r.cfg.ChunkSize+format.DecodeSlack)
			}
			for id := range next {
				var err error
				if _, listed := damagedList[id]; opts.NoData && !listed {
					_, err = r.be.Stat(gctx, chunkHandle(id))
				} else if !canRead {
					err = r.checkStored(gctx, id) // a capture key: the stored bytes' checksum
				} else {
					var data []byte
					data, _, err = r.loadChunkFrame(gctx, id, frameBuf[:0], buf[:0])
					if err == nil && int64(len(data)) != chunks[id] {
						err = fmt.Errorf("chunk %s holds %d bytes, indexes need %d: %w", id, len(data), chunks[id], format.ErrCorrupt)
					}
				}
				if gctx.Err() != nil {
					return gctx.Err()
				}
				checked.Add(1)
				nbytes.Add(chunks[id])
				opts.Progress.Done.Add(chunks[id])
				if err != nil {
					if errors.Is(err, backend.ErrNotFound) {
						err = fmt.Errorf("chunk %s is missing", id)
					}
					mu.Lock()
					rep.BadChunks[id] = err
					mu.Unlock()
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	rep.ChunksChecked, rep.BytesChecked = int(checked.Load()), nbytes.Load()

	// Pass 3: name where bad chunks are used.
	if len(rep.BadChunks) > 0 {
		for _, rp := range rps {
			for _, d := range rp.Disks {
				idx := indexes[d.Index]
				if idx == nil {
					continue
				}
				for i, id := range idx.IDs {
					if cerr, bad := rep.BadChunks[id]; bad {
						rep.Damage = append(rep.Damage, Damage{RestorePoint: rp, Disk: d.Name, Offset: int64(i) * idx.ChunkSize, Problem: cerr.Error()})
						damaged[rp.ID] = true
					}
				}
			}
		}
	}
	for _, rp := range rps {
		if damaged[rp.ID] {
			rep.DamagedPoints = append(rep.DamagedPoints, rp)
		}
	}
	if !rep.ReadOnly {
		if err := r.record(ctx, rep, rps, chunks, damagedList, damagedObjs, damaged); err != nil {
			return nil, err
		}
	}
	sort.SliceStable(rep.Damage, func(i, j int) bool {
		a, b := rep.Damage[i], rep.Damage[j]
		if a.RestorePoint.ID != b.RestorePoint.ID {
			return a.RestorePoint.Time.Before(b.RestorePoint.Time)
		}
		if a.Disk != b.Disk {
			return a.Disk < b.Disk
		}
		return a.Offset < b.Offset
	})
	return rep, nil
}

// record writes what a verify run found: damaged chunks it checked join
// the damaged list (their objects copied aside first, once), listed chunks
// it found good leave it, and every restore point it checked in full gets
// a verify record.
func (r *Repository) record(ctx context.Context, rep *VerifyReport, rps []*RestorePoint, checked map[format.ID]int64,
	list map[format.ID]format.DamagedChunk, listObjs []string, damagedRPs map[format.ID]bool) error {
	changed := false
	now := r.now().UTC()
	for id, cerr := range rep.BadChunks {
		if _, ok := list[id]; ok {
			continue
		}
		q, err := r.quarantine(ctx, id)
		if err != nil {
			return err
		}
		if q != "" {
			rep.Quarantined++
		}
		list[id] = format.DamagedChunk{ID: id.String(), Problem: cerr.Error(), Found: now, Quarantine: q}
		changed = true
	}
	for id := range list {
		if _, seen := checked[id]; !seen {
			continue // not referenced by what this run checked
		}
		if _, bad := rep.BadChunks[id]; !bad {
			rep.Healed = append(rep.Healed, id)
			delete(list, id)
			changed = true
		}
	}
	slices.SortFunc(rep.Healed, func(a, b format.ID) int { return bytes.Compare(a[:], b[:]) })
	if changed {
		if err := r.saveDamaged(ctx, list, listObjs); err != nil {
			return err
		}
	}
	old, err := r.listState(ctx, "verified-")
	if err != nil {
		return err
	}
	oldOf := map[string][]string{}
	for _, fi := range old {
		if parts := strings.SplitN(fi.Name, "-", 3); len(parts) == 3 {
			oldOf[parts[1]] = append(oldOf[parts[1]], fi.Name)
		}
	}
	for _, rp := range rps {
		v := &format.VerifyRecord{RestorePoint: rp.ID.String(), Time: now, OK: !damagedRPs[rp.ID], AllData: rep.CheckedAllData}
		for _, d := range rep.Damage {
			if d.RestorePoint.ID == rp.ID {
				v.Damaged++
			}
		}
		if err := r.saveVerifyRecord(ctx, v, oldOf[rp.ID.String()]); err != nil {
			return err
		}
	}
	return nil
}

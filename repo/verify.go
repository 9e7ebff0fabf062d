package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/bufpool"
	"github.com/vmvault/vmvault/repo/format"
)

// VerifyOptions choose how much verify reads.
type VerifyOptions struct {
	// Subset is the share of referenced chunks to read and re-hash, in
	// (0, 1]; 0 means 1 (all). With NoData chunks are only checked for
	// existence.
	Subset   float64
	NoData   bool
	Progress *Progress
	LockWait time.Duration
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
}

// OK reports whether nothing was found.
func (v *VerifyReport) OK() bool {
	return len(v.BadManifests) == 0 && len(v.BadChunks) == 0 && len(v.Damage) == 0
}

// Verify checks every restore point: manifests, indexes (checksums) and the
// referenced chunks (decoded and re-hashed). It never deletes anything.
func (r *Repository) Verify(ctx context.Context, opts VerifyOptions) (*VerifyReport, error) {
	lock, err := r.Lock(ctx, false, "verify", opts.LockWait)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	if opts.Subset <= 0 || opts.Subset > 1 {
		opts.Subset = 1
	}
	if opts.Progress == nil {
		opts.Progress = &Progress{}
	}
	rep := &VerifyReport{BadChunks: map[format.ID]error{}, CheckedAllData: opts.Subset == 1 && !opts.NoData}
	rps, bad, err := r.ListRestorePoints(ctx)
	if err != nil {
		return nil, err
	}
	rep.RestorePoints, rep.BadManifests = len(rps), bad

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
		if opts.Subset == 1 || rand.Float64() < opts.Subset {
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
				if opts.NoData {
					_, err = r.be.Stat(gctx, chunkHandle(id))
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

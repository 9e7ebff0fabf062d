package repo

import (
	"context"
	"fmt"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/format"
)

// Stats summarises a repository.
type Stats struct {
	Location           string  `json:"location"`       // where the repository is (no secrets)
	FormatVersion      int     `json:"format_version"` // 1: one object per chunk, 2: packs
	PackSize           int64   `json:"pack_size,omitempty"`
	Packs              int     `json:"packs,omitempty"`      // pack objects
	PackBytes          int64   `json:"pack_bytes,omitempty"` // their size, dead frames included (gc reclaims)
	RestorePoints      int     `json:"restore_points"`
	Disks              int     `json:"disks"`
	LogicalBytes       int64   `json:"logical_bytes"`       // sum of disk sizes over all restore points
	LogicalDataBytes   int64   `json:"logical_data_bytes"`  // the same without all-zero chunks
	UniqueChunks       int     `json:"unique_chunks"`       // distinct referenced chunks
	UniqueBytes        int64   `json:"unique_bytes"`        // their raw size
	StoredChunkBytes   int64   `json:"stored_chunk_bytes"`  // their stored (framed, compressed) size
	UnreferencedChunks int     `json:"unreferenced_chunks"` // removable by gc
	UnreferencedBytes  int64   `json:"unreferenced_bytes"`  //
	MetadataBytes      int64   `json:"metadata_bytes"`      // manifests and indexes
	TotalStoredBytes   int64   `json:"total_stored_bytes"`  // everything in the backend
	DedupRatio         float64 `json:"dedup_ratio"`         // logical data / unique
	CompressionRatio   float64 `json:"compression_ratio"`   // unique / stored chunk bytes
	SpaceSavingsRatio  float64 `json:"space_savings_ratio"` // logical / total stored
	DamagedChunks      int     `json:"damaged_chunks"`      // on verify's damaged list
	Encrypted          bool    `json:"encrypted"`
}

// Stats computes repository statistics from manifests, indexes and a
// listing of stored objects (no chunk is read).
func (r *Repository) Stats(ctx context.Context) (*Stats, error) {
	rps, bad, err := r.ListRestorePoints(ctx)
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("stats: manifest %s: %w", bad[0].Name, bad[0].Err)
	}
	s := &Stats{RestorePoints: len(rps)}
	unique := map[format.ID]int64{}
	indexes := map[string]*format.Index{}
	for _, rp := range rps {
		for _, d := range rp.Disks {
			s.Disks++
			s.LogicalBytes += d.Size
			idx, ok := indexes[d.Index]
			if !ok {
				if idx, err = r.loadIndex(ctx, d.Index); err != nil {
					return nil, fmt.Errorf("stats: restore point %s disk %s: %w", rp.ID.Short(), d.Name, err)
				}
				indexes[d.Index] = idx
			}
			for i, id := range idx.IDs {
				if id.IsZero() {
					continue
				}
				n := idx.ChunkLen(i)
				s.LogicalDataBytes += n
				unique[id] = n
			}
		}
	}
	s.UniqueChunks = len(unique)
	for _, n := range unique {
		s.UniqueBytes += n
	}
	s.Location, s.FormatVersion, s.PackSize = r.be.Location(), r.cfg.Version, r.cfg.PackSize
	if r.packs != nil {
		if err := r.packs.Inner().List(ctx, backend.PackFile, func(fi backend.FileInfo) error {
			s.Packs++
			s.PackBytes += fi.Size
			return nil
		}); err != nil {
			return nil, fmt.Errorf("stats: %w", err)
		}
		s.TotalStoredBytes += s.PackBytes
	}
	for _, t := range []backend.FileType{backend.ConfigFile, backend.SnapshotFile, backend.IndexFile, backend.ChunkFile, backend.PackIndexFile, backend.StateFile} {
		if err := r.be.List(ctx, t, func(fi backend.FileInfo) error {
			if t != backend.ChunkFile || r.packs == nil { // packs are counted whole
				s.TotalStoredBytes += fi.Size
			}
			switch t {
			case backend.SnapshotFile, backend.IndexFile, backend.PackIndexFile, backend.StateFile:
				s.MetadataBytes += fi.Size
			case backend.ChunkFile:
				id, err := format.ParseID(fi.Name)
				if _, ok := unique[id]; ok && err == nil {
					s.StoredChunkBytes += fi.Size
				} else {
					s.UnreferencedChunks++
					s.UnreferencedBytes += fi.Size
				}
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("stats: %w", err)
		}
	}
	ratio := func(a, b int64) float64 {
		if b == 0 {
			return 0
		}
		return float64(a) / float64(b)
	}
	damaged, _, err := r.DamagedChunks(ctx)
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	s.DamagedChunks = len(damaged)
	s.Encrypted = r.cfg.Encryption != ""
	s.DedupRatio = ratio(s.LogicalDataBytes, s.UniqueBytes)
	s.CompressionRatio = ratio(s.UniqueBytes, s.StoredChunkBytes)
	s.SpaceSavingsRatio = ratio(s.LogicalBytes, s.TotalStoredBytes)
	return s, nil
}

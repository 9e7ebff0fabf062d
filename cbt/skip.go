package cbt

import (
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/vmvault/vmvault/fs/freespace"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
)

// Skipping free space (Options.SkipFreeSpace, Options.SkipSwap).
//
// For every disk, fs/freespace reads the partition table and the
// allocation maps of the filesystems on it, through the source's own
// reader, and says which byte ranges no filesystem uses (and, with
// SkipSwap, which hold swap). The capture then treats them as zeros:
//
//   - full and dedup captures: the ranges are taken out of the source's
//     data ranges, so chunks entirely inside them are stored as zero
//     chunks without being read, and the reader hands the writer zeros
//     for the skipped parts of the chunks it does read (reading only the
//     used parts).
//   - extents incrementals: the changed ranges are not narrowed. Every
//     chunk they touch is read as before, only with its skipped parts
//     zeroed, and a touched chunk that is entirely skipped is stored as a
//     zero chunk. Metadata is never among the skipped ranges (the
//     allocation maps count it as used), so no changed metadata is
//     dropped; a block the guest freed since the parent reads as zeros
//     where it changed, and keeps the parent's content where it did not
//     (both are free space). Untouched chunks come from the parent
//     unchanged, with whatever the parent skipped: a block free then and
//     used now was written since (it is in the changed ranges), unless
//     the guest allocated it without writing it, which ext4, XFS and NTFS
//     never expose (unwritten extents, valid data length).
//
// The allocation maps must describe the same instant as the data: that
// holds for image files, snapshots and CBT snapshot reads; a block device
// of a mounted, changing filesystem gives a torn capture either way, and
// with skipping blocks allocated while it runs may read as zeros.
// Filesystems whose maps may lag their journal are read in full (see
// fs/freespace).

// skipReader reads a source disk with the skipped ranges reading as zeros:
// a read narrows to the parts that are used (gaps under readGap between
// them are read along and zeroed: one read instead of many small ones).
type skipReader struct {
	r    io.ReaderAt
	skip []extent.Range // normalized
}

const readGap = 64 << 10

// pieces returns what ReadAt(p, off) reads of the source for len(p) == n:
// the used parts of [off, off+n), joined across gaps under readGap.
func (s *skipReader) pieces(off, n int64) (reads, holes []extent.Range) {
	end := off + n
	i := sort.Search(len(s.skip), func(i int) bool { return s.skip[i].End() > off })
	for ; i < len(s.skip) && s.skip[i].Offset < end; i++ {
		lo, hi := max(s.skip[i].Offset, off), min(s.skip[i].End(), end)
		holes = append(holes, extent.Range{Offset: lo, Length: hi - lo})
	}
	used := extent.Subtract([]extent.Range{{Offset: off, Length: n}}, holes)
	for k := 0; k < len(used); {
		lo, hi := used[k].Offset, used[k].End()
		for k++; k < len(used) && used[k].Offset-hi < readGap; k++ {
			hi = used[k].End()
		}
		reads = append(reads, extent.Range{Offset: lo, Length: hi - lo})
	}
	return reads, holes
}

// ReadAt implements io.ReaderAt.
func (s *skipReader) ReadAt(p []byte, off int64) (int, error) {
	reads, holes := s.pieces(off, int64(len(p)))
	for _, r := range reads {
		lo, hi := r.Offset-off, r.End()-off
		if n, err := s.r.ReadAt(p[lo:hi], r.Offset); int64(n) < hi-lo {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return int(lo) + n, err
		}
	}
	for _, h := range holes {
		clear(p[h.Offset-off : h.End()-off])
	}
	return len(p), nil
}

// PlanReads implements repo.ReadPlanner: the source is told the pieces
// ReadAt will read of each block of rs.
func (s *skipReader) PlanReads(rs []extent.Range, align int64) {
	pl, ok := s.r.(repo.ReadPlanner)
	if !ok {
		return
	}
	var out []extent.Range
	for _, r := range rs {
		for off := r.Offset; off < r.End(); {
			n := min(r.End(), (off/align+1)*align) - off
			reads, _ := s.pieces(off, n)
			for _, x := range reads {
				if k := len(out); k > 0 && out[k-1].End() == x.Offset {
					out[k-1].Length += x.Length
				} else {
					out = append(out, x)
				}
			}
			off += n
		}
	}
	pl.PlanReads(out, align)
}

// skipUnused narrows a disk's capture to what its filesystems use (see
// the comment above) and records what it decided.
func skipUnused(ctx context.Context, ds *repo.DiskSource, opts Options) error {
	m, err := freespace.Compute(ctx, ds.Reader, ds.Size, freespace.Options{FreeSpace: opts.SkipFreeSpace, Swap: opts.SkipSwap})
	if err != nil {
		return fmt.Errorf("allocation maps: %w", err)
	}
	st := &format.SkipStats{FreeSpace: opts.SkipFreeSpace, Swap: opts.SkipSwap, Note: m.Note}
	for _, v := range m.Volumes {
		st.Volumes = append(st.Volumes, format.SkipVolume{
			Partition: v.Partition, Filesystem: v.Filesystem, Offset: v.Offset, Size: v.Size,
			Bytes: v.Skipped, Ranges: v.Ranges, What: v.What, ReadInFull: v.ReadInFull,
		})
	}
	ds.Skipped = st
	if len(m.Skip) == 0 {
		return nil
	}
	keep := extent.Subtract([]extent.Range{{Offset: 0, Length: ds.Size}}, m.Skip)
	if ds.Data != nil {
		keep = extent.Intersect(ds.Data, keep)
	}
	if keep == nil {
		keep = []extent.Range{} // nothing to read (nil would mean everything)
	}
	ds.Data = keep
	ds.Skip = m.Skip
	ds.Reader = &skipReader{r: ds.Reader, skip: m.Skip}
	return nil
}

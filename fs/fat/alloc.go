package fat

import (
	"context"
	"fmt"
	"io"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/repo/extent"
)

// maxAllocRanges bounds the allocated-range list (see extent.Builder).
const maxAllocRanges = 1 << 20

// Allocated implements fs.AllocationMapper from the FAT: the reserved
// sectors, every FAT copy and the FAT12/16 root directory are allocated, a
// data cluster is free only when every FAT copy says so (copies that
// disagree after a crash keep what either one uses; bad and reserved
// clusters count as used), and the partition's end past the last cluster
// is included. A FAT16/32 volume whose FAT[1] says it was not cleanly
// unmounted, or had disk errors, is refused (an error, so the caller
// reads everything): its FAT may not have caught up with its directories.
func (f *FS) Allocated(ctx context.Context) ([]extent.Range, error) {
	width := map[string]int64{"fat12": 12, "fat16": 16, "fat32": 32}[f.kind]
	n := int64(f.clusters) + 2
	used := make([]byte, (n+7)/8)
	piece := int64(1 << 20)
	if f.kind == "fat12" {
		piece = f.fatBytes // at most 6 KiB: entries straddle bytes
	}
	buf := make([]byte, piece)
	for copyIdx := int64(0); copyIdx < f.fats; copyIdx++ {
		base := f.fatStart + copyIdx*f.fatBytes
		for first := int64(0); first < n; {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			off := first * width / 8
			k := min(piece, f.fatBytes-off)
			if k <= 0 {
				return nil, corrupt("FAT of %d bytes ends before cluster %d", f.fatBytes, first)
			}
			if m, err := f.r.ReadAt(buf[:k], base+off); int64(m) < k {
				if err == nil || err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return nil, fmt.Errorf("fat: read FAT %d at %d: %w", copyIdx+1, off, err)
			}
			last := min(n, first+k*8/width)
			for c := first; c < last; c++ {
				v := fatEntry(f.kind, buf[:k], c-first)
				if c == 1 && copyIdx == 0 {
					if err := f.checkClean(v); err != nil {
						return nil, err
					}
				}
				if c >= 2 && v != 0 {
					used[c/8] |= 1 << (c % 8)
				}
			}
			first = last
		}
	}
	b := extent.Builder{Max: maxAllocRanges}
	b.Add(0, f.dataStart)
	// clear clusters 0 and 1 (FAT[0] holds the media byte, FAT[1] flags):
	// no data cluster stands for them
	used[0] &^= 3
	b.AddBits(used, n, f.dataStart-2*f.clusterSize, f.clusterSize)
	end := f.dataStart + int64(f.clusters)*f.clusterSize
	b.Add(end, f.size-end)
	return b.Ranges(), nil
}

// fatEntry returns entry i of a piece of the FAT that starts at an entry.
func fatEntry(kind string, b []byte, i int64) uint32 {
	switch kind {
	case "fat12":
		v := uint32(le16(b[i+i/2:]))
		if i&1 == 1 {
			v >>= 4
		}
		return v & 0xfff
	case "fat16":
		return uint32(le16(b[2*i:]))
	}
	return le32(b[4*i:]) & 0x0fffffff
}

// checkClean reads FAT[1]'s clean-shutdown and no-error bits (FAT16 and
// FAT32; FAT12 has none).
func (f *FS) checkClean(v uint32) error {
	var clean, noErr uint32
	switch f.kind {
	case "fat16":
		clean, noErr = 0x8000, 0x4000
	case "fat32":
		clean, noErr = 0x08000000, 0x04000000
	default:
		return nil
	}
	if v&clean == 0 {
		return fmt.Errorf("fat: the volume was not cleanly unmounted (FAT[1] dirty bit)")
	}
	if v&noErr == 0 {
		return fmt.Errorf("fat: the volume had disk errors (FAT[1])")
	}
	return nil
}

var _ fs.AllocationMapper = (*FS)(nil)

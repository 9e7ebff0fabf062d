// Package freespace finds the parts of a disk whose content no filesystem
// on it reaches: the free blocks of each partition's filesystem (from its
// allocation map, fs.AllocationMapper) and, on request, swap space (Linux
// swap partitions; pagefile.sys, swapfile.sys and hiberfil.sys on NTFS).
// Capture skips them (cbt.Options.SkipFreeSpace and SkipSwap): the
// restore point holds zeros there.
//
// Invariants: only bytes inside a partition whose filesystem vouches for
// them are ever skipped. The partition table, the space between and after
// partitions, partitions without a recognised filesystem, filesystems
// without an allocation map or whose map is refused (an unreplayed
// journal, an unclean or hibernated NTFS volume, a dirty FAT, recorded
// errors) are read in full, and so is any part of a partition that
// another partition overlaps. Logical volumes (LVM) are not mapped: their
// physical volumes are read in full. Each volume records what was decided
// and why.
package freespace

import (
	"context"
	"fmt"
	"io"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/image"
	"github.com/vmvault/vmvault/repo/extent"
)

// swapKeep is the start of a Linux swap partition that is always read: its
// header (one page of up to 64 KiB) stays, so the restored partition is
// still swap space.
const swapKeep = 64 << 10

// Options say what to skip.
type Options struct {
	// FreeSpace skips the blocks the filesystems do not use.
	FreeSpace bool
	// Swap skips Linux swap partitions (all but their header) and the
	// content of NTFS's pagefile.sys, swapfile.sys and hiberfil.sys.
	Swap bool
}

// Volume is what was decided for one partition.
type Volume struct {
	Partition  string // p1, p5, p0, …
	Filesystem string // as image.Probe names it; "" when none was recognised
	Offset     int64  // on the disk
	Size       int64
	Skipped    int64  // bytes skipped
	Ranges     int    // ranges skipped
	What       string // what was skipped: "free space", "swap files", "swap partition", …
	ReadInFull string // why nothing is skipped ("" when something is)
}

// Map is the outcome for a disk.
type Map struct {
	// Skip lists the disk byte ranges to skip, normalized.
	Skip    []extent.Range
	Volumes []Volume
	// Note explains a disk read in full as a whole (no readable partition
	// table).
	Note string
}

// swapFiler is implemented by filesystems that know their swap files
// (ntfs.FS).
type swapFiler interface {
	SwapFiles(ctx context.Context) ([]extent.Range, error)
}

// Compute reads the partition table of the disk r[0:size], the
// allocation maps of its filesystems and their swap files, and returns
// what to skip. Only a cancelled ctx is an error: whatever cannot be read
// is read in full, with the reason in the Map.
func Compute(ctx context.Context, r io.ReaderAt, size int64, opts Options) (*Map, error) {
	m := &Map{}
	if !opts.FreeSpace && !opts.Swap {
		return m, nil
	}
	d, err := image.Open(r, size)
	if err != nil {
		m.Note = fmt.Sprintf("partition table not readable (%v): the disk is read in full", err)
		return m, nil
	}
	var parts []image.Partition
	for _, p := range d.Partitions {
		if !p.Extended {
			parts = append(parts, p)
		}
	}
	skips := make([][]extent.Range, len(parts))
	for i, p := range parts {
		v := Volume{Partition: p.Name, Filesystem: p.Filesystem, Offset: p.Start, Size: p.Size}
		rs, what, why := volume(ctx, d, p, opts)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// to disk offsets, within the partition
		var out []extent.Range
		for _, r := range extent.Normalize(rs) {
			if lo, hi := max(r.Offset, 0), min(r.End(), p.Size); lo < hi {
				out = append(out, extent.Range{Offset: p.Start + lo, Length: hi - lo})
			}
		}
		skips[i] = out
		v.What, v.ReadInFull = what, why
		m.Volumes = append(m.Volumes, v)
	}
	// a byte another partition also covers is not skipped
	for i := range parts {
		var others []extent.Range
		for j, q := range parts {
			if j != i {
				others = append(others, extent.Range{Offset: q.Start, Length: q.Size})
			}
		}
		skips[i] = extent.Subtract(skips[i], extent.Normalize(others))
		v := &m.Volumes[i]
		v.Skipped, v.Ranges = extent.Sum(skips[i]), len(skips[i])
		if v.Skipped == 0 && v.ReadInFull == "" {
			v.ReadInFull = "nothing to skip"
			if v.What != "" {
				v.ReadInFull = "nothing to skip outside other partitions"
			}
			v.What = ""
		}
		m.Skip = append(m.Skip, skips[i]...)
	}
	m.Skip = extent.Normalize(m.Skip)
	return m, nil
}

// volume returns the ranges of one partition (relative to its start) to
// skip and what they are, or why none are.
func volume(ctx context.Context, d *image.Disk, p image.Partition, opts Options) (skip []extent.Range, what, why string) {
	switch p.Filesystem {
	case "swap":
		if !opts.Swap {
			return nil, "", "Linux swap: skipped only with --skip-swap"
		}
		if p.Size <= swapKeep {
			return nil, "", "Linux swap partition smaller than its header"
		}
		return []extent.Range{{Offset: swapKeep, Length: p.Size - swapKeep}}, "swap partition", ""
	case "LVM2_member":
		return nil, "", "LVM physical volume: logical volumes are not mapped, the volume is read in full"
	case "":
		return nil, "", "no filesystem recognised"
	}
	fsys, err := d.OpenFS(p)
	if err != nil {
		return nil, "", fmt.Sprintf("filesystem not readable: %v", err)
	}
	var whys []string
	if opts.FreeSpace {
		am, ok := fsys.(fs.AllocationMapper)
		if ok {
			alloc, err := am.Allocated(ctx)
			if err == nil {
				skip = extent.Subtract([]extent.Range{{Offset: 0, Length: p.Size}}, extent.Normalize(alloc))
				what = "free space"
			} else {
				whys = append(whys, fmt.Sprintf("allocation map refused: %v", err))
			}
		} else {
			whys = append(whys, fmt.Sprintf("%s allocation maps are not read", fsys.Type()))
		}
	}
	if sf, ok := fsys.(swapFiler); ok && opts.Swap {
		rs, err := sf.SwapFiles(ctx)
		switch {
		case err != nil:
			whys = append(whys, fmt.Sprintf("swap files not skipped: %v", err))
		case len(rs) > 0:
			skip = extent.Normalize(append(skip, rs...))
			if what == "" {
				what = "swap files"
			} else {
				what += " and swap files"
			}
		}
	}
	if what == "" {
		why = "nothing to skip"
		if len(whys) > 0 {
			why = whys[0]
		}
	}
	return skip, what, why
}

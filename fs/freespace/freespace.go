// Package freespace finds the parts of a disk whose content no filesystem
// on it reaches: the free blocks of each volume's filesystem (from its
// allocation map, fs.AllocationMapper) and, on request, swap space (Linux
// swap volumes; pagefile.sys, swapfile.sys and hiberfil.sys on NTFS).
// Volumes are what fs/image finds: partitions, a filesystem filling the
// disk, and LVM logical volumes, whose bytes fs/image maps to the disk
// (image.Partition.DiskRanges). Capture skips what this package finds
// (cbt.Options.SkipFreeSpace and SkipSwap): the restore point holds zeros
// there.
//
// Invariants: only bytes inside a volume whose filesystem vouches for
// them are ever skipped. The partition table, the space between and after
// partitions, LVM physical volumes outside their logical volumes (labels,
// metadata, unallocated extents), volumes without a recognised filesystem,
// filesystems without an allocation map or whose map is refused (an
// unreplayed ext journal, an unclean or hibernated NTFS volume, a dirty
// FAT, recorded errors, an XFS log that needs replaying) are read in full.
// A byte two volumes claim (overlapping partitions, or logical volumes
// mapped onto the same extents) is read in full. Each volume records what was decided
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

// swapKeep is the start of a Linux swap volume that is always read: its
// header (one page of up to 64 KiB) stays, so the restored volume is still
// swap space.
const swapKeep = 64 << 10

// Options say what to skip.
type Options struct {
	// FreeSpace skips the blocks the filesystems do not use.
	FreeSpace bool
	// Swap skips Linux swap partitions (all but their header) and the
	// content of NTFS's pagefile.sys, swapfile.sys and hiberfil.sys.
	Swap bool
}

// Volume is what was decided for one volume.
type Volume struct {
	Partition  string // p1, p5, p0, or an LV's VG-LV name
	Filesystem string // as image.Probe names it; "" when none was recognised
	Offset     int64  // on the disk (an LV: where its first byte lies)
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
	// where each volume's bytes lie on the disk
	extents := make([][]extent.Range, len(parts))
	for i, p := range parts {
		extents[i] = p.DiskRanges(extent.Range{Offset: 0, Length: p.Size})
	}
	skips := make([][]extent.Range, len(parts))
	for i, p := range parts {
		v := Volume{Partition: p.Name, Filesystem: p.Filesystem, Offset: p.Start, Size: p.Size}
		rs, what, why := volume(ctx, d, p, opts)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// to disk ranges, within the volume
		var out []extent.Range
		for _, r := range extent.Normalize(rs) {
			out = append(out, p.DiskRanges(r)...)
		}
		skips[i] = extent.Normalize(out)
		v.What, v.ReadInFull = what, why
		m.Volumes = append(m.Volumes, v)
	}
	// a byte another volume also holds is not skipped; a logical volume
	// lies inside its physical volume's partition by design
	for i, p := range parts {
		var others []extent.Range
		for j, q := range parts {
			if j == i || p.Table == "lvm" && q.Filesystem == "LVM2_member" {
				continue
			}
			others = append(others, extents[j]...)
		}
		skips[i] = extent.Subtract(skips[i], extent.Normalize(others))
		v := &m.Volumes[i]
		v.Skipped, v.Ranges = extent.Sum(skips[i]), len(skips[i])
		if v.Skipped == 0 && v.ReadInFull == "" {
			v.ReadInFull = "nothing to skip"
			if v.What != "" {
				v.ReadInFull = "nothing to skip outside other volumes"
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
	if p.Error != "" {
		return nil, "", p.Error
	}
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
		return nil, "", "LVM physical volume: its logical volumes are volumes of their own; the rest is read"
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

package ext

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/repo/extent"
)

const (
	compatSparseSuper2 = 0x200
	roCompatBigalloc   = 0x200

	bgBlockUninit = 0x2 // block group descriptor flag: bitmap not initialized

	// maxAllocRanges bounds the allocated-range list (see extent.Builder).
	maxAllocRanges = 1 << 20
)

// Allocated implements fs.AllocationMapper from the block bitmaps.
//
// A group whose descriptor says BLOCK_UNINIT (honoured only with the
// uninit_bg/gdt_csum or metadata_csum feature, as the kernel does) has no
// bitmap on disk: its used blocks are computed as the kernel's
// ext4_init_block_bitmap does — the superblock and group descriptor
// backups (sparse_super, sparse_super2, meta_bg) and the group's own
// bitmaps and inode table when they lie in it. Independently of the
// bitmaps, every group's bitmaps and inode table (wherever flex_bg put
// them), the blocks before the first group and anything in the partition
// past the filesystem's last block are included.
//
// It refuses (an error, so the caller reads everything) when the journal
// needs recovery (committed transactions may allocate blocks the on-disk
// bitmaps still call free), when the superblock records errors or says the
// filesystem is not clean (a filesystem without a journal while mounted
// writes its bitmaps lazily), and for bigalloc (cluster bitmaps; Open
// refuses those filesystems already).
func (f *FS) Allocated(ctx context.Context) ([]extent.Range, error) {
	switch {
	case f.incompat&incompatRecover != 0:
		return nil, fmt.Errorf("ext: the journal needs recovery: the block bitmaps may be out of date")
	case f.stateErrors:
		return nil, fmt.Errorf("ext: the superblock records filesystem errors: the block bitmaps cannot be trusted")
	case !f.stateValid:
		return nil, fmt.Errorf("ext: not cleanly unmounted (mounted without a journal, or a check is pending): the block bitmaps may be out of date")
	case f.roCompat&roCompatBigalloc != 0:
		return nil, fmt.Errorf("ext: bigalloc (cluster bitmaps) is not supported")
	}
	bs := f.blockSize
	uninitOK := f.roCompat&(roCompatGdtCsum|roCompatMetadataCsum) != 0
	b := extent.Builder{Max: maxAllocRanges}
	var meta []extent.Range // every group's bitmaps and inode tables
	itBlocks := (f.inodesPer*uint64(f.inodeSize) + uint64(bs) - 1) / uint64(bs)
	b.Add(0, int64(f.firstData)*bs)
	bitmap := make([]byte, bs)
	for g := uint64(0); g < f.groups; g++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		d, err := f.groupDesc(g)
		if err != nil {
			return nil, err
		}
		start := f.firstData + g*f.perGroup
		n := min(f.perGroup, f.blocksCount-start)
		for _, m := range []struct{ blk, count uint64 }{{d.blockBitmap, 1}, {d.inodeBitmap, 1}, {d.inodeTable, itBlocks}} {
			if m.blk >= f.blocksCount || m.count > f.blocksCount-m.blk {
				return nil, corrupt("group %d: metadata at block %d (+%d) past the %d-block filesystem", g, m.blk, m.count, f.blocksCount)
			}
			meta = append(meta, extent.Range{Offset: int64(m.blk) * bs, Length: int64(m.count) * bs})
		}
		if uninitOK && d.flags&bgBlockUninit != 0 {
			b.Add(int64(start)*bs, int64(min(f.baseMeta(g), n))*bs)
			continue
		}
		if err := f.readBlocks(bitmap, d.blockBitmap); err != nil {
			return nil, fmt.Errorf("ext: block bitmap of group %d: %w", g, err)
		}
		b.AddBits(bitmap, int64(n), int64(start)*bs, bs)
	}
	b.Add(int64(f.blocksCount)*bs, f.size-int64(f.blocksCount)*bs)
	return extent.Normalize(append(b.Ranges(), meta...)), nil
}

// groupDesc is the part of a group descriptor Allocated uses.
type groupDesc struct {
	blockBitmap, inodeBitmap, inodeTable uint64
	flags                                uint16
}

func (f *FS) groupDesc(g uint64) (groupDesc, error) {
	perBlock := uint64(f.blockSize / f.descSize)
	descBlock := g / perBlock
	blk := f.firstData + 1 + descBlock
	if f.incompat&incompatMetaBG != 0 && descBlock >= f.firstMetaBG {
		first := descBlock * perBlock
		blk = f.firstData + first*f.perGroup
		if f.hasSuper(first) {
			blk++
		}
	}
	buf := make([]byte, f.descSize)
	off := int64(blk)*f.blockSize + int64(g%perBlock)*f.descSize
	if blk >= f.blocksCount {
		return groupDesc{}, corrupt("group %d descriptor at block %d", g, blk)
	}
	if err := readFull(f.r, buf, off); err != nil {
		return groupDesc{}, fmt.Errorf("ext: group descriptor %d: %w", g, err)
	}
	le := binary.LittleEndian
	d := groupDesc{
		blockBitmap: uint64(le.Uint32(buf[0x0:])),
		inodeBitmap: uint64(le.Uint32(buf[0x4:])),
		inodeTable:  uint64(le.Uint32(buf[0x8:])),
		flags:       le.Uint16(buf[0x12:]),
	}
	if f.descSize >= 64 {
		d.blockBitmap |= uint64(le.Uint32(buf[0x20:])) << 32
		d.inodeBitmap |= uint64(le.Uint32(buf[0x24:])) << 32
		d.inodeTable |= uint64(le.Uint32(buf[0x28:])) << 32
	}
	return d, nil
}

// baseMeta is the number of blocks at the start of group g that hold a
// superblock backup, group descriptors and reserved GDT blocks (the
// kernel's ext4_num_base_meta_clusters).
func (f *FS) baseMeta(g uint64) uint64 {
	n := uint64(0)
	if f.hasSuper(g) {
		n = 1
	}
	perBlock := uint64(f.blockSize / f.descSize)
	if f.incompat&incompatMetaBG == 0 || g < f.firstMetaBG*perBlock {
		if n > 0 {
			n += (f.groups+perBlock-1)/perBlock + uint64(f.reservedGDT)
		}
		return n
	}
	if i := g % perBlock; i == 0 || i == 1 || i == perBlock-1 {
		n++
	}
	return n
}

var _ fs.AllocationMapper = (*FS)(nil)

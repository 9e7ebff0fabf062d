package xfs

import (
	"context"
	"fmt"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/repo/extent"
)

const (
	agfMagic   = 0x58414746 // "XAGF"
	abtbMagic  = 0x41425442 // "ABTB": free space by block number, v4
	abtb3Magic = 0x41423342 // "AB3B"
)

// Allocated implements fs.AllocationMapper from the free-space btrees
// (by block number) of every allocation group: allocated is the whole
// filesystem minus their free extents and the blocks on the AG free lists,
// so AG headers, btree blocks, inodes and the internal log count as
// allocated. An AG whose
// header or btree cannot be read or does not add up is counted as wholly
// allocated (and named in Warnings). The map is refused unless a replay
// of the log would change nothing but the superblock (LogClean): replaying
// a log can allocate blocks the btrees on disk still call free.
func (f *FS) Allocated(ctx context.Context) ([]extent.Range, error) {
	if err := f.LogClean(ctx); err != nil {
		return nil, err
	}
	total := int64(f.dblocks) * f.blockSize
	var free []extent.Range
	for ag := uint64(0); ag < f.agCount; ag++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fr, err := f.agFree(ctx, ag)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			f.warn(fmt.Sprintf("AG %d free space unknown, counted as allocated: %v", ag, err))
			continue
		}
		free = append(free, fr...)
	}
	free = extent.Normalize(free)
	var out []extent.Range
	pos := int64(0)
	for _, r := range free {
		if r.Offset >= total {
			break
		}
		if r.Offset > pos {
			out = append(out, extent.Range{Offset: pos, Length: r.Offset - pos})
		}
		pos = r.End()
	}
	if pos < total {
		out = append(out, extent.Range{Offset: pos, Length: total - pos})
	}
	return out, nil
}

// agFree returns the free extents of one AG in bytes from the start of the
// filesystem.
func (f *FS) agFree(ctx context.Context, ag uint64) ([]extent.Range, error) {
	b := make([]byte, f.sectSize)
	if err := readFull(f.r, b, f.agByte(ag)+f.sectSize); err != nil {
		return nil, fmt.Errorf("read AGF: %w", err)
	}
	if be.Uint32(b) != agfMagic {
		return nil, corrupt("AG %d AGF has no magic number", ag)
	}
	if seq := uint64(be.Uint32(b[8:])); seq != ag {
		return nil, corrupt("AG %d AGF says it is AG %d", ag, seq)
	}
	length := uint64(be.Uint32(b[12:]))
	agLen := f.agBlocks
	if last := f.dblocks - ag*f.agBlocks; last < agLen {
		agLen = last
	}
	if length != agLen {
		return nil, corrupt("AG %d AGF length %d, expected %d", ag, length, agLen)
	}
	root, level := be.Uint32(b[16:]), int(be.Uint32(b[28:]))
	if level < 1 || level > maxBtreeLvl {
		return nil, corrupt("AG %d free-space btree of %d levels", ag, level)
	}
	w := &bnoWalk{f: f, ctx: ctx, ag: ag, agLen: length}
	if err := w.node(root, level-1); err != nil {
		return nil, err
	}
	return append(w.free, f.agflFree(ag, length, b)...), nil
}

// agflFree returns the blocks on an AG's free list (AGFL): free blocks set
// aside for btree growth, not in the btrees. A free list that does not add
// up is left out (its blocks count as allocated).
func (f *FS) agflFree(ag, agLen uint64, agf []byte) []extent.Range {
	first, count := uint64(be.Uint32(agf[40:])), uint64(be.Uint32(agf[48:]))
	b := make([]byte, f.sectSize)
	if count == 0 || readFull(f.r, b, f.agByte(ag)+3*f.sectSize) != nil {
		return nil
	}
	hdr := 0
	if f.v5 {
		if be.Uint32(b) != 0x5841464c || !f.checkCRC(b, 32) { // "XAFL"
			return nil
		}
		hdr = 36
	}
	size := uint64(len(b)-hdr) / 4
	if first >= size || count > size {
		return nil
	}
	var out []extent.Range
	for i := uint64(0); i < count; i++ {
		agb := uint64(be.Uint32(b[hdr+4*int((first+i)%size):]))
		if agb >= agLen {
			return nil
		}
		out = append(out, extent.Range{Offset: f.agByte(ag) + int64(agb)*f.blockSize, Length: f.blockSize})
	}
	return out
}

type bnoWalk struct {
	f      *FS
	ctx    context.Context
	ag     uint64
	agLen  uint64
	free   []extent.Range
	visits int
}

func (w *bnoWalk) node(agb uint32, level int) error {
	f := w.f
	if err := w.ctx.Err(); err != nil {
		return err
	}
	if w.visits++; uint64(w.visits) > w.agLen {
		return corrupt("AG %d free-space btree larger than the AG", w.ag)
	}
	if uint64(agb) >= w.agLen {
		return corrupt("AG %d free-space btree block %d outside the AG", w.ag, agb)
	}
	b := make([]byte, f.blockSize)
	if err := readFull(f.r, b, f.agByte(w.ag)+int64(agb)*f.blockSize); err != nil {
		return fmt.Errorf("AG %d free-space btree block %d: %w", w.ag, agb, err)
	}
	hdr, magic := 16, uint32(abtbMagic)
	if f.v5 {
		hdr, magic = 56, abtb3Magic
	}
	if be.Uint32(b) != magic {
		return corrupt("AG %d free-space btree block %d has no magic number", w.ag, agb)
	}
	if f.v5 && !f.checkCRC(b, 52) {
		return corrupt("AG %d free-space btree block %d checksum mismatch", w.ag, agb)
	}
	lvl, n := int(be.Uint16(b[4:])), int(be.Uint16(b[6:]))
	if lvl != level {
		return corrupt("AG %d free-space btree block %d at level %d, expected %d", w.ag, agb, lvl, level)
	}
	if level == 0 {
		if n > (len(b)-hdr)/8 {
			return corrupt("AG %d free-space btree block %d with %d records", w.ag, agb, n)
		}
		base := f.agByte(w.ag)
		for i := 0; i < n; i++ {
			r := b[hdr+8*i:]
			start, count := uint64(be.Uint32(r)), uint64(be.Uint32(r[4:]))
			if count == 0 || start >= w.agLen || count > w.agLen-start {
				return corrupt("AG %d free extent %d+%d outside the AG", w.ag, start, count)
			}
			w.free = append(w.free, extent.Range{Offset: base + int64(start)*f.blockSize, Length: int64(count) * f.blockSize})
		}
		return nil
	}
	maxrecs := (len(b) - hdr) / 12
	if n == 0 || n > maxrecs {
		return corrupt("AG %d free-space btree block %d with %d records", w.ag, agb, n)
	}
	ptrs := b[hdr+8*maxrecs:]
	for i := 0; i < n; i++ {
		if err := w.node(be.Uint32(ptrs[4*i:]), level-1); err != nil {
			return err
		}
	}
	return nil
}

var _ fs.AllocationMapper = (*FS)(nil)

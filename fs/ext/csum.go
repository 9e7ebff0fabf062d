package ext

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// metadata_csum: inodes and directory blocks carry a CRC32C seeded with
// the filesystem's seed (s_checksum_seed, or the CRC of the UUID), the
// inode number and its generation. A mismatch is a warning naming the
// inode; what the structure says is still used, so whatever is readable
// stays readable (a forensic reader must not hide damaged data).

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c continues a CRC32C as the kernel's crc32c_le does: no inversion
// on the way in or out.
func crc32c(crc uint32, p []byte) uint32 { return ^crc32.Update(^crc, castagnoli, p) }

// maxWarnings bounds the warnings one filesystem collects.
const maxWarnings = 100

func (f *FS) warn(w string) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if f.warned[w] {
		return
	}
	if f.warned == nil {
		f.warned = map[string]bool{}
	}
	f.warned[w] = true
	switch {
	case len(f.warnings) < maxWarnings:
		f.warnings = append(f.warnings, w)
	case len(f.warnings) == maxWarnings:
		f.warnings = append(f.warnings, "more damaged structures were found; only the first ones are listed")
	}
}

func (f *FS) hasCsum() bool { return f.roCompat&roCompatMetadataCsum != 0 }

// inodeSeed is the checksum seed of one inode's structures.
func (f *FS) inodeSeed(ino uint64, gen uint32) uint32 {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(ino))
	c := crc32c(f.csumSeed, b[:])
	binary.LittleEndian.PutUint32(b[:], gen)
	return crc32c(c, b[:])
}

// checkInode verifies an on-disk inode's checksum (raw is the whole
// inode, f.inodeSize bytes). Never-used inodes (all zeros) have none.
func (f *FS) checkInode(ino uint64, raw []byte) {
	if !f.hasCsum() || len(raw) < 128 || allZero(raw) {
		return
	}
	le := binary.LittleEndian
	b := append([]byte(nil), raw...)
	stored := uint32(le.Uint16(b[0x7c:]))
	b[0x7c], b[0x7d] = 0, 0
	mask := uint32(0xffff)
	if len(b) > 128 && 128+int(le.Uint16(b[0x80:])) >= 0x84 { // i_checksum_hi fits
		stored |= uint32(le.Uint16(b[0x82:])) << 16
		b[0x82], b[0x83] = 0, 0
		mask = 0xffffffff
	}
	if got := crc32c(f.inodeSeed(ino, le.Uint32(raw[0x64:])), b) & mask; got != stored {
		f.warn(fmt.Sprintf("inode %d: checksum mismatch (stored %#x, computed %#x): its metadata may be damaged; shown as stored", ino, stored, got))
	}
}

// checkDirBlock verifies the checksum of logical block lblk of directory
// in: a leaf block's tail, or an htree node's (block 0 of an indexed
// directory, and blocks whose first entry spans the whole block).
func (f *FS) checkDirBlock(in *inode, lblk uint64, b []byte) {
	if !f.hasCsum() {
		return
	}
	le := binary.LittleEndian
	bs := len(b)
	seed := f.inodeSeed(in.ino, in.gen)
	if in.flags&flagIndex != 0 && (lblk == 0 || recLen(b, 0) == bs) {
		countOff := 8
		if lblk == 0 {
			countOff = 0x20
			if recLen(b, 0) != 12 || recLen(b, 12) != bs-12 || le.Uint32(b[0x18:]) != 0 || b[0x1d] != 8 {
				f.warn(fmt.Sprintf("directory inode %d: htree root block is malformed", in.ino))
				return
			}
		}
		limit, count := int(le.Uint16(b[countOff:])), int(le.Uint16(b[countOff+2:]))
		tail := countOff + 8*limit
		if count > limit || tail+8 > bs {
			f.warn(fmt.Sprintf("directory inode %d block %d: htree node has no room for its checksum", in.ino, lblk))
			return
		}
		c := crc32c(seed, b[:countOff+8*count])
		c = crc32c(c, b[tail:tail+4])
		c = crc32c(c, []byte{0, 0, 0, 0})
		if stored := le.Uint32(b[tail+4:]); c != stored {
			f.warn(fmt.Sprintf("directory inode %d block %d: htree node checksum mismatch (stored %#x, computed %#x)", in.ino, lblk, stored, c))
		}
		return
	}
	t := b[bs-12:]
	if le.Uint32(t) != 0 || le.Uint16(t[4:]) != 12 || t[6] != 0 || t[7] != 0xde {
		f.warn(fmt.Sprintf("directory inode %d block %d: no checksum tail", in.ino, lblk))
		return
	}
	if c, stored := crc32c(seed, b[:bs-12]), le.Uint32(t[8:]); c != stored {
		f.warn(fmt.Sprintf("directory inode %d block %d: checksum mismatch (stored %#x, computed %#x): entries are shown as stored", in.ino, lblk, stored, c))
	}
}

// recLen is the record length of the directory entry at off.
func recLen(b []byte, off int) int {
	if off+6 > len(b) {
		return -1
	}
	n := int(binary.LittleEndian.Uint16(b[off+4:]))
	if n == 0 && len(b) >= 65536 {
		n = 65536
	}
	return n
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

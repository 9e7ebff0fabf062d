// Package ext reads ext2, ext3 and ext4 filesystems, read-only, from an
// io.ReaderAt.
//
// It implements the whole read path itself rather than through go-diskfs's
// ext4 package, which (v1.9.4) reads only extent-mapped files, slices
// 256-byte inode fields out of 128-byte inodes (a panic on ext2 images made
// with -I 128), has no inline data, loads whole directories and files into
// memory and offers only a cursor-based File. Covered here: block-mapped
// files (direct, single, double and triple indirect), extent trees of any
// depth with uninitialized extents, holes, inline data (files and
// directories), htree directories (read through their leaf blocks, which
// carry every entry in linear form), fast and slow symlinks, 64bit group
// descriptors, META_BG, 1–64 KiB blocks, huge files, extended attributes in
// the inode body, in an xattr block and in EA inodes, and nanosecond and
// creation times.
//
// With metadata_csum, inode and directory block checksums are verified; a
// mismatch is a warning naming the inode (Warnings), and the structure is
// still read as stored.
//
// Invariants: every on-disk length and block number is checked against the
// filesystem's geometry before use; the memory a call allocates is bounded by
// the filesystem's block size and the file's size, never by an unchecked
// field; a malformed structure is an error wrapping fs.ErrCorrupt, never a
// panic. The journal is not replayed: a filesystem that needs recovery is
// read as it is on disk and Warnings says so.
package ext

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	"github.com/vmvault/vmvault/fs"
)

const (
	superblockOffset = 1024
	superblockSize   = 1024
	magic            = 0xEF53

	rootIno = 2

	compatHasJournal = 0x4

	incompatFiletype   = 0x2
	incompatRecover    = 0x4
	incompatJournalDev = 0x8
	incompatMetaBG     = 0x10
	incompatExtents    = 0x40
	incompat64bit      = 0x80
	incompatFlexBG     = 0x200
	incompatEAInode    = 0x400
	incompatDirData    = 0x1000
	incompatCsumSeed   = 0x2000
	incompatLargeDir   = 0x4000
	incompatInlineData = 0x8000
	incompatEncrypt    = 0x10000
	incompatCasefold   = 0x20000

	roCompatSparseSuper  = 0x1
	roCompatLargeFile    = 0x2
	roCompatHugeFile     = 0x8
	roCompatGdtCsum      = 0x10
	roCompatDirNlink     = 0x20
	roCompatExtraIsize   = 0x40
	roCompatMetadataCsum = 0x400

	// Incompatible features this reader understands; anything else makes
	// the filesystem unreadable for us, as for the kernel.
	incompatKnown = incompatFiletype | incompatRecover | incompatMetaBG | incompatExtents |
		incompat64bit | incompatFlexBG | incompatEAInode | incompatCsumSeed |
		incompatLargeDir | incompatInlineData | incompatCasefold | 0x100 /* MMP */

	flagIndex      = 0x1000
	flagHugeFile   = 0x40000
	flagExtents    = 0x80000
	flagEAInode    = 0x200000
	flagInlineData = 0x10000000
	flagEncrypt    = 0x800

	nBlocks = 15 // i_block has 15 32-bit slots (60 bytes)

	// maxDirSize bounds how much of a directory is parsed (ext4 largedir
	// directories top out far below this in practice).
	maxDirSize = 1 << 30
)

// FS is an open ext2/3/4 filesystem.
type FS struct {
	r    io.ReaderAt
	size int64

	kind        string
	label, uuid string
	blockSize   int64
	blocksCount uint64
	firstData   uint64
	perGroup    uint64 // blocks per group
	inodesPer   uint64
	inodesCount uint64
	inodeSize   int64
	descSize    int64
	groups      uint64
	incompat    uint32
	roCompat    uint32
	firstMetaBG uint64
	csumSeed    uint32 // metadata_csum seed
	compat      uint32
	backupBGs   [2]uint64 // sparse_super2: the groups with superblock backups
	reservedGDT uint64    // blocks reserved for growing the descriptor table
	stateErrors bool      // the superblock records errors
	stateValid  bool      // cleanly unmounted (EXT2_VALID_FS)

	wmu      sync.Mutex
	warnings []string
	warned   map[string]bool

	mu       sync.Mutex
	tables   map[uint64]uint64 // group → inode table block
	dirCache map[fs.Ino][]fs.DirEntry
	dirOrder []fs.Ino
}

// Probe reports whether the start of r looks like an ext superblock.
func Probe(r io.ReaderAt) bool {
	var b [2]byte
	if _, err := r.ReadAt(b[:], superblockOffset+0x38); err != nil {
		return false
	}
	return binary.LittleEndian.Uint16(b[:]) == magic
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("ext: %s: %w", fmt.Sprintf(format, args...), fs.ErrCorrupt)
}

// Open reads the superblock of the filesystem occupying r[0:size].
func Open(r io.ReaderAt, size int64) (*FS, error) {
	sb := make([]byte, superblockSize)
	if err := readFull(r, sb, superblockOffset); err != nil {
		return nil, fmt.Errorf("ext: read superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != magic {
		return nil, fmt.Errorf("ext: no superblock magic: %w", fs.ErrCorrupt)
	}
	f := &FS{r: r, size: size, tables: map[uint64]uint64{}, dirCache: map[fs.Ino][]fs.DirEntry{}}
	logBlock := le.Uint32(sb[0x18:])
	if logBlock > 6 {
		return nil, corrupt("block size 2^(10+%d)", logBlock)
	}
	f.blockSize = 1024 << logBlock
	f.inodesCount = uint64(le.Uint32(sb[0x0:]))
	f.blocksCount = uint64(le.Uint32(sb[0x4:]))
	f.firstData = uint64(le.Uint32(sb[0x14:]))
	f.perGroup = uint64(le.Uint32(sb[0x20:]))
	f.inodesPer = uint64(le.Uint32(sb[0x28:]))
	rev := le.Uint32(sb[0x4c:])
	f.inodeSize = 128
	var compat uint32
	if rev >= 1 {
		f.inodeSize = int64(le.Uint16(sb[0x58:]))
		compat = le.Uint32(sb[0x5c:])
		f.compat = compat
		f.reservedGDT = uint64(le.Uint16(sb[0xce:]))
		f.backupBGs = [2]uint64{uint64(le.Uint32(sb[0x24c:])), uint64(le.Uint32(sb[0x250:]))}
		f.incompat = le.Uint32(sb[0x60:])
		f.roCompat = le.Uint32(sb[0x64:])
	}
	if f.incompat&incompat64bit != 0 {
		f.blocksCount |= uint64(le.Uint32(sb[0x150:])) << 32
		f.descSize = int64(le.Uint16(sb[0xfe:]))
		if f.descSize < 64 || f.descSize > 1024 || f.descSize&(f.descSize-1) != 0 {
			return nil, corrupt("group descriptor size %d", f.descSize)
		}
	} else {
		f.descSize = 32
	}
	f.firstMetaBG = uint64(le.Uint32(sb[0x104:]))
	if f.roCompat&roCompatBigalloc != 0 {
		return nil, fmt.Errorf("ext: bigalloc filesystems (allocation clusters of several blocks) are not supported")
	}
	switch {
	case f.inodeSize < 128 || f.inodeSize > f.blockSize || f.inodeSize&(f.inodeSize-1) != 0:
		return nil, corrupt("inode size %d", f.inodeSize)
	case f.perGroup == 0 || f.perGroup > uint64(8*f.blockSize):
		return nil, corrupt("%d blocks per group", f.perGroup)
	case f.inodesPer == 0 || f.inodesPer > uint64(8*f.blockSize):
		return nil, corrupt("%d inodes per group", f.inodesPer)
	case f.firstData >= f.blocksCount:
		return nil, corrupt("first data block %d of %d", f.firstData, f.blocksCount)
	}
	if f.incompat&incompatJournalDev != 0 {
		return nil, fmt.Errorf("ext: this is an external journal device, not a filesystem")
	}
	if unknown := f.incompat &^ incompatKnown; unknown != 0 {
		return nil, fmt.Errorf("ext: unsupported incompatible features %#x", unknown)
	}
	f.groups = (f.blocksCount - f.firstData + f.perGroup - 1) / f.perGroup
	if f.inodesCount > f.groups*f.inodesPer {
		return nil, corrupt("%d inodes in %d groups of %d", f.inodesCount, f.groups, f.inodesPer)
	}
	if f.incompat&incompatCsumSeed != 0 {
		f.csumSeed = le.Uint32(sb[0x270:])
	} else {
		f.csumSeed = crc32c(^uint32(0), sb[0x68:0x78])
	}
	f.label = cString(sb[0x78:0x88])
	f.uuid = formatUUID(sb[0x68:0x78])
	switch {
	case f.incompat&(incompatExtents|incompat64bit|incompatFlexBG|incompatInlineData) != 0,
		f.roCompat&(roCompatHugeFile|roCompatGdtCsum|roCompatDirNlink|roCompatExtraIsize|roCompatMetadataCsum) != 0:
		f.kind = "ext4"
	case compat&compatHasJournal != 0:
		f.kind = "ext3"
	default:
		f.kind = "ext2"
	}
	if f.incompat&incompatRecover != 0 {
		f.warnings = append(f.warnings, "the journal has not been replayed (the filesystem was not unmounted cleanly): showing what is on disk, recent changes may be missing")
	}
	if f.incompat&incompatEncrypt != 0 {
		f.warnings = append(f.warnings, "filesystem uses fscrypt: encrypted files and names are shown as stored")
	}
	f.stateValid = le.Uint16(sb[0x3a:])&1 != 0
	if le.Uint16(sb[0x3a:])&2 != 0 {
		f.stateErrors = true
		f.warnings = append(f.warnings, "filesystem has errors recorded (run e2fsck on a copy)")
	}
	return f, nil
}

// Type implements fs.FileSystem.
func (f *FS) Type() string { return f.kind }

// Label implements fs.FileSystem.
func (f *FS) Label() string { return f.label }

// UUID implements fs.FileSystem.
func (f *FS) UUID() string { return f.uuid }

// Root implements fs.FileSystem.
func (f *FS) Root() fs.Ino { return rootIno }

// Warnings implements fs.FileSystem: what Open noticed about the
// filesystem as a whole, then every inode and directory block found with
// a bad metadata_csum checksum so far (each once, the inode named).
func (f *FS) Warnings() []string {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return append([]string(nil), f.warnings...)
}

// BlockSize is the filesystem block size in bytes.
func (f *FS) BlockSize() int64 { return f.blockSize }

func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// readBlocks reads n blocks from block number b, checking the range first.
func (f *FS) readBlocks(p []byte, b uint64) error {
	n := uint64(len(p)) / uint64(f.blockSize)
	if b >= f.blocksCount || n > f.blocksCount-b {
		return corrupt("block %d beyond the filesystem's %d blocks", b, f.blocksCount)
	}
	if err := readFull(f.r, p, int64(b)*f.blockSize); err != nil {
		return fmt.Errorf("ext: read block %d: %w", b, err)
	}
	return nil
}

func (f *FS) hasSuper(group uint64) bool {
	if group == 0 {
		return true
	}
	if f.compat&compatSparseSuper2 != 0 {
		return group == f.backupBGs[0] || group == f.backupBGs[1]
	}
	if group == 1 || f.roCompat&roCompatSparseSuper == 0 {
		return true
	}
	for _, base := range []uint64{3, 5, 7} {
		p := base
		for p < group {
			p *= base
		}
		if p == group {
			return true
		}
	}
	return false
}

// inodeTable returns the first block of a group's inode table.
func (f *FS) inodeTable(group uint64) (uint64, error) {
	f.mu.Lock()
	t, ok := f.tables[group]
	f.mu.Unlock()
	if ok {
		return t, nil
	}
	perBlock := uint64(f.blockSize / f.descSize)
	descBlock := group / perBlock
	var blk uint64
	if f.incompat&incompatMetaBG != 0 && descBlock >= f.firstMetaBG {
		g := descBlock * perBlock
		blk = f.firstData + g*f.perGroup
		if f.hasSuper(g) {
			blk++
		}
	} else {
		blk = f.firstData + 1 + descBlock
	}
	buf := make([]byte, f.blockSize)
	if err := f.readBlocks(buf, blk); err != nil {
		return 0, fmt.Errorf("ext: group descriptor of group %d: %w", group, err)
	}
	d := buf[(group%perBlock)*uint64(f.descSize):]
	t = uint64(binary.LittleEndian.Uint32(d[0x8:]))
	if f.descSize >= 64 {
		t |= uint64(binary.LittleEndian.Uint32(d[0x28:])) << 32
	}
	itBlocks := (f.inodesPer*uint64(f.inodeSize) + uint64(f.blockSize) - 1) / uint64(f.blockSize)
	if t == 0 || t >= f.blocksCount || itBlocks > f.blocksCount-t {
		return 0, corrupt("group %d inode table at block %d", group, t)
	}
	f.mu.Lock()
	f.tables[group] = t
	f.mu.Unlock()
	return t, nil
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

func formatUUID(b []byte) string {
	allZero := true
	for _, c := range b {
		if c != 0 {
			allZero = false
		}
	}
	if allZero {
		return ""
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

var _ fs.FileSystem = (*FS)(nil)

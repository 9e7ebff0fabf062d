// Package xfs reads XFS filesystems, read-only, from an io.ReaderAt.
//
// No Go library was a fit: the ones published (go-xfs-filesystem, go-xfs,
// libxfs) offer io/fs path access only or are young single-author
// projects, and none gives inode-level access with extended attributes,
// device numbers, nanosecond times and the free-space btrees. So the read
// path is implemented here from the on-disk format: superblock v4 and v5
// (CRC-enabled), inodes v1–v3 with big timestamps and 64-bit extent
// counters, data forks in extent-list and btree form, directories in all
// five forms (short-form in the inode; block, leaf, node and btree, all
// read through their data blocks, which carry every entry), local and
// remote symlinks, extended attributes in short-form, leaf and node form
// with remote values (POSIX ACLs turned into the Linux xattr form, as the
// kernel shows them), sparse, preallocated (unwritten) and reflinked
// extents, device nodes, and the free-space btrees of every allocation
// group (Allocated).
//
// CRC checks (v5): the superblock, the AG headers, inodes, directory
// blocks, btree blocks, attribute blocks, remote symlink and attribute
// value blocks are checked when read. A mismatch is not an error: the
// block is still parsed with every bounds check (a forensic reader shows
// what is there), and Warnings names the block and its owner — the
// superblock and AG headers are checked at Open, everything else when it
// is first read, so Warnings grows as the filesystem is read. Structures
// that do not parse (a wrong magic number, a field out of range) are
// errors wrapping fs.ErrCorrupt.
//
// The log is not replayed: a filesystem that was not unmounted cleanly is
// read as it is on disk. LogClean reads the log to tell whether a replay
// would change more than the superblock (Allocated refuses its map then). Files on a realtime device (another disk) cannot
// be read and say so.
//
// Invariants: every on-disk length, block and inode number is checked
// against the filesystem's geometry before use; the memory a call
// allocates is bounded by the block size, the directory block size and
// the file's size, never by an unchecked field; tree walks are bounded in
// depth and node count; a malformed structure is an error wrapping
// fs.ErrCorrupt, never a panic.
package xfs

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"sync"

	"github.com/vmvault/vmvault/fs"
)

var be = binary.BigEndian

const (
	sbMagic = 0x58465342 // "XFSB"

	versionMask     = 0x000f
	versionAttr     = 0x0010
	versionMoreBits = 0x8000

	features2FType = 0x0200

	incompatFType    = 0x01
	incompatSpinodes = 0x02
	incompatMetaUUID = 0x04
	incompatBigtime  = 0x08
	incompatNeedsRep = 0x10
	incompatNrext64  = 0x20
	incompatExchange = 0x40
	incompatParent   = 0x80

	// incompatKnown are the incompatible v5 features this reader
	// understands; anything else is refused, as the kernel would.
	incompatKnown = incompatFType | incompatSpinodes | incompatMetaUUID | incompatBigtime |
		incompatNeedsRep | incompatNrext64 | incompatExchange | incompatParent

	// maxWarnings bounds the warnings kept (a badly damaged filesystem
	// would otherwise grow the list without end).
	maxWarnings = 100

	dirCacheSize = 256
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// FS is an open XFS filesystem.
type FS struct {
	r    io.ReaderAt
	size int64

	v5          bool
	ftype       bool // directory entries record the file type
	bigtime     bool
	label, uuid string
	uuidRaw     [16]byte
	blockSize   int64
	sectSize    int64
	inodeSize   int64
	dblocks     uint64
	agBlocks    uint64
	agCount     uint64
	agBlkLog    uint
	inoPBLog    uint
	dirBlkLog   uint
	rootIno     uint64
	logStart    uint64
	logBlocks   uint64

	mu       sync.Mutex
	warnings []string
	dropped  int
	dirCache map[fs.Ino][]fs.DirEntry
	dirOrder []fs.Ino
}

// Probe reports whether r starts with an XFS superblock.
func Probe(r io.ReaderAt) bool {
	var b [4]byte
	if _, err := r.ReadAt(b[:], 0); err != nil {
		return false
	}
	return be.Uint32(b[:]) == sbMagic
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("xfs: %s: %w", fmt.Sprintf(format, args...), fs.ErrCorrupt)
}

// Open reads the superblock of the filesystem occupying r[0:size].
func Open(r io.ReaderAt, size int64) (*FS, error) {
	sb := make([]byte, 512)
	if err := readFull(r, sb, 0); err != nil {
		return nil, fmt.Errorf("xfs: read superblock: %w", err)
	}
	if be.Uint32(sb) != sbMagic {
		return nil, corrupt("no superblock magic")
	}
	f := &FS{r: r, size: size, dirCache: map[fs.Ino][]fs.DirEntry{}}
	f.blockSize = int64(be.Uint32(sb[4:]))
	f.dblocks = be.Uint64(sb[8:])
	copy(f.uuidRaw[:], sb[32:48])
	f.logStart = be.Uint64(sb[48:])
	f.rootIno = be.Uint64(sb[56:])
	f.agBlocks = uint64(be.Uint32(sb[84:]))
	f.agCount = uint64(be.Uint32(sb[88:]))
	f.logBlocks = uint64(be.Uint32(sb[96:]))
	version := be.Uint16(sb[100:])
	f.sectSize = int64(be.Uint16(sb[102:]))
	f.inodeSize = int64(be.Uint16(sb[104:]))
	inoPB := int64(be.Uint16(sb[106:]))
	blockLog, sectLog, inodeLog, inoPBLog, agBlkLog := uint(sb[120]), uint(sb[121]), uint(sb[122]), uint(sb[123]), uint(sb[124])
	f.inoPBLog, f.agBlkLog = inoPBLog, agBlkLog
	f.dirBlkLog = uint(sb[192])
	features2 := be.Uint32(sb[200:])

	switch version & versionMask {
	case 4:
	case 5:
		f.v5 = true
	default:
		return nil, fmt.Errorf("xfs: superblock version %d is not supported", version&versionMask)
	}
	switch {
	case blockLog < 9 || blockLog > 16 || f.blockSize != 1<<blockLog:
		return nil, corrupt("block size %d (log %d)", f.blockSize, blockLog)
	case sectLog < 9 || sectLog > 15 || f.sectSize != 1<<sectLog || f.sectSize > f.blockSize:
		return nil, corrupt("sector size %d (log %d)", f.sectSize, sectLog)
	case inodeLog < 8 || inodeLog > 11 || f.inodeSize != 1<<inodeLog || f.inodeSize > f.blockSize:
		return nil, corrupt("inode size %d (log %d)", f.inodeSize, inodeLog)
	case inoPB != f.blockSize/f.inodeSize || inoPBLog != blockLog-inodeLog:
		return nil, corrupt("%d inodes per block (log %d)", inoPB, inoPBLog)
	case f.agBlocks < 5 || agBlkLog > 31 || f.agBlocks > 1<<agBlkLog || (agBlkLog > 0 && f.agBlocks <= 1<<(agBlkLog-1)):
		return nil, corrupt("%d blocks per allocation group (log %d)", f.agBlocks, agBlkLog)
	case f.agCount == 0 || f.dblocks == 0 || f.dblocks > f.agCount*f.agBlocks || f.dblocks <= (f.agCount-1)*f.agBlocks:
		return nil, corrupt("%d blocks in %d allocation groups of %d", f.dblocks, f.agCount, f.agBlocks)
	case f.dirBlkLog > 16-blockLog:
		return nil, corrupt("directory block size 2^%d blocks", f.dirBlkLog)
	case agBlkLog+inoPBLog > 32:
		return nil, corrupt("inode number layout of %d+%d bits", agBlkLog, inoPBLog)
	}
	if f.sectSize > 512 {
		sb = make([]byte, f.sectSize)
		if err := readFull(r, sb, 0); err != nil {
			return nil, fmt.Errorf("xfs: read superblock: %w", err)
		}
	}
	if version&versionMoreBits != 0 && features2&features2FType != 0 {
		f.ftype = true
	}
	if f.v5 {
		incompat := be.Uint32(sb[216:])
		if unknown := incompat &^ incompatKnown; unknown != 0 {
			return nil, fmt.Errorf("xfs: unsupported incompatible features %#x", unknown)
		}
		f.ftype = incompat&incompatFType != 0
		f.bigtime = incompat&incompatBigtime != 0
		if incompat&incompatMetaUUID != 0 {
			copy(f.uuidRaw[:], sb[248:264]) // blocks are stamped with the metadata UUID
		}
		if !f.checkCRC(sb, 224) {
			f.warn("superblock checksum mismatch")
		}
		if incompat&incompatNeedsRep != 0 {
			f.warn("filesystem is marked as needing repair (run xfs_repair on a copy)")
		}
		if be.Uint32(sb[220:]) != 0 {
			f.warn("the log holds changes that have not been replayed (the filesystem was not unmounted cleanly): showing what is on disk, recent changes may be missing")
		}
	}
	f.label = cString(sb[108:120])
	f.uuid = formatUUID(sb[32:48])
	if sb[126] != 0 {
		f.warn("superblock says mkfs did not finish")
	}
	if _, _, err := f.inoLocation(f.rootIno); err != nil {
		return nil, fmt.Errorf("xfs: root inode: %w", err)
	}
	f.checkAGHeaders()
	return f, nil
}

// checkAGHeaders verifies the magic and CRC of every AG's free-space and
// inode headers, so a damaged AG is reported at Open.
func (f *FS) checkAGHeaders() {
	n := f.agCount
	if n > 1024 {
		n = 1024 // bounds the work on a hostile superblock
	}
	for ag := uint64(0); ag < n; ag++ {
		for _, h := range []struct {
			name   string
			sector int64
			magic  uint32
			crcOff int
		}{{"AGF", 1, 0x58414746, 216}, {"AGI", 2, 0x58414749, 312}} {
			b := make([]byte, f.sectSize)
			if err := readFull(f.r, b, f.agByte(ag)+h.sector*f.sectSize); err != nil {
				f.warn(fmt.Sprintf("AG %d %s unreadable: %v", ag, h.name, err))
				continue
			}
			if be.Uint32(b) != h.magic {
				f.warn(fmt.Sprintf("AG %d %s has no magic number", ag, h.name))
				continue
			}
			if f.v5 && h.crcOff+4 <= len(b) && !f.checkCRC(b, h.crcOff) {
				f.warn(fmt.Sprintf("AG %d %s checksum mismatch", ag, h.name))
			}
		}
	}
}

// Type implements fs.FileSystem.
func (f *FS) Type() string { return "xfs" }

// Label implements fs.FileSystem.
func (f *FS) Label() string { return f.label }

// UUID implements fs.FileSystem.
func (f *FS) UUID() string { return f.uuid }

// Root implements fs.FileSystem.
func (f *FS) Root() fs.Ino { return fs.Ino(f.rootIno) }

// BlockSize is the filesystem block size in bytes.
func (f *FS) BlockSize() int64 { return f.blockSize }

// Warnings implements fs.FileSystem. It lists what was noticed so far:
// problems of the superblock and AG headers (found at Open) and checksum
// mismatches of blocks read since.
func (f *FS) Warnings() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := append([]string(nil), f.warnings...)
	if f.dropped > 0 {
		out = append(out, fmt.Sprintf("%d more warnings not shown", f.dropped))
	}
	return out
}

func (f *FS) warn(msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.warnings {
		if w == msg {
			return
		}
	}
	if len(f.warnings) >= maxWarnings {
		f.dropped++
		return
	}
	f.warnings = append(f.warnings, msg)
}

// checkCRC reports whether the CRC32C of b, stored little-endian at off
// and counted as zero, matches.
func (f *FS) checkCRC(b []byte, off int) bool {
	if off < 0 || off+4 > len(b) {
		return false
	}
	var zero [4]byte
	c := crc32.Update(0, castagnoli, b[:off])
	c = crc32.Update(c, castagnoli, zero[:])
	c = crc32.Update(c, castagnoli, b[off+4:])
	return c == binary.LittleEndian.Uint32(b[off:])
}

// verify checks a v5 block's CRC and records a warning naming what on a
// mismatch.
func (f *FS) verify(b []byte, off int, what string) {
	if f.v5 && !f.checkCRC(b, off) {
		f.warn(what + ": checksum mismatch")
	}
}

// agByte is the byte offset of an allocation group's first block.
func (f *FS) agByte(ag uint64) int64 { return int64(ag*f.agBlocks) * f.blockSize }

// fsbToLinear turns a filesystem block number (AG number in the high bits,
// AG block in the low agBlkLog bits) into a linear block number and checks
// that count blocks from it lie inside one AG of the filesystem.
func (f *FS) fsbToLinear(fsb, count uint64) (uint64, error) {
	ag := fsb >> f.agBlkLog
	agb := fsb & (1<<f.agBlkLog - 1)
	if ag >= f.agCount || agb >= f.agBlocks || count > f.agBlocks-agb {
		return 0, corrupt("block %#x (AG %d block %d, %d blocks) outside the filesystem", fsb, ag, agb, count)
	}
	lin := ag*f.agBlocks + agb
	if lin >= f.dblocks || count > f.dblocks-lin {
		return 0, corrupt("block %#x (%d blocks) past the filesystem's %d blocks", fsb, count, f.dblocks)
	}
	return lin, nil
}

// readFSB reads len(p) bytes from filesystem block fsb.
func (f *FS) readFSB(p []byte, fsb uint64) error {
	n := (uint64(len(p)) + uint64(f.blockSize) - 1) / uint64(f.blockSize)
	lin, err := f.fsbToLinear(fsb, n)
	if err != nil {
		return err
	}
	if err := readFull(f.r, p, int64(lin)*f.blockSize); err != nil {
		return fmt.Errorf("xfs: read block %#x: %w", fsb, err)
	}
	return nil
}

// inoLocation returns the byte offset of an inode and checks its number.
func (f *FS) inoLocation(ino uint64) (int64, uint64, error) {
	agShift := f.agBlkLog + f.inoPBLog
	ag := ino >> agShift
	agb := (ino >> f.inoPBLog) & (1<<f.agBlkLog - 1)
	slot := ino & (1<<f.inoPBLog - 1)
	if ino == 0 || ag >= f.agCount || agb >= f.agBlocks || ag*f.agBlocks+agb >= f.dblocks {
		return 0, 0, corrupt("inode %d out of range", ino)
	}
	return (int64(ag*f.agBlocks+agb))*f.blockSize + int64(slot)*f.inodeSize, ag, nil
}

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

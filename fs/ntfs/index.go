package ntfs

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/vmvault/vmvault/fs"
)

const (
	// maxIndexBlock bounds the index block size an $INDEX_ROOT may claim.
	maxIndexBlock = 64 << 10
	// maxEntries bounds how many index entries one directory may yield.
	maxEntries = 1 << 20

	nsPOSIX = 0
	nsWin32 = 1
	nsDOS   = 2
	nsBoth  = 3 // a Win32 name that is also a valid DOS name

	fnFlagSystem    = 0x4
	fnFlagDirectory = 0x10
	fnFlagReparse   = 0x400
	fnFlagIndex     = 0x10000000 // the file has an $I30 index: a directory
)

// fileName is a $FILE_NAME attribute or index key.
type fileName struct {
	parent    uint64
	times     [4]uint64 // creation, modification, MFT change, access (FILETIME)
	flags     uint32
	namespace uint8
	name      string
}

// parseFileName decodes a $FILE_NAME body.
func parseFileName(b []byte) (fileName, error) {
	le := binary.LittleEndian
	if len(b) < 0x42 {
		return fileName{}, fmt.Errorf("ntfs: file name of %d bytes: %w", len(b), fs.ErrCorrupt)
	}
	fn := fileName{parent: le.Uint64(b) & recordMask, flags: le.Uint32(b[0x38:]), namespace: b[0x41]}
	for i := range fn.times {
		fn.times[i] = le.Uint64(b[8+8*i:])
	}
	n := int(b[0x40])
	if 0x42+2*n > len(b) {
		return fileName{}, fmt.Errorf("ntfs: file name of %d characters in %d bytes: %w", n, len(b), fs.ErrCorrupt)
	}
	fn.name = utf16le(b[0x42 : 0x42+2*n])
	return fn, nil
}

// filetime converts an NTFS time (100 ns units since 1601-01-01 UTC) to a
// time.Time. Every value maps to its instant: go-ntfs's conversion goes
// through int64 Unix nanoseconds and wraps before 1677 and after 2262.
func filetime(ft uint64) time.Time {
	const toUnix = 11644473600 // seconds from 1601 to 1970
	return time.Unix(int64(ft/10_000_000)-toUnix, int64(ft%10_000_000)*100).UTC()
}

// indexEntry is one live entry of a directory index.
type indexEntry struct {
	ref uint64 // MFT record number (sequence number dropped)
	fn  fileName
}

// dirEntries lists the live entries of a directory's $I30 index: those of
// the $INDEX_ROOT node and of every index block the index's $BITMAP marks
// in use, in node order. It parses index nodes itself: go-ntfs's
// IsValid() rejects every entry whose four $FILE_NAME times do not all lie
// between 2001-09-09 and 2033-05-18 (a heuristic for carving slack),
// which hides backdated and far-future files. A damaged index block is
// skipped with a warning; its entries are missing from the listing.
func (f *FS) dirEntries(ctx context.Context, rec *record) ([]indexEntry, error) {
	root := rec.first(attrIndexRoot, "$I30")
	if root == nil || !root.resident {
		return nil, fmt.Errorf("ntfs: directory %d has no $I30 index root: %w", rec.num, fs.ErrCorrupt)
	}
	le := binary.LittleEndian
	if len(root.content) < 0x20 {
		return nil, fmt.Errorf("ntfs: directory %d: index root of %d bytes: %w", rec.num, len(root.content), fs.ErrCorrupt)
	}
	blockSize := int64(le.Uint32(root.content[8:]))
	var out []indexEntry
	if err := parseIndexNode(root.content[0x10:], &out); err != nil {
		return nil, fmt.Errorf("ntfs: directory %d index root: %w", rec.num, err)
	}
	if rec.first(attrIndexAlloc, "$I30") == nil {
		return out, nil
	}
	if blockSize < 512 || blockSize > maxIndexBlock || blockSize&(blockSize-1) != 0 {
		return nil, fmt.Errorf("ntfs: directory %d: index blocks of %d bytes: %w", rec.num, blockSize, fs.ErrCorrupt)
	}
	alloc, err := f.openStream(rec, attrIndexAlloc, "$I30")
	if err != nil {
		return nil, err
	}
	if alloc.size > f.size {
		return nil, fmt.Errorf("ntfs: directory %d: index of %d bytes on a %d-byte volume: %w", rec.num, alloc.size, f.size, fs.ErrCorrupt)
	}
	var inUse []byte // nil: no $BITMAP, every block with a valid header counts
	if bm, err := f.openStream(rec, attrBitmap, "$I30"); err == nil {
		want := (alloc.size/blockSize + 7) / 8
		inUse = make([]byte, min(bm.size, want))
		if _, err := bm.ReadAt(inUse, 0); err != nil && len(inUse) > 0 {
			return nil, fmt.Errorf("ntfs: directory %d index bitmap: %w", rec.num, err)
		}
	}
	buf := make([]byte, blockSize)
	for i := int64(0); i < alloc.size/blockSize; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if inUse != nil && (i/8 >= int64(len(inUse)) || inUse[i/8]&(1<<(i%8)) == 0) {
			continue
		}
		if _, err := alloc.ReadAt(buf, i*blockSize); err != nil {
			f.warn(fmt.Sprintf("directory record %d: index block %d cannot be read (%v); its entries are not listed", rec.num, i, err))
			continue
		}
		if inUse == nil && string(buf[:4]) != "INDX" {
			continue
		}
		if err := parseIndexBlock(buf, &out); err != nil {
			f.warn(fmt.Sprintf("directory record %d: index block %d: %v; its entries are not listed", rec.num, i, err))
		}
		if len(out) > maxEntries {
			return nil, fmt.Errorf("ntfs: directory %d has more than %d entries: %w", rec.num, maxEntries, fs.ErrCorrupt)
		}
	}
	return out, nil
}

// parseIndexBlock checks an INDX block's signature and update sequence,
// applies the fixups and parses its node.
func parseIndexBlock(b []byte, out *[]indexEntry) error {
	if len(b) < 4 || string(b[:4]) != "INDX" {
		return fmt.Errorf("no INDX signature: %w", fs.ErrCorrupt)
	}
	if err := fixup(b); err != nil {
		return err
	}
	if len(b) < 0x28 {
		return fmt.Errorf("index block of %d bytes: %w", len(b), fs.ErrCorrupt)
	}
	return parseIndexNode(b[0x18:], out)
}

// fixup applies an NTFS multi-sector record's update sequence: the last
// two bytes of every 512-byte stride hold the sequence number, and the
// array after it holds the bytes they replaced.
func fixup(b []byte) error {
	le := binary.LittleEndian
	if len(b) < 8 {
		return fmt.Errorf("record of %d bytes: %w", len(b), fs.ErrCorrupt)
	}
	off, count := int(le.Uint16(b[4:])), int(le.Uint16(b[6:]))
	if count == 0 || off+2*count > len(b) || (count-1)*512 > len(b) {
		return fmt.Errorf("update sequence of %d entries at %d in %d bytes: %w", count, off, len(b), fs.ErrCorrupt)
	}
	usn := le.Uint16(b[off:])
	for i := 1; i < count; i++ {
		end := i*512 - 2
		if le.Uint16(b[end:]) != usn {
			return fmt.Errorf("update sequence mismatch in stride %d (a torn write): %w", i, fs.ErrCorrupt)
		}
		copy(b[end:end+2], b[off+2*i:])
	}
	return nil
}

// parseIndexNode appends the entries of one index node (its header
// first: offset of the first entry and end of the entries, both relative
// to the header).
func parseIndexNode(node []byte, out *[]indexEntry) error {
	le := binary.LittleEndian
	if len(node) < 16 {
		return fmt.Errorf("index node header of %d bytes: %w", len(node), fs.ErrCorrupt)
	}
	start, end := int(le.Uint32(node)), int(le.Uint32(node[4:]))
	if start < 16 || end > len(node) || start > end {
		return fmt.Errorf("index node entries %d..%d in %d bytes: %w", start, end, len(node), fs.ErrCorrupt)
	}
	for pos := start; pos+16 <= end; {
		size := int(le.Uint16(node[pos+8:]))
		keyLen := int(le.Uint16(node[pos+10:]))
		flags := le.Uint16(node[pos+12:])
		if flags&2 != 0 { // the last entry carries no key
			return nil
		}
		if size < 16 || pos+size > end || 16+keyLen > size {
			return fmt.Errorf("index entry at %d: %d bytes with a %d-byte key: %w", pos, size, keyLen, fs.ErrCorrupt)
		}
		fn, err := parseFileName(node[pos+16 : pos+16+keyLen])
		if err != nil {
			return fmt.Errorf("index entry at %d: %w", pos, err)
		}
		*out = append(*out, indexEntry{ref: le.Uint64(node[pos:]) & recordMask, fn: fn})
		pos += size
	}
	return nil
}

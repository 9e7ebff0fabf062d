package xfs

import (
	"context"
	"fmt"

	"github.com/vmvault/vmvault/fs"
)

const (
	dir2BlockMagic = 0x58443242 // "XD2B": single-block directory, v4
	dir3BlockMagic = 0x58444233 // "XDB3"
	dir2DataMagic  = 0x58443244 // "XD2D": data block of a leaf/node directory, v4
	dir3DataMagic  = 0x58444433 // "XDD3"

	// dirLeafOffset is where a directory's leaf (hash index) space starts;
	// every entry lives in a data block below it.
	dirLeafOffset = 32 << 30
	// maxDirData bounds the directory data blocks read for one directory
	// (about 20 million entries), and so the memory its listing takes.
	maxDirData = 1 << 30
)

// parseShortDir decodes a short-form directory held in the inode's data
// fork: a header (count, 8-byte-inode count, parent) and packed entries.
func (f *FS) parseShortDir(b []byte, ino uint64) ([]fs.DirEntry, error) {
	if len(b) < 6 {
		return nil, corrupt("directory inode %d: short-form header in %d bytes", ino, len(b))
	}
	count, i8 := int(b[0]), b[1]
	inoLen := 4
	if i8 != 0 {
		inoLen = 8
	}
	pos := 2 + inoLen
	if pos > len(b) {
		return nil, corrupt("directory inode %d: short-form header in %d bytes", ino, len(b))
	}
	ft := 0
	if f.ftype {
		ft = 1
	}
	out := make([]fs.DirEntry, 0, count)
	for i := 0; i < count; i++ {
		if pos+3 > len(b) {
			return nil, corrupt("directory inode %d: short-form entry %d runs past the fork", ino, i)
		}
		n := int(b[pos])
		end := pos + 3 + n + ft + inoLen
		if n == 0 || end > len(b) {
			return nil, corrupt("directory inode %d: short-form entry %d of %d bytes runs past the fork", ino, i, n)
		}
		name := string(b[pos+3 : pos+3+n])
		typ := fs.TypeUnknown
		if f.ftype {
			typ = direntType(b[pos+3+n])
		}
		ib := b[pos+3+n+ft : end]
		var child uint64
		if inoLen == 8 {
			child = be.Uint64(ib)
		} else {
			child = uint64(be.Uint32(ib))
		}
		out = append(out, fs.DirEntry{Name: name, Ino: fs.Ino(child), Type: typ})
		pos = end
	}
	return out, nil
}

// parseDirData appends the entries of one directory data block. In block
// form (the whole directory in one block) the hash leaf and tail at the
// block's end are skipped. Free regions are skipped; "." and ".." are left
// out.
func (f *FS) parseDirData(b []byte, out []fs.DirEntry, what string) ([]fs.DirEntry, error) {
	hdr, dataMagic, blockMagic := 16, uint32(dir2DataMagic), uint32(dir2BlockMagic)
	if f.v5 {
		hdr, dataMagic, blockMagic = 64, dir3DataMagic, dir3BlockMagic
	}
	if len(b) < hdr+8 {
		return out, corrupt("%s: %d bytes", what, len(b))
	}
	magic := be.Uint32(b)
	if magic != dataMagic && magic != blockMagic {
		return out, corrupt("%s has no directory data magic number", what)
	}
	block := magic == blockMagic
	if f.v5 {
		f.verify(b, 4, what)
	}
	end := len(b)
	if block {
		leaves := int64(be.Uint32(b[len(b)-8:]))
		if leaves > int64(len(b)-hdr-8)/8 {
			return out, corrupt("%s: %d leaf entries", what, leaves)
		}
		end = len(b) - 8 - int(leaves)*8
	}
	ft := 0
	if f.ftype {
		ft = 1
	}
	for pos := hdr; pos < end; {
		if pos+8 > end {
			return out, corrupt("%s: entry at %d runs past the data", what, pos)
		}
		if be.Uint16(b[pos:]) == 0xffff { // unused region: tag, length
			n := int(be.Uint16(b[pos+2:]))
			if n < 8 || n&7 != 0 || pos+n > end {
				return out, corrupt("%s: free region of %d bytes at %d", what, n, pos)
			}
			pos += n
			continue
		}
		if pos+16 > end {
			return out, corrupt("%s: entry at %d runs past the data", what, pos)
		}
		child := be.Uint64(b[pos:])
		n := int(b[pos+8])
		size := (8 + 1 + n + ft + 2 + 7) &^ 7
		if n == 0 || pos+size > end {
			return out, corrupt("%s: entry at %d with a %d-byte name runs past the data", what, pos, n)
		}
		name := string(b[pos+9 : pos+9+n])
		if name != "." && name != ".." {
			typ := fs.TypeUnknown
			if f.ftype {
				typ = direntType(b[pos+9+n])
			}
			out = append(out, fs.DirEntry{Name: name, Ino: fs.Ino(child), Type: typ})
		}
		pos += size
	}
	return out, nil
}

func direntType(t uint8) fs.Type {
	switch t {
	case 1:
		return fs.TypeRegular
	case 2:
		return fs.TypeDir
	case 3:
		return fs.TypeCharDev
	case 4:
		return fs.TypeBlockDev
	case 5:
		return fs.TypeFIFO
	case 6:
		return fs.TypeSocket
	case 7:
		return fs.TypeSymlink
	}
	return fs.TypeUnknown
}

func (f *FS) readDir(ctx context.Context, ino fs.Ino) ([]fs.DirEntry, error) {
	f.mu.Lock()
	ents, ok := f.dirCache[ino]
	f.mu.Unlock()
	if ok {
		return ents, nil
	}
	in, err := f.readInode(uint64(ino))
	if err != nil {
		return nil, err
	}
	if in.fileType() != fs.TypeDir {
		return nil, fmt.Errorf("xfs: inode %d: %w", ino, fs.ErrNotDir)
	}
	switch in.format {
	case fmtLocal:
		if in.size > int64(len(in.dfork)) {
			return nil, corrupt("directory inode %d: %d bytes in a %d-byte fork", ino, in.size, len(in.dfork))
		}
		ents, err = f.parseShortDir(in.dfork[:in.size], uint64(ino))
	case fmtExtents, fmtBtree:
		ents, err = f.readBlockDir(ctx, in)
	default:
		err = corrupt("directory inode %d: fork format %d", ino, in.format)
	}
	if err != nil {
		return nil, err
	}
	if ents == nil {
		ents = []fs.DirEntry{}
	}
	f.mu.Lock()
	if _, ok := f.dirCache[ino]; !ok {
		if len(f.dirOrder) >= dirCacheSize {
			delete(f.dirCache, f.dirOrder[0])
			f.dirOrder = f.dirOrder[1:]
		}
		f.dirCache[ino] = ents
		f.dirOrder = append(f.dirOrder, ino)
	}
	f.mu.Unlock()
	return ents, nil
}

// readBlockDir reads the data blocks of a block, leaf, node or btree
// directory: every mapped directory block below the leaf space.
func (f *FS) readBlockDir(ctx context.Context, in *inode) ([]fs.DirEntry, error) {
	size := in.size
	if size > dirLeafOffset {
		size = dirLeafOffset
	}
	fl, err := f.openFork(ctx, in, false, size)
	if err != nil {
		return nil, err
	}
	dirBlk := f.blockSize << f.dirBlkLog
	perDir := uint64(1) << f.dirBlkLog
	var out []fs.DirEntry
	var read int64
	buf := make([]byte, dirBlk)
	last := uint64(1<<64 - 1)
	for _, r := range fl.runs {
		for b := r.lblk &^ (perDir - 1); b < r.lblk+r.count; b += perDir {
			if b == last {
				continue
			}
			last = b
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			off := int64(b) * f.blockSize
			if off+dirBlk > size {
				break
			}
			if read += dirBlk; read > maxDirData {
				return nil, corrupt("directory inode %d holds more than %d bytes of entries", in.ino, maxDirData)
			}
			if _, err := fl.ReadAt(buf, off); err != nil {
				return nil, fmt.Errorf("xfs: directory inode %d block %d: %w", in.ino, b, err)
			}
			out, err = f.parseDirData(buf, out, fmt.Sprintf("directory inode %d block %d", in.ino, b))
			if err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// ReadDir implements fs.FileSystem.
func (f *FS) ReadDir(ctx context.Context, ino fs.Ino) ([]fs.DirEntry, error) {
	ents, err := f.readDir(ctx, ino)
	if err != nil {
		return nil, err
	}
	return append([]fs.DirEntry(nil), ents...), nil
}

// Lookup implements fs.FileSystem.
func (f *FS) Lookup(ctx context.Context, dir fs.Ino, name string) (fs.Ino, error) {
	ents, err := f.readDir(ctx, dir)
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		if e.Name == name {
			return e.Ino, nil
		}
	}
	return 0, fmt.Errorf("xfs: %q in directory %d: %w", name, dir, fs.ErrNotExist)
}

package ext

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/vmvault/vmvault/fs"
)

// dirCacheSize is how many parsed directories are kept for Lookup.
const dirCacheSize = 256

// parseDirBlock appends the live entries of one directory region in linear
// format. Htree interior blocks look like one empty entry spanning the block
// and are skipped like any deleted entry; the metadata_csum tail is an
// entry with inode 0.
func parseDirBlock(b []byte, filetype bool, out []fs.DirEntry) ([]fs.DirEntry, error) {
	le := binary.LittleEndian
	for pos := 0; pos+8 <= len(b); {
		ino := le.Uint32(b[pos:])
		recLen := int(le.Uint16(b[pos+4:]))
		if recLen == 0 && len(b)-pos >= 65536 {
			recLen = 65536 // 64 KiB blocks store 65536 as 0
		}
		if recLen < 8 || recLen&3 != 0 || pos+recLen > len(b) {
			return out, corrupt("directory entry at %d has record length %d", pos, recLen)
		}
		nameLen := int(b[pos+6])
		ftype := b[pos+7]
		if !filetype {
			nameLen |= int(ftype) << 8
			ftype = 0
		}
		if 8+nameLen > recLen {
			return out, corrupt("directory entry at %d: name of %d bytes in a record of %d", pos, nameLen, recLen)
		}
		name := string(b[pos+8 : pos+8+nameLen])
		if ino != 0 && nameLen > 0 && name != "." && name != ".." {
			out = append(out, fs.DirEntry{Name: name, Ino: fs.Ino(ino), Type: direntType(ftype)})
		}
		pos += recLen
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
		return nil, fmt.Errorf("ext: inode %d: %w", ino, fs.ErrNotDir)
	}
	filetype := f.incompat&incompatFiletype != 0
	if in.flags&flagInlineData != 0 {
		data, err := f.inlineData(in)
		if err != nil {
			return nil, err
		}
		// 4 bytes of parent inode, then entries to the end of i_block, then
		// the continuation in system.data.
		ents, err = parseDirBlock(data[4:60], filetype, nil)
		if err == nil && len(data) > 60 {
			ents, err = parseDirBlock(data[60:], filetype, ents)
		}
		if err != nil {
			return nil, fmt.Errorf("ext: inline directory %d: %w", ino, err)
		}
	} else {
		if in.size > maxDirSize {
			return nil, corrupt("directory %d of %d bytes", ino, in.size)
		}
		fl, err := f.openInode(ctx, in)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, f.blockSize)
		for _, r := range fl.runs {
			for b := uint64(0); b < r.count; b++ {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				if r.uninit {
					continue
				}
				if err := f.readBlocks(buf, r.pblk+b); err != nil {
					return nil, fmt.Errorf("ext: directory %d: %w", ino, err)
				}
				f.checkDirBlock(in, r.lblk+b, buf)
				if ents, err = parseDirBlock(buf, filetype, ents); err != nil {
					return nil, fmt.Errorf("ext: directory %d block %d: %w", ino, r.lblk+b, err)
				}
			}
		}
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

// ReadDir implements fs.FileSystem. The slice is the caller's.
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
	return 0, fmt.Errorf("ext: %q in directory %d: %w", name, dir, fs.ErrNotExist)
}

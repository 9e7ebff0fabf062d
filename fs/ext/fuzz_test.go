package ext

import (
	"bytes"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
)

// FuzzImage opens mutated ext2 (128-byte inodes, block maps) and ext4
// (inline data, extents, metadata_csum) images and exercises every reader
// method: no panic, no hang, no unbounded allocation.
func FuzzImage(f *testing.F) {
	f.Add(fstest.Seed(f, "ext2.img"))
	f.Add(fstest.Seed(f, "ext4.img"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fsys, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		fstest.Exercise(fsys)
	})
}

// FuzzSuperblockInode mutates the superblock and the inode of the root
// directory (inode 2) of the ext2 seed, where most length fields live.
func FuzzSuperblockInode(f *testing.F) {
	img := fstest.Seed(f, "ext2.img")
	fsys, err := Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		f.Fatal(err)
	}
	table, err := fsys.inodeTable(0)
	if err != nil {
		f.Fatal(err)
	}
	rootOff := int(table)*int(fsys.blockSize) + int(fsys.inodeSize)
	f.Add(img[1024:2048], img[rootOff:rootOff+int(fsys.inodeSize)])
	f.Fuzz(func(t *testing.T, sb, inode []byte) {
		b := bytes.Clone(img)
		copy(b[1024:2048], sb)
		copy(b[rootOff:rootOff+int(fsys.inodeSize)], inode)
		fsys, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		fstest.Exercise(fsys)
	})
}

// FuzzDirBlock parses directory blocks in both entry formats.
func FuzzDirBlock(f *testing.F) {
	f.Add([]byte("\x02\x00\x00\x00\x0c\x00\x01\x02.\x00\x00\x00\x0b\x00\x00\x00\xf4\x03\x0a\x02lost+found\x00\x00"), true)
	f.Fuzz(func(t *testing.T, b []byte, filetype bool) {
		ents, _ := parseDirBlock(b, filetype, nil)
		for _, e := range ents {
			if e.Ino == 0 || e.Name == "" {
				t.Fatalf("bad entry %+v", e)
			}
		}
	})
}

// FuzzXattrs parses extended attribute areas.
func FuzzXattrs(f *testing.F) {
	f.Add([]byte("\x07\x01\x20\x00\x00\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00comme\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00hello"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseXattrs(b, b)
	})
}

// Package fs is the read-only view of the filesystems inside a disk image:
// one small interface (FileSystem) that the ext2/3/4, NTFS and FAT readers in
// its subpackages implement, the types they share, and path resolution on
// top of it. Optional interfaces add what only some filesystems have:
// HiddenChecker (metadata files), StreamChecker (NTFS named streams),
// SparseFile (holes) and AllocationMapper (which blocks are in use, for
// skipping free space at capture).
//
// Invariants:
//   - Nothing here writes: every FileSystem is a read-only view of an
//     io.ReaderAt (a restore point's disk or an image file).
//   - Disk images are hostile input. Implementations bounds-check every
//     on-disk field, never allocate by an unchecked length, never panic on a
//     malformed image, and return errors that wrap ErrCorrupt.
//   - Inode numbers are stable for the life of a FileSystem value; the FUSE
//     mount uses them as node ids.
package fs

import (
	"context"
	"errors"
	"io"
	iofs "io/fs"
	"time"

	"github.com/vmvault/vmvault/repo/extent"
)

// Errors shared by all implementations. They wrap the io/fs sentinels so
// errors.Is(err, iofs.ErrNotExist) works for callers that only know io/fs.
var (
	ErrNotExist = iofs.ErrNotExist
	ErrNotDir   = errors.New("not a directory")
	ErrIsDir    = errors.New("is a directory")
	ErrCorrupt  = errors.New("filesystem structure is corrupt")
	ErrNoAttr   = errors.New("no such extended attribute")
	ErrLoop     = errors.New("too many levels of symbolic links")
	// ErrAttrTooBig: an extended attribute's value exceeds what one
	// attribute can carry (64 KiB).
	ErrAttrTooBig = errors.New("extended attribute value too large")
)

// Ino identifies a file within one FileSystem (an ext inode number, an NTFS
// MFT record number, possibly with a stream index in the high bits, a FAT
// directory-entry position).
type Ino uint64

// Type is the kind of a file.
type Type uint8

// File types, as in the POSIX st_mode type bits.
const (
	TypeUnknown Type = iota
	TypeRegular
	TypeDir
	TypeSymlink
	TypeCharDev
	TypeBlockDev
	TypeFIFO
	TypeSocket
)

var typeNames = [...]string{"unknown", "file", "dir", "symlink", "chardev", "blockdev", "fifo", "socket"}

func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return "unknown"
}

// Char is the one-letter form used by ls -l and Sleuth Kit bodyfiles.
func (t Type) Char() byte {
	const chars = "?-dlcbps"
	if int(t) < len(chars) {
		return chars[t]
	}
	return '?'
}

// Mode bits of a Stat: permission bits plus setuid, setgid and sticky, as in
// POSIX st_mode without the type bits.
const (
	ModeSetuid = 0o4000
	ModeSetgid = 0o2000
	ModeSticky = 0o1000
	ModePerm   = 0o7777
)

// Stat describes one file. Times that a filesystem does not record are the
// zero time.
type Stat struct {
	Ino    Ino
	Type   Type
	Mode   uint32 // ModePerm bits only
	Size   int64
	UID    uint32
	GID    uint32
	Nlink  uint32
	Atime  time.Time
	Mtime  time.Time
	Ctime  time.Time // inode/metadata change time (NTFS: MFT entry change)
	Crtime time.Time // creation (birth) time
	Rdev   uint32    // device number for char/block devices (Linux encoding)
	// Sparse is true when the file has holes (its data does not cover all
	// of Size); readers may then ask File for its data ranges.
	Sparse bool
}

// DirEntry is one name in a directory.
type DirEntry struct {
	Name string
	Ino  Ino
	Type Type // TypeUnknown when the directory does not record it
}

// StreamChecker is implemented by filesystems with named data streams
// (NTFS alternate data streams). ReadDir lists each named stream of a file
// or directory as an entry of its own, "NAME:STREAM", right after it (Open
// reads it, Stat gives its size, so cp copies it like a file), and
// ListXattr/GetXattr offer the same streams as "user.STREAM" attributes.
// IsStream tells the stream entries apart, so a view that shows streams as
// attributes (the FUSE mount) leaves them out of its listings.
type StreamChecker interface {
	IsStream(ino Ino) bool
}

// File is the content of a regular file (or an NTFS stream): random access,
// safe for concurrent ReadAt.
type File interface {
	io.ReaderAt
	Size() int64
}

// SparseFile is implemented by Files that know where their holes are, so
// cp can keep sparse files sparse without reading zeros. DataExtents returns
// the byte ranges of the file that hold data, normalized; the rest reads as
// zeros.
type SparseFile interface {
	File
	DataExtents() ([]extent.Range, error)
}

// FileSystem is a read-only filesystem. All methods are safe for concurrent
// use.
type FileSystem interface {
	// Type names the filesystem: "ext2", "ext3", "ext4", "ntfs", "fat12", …
	Type() string
	Label() string
	UUID() string
	Root() Ino
	Stat(ctx context.Context, ino Ino) (Stat, error)
	// ReadDir lists a directory without "." and "..".
	ReadDir(ctx context.Context, ino Ino) ([]DirEntry, error)
	// Lookup finds one name in a directory.
	Lookup(ctx context.Context, dir Ino, name string) (Ino, error)
	Readlink(ctx context.Context, ino Ino) (string, error)
	// ListXattr returns the names of the extended attributes, fully
	// qualified ("user.comment", "security.selinux").
	ListXattr(ctx context.Context, ino Ino) ([]string, error)
	GetXattr(ctx context.Context, ino Ino, name string) ([]byte, error)
	Open(ctx context.Context, ino Ino) (File, error)
	// Warnings lists what the reader noticed: about the filesystem as a
	// whole when it was opened (an unreplayed journal), then each damaged
	// structure met while reading since (a bad metadata checksum, naming
	// the inode), each once. The list only grows; callers report the new
	// part after reading (the CLI prints it, the mount logs it).
	Warnings() []string
}

// AllocationMapper is implemented by filesystems that know which of their
// blocks are in use (their allocation bitmaps or free-space trees).
type AllocationMapper interface {
	// Allocated returns the byte ranges, relative to the start of the
	// filesystem, that hold file data or metadata, normalized. Everything
	// else is free space: its content is not reachable through the
	// filesystem. When unsure about a region, include it.
	Allocated(ctx context.Context) ([]extent.Range, error)
}

// HiddenChecker is implemented by filesystems with metadata files that are
// hidden from listings unless asked for (NTFS $MFT and friends).
type HiddenChecker interface {
	Hidden(dir Ino, name string) bool
}

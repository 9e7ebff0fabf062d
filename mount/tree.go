package mount

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/image"
	"github.com/vmvault/vmvault/repo"
)

// errorFile names the file a partition directory holds when its
// filesystem (or its partition table entry) cannot be read, and the file
// a disk directory holds when its partition table cannot be read at all.
const errorFile = "vmvault-error.txt"

// diskNode lists a disk's partitions (p1, p5, p0, …).
type diskNode struct {
	gofs.Inode
	m    *FS
	rp   *repo.RestorePoint
	disk string
}

var _ = (gofs.NodeReaddirer)((*diskNode)(nil))
var _ = (gofs.NodeLookuper)((*diskNode)(nil))

func (n *diskNode) key(part string) string {
	return "part/" + n.rp.ID.String() + "/" + n.disk + "/" + part
}

func (n *diskNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	st := n.m.openDisk(ctx, n.rp, n.disk)
	if st.err != nil {
		return nil, syscall.EIO
	}
	var ents []fuse.DirEntry
	if st.table == nil {
		ents = append(ents, fuse.DirEntry{Name: errorFile, Mode: fuse.S_IFREG, Ino: n.m.ino(n.key(errorFile))})
		return gofs.NewListDirStream(ents), 0
	}
	for _, p := range st.table.Partitions {
		if !p.Extended {
			ents = append(ents, fuse.DirEntry{Name: p.Name, Mode: fuse.S_IFDIR, Ino: n.m.ino(n.key(p.Name))})
		}
	}
	for _, e := range st.table.TableErrors {
		ents = append(ents, fuse.DirEntry{Name: e.Name, Mode: fuse.S_IFDIR, Ino: n.m.ino(n.key(e.Name))})
	}
	return gofs.NewListDirStream(ents), 0
}

func (n *diskNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	st := n.m.openDisk(ctx, n.rp, n.disk)
	if st.err != nil {
		return nil, syscall.EIO
	}
	out.SetEntryTimeout(immutableCache)
	out.SetAttrTimeout(immutableCache)
	if st.table == nil {
		if name != errorFile {
			return nil, syscall.ENOENT
		}
		msg := fmt.Sprintf("restore point %s disk %s: %v\n", n.rp.ID.Short(), n.disk, st.tableErr)
		ino := n.m.ino(n.key(errorFile))
		out.Attr = fuse.Attr{Ino: ino, Mode: fuse.S_IFREG | 0o444, Size: uint64(len(msg)), Nlink: 1}
		setTimes(&out.Attr, n.rp.Time, n.rp.Time, n.rp.Time)
		return n.NewInode(ctx, &memFile{data: []byte(msg), t: n.rp.Time}, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: ino}), 0
	}
	p, err := st.table.Partition(name)
	var bad image.TableError
	if errors.As(err, &bad) {
		ino := n.m.ino(n.key(name))
		dirAttr(&out.Attr, ino, n.rp.Time)
		msg := fmt.Sprintf("restore point %s disk %s: %v\n", n.rp.ID.Short(), n.disk, bad)
		return n.NewInode(ctx, &errDir{m: n.m, key: n.key(name), msg: msg, rp: n.rp}, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino}), 0
	}
	if err != nil || p.Extended {
		return nil, syscall.ENOENT
	}
	fss := n.m.openFS(st, n.rp, n.disk, p.Name)
	if fss.err != nil {
		ino := n.m.ino(n.key(name))
		dirAttr(&out.Attr, ino, n.rp.Time)
		msg := fmt.Sprintf("restore point %s disk %s partition %s (%s, %s filesystem): %v\n",
			n.rp.ID.Short(), n.disk, p.Name, p.TypeName, p.Filesystem, fss.err)
		return n.NewInode(ctx, &errDir{m: n.m, key: n.key(name), msg: msg, rp: n.rp}, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino}), 0
	}
	root := fss.fsys.Root()
	fst, err := fss.fsys.Stat(ctx, root)
	if err != nil {
		return nil, errno(err)
	}
	ino := n.m.fileIno(fss.id, root)
	child := &node{m: n.m, fs: fss, ino: root}
	fillAttr(&out.Attr, fst, ino)
	return n.NewInode(ctx, child, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino}), 0
}

func (m *FS) openFS(st *diskState, rp *repo.RestorePoint, disk, part string) *fsState {
	st.mu.Lock()
	defer st.mu.Unlock()
	if f, ok := st.fss[part]; ok {
		return f
	}
	f := &fsState{}
	p, err := st.table.Partition(part)
	if err == nil {
		f.fsys, err = st.table.OpenFS(p)
	}
	if err != nil {
		f.err = err
		m.log.Warn("filesystem not readable", "restore_point", rp.ID.Short(), "disk", disk, "partition", part, "err", err)
	} else {
		f.where = []any{"restore_point", rp.ID.Short(), "disk", disk, "partition", part}
		f.logWarnings(m.log)
		m.mu.Lock()
		m.fsIDs++
		f.id = m.fsIDs
		m.mu.Unlock()
	}
	st.fss[part] = f
	return f
}

// errDir stands in for a partition whose filesystem cannot be read: it
// holds one file explaining why.
type errDir struct {
	gofs.Inode
	m   *FS
	key string
	msg string
	rp  *repo.RestorePoint
}

var _ = (gofs.NodeReaddirer)((*errDir)(nil))
var _ = (gofs.NodeLookuper)((*errDir)(nil))

func (n *errDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	return gofs.NewListDirStream([]fuse.DirEntry{{Name: errorFile, Mode: fuse.S_IFREG, Ino: n.m.ino(n.key + "/" + errorFile)}}), 0
}

func (n *errDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if name != errorFile {
		return nil, syscall.ENOENT
	}
	ino := n.m.ino(n.key + "/" + errorFile)
	out.Attr = fuse.Attr{Ino: ino, Mode: fuse.S_IFREG | 0o444, Size: uint64(len(n.msg)), Nlink: 1}
	return n.NewInode(ctx, &memFile{data: []byte(n.msg), t: n.rp.Time}, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: ino}), 0
}

// node is a file, directory or symlink inside a partition's filesystem.
type node struct {
	gofs.Inode
	m   *FS
	fs  *fsState
	ino fs.Ino
}

var (
	_ = (gofs.NodeReaddirer)((*node)(nil))
	_ = (gofs.NodeLookuper)((*node)(nil))
	_ = (gofs.NodeGetattrer)((*node)(nil))
	_ = (gofs.NodeReadlinker)((*node)(nil))
	_ = (gofs.NodeOpener)((*node)(nil))
	_ = (gofs.NodeReader)((*node)(nil))
	_ = (gofs.NodeGetxattrer)((*node)(nil))
	_ = (gofs.NodeListxattrer)((*node)(nil))
)

func typeMode(t fs.Type) uint32 {
	switch t {
	case fs.TypeDir:
		return fuse.S_IFDIR
	case fs.TypeSymlink:
		return fuse.S_IFLNK
	case fs.TypeCharDev:
		return syscall.S_IFCHR
	case fs.TypeBlockDev:
		return syscall.S_IFBLK
	case fs.TypeFIFO:
		return syscall.S_IFIFO
	case fs.TypeSocket:
		return syscall.S_IFSOCK
	}
	return fuse.S_IFREG
}

func fillAttr(out *fuse.Attr, st fs.Stat, ino uint64) {
	out.Ino = ino
	out.Mode = typeMode(st.Type) | st.Mode&fs.ModePerm
	out.Size = uint64(st.Size)
	out.Blocks = (uint64(st.Size) + 511) / 512
	out.Nlink = max(st.Nlink, 1)
	out.Uid, out.Gid = st.UID, st.GID
	out.Rdev = st.Rdev
	out.Blksize = 4096
	setTimes(out, st.Atime, st.Mtime, st.Ctime)
}

func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	st, err := n.fs.fsys.Stat(ctx, n.ino)
	if err != nil {
		return n.fail("stat", err)
	}
	fillAttr(&out.Attr, st, n.StableAttr().Ino)
	out.SetTimeout(immutableCache)
	return 0
}

func (n *node) fail(op string, err error) syscall.Errno {
	e := errno(err)
	if e == syscall.EIO {
		n.m.log.Error(op, "inode", n.ino, "err", err)
	}
	return e
}

func (n *node) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	defer n.fs.logWarnings(n.m.log)
	ents, err := n.fs.fsys.ReadDir(ctx, n.ino)
	if err != nil {
		return nil, n.fail("readdir", err)
	}
	hidden, _ := n.fs.fsys.(fs.HiddenChecker)
	streams, _ := n.fs.fsys.(fs.StreamChecker)
	out := make([]fuse.DirEntry, 0, len(ents))
	for _, e := range ents {
		if !fs.SafeName(e.Name) || hidden != nil && hidden.Hidden(n.ino, e.Name) {
			continue // a name the kernel cannot represent, or metadata
		}
		if streams != nil && streams.IsStream(e.Ino) {
			continue // an NTFS stream: a user.* xattr of its file here
		}
		mode := typeMode(e.Type)
		if e.Type == fs.TypeUnknown {
			if st, err := n.fs.fsys.Stat(ctx, e.Ino); err == nil {
				mode = typeMode(st.Type)
			}
		}
		out = append(out, fuse.DirEntry{Name: e.Name, Mode: mode, Ino: n.m.fileIno(n.fs.id, e.Ino)})
	}
	return gofs.NewListDirStream(out), 0
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	defer n.fs.logWarnings(n.m.log)
	ino, err := n.fs.fsys.Lookup(ctx, n.ino, name)
	if err != nil {
		return nil, n.fail("lookup", err)
	}
	if streams, ok := n.fs.fsys.(fs.StreamChecker); ok && streams.IsStream(ino) {
		return nil, syscall.ENOENT // "file:stream" is not a name here
	}
	st, err := n.fs.fsys.Stat(ctx, ino)
	if err != nil {
		return nil, n.fail("stat", err)
	}
	fino := n.m.fileIno(n.fs.id, ino)
	fillAttr(&out.Attr, st, fino)
	out.SetEntryTimeout(immutableCache)
	out.SetAttrTimeout(immutableCache)
	return n.NewInode(ctx, &node{m: n.m, fs: n.fs, ino: ino}, gofs.StableAttr{Mode: typeMode(st.Type), Ino: fino}), 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	t, err := n.fs.fsys.Readlink(ctx, n.ino)
	if err != nil {
		return nil, n.fail("readlink", err)
	}
	return []byte(t), 0
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	v, err := n.fs.fsys.GetXattr(ctx, n.ino, attr)
	if err != nil {
		return 0, n.fail("getxattr", err)
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	names, err := n.fs.fsys.ListXattr(ctx, n.ino)
	if err != nil {
		return 0, n.fail("listxattr", err)
	}
	var b []byte
	for _, s := range names {
		b = append(append(b, s...), 0)
	}
	if len(dest) < len(b) {
		return uint32(len(b)), syscall.ERANGE
	}
	return uint32(copy(dest, b)), 0
}

// handle is an open file inside a filesystem.
type handle struct{ f fs.File }

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	defer n.fs.logWarnings(n.m.log)
	f, err := n.fs.fsys.Open(ctx, n.ino)
	if err != nil {
		return nil, 0, n.fail("open", err)
	}
	return &handle{f: f}, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *node) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := fh.(*handle)
	if !ok {
		return nil, syscall.EBADF
	}
	k, err := h.f.ReadAt(dest, off)
	if err != nil && !isEOF(err) {
		return nil, n.fail("read", err)
	}
	return fuse.ReadResultData(dest[:k]), 0
}

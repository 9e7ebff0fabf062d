// Package mount presents a repository as a read-only FUSE filesystem
// (github.com/hanwen/go-fuse/v2):
//
//	MOUNTPOINT/<vm>/latest -> <time>_<id>
//	MOUNTPOINT/<vm>/<2026-11-23T10:00:00Z>_<short id>/
//	    manifest.json        the restore point's metadata
//	    vmvault-skipped.txt  what the capture skipped as unused (free space, swap), if it did
//	    disks/<disk>.raw     the whole disk (SEEK_DATA/SEEK_HOLE from zero chunks)
//	    <disk>/<p1|p2|…|p0>/ the filesystem tree of each partition (fs layer)
//
// NTFS named streams are shown as ntfs-3g's streams_interface=xattr shows
// them: as "user.STREAM" extended attributes of their file or directory
// (E2BIG when over 64 KiB), not as the "file:stream" entries the fs layer
// and the CLI list, so every name in the mount is a file of the volume.
//
// Invariants: nothing is loaded before it is looked up (the restore point
// list is re-read at most every ListTTL, a disk's index on first use, a
// partition's filesystem on first lookup inside it); restore points are
// immutable, so everything below a restore point has long kernel cache
// timeouts and files are opened with FOPEN_KEEP_CACHE; inode numbers are
// stable for the life of the mount (the same file, reached through any of
// its hard links, has one number); nothing is ever written (small reads of
// a raw disk also hand the rest of the chunks they decoded to the kernel's
// page cache, see readAround). Errors reading
// a damaged chunk are EIO for that read only, logged with restore point,
// disk and offset. Modes are the filesystem's, permission bits 0 included:
// mount with go-fuse's Options.NullPermissions, which otherwise shows them
// as 0644/0755. The root, each VM directory and each VM's latest link have
// the time of the newest restore point below them.
package mount

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/image"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
)

// Timeouts for kernel caching: the top levels change when restore points
// are captured or forgotten; everything inside a restore point never does.
const (
	ListTTL        = 2 * time.Second
	immutableCache = time.Hour
)

// FS is the state shared by all nodes of one mount.
type FS struct {
	r    *repo.Repository
	log  *slog.Logger
	lock *repo.Lock // pins restore points whose disks were opened; may be nil

	mu      sync.Mutex
	inos    map[string]uint64
	fsInos  map[fsKey]uint64
	nextIno uint64
	disks   map[string]*diskState
	fsIDs   int

	// storing limits the read-around stores in flight (see readAround).
	storing chan struct{}
	// started is the time of the root and VM directories while there are
	// no restore points.
	started time.Time
}

type fsKey struct {
	fs  int
	ino fs.Ino
}

// New returns the root node of a mount of r.
//
// lock, when not nil, is the mount's reader lock: a restore point is
// pinned when one of its disks is first opened and stays pinned for the
// life of the mount, so gc keeps what the kernel may still read even if it
// is forgotten.
func New(r *repo.Repository, log *slog.Logger, lock *repo.Lock) gofs.InodeEmbedder {
	if log == nil {
		log = slog.Default()
	}
	m := &FS{r: r, log: log, lock: lock, inos: map[string]uint64{}, fsInos: map[fsKey]uint64{}, nextIno: 1, disks: map[string]*diskState{},
		storing: make(chan struct{}, maxStores), started: time.Now()}
	return &rootNode{m: m}
}

// ino returns the stable inode number for a named object of the upper
// levels (VMs, restore points, disks, partitions).
func (m *FS) ino(key string) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n, ok := m.inos[key]; ok {
		return n
	}
	m.nextIno++
	m.inos[key] = m.nextIno
	return m.nextIno
}

func (m *FS) fileIno(fsID int, ino fs.Ino) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := fsKey{fsID, ino}
	if n, ok := m.fsInos[k]; ok {
		return n
	}
	m.nextIno++
	m.fsInos[k] = m.nextIno
	return m.nextIno
}

// restorePoints returns the repository's listing, re-read when older than
// ListTTL.
func (m *FS) restorePoints(ctx context.Context) ([]*repo.RestorePoint, error) {
	rps, bad, err := m.r.RestorePoints(ctx, ListTTL)
	if err != nil {
		m.log.Error("list restore points", "err", err)
		return nil, err
	}
	for _, b := range bad {
		m.log.Warn("restore point cannot be read", "name", b.Name, "err", b.Err)
	}
	return rps, nil
}

// DirName is a restore point's directory name: capture time (ISO 8601,
// UTC) and short id.
func DirName(rp *repo.RestorePoint) string {
	return rp.Time.UTC().Format("2006-01-02T15:04:05Z") + "_" + rp.ID.Short()
}

func errno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, fs.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, fs.ErrNotDir):
		return syscall.ENOTDIR
	case errors.Is(err, fs.ErrIsDir):
		return syscall.EISDIR
	case errors.Is(err, fs.ErrNoAttr):
		return syscall.ENODATA
	case errors.Is(err, fs.ErrAttrTooBig):
		return syscall.E2BIG
	case errors.Is(err, fs.ErrLoop):
		return syscall.ELOOP
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	}
	return syscall.EIO
}

func dirAttr(out *fuse.Attr, ino uint64, t time.Time) {
	out.Ino = ino
	out.Mode = fuse.S_IFDIR | 0o555
	out.Nlink = 2
	setTimes(out, t, t, t)
}

func setTimes(out *fuse.Attr, a, m, c time.Time) {
	out.SetTimes(&a, &m, &c)
}

// ---- root: one directory per VM ----

type rootNode struct {
	gofs.Inode
	m *FS
}

var _ = (gofs.NodeReaddirer)((*rootNode)(nil))
var _ = (gofs.NodeLookuper)((*rootNode)(nil))
var _ = (gofs.NodeGetattrer)((*rootNode)(nil))

func (n *rootNode) vms(ctx context.Context) ([]string, error) {
	rps, err := n.m.restorePoints(ctx)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var vms []string
	for _, rp := range rps {
		if !seen[rp.VM] && fs.SafeName(rp.VM) {
			seen[rp.VM] = true
			vms = append(vms, rp.VM)
		}
	}
	sort.Strings(vms)
	return vms, nil
}

// newest returns the time of the newest restore point in rps (of vm, or
// of all when vm is ""), or the time the mount started when there is none:
// the times of the root, the VM directories and latest, which change when
// restore points are captured.
func (m *FS) newest(rps []*repo.RestorePoint, vm string) time.Time {
	var t time.Time
	for _, rp := range rps {
		if (vm == "" || rp.VM == vm) && rp.Time.After(t) {
			t = rp.Time
		}
	}
	if t.IsZero() {
		return m.started
	}
	return t
}

func (n *rootNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	rps, err := n.m.restorePoints(ctx)
	if err != nil {
		return syscall.EIO
	}
	dirAttr(&out.Attr, 1, n.m.newest(rps, ""))
	out.SetTimeout(ListTTL)
	return 0
}

func (n *rootNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	vms, err := n.vms(ctx)
	if err != nil {
		return nil, syscall.EIO
	}
	ents := make([]fuse.DirEntry, len(vms))
	for i, vm := range vms {
		ents[i] = fuse.DirEntry{Name: vm, Mode: fuse.S_IFDIR, Ino: n.m.ino("vm/" + vm)}
	}
	return gofs.NewListDirStream(ents), 0
}

func (n *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	vms, err := n.vms(ctx)
	if err != nil {
		return nil, syscall.EIO
	}
	i := sort.SearchStrings(vms, name)
	if i == len(vms) || vms[i] != name {
		return nil, syscall.ENOENT
	}
	rps, err := n.m.restorePoints(ctx)
	if err != nil {
		return nil, syscall.EIO
	}
	ino := n.m.ino("vm/" + name)
	dirAttr(&out.Attr, ino, n.m.newest(rps, name))
	out.SetEntryTimeout(ListTTL)
	out.SetAttrTimeout(ListTTL)
	return n.NewInode(ctx, &vmNode{m: n.m, vm: name}, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino}), 0
}

// ---- VM: restore points and latest ----

type vmNode struct {
	gofs.Inode
	m  *FS
	vm string
}

var _ = (gofs.NodeReaddirer)((*vmNode)(nil))
var _ = (gofs.NodeLookuper)((*vmNode)(nil))
var _ = (gofs.NodeGetattrer)((*vmNode)(nil))

func (n *vmNode) points(ctx context.Context) ([]*repo.RestorePoint, error) {
	rps, err := n.m.restorePoints(ctx)
	if err != nil {
		return nil, err
	}
	var out []*repo.RestorePoint
	for _, rp := range rps {
		if rp.VM == n.vm {
			out = append(out, rp)
		}
	}
	return out, nil
}

func (n *vmNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	rps, err := n.points(ctx)
	if err != nil {
		return syscall.EIO
	}
	dirAttr(&out.Attr, n.m.ino("vm/"+n.vm), n.m.newest(rps, ""))
	out.SetTimeout(ListTTL)
	return 0
}

func (n *vmNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	rps, err := n.points(ctx)
	if err != nil {
		return nil, syscall.EIO
	}
	ents := make([]fuse.DirEntry, 0, len(rps)+1)
	if len(rps) > 0 {
		ents = append(ents, fuse.DirEntry{Name: "latest", Mode: fuse.S_IFLNK, Ino: n.m.ino("latest/" + n.vm)})
	}
	for _, rp := range rps {
		ents = append(ents, fuse.DirEntry{Name: DirName(rp), Mode: fuse.S_IFDIR, Ino: n.m.ino("rp/" + rp.ID.String())})
	}
	return gofs.NewListDirStream(ents), 0
}

func (n *vmNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	rps, err := n.points(ctx)
	if err != nil {
		return nil, syscall.EIO
	}
	if name == "latest" && len(rps) > 0 {
		ln := &linkNode{vm: n}
		ino := n.m.ino("latest/" + n.vm)
		linkAttr(&out.Attr, ino, rps[len(rps)-1])
		out.SetEntryTimeout(ListTTL)
		out.SetAttrTimeout(ListTTL)
		// go-fuse keeps the first node made for an inode number: the link
		// reads the newest restore point whenever it is asked.
		return n.NewInode(ctx, ln, gofs.StableAttr{Mode: fuse.S_IFLNK, Ino: ino}), 0
	}
	for _, rp := range rps {
		if DirName(rp) == name {
			ino := n.m.ino("rp/" + rp.ID.String())
			dirAttr(&out.Attr, ino, rp.Time)
			out.SetEntryTimeout(immutableCache)
			out.SetAttrTimeout(immutableCache)
			return n.NewInode(ctx, &rpNode{m: n.m, rp: rp}, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino}), 0
		}
	}
	return nil, syscall.ENOENT
}

// linkNode is a VM's latest: a symlink to its newest restore point, with
// that restore point's time, looked up in the listing on every call (the
// listing refreshes; the inode stays).
type linkNode struct {
	gofs.Inode
	vm *vmNode
}

var _ = (gofs.NodeReadlinker)((*linkNode)(nil))
var _ = (gofs.NodeGetattrer)((*linkNode)(nil))

// linkAttr describes a link to rp.
func linkAttr(out *fuse.Attr, ino uint64, rp *repo.RestorePoint) {
	*out = fuse.Attr{Ino: ino, Mode: fuse.S_IFLNK | 0o777, Size: uint64(len(DirName(rp))), Nlink: 1}
	setTimes(out, rp.Time, rp.Time, rp.Time)
}

// target is the newest restore point of the VM, or ENOENT when it has
// none left.
func (n *linkNode) target(ctx context.Context) (*repo.RestorePoint, syscall.Errno) {
	rps, err := n.vm.points(ctx)
	if err != nil {
		return nil, syscall.EIO
	}
	if len(rps) == 0 {
		return nil, syscall.ENOENT
	}
	return rps[len(rps)-1], 0
}

func (n *linkNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	rp, errno := n.target(ctx)
	if errno != 0 {
		return errno
	}
	linkAttr(&out.Attr, n.StableAttr().Ino, rp)
	out.SetTimeout(ListTTL)
	return 0
}

func (n *linkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	rp, errno := n.target(ctx)
	if errno != 0 {
		return nil, errno
	}
	return []byte(DirName(rp)), 0
}

// ---- restore point: manifest.json, disks/, one directory per disk ----

type rpNode struct {
	gofs.Inode
	m  *FS
	rp *repo.RestorePoint
}

var _ = (gofs.NodeReaddirer)((*rpNode)(nil))
var _ = (gofs.NodeLookuper)((*rpNode)(nil))

func (n *rpNode) key(s string) string { return "rp/" + n.rp.ID.String() + "/" + s }

func (n *rpNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	ents := []fuse.DirEntry{
		{Name: "manifest.json", Mode: fuse.S_IFREG, Ino: n.m.ino(n.key("manifest.json"))},
		{Name: "disks", Mode: fuse.S_IFDIR, Ino: n.m.ino(n.key("disks"))},
	}
	if skippedNote(n.rp) != nil {
		ents = append(ents, fuse.DirEntry{Name: skippedFile, Mode: fuse.S_IFREG, Ino: n.m.ino(n.key(skippedFile))})
	}
	for _, d := range n.rp.Disks {
		if fs.SafeName(d.Name) && d.Name != "disks" && d.Name != "manifest.json" && d.Name != skippedFile {
			ents = append(ents, fuse.DirEntry{Name: d.Name, Mode: fuse.S_IFDIR, Ino: n.m.ino(n.key("disk/" + d.Name))})
		}
	}
	return gofs.NewListDirStream(ents), 0
}

// skippedFile is the note a restore point directory holds when its
// capture skipped free space or swap.
const skippedFile = "vmvault-skipped.txt"

// skippedNote explains what a restore point's capture skipped, disk by
// disk, or returns nil when it skipped nothing (was not asked to).
func skippedNote(rp *repo.RestorePoint) []byte {
	var b strings.Builder
	for _, d := range rp.Disks {
		if d.Stats.Skipped == nil {
			continue
		}
		if b.Len() == 0 {
			fmt.Fprintf(&b, "Restore point %s of %s (%s) was captured skipping what the guest\n"+
				"did not use. Those bytes read as zeros here, in disks/*.raw and in the\n"+
				"files below, whatever the source held there: data of deleted files in free\n"+
				"space is not in this restore point.\n", rp.ID.Short(), rp.VM, rp.Time.UTC().Format(time.RFC3339))
		}
		fmt.Fprintf(&b, "\n%s:\n", d.Name)
		for _, l := range d.Stats.Skipped.Lines() {
			fmt.Fprintf(&b, "  %s\n", l)
		}
	}
	if b.Len() == 0 {
		return nil
	}
	return []byte(b.String())
}

func (n *rpNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	out.SetEntryTimeout(immutableCache)
	out.SetAttrTimeout(immutableCache)
	switch name {
	case "manifest.json":
		b, err := json.MarshalIndent(struct {
			ID string `json:"id"`
			*format.Manifest
		}{n.rp.ID.String(), n.rp.Manifest}, "", "  ")
		if err != nil {
			return nil, syscall.EIO
		}
		b = append(b, '\n')
		ino := n.m.ino(n.key(name))
		out.Attr = fuse.Attr{Ino: ino, Mode: fuse.S_IFREG | 0o444, Size: uint64(len(b)), Nlink: 1}
		setTimes(&out.Attr, n.rp.Time, n.rp.Time, n.rp.Time)
		return n.NewInode(ctx, &memFile{data: b, t: n.rp.Time}, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: ino}), 0
	case "disks":
		ino := n.m.ino(n.key(name))
		dirAttr(&out.Attr, ino, n.rp.Time)
		return n.NewInode(ctx, &disksNode{m: n.m, rp: n.rp}, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino}), 0
	case skippedFile:
		b := skippedNote(n.rp)
		if b == nil {
			break
		}
		ino := n.m.ino(n.key(name))
		out.Attr = fuse.Attr{Ino: ino, Mode: fuse.S_IFREG | 0o444, Size: uint64(len(b)), Nlink: 1}
		setTimes(&out.Attr, n.rp.Time, n.rp.Time, n.rp.Time)
		return n.NewInode(ctx, &memFile{data: b, t: n.rp.Time}, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: ino}), 0
	}
	for _, d := range n.rp.Disks {
		if d.Name == name {
			ino := n.m.ino(n.key("disk/" + name))
			dirAttr(&out.Attr, ino, n.rp.Time)
			return n.NewInode(ctx, &diskNode{m: n.m, rp: n.rp, disk: name}, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino}), 0
		}
	}
	return nil, syscall.ENOENT
}

// memFile is a small read-only file held in memory.
type memFile struct {
	gofs.Inode
	data []byte
	t    time.Time
}

var _ = (gofs.NodeOpener)((*memFile)(nil))
var _ = (gofs.NodeReader)((*memFile)(nil))
var _ = (gofs.NodeGetattrer)((*memFile)(nil))

func (n *memFile) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = fuse.S_IFREG | 0o444
	out.Size = uint64(len(n.data))
	out.Nlink = 1
	setTimes(&out.Attr, n.t, n.t, n.t)
	out.SetTimeout(immutableCache)
	return 0
}

func (n *memFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *memFile) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(n.data)) {
		return fuse.ReadResultData(nil), 0
	}
	end := min(int64(len(n.data)), off+int64(len(dest)))
	return fuse.ReadResultData(n.data[off:end]), 0
}

// ---- disks: the raw disk images ----

// diskState is a repository disk and its partition table, opened once per
// mount on first use.
type diskState struct {
	once  sync.Once
	disk  *repo.Disk
	table *image.Disk
	// tableErr is why table is nil (the disk holds vmvault-error.txt).
	tableErr error
	err      error
	mu       sync.Mutex
	fss      map[string]*fsState
}

type fsState struct {
	fsys fs.FileSystem
	id   int
	err  error
	// where names the filesystem in log lines; logged counts the
	// filesystem's warnings already logged.
	where  []any
	mu     sync.Mutex
	logged int
}

// logWarnings logs the warnings the filesystem found since the last call
// (readers add them as they meet damaged structures, e.g. bad checksums).
func (f *fsState) logWarnings(log *slog.Logger) {
	if f.fsys == nil {
		return
	}
	ws := f.fsys.Warnings()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range ws[min(f.logged, len(ws)):] {
		log.Warn("filesystem", append(f.where, "warning", w)...)
	}
	f.logged = max(f.logged, len(ws))
}

func (m *FS) openDisk(ctx context.Context, rp *repo.RestorePoint, name string) *diskState {
	key := rp.ID.String() + "/" + name
	m.mu.Lock()
	st, ok := m.disks[key]
	if !ok {
		st = &diskState{fss: map[string]*fsState{}}
		m.disks[key] = st
	}
	m.mu.Unlock()
	st.once.Do(func() {
		if m.lock != nil {
			if err := m.lock.Pin(context.WithoutCancel(ctx), rp); err != nil {
				st.err = err
				m.log.Error("pin restore point", "restore_point", rp.ID.Short(), "err", err)
				return
			}
		}
		d, err := m.r.OpenDisk(context.WithoutCancel(ctx), rp, name)
		if err != nil {
			st.err = err
			m.log.Error("open disk", "restore_point", rp.ID.Short(), "disk", name, "err", err)
			return
		}
		d.SetStreaming(true)
		st.disk = d
		t, err := image.Open(d, d.Size())
		if err != nil {
			st.tableErr = fmt.Errorf("partition table: %w", err)
			m.log.Warn("partition table", "restore_point", rp.ID.Short(), "disk", name, "err", err)
			return
		}
		st.table = t
		for _, e := range t.TableErrors {
			m.log.Warn("bad partition table entry", "restore_point", rp.ID.Short(), "disk", name, "partition", e.Name, "err", e.Err)
		}
	})
	return st
}

type disksNode struct {
	gofs.Inode
	m  *FS
	rp *repo.RestorePoint
}

var _ = (gofs.NodeReaddirer)((*disksNode)(nil))
var _ = (gofs.NodeLookuper)((*disksNode)(nil))

func (n *disksNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	var ents []fuse.DirEntry
	for _, d := range n.rp.Disks {
		if fs.SafeName(d.Name) {
			ents = append(ents, fuse.DirEntry{Name: d.Name + ".raw", Mode: fuse.S_IFREG, Ino: n.m.ino("raw/" + n.rp.ID.String() + "/" + d.Name)})
		}
	}
	return gofs.NewListDirStream(ents), 0
}

func (n *disksNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	disk, ok := strings.CutSuffix(name, ".raw")
	if !ok {
		return nil, syscall.ENOENT
	}
	for _, d := range n.rp.Disks {
		if d.Name == disk {
			ino := n.m.ino("raw/" + n.rp.ID.String() + "/" + disk)
			rn := &rawNode{m: n.m, rp: n.rp, disk: disk, size: d.Size}
			rn.attr(&out.Attr, ino)
			out.SetEntryTimeout(immutableCache)
			out.SetAttrTimeout(immutableCache)
			return n.NewInode(ctx, rn, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: ino}), 0
		}
	}
	return nil, syscall.ENOENT
}

// rawNode is a whole disk as one file.
type rawNode struct {
	gofs.Inode
	m    *FS
	rp   *repo.RestorePoint
	disk string
	size int64
}

var _ = (gofs.NodeOpener)((*rawNode)(nil))
var _ = (gofs.NodeReader)((*rawNode)(nil))
var _ = (gofs.NodeGetattrer)((*rawNode)(nil))
var _ = (gofs.NodeLseeker)((*rawNode)(nil))

func (n *rawNode) attr(out *fuse.Attr, ino uint64) {
	out.Ino = ino
	out.Mode = fuse.S_IFREG | 0o444
	out.Size = uint64(n.size)
	out.Blocks = (uint64(n.size) + 511) / 512
	out.Nlink = 1
	setTimes(out, n.rp.Time, n.rp.Time, n.rp.Time)
}

func (n *rawNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.attr(&out.Attr, n.StableAttr().Ino)
	out.SetTimeout(immutableCache)
	return 0
}

func (n *rawNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	if st := n.m.openDisk(ctx, n.rp, n.disk); st.err != nil {
		return nil, 0, syscall.EIO
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *rawNode) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	st := n.m.openDisk(ctx, n.rp, n.disk)
	if st.err != nil {
		return nil, syscall.EIO
	}
	k, err := st.disk.ReadAtContext(ctx, dest, off)
	if err != nil && k < len(dest) && !isEOF(err) {
		n.m.log.Error("read", "err", err)
		return nil, syscall.EIO
	}
	if k > 0 && k <= readAroundMax {
		n.readAround(st.disk, off, int64(k))
	}
	return fuse.ReadResultData(dest[:k]), 0
}

// Read-around: a small read (the kernel sends those for random access; it
// only reads ahead for sequential readers) had to decode and verify whole
// chunks, so the rest of those chunks is handed to the kernel's page cache
// with a FUSE store notification, and later reads near it never reach us.
// The store runs after the reply (the kernel holds the pages being read
// locked until then, and a store into a locked page waits), skips those
// pages, and is dropped when maxStores are already in flight: it only
// saves work, it is never needed for a correct answer.
const (
	readAroundMax = 64 << 10
	maxStores     = 2
)

var pageSize = int64(os.Getpagesize())

func (n *rawNode) readAround(d *repo.Disk, off, k int64) {
	cs := d.ChunkSize()
	start := off / cs * cs
	end := min((off+k+cs-1)/cs*cs, d.Size())
	skipFrom, skipTo := off/pageSize*pageSize, min((off+k+pageSize-1)/pageSize*pageSize, end)
	if start == skipFrom && end == skipTo {
		return
	}
	select {
	case n.m.storing <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-n.m.storing }()
		err := d.ReadSlices(context.Background(), start, end-start, func(bufs [][]byte) error {
			pos := start
			for _, b := range bufs {
				bs, be := pos, pos+int64(len(b))
				pos = be
				for _, r := range [2][2]int64{{bs, min(be, skipFrom)}, {max(bs, skipTo), be}} {
					if r[0] >= r[1] {
						continue
					}
					if errno := n.WriteCache(r[0], b[r[0]-bs:r[1]-bs]); errno != 0 {
						return errno
					}
				}
			}
			return nil
		})
		if err != nil {
			n.m.log.Debug("read-around", "restore_point", n.rp.ID.Short(), "disk", n.disk, "offset", start, "err", err)
		}
	}()
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the disk's zero chunks.
func (n *rawNode) Lseek(ctx context.Context, f gofs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	st := n.m.openDisk(ctx, n.rp, n.disk)
	if st.err != nil {
		return 0, syscall.EIO
	}
	if int64(off) >= n.size {
		return 0, syscall.ENXIO
	}
	ex, err := st.disk.Extents(int64(off), n.size-int64(off))
	if err != nil {
		return 0, syscall.EIO
	}
	wantZero := whence == unixSeekHole
	for _, e := range ex {
		if e.Zero == wantZero {
			return uint64(max(e.Offset, int64(off))), 0
		}
	}
	if wantZero {
		return uint64(n.size), 0 // the end counts as a hole
	}
	return 0, syscall.ENXIO
}

// unixSeekHole is lseek's SEEK_HOLE whence (SEEK_DATA is 3).
const unixSeekHole = 4

func isEOF(err error) bool { return errors.Is(err, io.EOF) }

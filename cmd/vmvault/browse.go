package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/image"
	"github.com/vmvault/vmvault/repo"
)

// browseHelp explains the path syntax shared by partitions, ls, cat, cp,
// find and timeline.
const browseHelp = `Paths name a file inside a restore point as RP:DISK/PARTITION/PATH, e.g.
web01@latest:disk0/p2/etc/hostname. Partitions are p1, p2, … as Linux
numbers them (logical partitions from p5); a filesystem without a partition
table is p0. With --image FILE, a plain disk image takes the place of
RP:DISK and paths start at the partition: p1/etc/hostname.

Nothing is written to the repository or the image; no root and no FUSE
are needed.`

// browser opens disks and filesystems named on the command line and keeps
// them open for the rest of the command.
type browser struct {
	g     *cli.Global
	image string
	all   bool

	r    *repo.Repository
	rps  []*repo.RestorePoint
	disk map[string]*image.Disk
	fsys map[string]fs.FileSystem
	file *os.File
}

func (b *browser) addFlags(f *pflag.FlagSet) {
	f.StringVar(&b.image, "image", "", "read a plain disk image FILE instead of a restore point")
}

func (b *browser) close() {
	if b.r != nil {
		b.r.Close()
	}
	if b.file != nil {
		b.file.Close()
	}
}

// location is a parsed path argument.
type location struct {
	rp       *repo.RestorePoint // nil with --image
	diskName string
	disk     *image.Disk
	part     *image.Partition // nil when the argument stops at the disk
	fsys     fs.FileSystem
	path     string // inside the filesystem, "/…"
}

// prefix is how the location's filesystem is written on the command line.
func (l *location) prefix() string {
	s := ""
	if l.rp != nil {
		s = l.rp.ID.Short() + ":" + l.diskName + "/"
	}
	if l.part != nil {
		s += l.part.Name
	}
	return s
}

// resolve finds the inode the location's path names (following a final
// symlink when follow is set); errors name the location.
func (l *location) resolve(ctx context.Context, follow bool) (fs.Ino, error) {
	ino, err := fs.Resolve(ctx, l.fsys, l.path, follow)
	if err != nil {
		return 0, fmt.Errorf("%s%s: %w", l.prefix(), l.path, err)
	}
	return ino, nil
}

// stat resolves the location's path without following a final symlink
// and stats it.
func (l *location) stat(ctx context.Context) (fs.Stat, error) {
	ino, err := l.resolve(ctx, false)
	if err != nil {
		return fs.Stat{}, err
	}
	st, err := l.fsys.Stat(ctx, ino)
	if err != nil {
		return fs.Stat{}, fmt.Errorf("%s%s: %w", l.prefix(), l.path, err)
	}
	return st, nil
}

func (b *browser) repository(ctx context.Context) (*repo.Repository, []*repo.RestorePoint, error) {
	if b.r != nil {
		return b.r, b.rps, nil
	}
	r, err := b.g.OpenRepo(ctx, repo.Options{})
	if err != nil {
		return nil, nil, err
	}
	rps, bad, err := r.ListRestorePoints(ctx)
	if err != nil {
		r.Close()
		return nil, nil, err
	}
	for _, x := range bad {
		fmt.Fprintf(os.Stderr, "warning: restore point %s cannot be read: %v\n", x.Name, x.Err)
	}
	b.r, b.rps = r, rps
	return r, rps, nil
}

// openDisk opens a disk of a restore point (or the --image file) once.
func (b *browser) openDisk(ctx context.Context, rp *repo.RestorePoint, name string) (*image.Disk, error) {
	key := name
	if rp != nil {
		key = rp.ID.String() + ":" + name
	}
	if d, ok := b.disk[key]; ok {
		return d, nil
	}
	var (
		ra   io.ReaderAt
		size int64
	)
	if rp == nil {
		f, err := os.Open(b.image)
		if err != nil {
			return nil, err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		size = fi.Size()
		if fi.Mode()&os.ModeDevice != 0 {
			if size, err = f.Seek(0, io.SeekEnd); err != nil {
				f.Close()
				return nil, fmt.Errorf("size of %s: %w", b.image, err)
			}
		}
		b.file, ra = f, f
	} else {
		d, err := b.r.OpenDisk(ctx, rp, name)
		if err != nil {
			return nil, err
		}
		d.SetStreaming(true) // file content is read once; metadata stays cached
		ra, size = d, d.Size()
	}
	d, err := image.Open(ra, size)
	if err != nil {
		what := b.image
		if rp != nil {
			what = rp.ID.Short() + ":" + name
		}
		return nil, fmt.Errorf("read partition table of %s: %w", what, err)
	}
	if b.disk == nil {
		b.disk, b.fsys = map[string]*image.Disk{}, map[string]fs.FileSystem{}
	}
	b.disk[key] = d
	return d, nil
}

func (b *browser) openFS(l *location) error {
	key := fmt.Sprintf("%p/%s", l.disk, l.part.Name)
	if f, ok := b.fsys[key]; ok {
		l.fsys = f
		return nil
	}
	f, err := l.disk.OpenFS(*l.part)
	if err != nil {
		return fmt.Errorf("%s: %w", l.prefix(), err)
	}
	for _, w := range f.Warnings() {
		fmt.Fprintf(os.Stderr, "warning: %s (%s): %s\n", l.prefix(), f.Type(), w)
	}
	b.fsys[key] = f
	l.fsys = f
	return nil
}

// splitRP finds the restore point at the start of arg. Restore point names
// may themselves contain ':' (VM@2026-11-23T10:00), so every ':' is tried
// from the left and the first prefix that names a restore point wins.
func splitRP(rps []*repo.RestorePoint, arg string) (*repo.RestorePoint, string, error) {
	var firstErr error
	for i := 0; i < len(arg); i++ {
		if arg[i] != ':' {
			continue
		}
		rp, err := repo.Resolve(rps, arg[:i])
		if err == nil {
			return rp, arg[i+1:], nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	rp, err := repo.Resolve(rps, arg)
	if err == nil {
		return rp, "", nil
	}
	if firstErr == nil {
		firstErr = err
	}
	return nil, "", fmt.Errorf("%q does not start with a restore point (RP:DISK/PARTITION/PATH): %w", arg, firstErr)
}

// locate parses one path argument. needFS asks for a partition to be named.
func (b *browser) locate(ctx context.Context, arg string, needFS bool) (*location, error) {
	l := &location{}
	rest := arg
	if b.image != "" {
		d, err := b.openDisk(ctx, nil, "")
		if err != nil {
			return nil, err
		}
		l.disk = d
	} else {
		_, rps, err := b.repository(ctx)
		if err != nil {
			return nil, err
		}
		rp, after, err := splitRP(rps, arg)
		if err != nil {
			return nil, cli.Usagef("%v", err)
		}
		l.rp = rp
		name, tail, _ := strings.Cut(after, "/")
		if name == "" {
			if len(rp.Disks) != 1 {
				return nil, cli.Usagef("%s has %d disks: name one as %s:DISK", rp.ID.Short(), len(rp.Disks), rp.ID.Short())
			}
			name = rp.Disks[0].Name
		}
		l.diskName = name
		if l.disk, err = b.openDisk(ctx, rp, name); err != nil {
			return nil, err
		}
		rest = tail
	}
	partName, p, _ := strings.Cut(strings.TrimPrefix(rest, "/"), "/")
	if partName == "" {
		if !needFS {
			return l, nil
		}
		if len(l.disk.Partitions) != 1 {
			return nil, cli.Usagef("name a partition (%s): %s", partitionNames(l.disk), arg)
		}
		partName = l.disk.Partitions[0].Name
	}
	part, err := l.disk.Partition(partName)
	if err != nil {
		return nil, err
	}
	l.part = &part
	l.path = fs.Clean(p)
	if err := b.openFS(l); err != nil {
		return nil, err
	}
	return l, nil
}

func partitionNames(d *image.Disk) string {
	var names []string
	for _, p := range d.Partitions {
		names = append(names, p.Name)
	}
	return strings.Join(names, ", ")
}

// entry is one file as the browsing commands print it.
type entry struct {
	Path   string    `json:"path"`
	Type   string    `json:"type"`
	Size   int64     `json:"size"`
	Mode   string    `json:"mode"`
	UID    uint32    `json:"uid"`
	GID    uint32    `json:"gid"`
	Mtime  *jsonTime `json:"mtime,omitempty"`
	Atime  *jsonTime `json:"atime,omitempty"`
	Ctime  *jsonTime `json:"ctime,omitempty"`
	Crtime *jsonTime `json:"crtime,omitempty"`
	Inode  uint64    `json:"inode"`
	Nlink  uint32    `json:"nlink"`
	Target string    `json:"target,omitempty"`

	st   fs.Stat
	name string // the last component as stored (it may contain '/')
}

type jsonTime time.Time

func (t jsonTime) MarshalText() ([]byte, error) {
	return []byte(time.Time(t).UTC().Format(time.RFC3339Nano)), nil
}

func jt(t time.Time) *jsonTime {
	if t.IsZero() {
		return nil
	}
	j := jsonTime(t)
	return &j
}

func makeEntry(ctx context.Context, fsys fs.FileSystem, p, name string, st fs.Stat) entry {
	e := entry{
		Path: p, name: name, Type: st.Type.String(), Size: st.Size, Mode: fmt.Sprintf("%04o", st.Mode),
		UID: st.UID, GID: st.GID, Inode: uint64(st.Ino), Nlink: st.Nlink,
		Mtime: jt(st.Mtime), Atime: jt(st.Atime), Ctime: jt(st.Ctime), Crtime: jt(st.Crtime),
		st: st,
	}
	if st.Type == fs.TypeSymlink {
		if t, err := fsys.Readlink(ctx, st.Ino); err == nil {
			e.Target = t
		}
	}
	return e
}

// modeString renders a Stat's type and permissions as ls -l does.
func modeString(st fs.Stat) string {
	b := []byte{st.Type.Char(), 'r', 'w', 'x', 'r', 'w', 'x', 'r', 'w', 'x'}
	if b[0] == '?' {
		b[0] = '-'
	}
	for i := 0; i < 9; i++ {
		if st.Mode&(1<<(8-i)) == 0 {
			b[i+1] = '-'
		}
	}
	special := func(pos int, bit uint32, set, unset byte) {
		if st.Mode&bit != 0 {
			if b[pos] == '-' {
				b[pos] = unset
			} else {
				b[pos] = set
			}
		}
	}
	special(3, fs.ModeSetuid, 's', 'S')
	special(6, fs.ModeSetgid, 's', 'S')
	special(9, fs.ModeSticky, 't', 'T')
	return string(b)
}

// walkFunc is called for every file under a directory, depth first, with
// its path inside the filesystem and its name as stored.
type walkFunc func(p, name string, st fs.Stat) error

// child is one directory entry with its stat.
type child struct {
	path, name string
	st         fs.Stat
}

// statDir lists dir (at path p) with every entry stat'ed, leaving out
// hidden metadata unless all is set. Entries that cannot be stat'ed are
// left out and reported, joined, in the error.
func statDir(ctx context.Context, fsys fs.FileSystem, dir fs.Ino, p string, all bool) ([]child, error) {
	ents, err := fsys.ReadDir(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	hidden, _ := fsys.(fs.HiddenChecker)
	out := make([]child, 0, len(ents))
	var errs error
	for _, e := range ents {
		if !all && hidden != nil && hidden.Hidden(dir, e.Name) {
			continue
		}
		c := child{path: strings.TrimSuffix(p, "/") + "/" + e.Name, name: e.Name}
		if c.st, err = fsys.Stat(ctx, e.Ino); err != nil {
			errs = errors.Join(errs, fmt.Errorf("%s: %w", c.path, err))
			continue
		}
		out = append(out, c)
	}
	return out, errs
}

// walk visits the tree under dir. Each directory is entered once, so a
// hostile image with directory cycles terminates; hidden metadata files
// are skipped unless all is set.
func walk(ctx context.Context, fsys fs.FileSystem, dir fs.Ino, p string, all bool, seen map[fs.Ino]bool, fn walkFunc) error {
	if seen[dir] {
		return fmt.Errorf("%s: directory already visited (a cycle in the image): %w", p, fs.ErrCorrupt)
	}
	seen[dir] = true
	children, errs := statDir(ctx, fsys, dir, p, all)
	for _, c := range children {
		if err := fn(c.path, c.name, c.st); err != nil {
			return err
		}
		if c.st.Type == fs.TypeDir {
			if err := walk(ctx, fsys, c.st.Ino, c.path, all, seen, fn); err != nil {
				if errors.Is(err, context.Canceled) {
					return err
				}
				errs = errors.Join(errs, err)
			}
		}
	}
	return errs
}

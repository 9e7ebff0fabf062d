package browse

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vmvault/vmvault/fs"
)

// WalkFunc is called for every file under a directory with its path inside
// the filesystem and its name as stored (which may contain '/'). An error
// it returns ends the walk and is returned by Walk.
type WalkFunc func(p, name string, st fs.Stat) error

// Child is one directory entry with its stat.
type Child struct {
	Path string // the directory's path + "/" + Name
	Name string // as stored
	Stat fs.Stat
}

// StatDir lists dir (at path p) with every entry stat'ed, in the
// directory's order, leaving out hidden metadata unless all is set.
// Entries that cannot be stat'ed are left out and reported, joined, in the
// error, next to the entries that could.
func StatDir(ctx context.Context, fsys fs.FileSystem, dir fs.Ino, p string, all bool) ([]Child, error) {
	ents, err := fsys.ReadDir(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	hidden, _ := fsys.(fs.HiddenChecker)
	out := make([]Child, 0, len(ents))
	var errs error
	for _, e := range ents {
		if !all && hidden != nil && hidden.Hidden(dir, e.Name) {
			continue
		}
		c := Child{Path: strings.TrimSuffix(p, "/") + "/" + e.Name, Name: e.Name}
		if c.Stat, err = fsys.Stat(ctx, e.Ino); err != nil {
			errs = errors.Join(errs, fmt.Errorf("%s: %w", c.Path, err))
			continue
		}
		out = append(out, c)
	}
	return out, errs
}

// Walk visits the tree under dir (at path p), depth first in directory
// order, calling fn for every entry before descending into it. Each
// directory is entered once, so directory cycles end with an error
// wrapping fs.ErrCorrupt; hidden metadata is skipped unless all is set.
// Errors of single entries and subtrees are joined and returned after the
// rest has been walked. An error from fn ends the walk of the directory it
// came from and is joined with the others; an error wrapping
// context.Canceled ends the whole walk.
func Walk(ctx context.Context, fsys fs.FileSystem, dir fs.Ino, p string, all bool, fn WalkFunc) error {
	return walk(ctx, fsys, dir, p, all, map[fs.Ino]bool{}, fn)
}

func walk(ctx context.Context, fsys fs.FileSystem, dir fs.Ino, p string, all bool, seen map[fs.Ino]bool, fn WalkFunc) error {
	if seen[dir] {
		return fmt.Errorf("%s: directory already visited (a cycle in the image): %w", p, fs.ErrCorrupt)
	}
	seen[dir] = true
	children, errs := StatDir(ctx, fsys, dir, p, all)
	for _, c := range children {
		if err := fn(c.Path, c.Name, c.Stat); err != nil {
			return err
		}
		if c.Stat.Type == fs.TypeDir {
			if err := walk(ctx, fsys, c.Stat.Ino, c.Path, all, seen, fn); err != nil {
				if errors.Is(err, context.Canceled) {
					return err
				}
				errs = errors.Join(errs, err)
			}
		}
	}
	return errs
}

// Entry is one file as the browsing commands print it; its JSON form is
// the documented output of ls --json and find --json.
type Entry struct {
	Path   string     `json:"path"`
	Type   string     `json:"type"`
	Size   int64      `json:"size"`
	Mode   string     `json:"mode"` // permission bits in octal, "0644"
	UID    uint32     `json:"uid"`
	GID    uint32     `json:"gid"`
	Mtime  *Timestamp `json:"mtime,omitempty"` // nil when the filesystem has no such time
	Atime  *Timestamp `json:"atime,omitempty"`
	Ctime  *Timestamp `json:"ctime,omitempty"`
	Crtime *Timestamp `json:"crtime,omitempty"`
	Inode  uint64     `json:"inode"`
	Nlink  uint32     `json:"nlink"`
	Target string     `json:"target,omitempty"` // a symlink's target

	Stat fs.Stat `json:"-"`
	Name string  `json:"-"` // the last component as stored (it may contain '/')
}

// Timestamp is a time that marshals as RFC 3339 in UTC with nanoseconds.
type Timestamp time.Time

// MarshalText implements encoding.TextMarshaler.
func (t Timestamp) MarshalText() ([]byte, error) {
	return []byte(time.Time(t).UTC().Format(time.RFC3339Nano)), nil
}

func stamp(t time.Time) *Timestamp {
	if t.IsZero() {
		return nil
	}
	j := Timestamp(t)
	return &j
}

// NewEntry makes the record of the file at path p (named name) with stat
// st; a symlink's target is read from fsys (left out when unreadable).
func NewEntry(ctx context.Context, fsys fs.FileSystem, p, name string, st fs.Stat) Entry {
	e := Entry{
		Path: p, Name: name, Type: st.Type.String(), Size: st.Size, Mode: fmt.Sprintf("%04o", st.Mode),
		UID: st.UID, GID: st.GID, Inode: uint64(st.Ino), Nlink: st.Nlink,
		Mtime: stamp(st.Mtime), Atime: stamp(st.Atime), Ctime: stamp(st.Ctime), Crtime: stamp(st.Crtime),
		Stat: st,
	}
	if st.Type == fs.TypeSymlink {
		if t, err := fsys.Readlink(ctx, st.Ino); err == nil {
			e.Target = t
		}
	}
	return e
}

// ReadDirStat lists one directory as entries sorted by path, with the
// errors of StatDir.
func ReadDirStat(ctx context.Context, fsys fs.FileSystem, dir fs.Ino, p string, all bool) ([]Entry, error) {
	children, err := StatDir(ctx, fsys, dir, p, all)
	out := make([]Entry, len(children))
	for i, c := range children {
		out[i] = NewEntry(ctx, fsys, c.Path, c.Name, c.Stat)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, err
}

// ModeString renders a Stat's type and permissions as ls -l does,
// "drwxr-xr-x", with s/S and t/T for setuid, setgid and sticky.
func ModeString(st fs.Stat) string {
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

// QuoteName makes a name from an image safe to print on a terminal:
// control characters and invalid UTF-8 are escaped, as ls -b does; other
// names are returned as they are.
func QuoteName(s string) string {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			q := strconv.Quote(s)
			return q[1 : len(q)-1]
		}
	}
	return s
}

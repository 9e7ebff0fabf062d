package fstest

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/repo/extent"
)

// MemFS is an in-memory fs.FileSystem for unit tests of the code above the
// readers (walks, listings, restores). Names are stored exactly as given,
// so a test can build what a hostile image holds: names with '/' or NUL,
// "." and "..", a directory linked into itself, hard links. Build it with
// the Add methods first; once built, its read methods are safe for
// concurrent use.
type MemFS struct {
	nodes    map[fs.Ino]*memNode
	last     fs.Ino
	hidden   map[fs.Ino]map[string]bool
	warnings []string
}

type memNode struct {
	st      fs.Stat
	data    []byte
	extents []extent.Range // data ranges of a sparse file; nil: all data
	target  string
	ents    []fs.DirEntry
	readErr error
}

// MemTime is the mtime every MemFS file starts with.
var MemTime = time.Date(2026, 11, 23, 10, 0, 0, 123456789, time.UTC)

// NewMemFS returns a filesystem holding only its root directory (mode 0755).
func NewMemFS() *MemFS {
	m := &MemFS{nodes: map[fs.Ino]*memNode{}, last: 1, hidden: map[fs.Ino]map[string]bool{}}
	m.nodes[1] = &memNode{st: fs.Stat{Ino: 1, Type: fs.TypeDir, Mode: 0o755, Nlink: 2, Mtime: MemTime, Atime: MemTime}}
	return m
}

// add creates a node and links it into dir as name.
func (m *MemFS) add(dir fs.Ino, name string, n *memNode) fs.Ino {
	m.last++
	ino := m.last
	n.st.Ino = ino
	if n.st.Mtime.IsZero() {
		n.st.Mtime, n.st.Atime = MemTime, MemTime
	}
	m.nodes[ino] = n
	m.Link(dir, name, ino)
	return ino
}

// Link adds another name for ino in dir: a hard link, or, for a
// directory, the cycle a hostile image can hold. An ino that does not
// exist makes a dangling entry, whose Stat fails.
func (m *MemFS) Link(dir fs.Ino, name string, ino fs.Ino) {
	e := fs.DirEntry{Name: name, Ino: ino}
	if n, ok := m.nodes[ino]; ok {
		e.Type = n.st.Type
		n.st.Nlink++
	}
	m.nodes[dir].ents = append(m.nodes[dir].ents, e)
}

// Dir adds a directory.
func (m *MemFS) Dir(dir fs.Ino, name string, mode uint32) fs.Ino {
	return m.add(dir, name, &memNode{st: fs.Stat{Type: fs.TypeDir, Mode: mode, Nlink: 1}})
}

// File adds a regular file holding data.
func (m *MemFS) File(dir fs.Ino, name string, mode uint32, data []byte) fs.Ino {
	return m.add(dir, name, &memNode{st: fs.Stat{Type: fs.TypeRegular, Mode: mode, Size: int64(len(data))}, data: data})
}

// SparseFile adds a file of size bytes whose data ranges are extents,
// filled with fill; the rest reads as zeros, and Open returns an
// fs.SparseFile.
func (m *MemFS) SparseFile(dir fs.Ino, name string, mode uint32, size int64, extents []extent.Range, fill byte) fs.Ino {
	data := make([]byte, size)
	for _, e := range extents {
		for i := e.Offset; i < e.End(); i++ {
			data[i] = fill
		}
	}
	return m.add(dir, name, &memNode{st: fs.Stat{Type: fs.TypeRegular, Mode: mode, Size: size, Sparse: true}, data: data, extents: extents})
}

// Symlink adds a symbolic link to target.
func (m *MemFS) Symlink(dir fs.Ino, name, target string) fs.Ino {
	return m.add(dir, name, &memNode{st: fs.Stat{Type: fs.TypeSymlink, Mode: 0o777, Size: int64(len(target))}, target: target})
}

// Special adds a FIFO, socket or device node (rdev in the Linux encoding).
func (m *MemFS) Special(dir fs.Ino, name string, typ fs.Type, mode, rdev uint32) fs.Ino {
	return m.add(dir, name, &memNode{st: fs.Stat{Type: typ, Mode: mode, Rdev: rdev}})
}

// SetStat changes ino's stat through fn (times, owners, mode).
func (m *MemFS) SetStat(ino fs.Ino, fn func(*fs.Stat)) { fn(&m.nodes[ino].st) }

// FailReads makes every read of ino's content fail with err.
func (m *MemFS) FailReads(ino fs.Ino, err error) { m.nodes[ino].readErr = err }

// Hide makes name in dir a hidden metadata file (fs.HiddenChecker).
func (m *MemFS) Hide(dir fs.Ino, name string) {
	if m.hidden[dir] == nil {
		m.hidden[dir] = map[string]bool{}
	}
	m.hidden[dir][name] = true
}

// AddWarning adds a filesystem-wide warning.
func (m *MemFS) AddWarning(w string) { m.warnings = append(m.warnings, w) }

var (
	_ fs.FileSystem    = (*MemFS)(nil)
	_ fs.HiddenChecker = (*MemFS)(nil)
)

func (m *MemFS) Type() string       { return "memfs" }
func (m *MemFS) Label() string      { return "" }
func (m *MemFS) UUID() string       { return "" }
func (m *MemFS) Root() fs.Ino       { return 1 }
func (m *MemFS) Warnings() []string { return m.warnings }

func (m *MemFS) Hidden(dir fs.Ino, name string) bool { return m.hidden[dir][name] }

func (m *MemFS) node(ino fs.Ino) (*memNode, error) {
	n, ok := m.nodes[ino]
	if !ok {
		return nil, fmt.Errorf("inode %d: %w", ino, fs.ErrNotExist)
	}
	return n, nil
}

func (m *MemFS) Stat(ctx context.Context, ino fs.Ino) (fs.Stat, error) {
	n, err := m.node(ino)
	if err != nil {
		return fs.Stat{}, err
	}
	return n.st, nil
}

func (m *MemFS) ReadDir(ctx context.Context, ino fs.Ino) ([]fs.DirEntry, error) {
	n, err := m.node(ino)
	if err != nil {
		return nil, err
	}
	if n.st.Type != fs.TypeDir {
		return nil, fmt.Errorf("inode %d: %w", ino, fs.ErrNotDir)
	}
	out := append([]fs.DirEntry(nil), n.ents...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (m *MemFS) Lookup(ctx context.Context, dir fs.Ino, name string) (fs.Ino, error) {
	ents, err := m.ReadDir(ctx, dir)
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		if e.Name == name {
			return e.Ino, nil
		}
	}
	return 0, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
}

func (m *MemFS) Readlink(ctx context.Context, ino fs.Ino) (string, error) {
	n, err := m.node(ino)
	if err != nil {
		return "", err
	}
	if n.st.Type != fs.TypeSymlink {
		return "", fmt.Errorf("inode %d is not a symlink", ino)
	}
	return n.target, nil
}

func (m *MemFS) ListXattr(ctx context.Context, ino fs.Ino) ([]string, error) {
	_, err := m.node(ino)
	return nil, err
}

func (m *MemFS) GetXattr(ctx context.Context, ino fs.Ino, name string) ([]byte, error) {
	if _, err := m.node(ino); err != nil {
		return nil, err
	}
	return nil, fs.ErrNoAttr
}

func (m *MemFS) Open(ctx context.Context, ino fs.Ino) (fs.File, error) {
	n, err := m.node(ino)
	if err != nil {
		return nil, err
	}
	if n.st.Type == fs.TypeDir {
		return nil, fmt.Errorf("inode %d: %w", ino, fs.ErrIsDir)
	}
	f := &memFile{n: n}
	if n.extents != nil {
		return &memSparseFile{f}, nil
	}
	return f, nil
}

type memFile struct{ n *memNode }

func (f *memFile) Size() int64 { return int64(len(f.n.data)) }

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	if f.n.readErr != nil {
		return 0, f.n.readErr
	}
	if off < 0 {
		return 0, fmt.Errorf("read at %d: negative offset", off)
	}
	if off >= int64(len(f.n.data)) {
		return 0, io.EOF
	}
	k := copy(p, f.n.data[off:])
	if k < len(p) {
		return k, io.EOF
	}
	return k, nil
}

type memSparseFile struct{ *memFile }

func (f *memSparseFile) DataExtents() ([]extent.Range, error) {
	return append([]extent.Range(nil), f.n.extents...), nil
}

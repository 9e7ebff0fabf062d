package browse

import (
	"context"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/vmvault/vmvault/fs"
)

// Query selects files as find does. The zero Query matches every file.
type Query struct {
	Name  string    // shell glob (* ? [..]) on the file name, case-sensitive
	IName string    // shell glob on the file name, case-insensitive
	Newer time.Time // only files modified after Newer
	Type  fs.Type   // only files of this type (fs.TypeUnknown: any)
}

// Check reports a malformed glob in q.
func (q Query) Check() error {
	for _, g := range []string{q.Name, q.IName} {
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("bad glob %q: %v", g, err)
		}
	}
	return nil
}

// Match reports whether a file named name (its last path component, as
// stored) with stat st is selected by q.
func (q Query) Match(name string, st fs.Stat) bool {
	if q.Name != "" {
		if ok, _ := path.Match(q.Name, name); !ok {
			return false
		}
	}
	if q.IName != "" {
		if ok, _ := path.Match(strings.ToLower(q.IName), strings.ToLower(name)); !ok {
			return false
		}
	}
	if !q.Newer.IsZero() && !st.Mtime.After(q.Newer) {
		return false
	}
	return q.Type == fs.TypeUnknown || st.Type == q.Type
}

// typeLetters are find's -type letters.
var typeLetters = map[string]fs.Type{
	"f": fs.TypeRegular, "d": fs.TypeDir, "l": fs.TypeSymlink, "p": fs.TypeFIFO,
	"c": fs.TypeCharDev, "b": fs.TypeBlockDev, "s": fs.TypeSocket,
}

// ParseType maps find's -type letter (f, d, l, p, c, b, s) to a Type.
func ParseType(letter string) (fs.Type, bool) {
	t, ok := typeLetters[letter]
	return t, ok
}

// Find walks the tree under dir (at path p) as Walk does and calls fn for
// the files q selects.
func Find(ctx context.Context, fsys fs.FileSystem, dir fs.Ino, p string, all bool, q Query, fn WalkFunc) error {
	return Walk(ctx, fsys, dir, p, all, func(p, name string, st fs.Stat) error {
		if !q.Match(name, st) {
			return nil
		}
		return fn(p, name, st)
	})
}

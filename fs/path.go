package fs

import (
	"context"
	"fmt"
	"path"
	"strings"
)

// maxSymlinks bounds symlink expansion during path resolution, as Linux
// does (ELOOP after 40).
const maxSymlinks = 40

// Resolve walks a slash-separated path from the root of fsys and returns the
// inode it names. Symbolic links in the middle of the path are followed
// inside the filesystem (an absolute target starts again at its root, never
// at the host's); the last component is followed only when follow is true.
// ".." never climbs above the root. Symlink loops end with ErrLoop.
func Resolve(ctx context.Context, fsys FileSystem, p string, follow bool) (Ino, error) {
	stack := []Ino{fsys.Root()}
	todo := splitPath(p)
	links := 0
	for len(todo) > 0 {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		name := todo[0]
		todo = todo[1:]
		switch name {
		case ".":
			continue
		case "..":
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		dir := stack[len(stack)-1]
		ino, err := fsys.Lookup(ctx, dir, name)
		if err != nil {
			return 0, err
		}
		if len(todo) == 0 && !follow {
			stack = append(stack, ino)
			break
		}
		st, err := fsys.Stat(ctx, ino)
		if err != nil {
			return 0, err
		}
		if st.Type != TypeSymlink {
			if len(todo) > 0 && st.Type != TypeDir {
				return 0, fmt.Errorf("%s: %w", name, ErrNotDir)
			}
			stack = append(stack, ino)
			continue
		}
		links++
		if links > maxSymlinks {
			return 0, fmt.Errorf("resolve %s: %w", p, ErrLoop)
		}
		target, err := fsys.Readlink(ctx, ino)
		if err != nil {
			return 0, err
		}
		if strings.HasPrefix(target, "/") {
			stack = stack[:1]
		}
		todo = append(splitPath(target), todo...)
	}
	return stack[len(stack)-1], nil
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

// Clean normalizes a path inside a filesystem to the form "/a/b".
func Clean(p string) string { return path.Clean("/" + p) }

// SafeName reports whether a directory entry name can be used as one
// component of a host path: not empty, not "." or "..", no slash and no NUL.
// Images are hostile; cp refuses entries that fail this.
func SafeName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}

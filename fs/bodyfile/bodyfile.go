// Package bodyfile writes The Sleuth Kit's body file (the 3.x format fls -m
// writes and mactime reads) for the files of an fs.FileSystem:
//
//	MD5|name|inode|mode_as_string|UID|GID|size|atime|mtime|ctime|crtime
//
// Invariants: every file is exactly one line; '|', newlines, carriage
// returns and NUL in names are escaped, so no name from a hostile image can
// add a field or a record. Times are Unix seconds, 0 where the filesystem
// keeps no such time; the MD5 column is 0.
package bodyfile

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/browse"
)

// Write writes a record for every file under dir (at path p in fsys) in
// browse.Walk order, with prefix put before every path (fls -m's mount
// point, e.g. "C:"; a trailing '/' is dropped). A symlink's name is
// followed by " -> " and its target. The error is browse.Walk's: the
// errors of single entries and subtrees, joined, or the first write error.
func Write(ctx context.Context, w io.Writer, fsys fs.FileSystem, dir fs.Ino, p, prefix string, all bool) error {
	base := strings.TrimSuffix(prefix, "/")
	return browse.Walk(ctx, fsys, dir, p, all, func(p, name string, st fs.Stat) error {
		n := base + p
		if st.Type == fs.TypeSymlink {
			if t, err := fsys.Readlink(ctx, st.Ino); err == nil {
				n += " -> " + t
			}
		}
		_, err := io.WriteString(w, Record(n, st))
		return err
	})
}

// Record is the body-file line (with its newline) of the file named name
// with stat st.
func Record(name string, st fs.Stat) string {
	return fmt.Sprintf("0|%s|%d|%s|%d|%d|%d|%d|%d|%d|%d\n", escape(name), st.Ino, Mode(st),
		st.UID, st.GID, st.Size, unixSec(st.Atime), unixSec(st.Mtime), unixSec(st.Ctime), unixSec(st.Crtime))
}

func unixSec(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

var escaper = strings.NewReplacer("|", `\|`, "\n", `\n`, "\r", `\r`, "\x00", `\0`)

// escape keeps a name on one line and in one field.
func escape(s string) string { return escaper.Replace(s) }

// Mode renders Sleuth Kit's mode string, e.g. "r/rrw-r--r--": the name
// type, then the metadata type and permission bits.
func Mode(st fs.Stat) string {
	c := map[fs.Type]byte{fs.TypeRegular: 'r', fs.TypeDir: 'd', fs.TypeSymlink: 'l', fs.TypeFIFO: 'p',
		fs.TypeCharDev: 'c', fs.TypeBlockDev: 'b', fs.TypeSocket: 'h'}[st.Type]
	if c == 0 {
		c = '-'
	}
	m := []byte(browse.ModeString(st))
	m[0] = c
	return string(c) + "/" + string(m)
}

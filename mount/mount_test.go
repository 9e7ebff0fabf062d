package mount

import (
	"context"
	"fmt"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
)

// TestErrno maps the fs layer's and the repository's errors to the errno a
// FUSE client sees; anything unexpected (a damaged chunk) is EIO.
func TestErrno(t *testing.T) {
	cases := []struct {
		err  error
		want syscall.Errno
	}{
		{nil, 0},
		{fmt.Errorf("lookup: %w", fs.ErrNotExist), syscall.ENOENT},
		{fmt.Errorf("x: %w", fs.ErrNotDir), syscall.ENOTDIR},
		{fs.ErrIsDir, syscall.EISDIR},
		{fmt.Errorf("user.x: %w", fs.ErrNoAttr), syscall.ENODATA},
		{fmt.Errorf("user.big: %w", fs.ErrAttrTooBig), syscall.E2BIG},
		{fs.ErrLoop, syscall.ELOOP},
		{context.Canceled, syscall.EINTR},
		{&repo.ChunkError{RestorePoint: "3fa4b2c1", Disk: "disk0", Offset: 1 << 20, Err: format.ErrCorrupt}, syscall.EIO},
		{fmt.Errorf("ext: %w", fs.ErrCorrupt), syscall.EIO},
		{io.ErrUnexpectedEOF, syscall.EIO},
	}
	for _, c := range cases {
		if got := errno(c.err); got != c.want {
			t.Errorf("errno(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestDirName(t *testing.T) {
	var id format.ID
	id[0], id[1], id[2], id[3] = 0x3f, 0xa4, 0xb2, 0xc1
	rp := &repo.RestorePoint{ID: id, Manifest: &format.Manifest{Time: time.Date(2026, 11, 23, 10, 0, 5, 999, time.FixedZone("CET", 3600))}}
	if got, want := DirName(rp), "2026-11-23T09:00:05Z_"+id.Short(); got != want {
		t.Errorf("DirName = %q, want %q", got, want)
	}
}

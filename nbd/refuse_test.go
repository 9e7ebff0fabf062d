package nbd

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/vmvault/vmvault/nbd/proto"
)

// TestRefusedWrites: a refused WRITE is answered before its payload
// arrives, and the payload is then skipped so the stream stays in step; a
// WRITE longer than the maximum block size gets its error and the
// connection is closed without the server waiting for (up to 4 GiB of)
// payload.
func TestRefusedWrites(t *testing.T) {
	cases := []struct {
		name     string
		writable bool
		off      uint64
		length   uint32
		want     uint32
		closes   bool
	}{
		{"read-only, 1 MiB", false, 0, 1 << 20, proto.EPERM, false},
		{"read-only, the maximum", false, 0, MaxBlockSize, proto.EPERM, false},
		{"writable, past the end", true, 1 << 21, 1 << 20, proto.ENOSPC, false},
		{"read-only, 4 GiB header", false, 0, 0xffffffff, proto.EINVAL, true},
		{"read-only, one byte too many", false, 0, MaxBlockSize + 1, proto.EINVAL, true},
		{"writable, 4 GiB header", true, 0, 0xffffffff, proto.EINVAL, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := ""
			if c.writable {
				dir = t.TempDir()
			}
			f := newFixture(t, dir)
			tc := dialTest(t, f.sock)
			tc.goExport(f.name(), false)
			cookie := tc.send(proto.CmdWrite, 0, c.off, c.length, nil) // the header alone
			tc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			ch := tc.reply(0)
			if ch.cookie != cookie || ch.errno != c.want {
				t.Fatalf("reply cookie %d errno %d, want %d %d", ch.cookie, ch.errno, cookie, c.want)
			}
			if c.closes {
				var b [1]byte
				if _, err := tc.r.Read(b[:]); !errors.Is(err, io.EOF) {
					t.Fatalf("connection still open after an oversize write header: %v", err)
				}
				return
			}
			tc.write(make([]byte, c.length)) // the payload, skipped by the server
			if b, e, _ := tc.readAt(1000, 100, 0); e != 0 || !bytes.Equal(b, f.img[1000:1100]) {
				t.Fatalf("after the refused write: read errno %d", e)
			}
		})
	}
}

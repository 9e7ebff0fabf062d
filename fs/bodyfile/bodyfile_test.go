package bodyfile

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/fstest"
)

func TestRecord(t *testing.T) {
	at := time.Unix(1700000000, 999999999)
	cases := []struct {
		name string
		st   fs.Stat
		want string
	}{
		{"/hello.txt", fs.Stat{Ino: 12, Type: fs.TypeRegular, Mode: 0o644, UID: 1000, GID: 100, Size: 6, Atime: at, Mtime: at.Add(time.Second), Ctime: at, Crtime: at},
			"0|/hello.txt|12|r/rrw-r--r--|1000|100|6|1700000000|1700000001|1700000000|1700000000\n"},
		// times the filesystem does not keep are 0
		{"/d", fs.Stat{Ino: 2, Type: fs.TypeDir, Mode: 0o1777, Mtime: at},
			"0|/d|2|d/drwxrwxrwt|0|0|0|0|1700000000|0|0\n"},
		{"/l -> t", fs.Stat{Ino: 3, Type: fs.TypeSymlink, Mode: 0o777}, "0|/l -> t|3|l/lrwxrwxrwx|0|0|0|0|0|0|0\n"},
		{"/p", fs.Stat{Ino: 4, Type: fs.TypeFIFO, Mode: 0o600}, "0|/p|4|p/prw-------|0|0|0|0|0|0|0\n"},
		{"/c", fs.Stat{Ino: 5, Type: fs.TypeCharDev, Mode: 0o620}, "0|/c|5|c/crw--w----|0|0|0|0|0|0|0\n"},
		{"/b", fs.Stat{Ino: 6, Type: fs.TypeBlockDev, Mode: 0o660}, "0|/b|6|b/brw-rw----|0|0|0|0|0|0|0\n"},
		{"/s", fs.Stat{Ino: 7, Type: fs.TypeSocket, Mode: 0o755}, "0|/s|7|h/hrwxr-xr-x|0|0|0|0|0|0|0\n"},
		{"/u", fs.Stat{Ino: 8, Type: fs.TypeUnknown, Mode: 0o4755}, "0|/u|8|-/-rwsr-xr-x|0|0|0|0|0|0|0\n"},
		// hostile names stay in one field of one line
		{"/a|b\nc\rd\x00e", fs.Stat{Ino: 9, Type: fs.TypeRegular, Mode: 0o644}, `0|/a\|b\nc\rd\0e|9|r/rrw-r--r--|0|0|0|0|0|0|0` + "\n"},
	}
	for _, c := range cases {
		if got := Record(c.name, c.st); got != c.want {
			t.Errorf("Record(%q)\n got %q\nwant %q", c.name, got, c.want)
		}
	}
}

func TestWrite(t *testing.T) {
	m := fstest.NewMemFS()
	root := m.Root()
	d := m.Dir(root, "dir", 0o755)
	f := m.File(d, "a|b", 0o644, []byte("abc"))
	l := m.Symlink(root, "link", "dir/a|b")
	m.Link(root, "dangling", 999)
	var sb strings.Builder
	err := Write(context.Background(), &sb, m, root, "/", "C:/", false)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v does not report the dangling entry", err)
	}
	mt := strconv.FormatInt(fstest.MemTime.Unix(), 10)
	want := Record("C:/dir", must(m.Stat(context.Background(), d))) +
		Record(`C:/dir/a|b`, must(m.Stat(context.Background(), f))) +
		Record(`C:/link -> dir/a|b`, must(m.Stat(context.Background(), l)))
	if sb.String() != want {
		t.Errorf("body file\n got %q\nwant %q", sb.String(), want)
	}
	if n := strings.Count(sb.String(), "\n"); n != 3 || !strings.Contains(sb.String(), `|C:/dir/a\|b|`) || !strings.Contains(sb.String(), "|"+mt+"|") {
		t.Errorf("body file has %d lines or lacks the escaped name or mtime:\n%s", n, sb.String())
	}
}

func must(st fs.Stat, err error) fs.Stat {
	if err != nil {
		panic(err)
	}
	return st
}

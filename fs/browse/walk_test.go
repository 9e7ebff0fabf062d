package browse

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/fstest"
)

// hostileTree is a filesystem with hidden metadata, a directory linked
// into itself and an entry whose inode does not exist:
//
//	/$MFT (hidden)  /a/  /a/bad (dangling)  /a/hidden (hidden)
//	/a/loop -> /a (the same directory)  /a/x.txt  /b.txt
func hostileTree() *fstest.MemFS {
	m := fstest.NewMemFS()
	root := m.Root()
	m.File(root, "$MFT", 0o444, nil)
	m.Hide(root, "$MFT")
	a := m.Dir(root, "a", 0o755)
	m.Link(a, "bad", 999)
	m.File(a, "hidden", 0o644, nil)
	m.Hide(a, "hidden")
	m.Link(a, "loop", a)
	m.File(a, "x.txt", 0o644, []byte("x"))
	m.File(root, "b.txt", 0o644, []byte("b"))
	return m
}

func TestWalk(t *testing.T) {
	cases := []struct {
		name    string
		all     bool
		stopAt  string // fn returns stopErr here
		stopErr error
		want    string // paths visited
		wantErr []error
	}{
		{name: "default", want: "/a /a/loop /a/x.txt /b.txt", wantErr: []error{fs.ErrCorrupt, fs.ErrNotExist}},
		{name: "all", all: true, want: "/$MFT /a /a/hidden /a/loop /a/x.txt /b.txt", wantErr: []error{fs.ErrCorrupt, fs.ErrNotExist}},
		// an error from fn ends its directory; the walk goes on above it
		{name: "fn error", stopAt: "/a/loop", stopErr: errors.New("stop"), want: "/a /a/loop /b.txt"},
		// cancellation ends the whole walk
		{name: "cancel", stopAt: "/a/loop", stopErr: context.Canceled, want: "/a /a/loop", wantErr: []error{context.Canceled}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := hostileTree()
			var got []string
			err := Walk(context.Background(), m, m.Root(), "/", c.all, func(p, name string, st fs.Stat) error {
				got = append(got, p)
				if !strings.HasSuffix(p, "/"+name) {
					t.Errorf("path %q does not end in name %q", p, name)
				}
				if p == c.stopAt {
					return c.stopErr
				}
				return nil
			})
			if s := strings.Join(got, " "); s != c.want {
				t.Errorf("visited %s, want %s", s, c.want)
			}
			wantErr := c.wantErr
			if c.stopErr != nil {
				wantErr = append(wantErr, c.stopErr)
			}
			for _, w := range wantErr {
				if !errors.Is(err, w) {
					t.Errorf("error %v does not wrap %v", err, w)
				}
			}
			if len(wantErr) == 0 && err != nil {
				t.Errorf("error %v", err)
			}
			if errors.Is(err, fs.ErrCorrupt) && !strings.Contains(err.Error(), "/a/loop: directory already visited") {
				t.Errorf("cycle error does not name /a/loop: %v", err)
			}
			if errors.Is(err, fs.ErrNotExist) && !strings.Contains(err.Error(), "/a/bad: ") {
				t.Errorf("stat error does not name /a/bad: %v", err)
			}
		})
	}
}

func TestReadDirStat(t *testing.T) {
	m := hostileTree()
	a, err := m.Lookup(context.Background(), m.Root(), "a")
	if err != nil {
		t.Fatal(err)
	}
	for _, all := range []bool{false, true} {
		ents, err := ReadDirStat(context.Background(), m, a, "/a", all)
		var got []string
		for _, e := range ents {
			got = append(got, e.Path+"="+e.Name)
		}
		want := "/a/loop=loop /a/x.txt=x.txt"
		if all {
			want = "/a/hidden=hidden " + want
		}
		if s := strings.Join(got, " "); s != want {
			t.Errorf("all=%v: %s, want %s", all, s, want)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("all=%v: error %v does not report /a/bad", all, err)
		}
	}
}

func TestModeString(t *testing.T) {
	cases := []struct {
		typ  fs.Type
		mode uint32
		want string
	}{
		{fs.TypeRegular, 0o644, "-rw-r--r--"},
		{fs.TypeDir, 0o755, "drwxr-xr-x"},
		{fs.TypeDir, 0o1777, "drwxrwxrwt"},
		{fs.TypeDir, 0o1770, "drwxrwx--T"},
		{fs.TypeRegular, 0o4755, "-rwsr-xr-x"},
		{fs.TypeRegular, 0o4644, "-rwSr--r--"},
		{fs.TypeDir, 0o2750, "drwxr-s---"},
		{fs.TypeDir, 0o2700, "drwx--S---"},
		{fs.TypeSymlink, 0o777, "lrwxrwxrwx"},
		{fs.TypeCharDev, 0o600, "crw-------"},
		{fs.TypeBlockDev, 0o660, "brw-rw----"},
		{fs.TypeFIFO, 0o644, "prw-r--r--"},
		{fs.TypeSocket, 0o755, "srwxr-xr-x"},
		{fs.TypeUnknown, 0o000, "----------"},
	}
	for _, c := range cases {
		if got := ModeString(fs.Stat{Type: c.typ, Mode: c.mode}); got != c.want {
			t.Errorf("ModeString(%s %04o) = %s, want %s", c.typ, c.mode, got, c.want)
		}
	}
}

// TestEntryJSON pins the JSON record of ls --json and find --json.
func TestEntryJSON(t *testing.T) {
	m := fstest.NewMemFS()
	l := m.Symlink(m.Root(), "l", "../target")
	ct := time.Date(2026, 11, 24, 1, 2, 3, 0, time.FixedZone("x", 3600))
	m.SetStat(l, func(st *fs.Stat) { st.UID, st.GID, st.Ctime = 1000, 100, ct; st.Atime = time.Time{} })
	f := m.File(m.Root(), "f", 0o4755, []byte("hello"))
	ctx := context.Background()
	cases := []struct {
		ino  fs.Ino
		want string
	}{
		{l, fmt.Sprintf(`{"path":"/l","type":"symlink","size":9,"mode":"0777","uid":1000,"gid":100,"mtime":"2026-11-23T10:00:00.123456789Z","ctime":"2026-11-24T00:02:03Z","inode":%d,"nlink":1,"target":"../target"}`, l)},
		{f, fmt.Sprintf(`{"path":"/f","type":"file","size":5,"mode":"4755","uid":0,"gid":0,"mtime":"2026-11-23T10:00:00.123456789Z","atime":"2026-11-23T10:00:00.123456789Z","inode":%d,"nlink":1}`, f)},
	}
	for _, c := range cases {
		st, err := m.Stat(ctx, c.ino)
		if err != nil {
			t.Fatal(err)
		}
		e := NewEntry(ctx, m, "/"+map[fs.Ino]string{l: "l", f: "f"}[c.ino], "name", st)
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != c.want {
			t.Errorf("JSON\n got %s\nwant %s", b, c.want)
		}
		if e.Name != "name" || e.Stat != st {
			t.Errorf("entry keeps name %q and stat %+v", e.Name, e.Stat)
		}
	}
}

func TestQuoteName(t *testing.T) {
	cases := []struct{ in, want string }{
		{"plain name.txt", "plain name.txt"},
		{"ünïcødé", "ünïcødé"},
		{"n\x00l", `n\x00l`},
		{"line\nbreak", `line\nbreak`},
		{"esc\x1b[31m", `esc\x1b[31m`},
		{"del\x7f", `del\x7f`},
		{"bad\xffutf8", `bad\xffutf8`},
		{`quote"d`, `quote"d`},
	}
	for _, c := range cases {
		if got := QuoteName(c.in); got != c.want {
			t.Errorf("QuoteName(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

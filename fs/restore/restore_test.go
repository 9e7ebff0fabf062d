package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/fstest"
	"github.com/vmvault/vmvault/repo/extent"
)

// files lists everything under dir (relative paths, sorted), with "@" after
// symlinks.
func files(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if fi.Mode()&os.ModeSymlink != 0 {
			rel += "@"
		}
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

func copyAll(t *testing.T, m *fstest.MemFS, dir, rel string, opts Options) []error {
	t.Helper()
	r, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	st, err := m.Stat(context.Background(), m.Root())
	if err != nil {
		t.Fatal(err)
	}
	return r.Copy(context.Background(), m, m.Root(), st, rel, "img:p1/")
}

func errText(errs []error) string {
	var s []string
	for _, e := range errs {
		s = append(s, e.Error())
	}
	return strings.Join(s, "\n")
}

// TestCopyRefusesHostileNames copies trees holding one entry with a name
// that would leave the destination: it is refused by name, everything
// else is copied, nothing is written outside.
func TestCopyRefusesHostileNames(t *testing.T) {
	cases := []struct {
		name   string
		quoted string
		dir    bool // the hostile entry is a directory with a file in it
	}{
		{"..", "..", false},
		{"..", "..", true},
		{".", ".", true},
		{"../escape", "../escape", false},
		{"../../escape", "../../escape", true},
		{"/abs", "/abs", false},
		{"a/b", "a/b", true},
		{"n\x00l", `n\x00l`, false},
		{"", "", false},
	}
	for _, c := range cases {
		t.Run(c.quoted, func(t *testing.T) {
			m := fstest.NewMemFS()
			sub := m.Dir(m.Root(), "sub", 0o755)
			m.File(sub, "good.txt", 0o644, []byte("good"))
			if c.dir {
				d := m.Dir(sub, c.name, 0o755)
				m.File(d, "escape", 0o644, []byte("evil"))
			} else {
				m.File(sub, c.name, 0o644, []byte("evil"))
			}
			work := t.TempDir()
			in := filepath.Join(work, "a", "b")
			if err := os.MkdirAll(in, 0o755); err != nil {
				t.Fatal(err)
			}
			errs := copyAll(t, m, in, "dest", Options{})
			want := "img:p1/sub/" + c.quoted + ": refusing a name that contains '/' or NUL or is '.' or '..'"
			if len(errs) != 1 || !strings.HasPrefix(errs[0].Error(), want) {
				t.Errorf("errors:\n%s\nwant one starting %q", errText(errs), want)
			}
			if got := files(t, work); got != ". a a/b a/b/dest a/b/dest/sub a/b/dest/sub/good.txt" {
				t.Errorf("files after the copy: %s", got)
			}
		})
	}
	// the name of the copy itself is checked too
	for _, rel := range []string{"..", ".", "a/b", "", "x\x00"} {
		m := fstest.NewMemFS()
		m.File(m.Root(), "f", 0o644, nil)
		work := t.TempDir()
		errs := copyAll(t, m, work, rel, Options{})
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), "refusing to create") {
			t.Errorf("Copy to %q: %s", rel, errText(errs))
		}
		if got := files(t, work); got != "." {
			t.Errorf("Copy to %q wrote %s", rel, got)
		}
	}
}

// TestCopySymlinksStayInside: symlinks from the image or already in the
// destination are never followed out of it, by the copy of a directory, a
// file, or the metadata of a link.
func TestCopySymlinksStayInside(t *testing.T) {
	old := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		// build fills the image; outside is a host directory beside DEST
		// that holds the file "victim"
		build     func(m *fstest.MemFS, outside string)
		existing  map[string]string // symlinks in DEST before the copy: name -> target (outside-relative)
		overwrite bool
		wantErr   string // in the only error, "" for none
		wantFiles string
	}{
		{
			name: "image symlink then a directory of the same name",
			build: func(m *fstest.MemFS, outside string) {
				m.Symlink(m.Root(), "esc", outside)
				d := m.Dir(m.Root(), "esc", 0o755)
				m.File(d, "pwned", 0o644, []byte("evil"))
			},
			wantErr:   "esc exists and is not a directory",
			wantFiles: ". esc@",
		},
		{
			name: "image symlink then a file of the same name",
			build: func(m *fstest.MemFS, outside string) {
				m.Symlink(m.Root(), "x", filepath.Join(outside, "victim"))
				m.File(m.Root(), "x", 0o644, []byte("evil"))
			},
			wantErr:   "x exists (use --overwrite)",
			wantFiles: ". x@",
		},
		{
			name: "image symlink replaced by a file with overwrite",
			build: func(m *fstest.MemFS, outside string) {
				m.Symlink(m.Root(), "x", filepath.Join(outside, "victim"))
				m.File(m.Root(), "x", 0o644, []byte("evil"))
			},
			overwrite: true,
			wantFiles: ". x",
		},
		{
			name: "image symlink then a FIFO of the same name, with overwrite",
			build: func(m *fstest.MemFS, outside string) {
				m.Symlink(m.Root(), "x", filepath.Join(outside, "victim"))
				m.Special(m.Root(), "x", fs.TypeFIFO, 0o644, 0)
			},
			overwrite: true,
			wantFiles: ". x",
		},
		{
			name: "destination symlink where the image has a directory",
			build: func(m *fstest.MemFS, outside string) {
				d := m.Dir(m.Root(), "sub", 0o755)
				m.File(d, "f", 0o644, []byte("evil"))
				m.Special(d, "fifo", fs.TypeFIFO, 0o644, 0)
			},
			existing:  map[string]string{"sub": "."},
			overwrite: true,
			wantErr:   "sub exists and is not a directory",
			wantFiles: ". sub@",
		},
		{
			name: "destination symlink where the image has a file",
			build: func(m *fstest.MemFS, outside string) {
				m.File(m.Root(), "victim", 0o600, []byte("evil"))
			},
			existing:  map[string]string{"victim": "victim"},
			wantErr:   "victim exists (use --overwrite)",
			wantFiles: ". victim@",
		},
		{
			name: "image symlink to the outside with old times and a mode",
			build: func(m *fstest.MemFS, outside string) {
				l := m.Symlink(m.Root(), "l", filepath.Join(outside, "victim"))
				m.SetStat(l, func(st *fs.Stat) { st.Mtime, st.Atime, st.Mode, st.UID = old, old, 0o7000, 4242 })
			},
			wantFiles: ". l@",
		},
		{
			name: "hard-linked symlink to the outside",
			build: func(m *fstest.MemFS, outside string) {
				l := m.Symlink(m.Root(), "l1", filepath.Join(outside, "victim"))
				m.Link(m.Root(), "l2", l)
			},
			wantFiles: ". l1@ l2@",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			work := t.TempDir()
			outside, dest := filepath.Join(work, "outside"), filepath.Join(work, "dest")
			for _, d := range []string{outside, dest} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			victim := filepath.Join(outside, "victim")
			if err := os.WriteFile(victim, []byte("keep"), 0o640); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(victim, time.Time{}, time.Unix(1e9, 0)); err != nil {
				t.Fatal(err)
			}
			// the image's root is copied to DEST/tree, merging into the
			// directory that holds the existing symlinks
			tree := filepath.Join(dest, "tree")
			if err := os.Mkdir(tree, 0o755); err != nil {
				t.Fatal(err)
			}
			for name, target := range c.existing {
				if err := os.Symlink(filepath.Join(outside, target), filepath.Join(tree, name)); err != nil {
					t.Fatal(err)
				}
			}
			m := fstest.NewMemFS()
			c.build(m, outside)
			errs := copyAll(t, m, dest, "tree", Options{Overwrite: c.overwrite, Privileged: os.Geteuid() == 0})
			switch {
			case c.wantErr == "" && len(errs) > 0:
				t.Errorf("errors:\n%s", errText(errs))
			case c.wantErr != "" && (len(errs) != 1 || !strings.Contains(errs[0].Error(), c.wantErr)):
				t.Errorf("errors:\n%s\nwant one with %q", errText(errs), c.wantErr)
			}
			if got := files(t, tree); got != c.wantFiles {
				t.Errorf("DEST/tree holds %s, want %s", got, c.wantFiles)
			}
			if got := files(t, outside); got != ". victim" {
				t.Errorf("outside holds %s", got)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(victim, &st); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(victim)
			if string(b) != "keep" || st.Mode&0o7777 != 0o640 || st.Mtim.Sec != 1e9 || st.Uid != uint32(os.Getuid()) {
				t.Errorf("the file outside was changed: %q mode %o mtime %d uid %d", b, st.Mode&0o7777, st.Mtim.Sec, st.Uid)
			}
		})
	}
}

// TestCopyTree restores a tree with every kind of file and checks content
// and metadata on the host, the errors of the entries that cannot be
// copied, and the progress count.
func TestCopyTree(t *testing.T) {
	for _, privileged := range []bool{false, true} {
		t.Run(fmt.Sprintf("privileged=%v", privileged), func(t *testing.T) {
			if privileged {
				fstest.NeedRoot(t)
			}
			testCopyTree(t, privileged)
		})
	}
}

func testCopyTree(t *testing.T, privileged bool) {
	mt := time.Date(2023, 11, 15, 22, 13, 20, 123456789, time.UTC)
	at := mt.Add(time.Hour)
	m := fstest.NewMemFS()
	root := m.Root()
	set := func(ino fs.Ino, fn func(*fs.Stat)) fs.Ino { m.SetStat(ino, fn); return ino }
	times := func(st *fs.Stat) { st.Mtime, st.Atime = mt, at }

	dir := set(m.Dir(root, "dir", 0o750), times)
	set(m.File(dir, "suid", 0o4755, []byte("#!/bin/sh\n")), times)
	set(m.File(root, "owned", 0o640, []byte("o")), func(st *fs.Stat) { st.UID, st.GID = 1234, 5678 })
	hard := m.File(root, "hard-a", 0o600, []byte("linked"))
	m.Link(dir, "hard-b", hard)
	const size = 3<<20 + 5
	data := []extent.Range{{Offset: 1 << 20, Length: 4096}, {Offset: 3 << 20, Length: 5}}
	m.SparseFile(root, "sparse", 0o644, size, data, 0xab)
	big := make([]byte, 2<<20+1)
	for i := range big {
		big[i] = byte(i * 7)
	}
	m.File(root, "big", 0o644, big)
	m.Symlink(root, "link", "dir/suid")
	m.Special(root, "fifo", fs.TypeFIFO, 0o620, 0)
	m.Special(root, "null", fs.TypeCharDev, 0o666, 1<<8|3)
	m.Special(root, "sock", fs.TypeSocket, 0o755, 0)
	m.Link(dir, "loop", dir)
	m.Link(root, "gone", 999)
	broken := m.File(root, "broken", 0o644, []byte("cannot be read"))
	m.FailReads(broken, errors.New("chunk 7 is damaged"))
	m.File(root, "$Secret", 0o644, []byte("hidden"))
	m.Hide(root, "$Secret")

	ctx := context.Background()
	rst, _ := m.Stat(ctx, root)
	total := TreeSize(ctx, m, root, rst, false)
	if want := int64(10 + 1 + 6 + size + len(big) + 14); total != want { // hard-a once
		t.Errorf("TreeSize = %d, want %d", total, want)
	}
	var done atomic.Int64
	dest := t.TempDir()
	errs := copyAll(t, m, dest, "out", Options{Privileged: privileged, Progress: &done})
	out := filepath.Join(dest, "out")
	lstat := func(name string) syscall.Stat_t {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(out, name), &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	// times, nanoseconds included, the directory's set after its content;
	// checked before anything reads them (and changes their atime)
	for _, name := range []string{"dir", "dir/suid"} {
		st := lstat(name)
		if !time.Unix(st.Mtim.Unix()).Equal(mt) || !time.Unix(st.Atim.Unix()).Equal(at) {
			t.Errorf("%s: mtime %v atime %v, want %v %v", name, time.Unix(st.Mtim.Unix()).UTC(), time.Unix(st.Atim.Unix()).UTC(), mt, at)
		}
	}

	wantErrs := []string{
		"img:p1/broken: read at offset 0: chunk 7 is damaged",
		"img:p1/dir/loop: directory already copied (a cycle in the image)",
		"img:p1/gone: ",
		"img:p1/sock: socket files are not copied",
	}
	if !privileged {
		wantErrs = append(wantErrs, "img:p1/null: device node skipped: creating it needs root")
	}
	sort.Strings(wantErrs)
	got := errText(errs)
	gotErrs := strings.Split(got, "\n")
	sort.Strings(gotErrs)
	if len(gotErrs) != len(wantErrs) {
		t.Errorf("errors:\n%s\nwant:\n%s", got, strings.Join(wantErrs, "\n"))
	} else {
		for i := range wantErrs {
			if !strings.HasPrefix(gotErrs[i], wantErrs[i]) {
				t.Errorf("error %q, want %q…", gotErrs[i], wantErrs[i])
			}
		}
	}
	if n := done.Load(); n != total-14 {
		t.Errorf("progress counted %d bytes, want %d (all but the broken file)", n, total-14)
	}
	wantFiles := ". out out/big out/dir out/dir/hard-b out/dir/suid out/fifo out/hard-a out/link@ out/owned out/sparse"
	if privileged {
		wantFiles = ". out out/big out/dir out/dir/hard-b out/dir/suid out/fifo out/hard-a out/link@ out/null out/owned out/sparse"
	}
	if got := files(t, dest); got != wantFiles {
		t.Errorf("files:\n got %s\nwant %s", got, wantFiles)
	}

	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if read("dir/suid") != "#!/bin/sh\n" || read("big") != string(big) || read("hard-a") != "linked" {
		t.Error("content differs")
	}
	for _, c := range []struct {
		name string
		mode uint32
	}{{"dir", syscall.S_IFDIR | 0o750}, {"dir/suid", syscall.S_IFREG | 0o4755}, {"fifo", syscall.S_IFIFO | 0o620}, {"owned", syscall.S_IFREG | 0o640}} {
		if st := lstat(c.name); st.Mode != c.mode {
			t.Errorf("%s: mode %o, want %o", c.name, st.Mode, c.mode)
		}
	}
	if a, b := lstat("hard-a"), lstat("dir/hard-b"); a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hard links not kept: inodes %d %d, %d links", a.Ino, b.Ino, a.Nlink)
	}
	if target, err := os.Readlink(filepath.Join(out, "link")); err != nil || target != "dir/suid" {
		t.Errorf("link -> %q, %v", target, err)
	}
	sp := lstat("sparse")
	if sp.Size != size || sp.Blocks*512 > 1<<20 {
		t.Errorf("sparse: size %d, %d bytes allocated (want holes)", sp.Size, sp.Blocks*512)
	}
	want := make([]byte, size)
	for _, e := range data {
		for i := e.Offset; i < e.End(); i++ {
			want[i] = 0xab
		}
	}
	if read("sparse") != string(want) {
		t.Error("sparse content differs")
	}
	if privileged {
		if st := lstat("owned"); st.Uid != 1234 || st.Gid != 5678 {
			t.Errorf("owner %d:%d, want 1234:5678", st.Uid, st.Gid)
		}
		if st := lstat("null"); st.Mode != syscall.S_IFCHR|0o666 || st.Rdev != 1<<8|3 {
			t.Errorf("null: mode %o rdev %#x", st.Mode, st.Rdev)
		}
	}

	// a second copy: existing files are errors, or replaced with Overwrite
	errs = copyAll(t, m, dest, "out", Options{Privileged: privileged})
	if !strings.Contains(errText(errs), "out/big exists (use --overwrite)") {
		t.Errorf("copy over an existing tree:\n%s", errText(errs))
	}
	if err := os.WriteFile(filepath.Join(out, "big"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	errs = copyAll(t, m, dest, "out", Options{Privileged: privileged, Overwrite: true})
	if strings.Contains(errText(errs), "exists") || read("big") != string(big) {
		t.Errorf("copy with Overwrite:\n%s", errText(errs))
	}
	// All includes hidden metadata files
	copyAll(t, m, dest, "out", Options{Privileged: privileged, Overwrite: true, All: true})
	if read("$Secret") != "hidden" {
		t.Error("hidden file not copied with All")
	}
}

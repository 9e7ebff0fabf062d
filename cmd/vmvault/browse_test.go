package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
)

// browseEnv captures the MBR disk image (FAT16 p1, ext4 p5, ext2 p6) and
// the big ext4 image as restore points of one VM.
func browseEnv(t *testing.T) (*env, string) {
	imgs := fstest.Images(t)
	e := newEnv(t)
	e.capture("--vm", "web01", "--disk", "disk0="+filepath.Join(imgs, "mbr.img"), "--disk", "disk1="+filepath.Join(imgs, "ext4.img"))
	return e, imgs
}

func jsonLines[T any](t *testing.T, out string) []T {
	t.Helper()
	var res []T
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		res = append(res, v)
	}
	return res
}

func TestBrowseRestorePoint(t *testing.T) {
	e, imgs := browseEnv(t)

	parts := jsonLines[struct {
		Name, Filesystem, Label string
		Start                   int64
	}](t, e.ok("vmvault", "partitions", "--json", "web01@latest:disk0"))
	var got []string
	for _, p := range parts {
		got = append(got, p.Name+"="+p.Filesystem)
	}
	if strings.Join(got, " ") != "p1=fat16 p2= p5=ext4 p6=ext2" {
		t.Errorf("partitions: %v", got)
	}

	if out := e.ok("vmvault", "cat", "web01@latest:disk0/p6/hostname"); out != "web01\n" {
		t.Errorf("cat p6/hostname = %q", out)
	}
	if out := e.ok("vmvault", "cat", "web01@latest:disk0/p1/Sub Folder/Nested/deep file.txt"); out != "nested\n" {
		t.Errorf("cat FAT file = %q", out)
	}
	// a symlink is followed inside the image, never on the host
	if out := e.ok("vmvault", "cat", "web01@latest:disk1/p0/abs-link"); out != "web01\n" {
		t.Errorf("cat through absolute symlink = %q", out)
	}

	// the 300 MB file, through the restore point, byte for byte
	cmd := exec.Command(filepath.Join(binDir, "vmvault"), "cat", "web01@latest:disk1/p0/big-300M.bin")
	cmd.Env = e.environ()
	big, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-o", "ro,loop", filepath.Join(imgs, "ext4.img"), mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v\n%s", err, out)
	}
	defer exec.Command("umount", mnt).Run()
	if want := fileSHA(t, filepath.Join(mnt, "big-300M.bin")); sha(big) != want {
		t.Error("cat of big-300M.bin differs from the kernel's copy")
	}

	ls := jsonLines[struct {
		Path, Type, Mode, Target string
		Size                     int64
		UID, GID                 uint32
		Inode                    uint64
		Nlink                    uint32
		Mtime                    string
	}](t, e.ok("vmvault", "ls", "--json", "web01@latest:disk1/p0/"))
	byPath := map[string]int{}
	for i, l := range ls {
		byPath[l.Path] = i
	}
	for _, c := range []struct{ path, typ, mode, target string }{
		{"/hello.txt", "file", "4755", ""},
		{"/fast-link", "symlink", "0777", "hello.txt"},
		{"/empty-dir", "dir", "1777", ""},
		{"/fifo", "fifo", "0644", ""},
	} {
		i, ok := byPath[c.path]
		if !ok {
			t.Errorf("ls: no %s in %v", c.path, byPath)
			continue
		}
		if l := ls[i]; l.Type != c.typ || l.Mode != c.mode || l.Target != c.target {
			t.Errorf("ls %s = %+v", c.path, l)
		}
	}
	if l := ls[byPath["/hello.txt"]]; l.Mtime != "2023-11-15T22:13:20Z" {
		t.Errorf("hello.txt mtime %s", l.Mtime)
	}

	// -l of the 5000-entry directory
	long := strings.Split(strings.TrimSpace(e.ok("vmvault", "ls", "-l", "web01@latest:disk1/p0/many")), "\n")
	if len(long) != 5000 || !strings.HasPrefix(long[0], "-rw-r--r--   1     0     0            5 2023-11-14 22:13:20 f0001") {
		t.Errorf("ls -l many: %d lines, first %q", len(long), long[0])
	}

	// find across the restore point's disks, output usable by cat
	hits := strings.Fields(e.ok("vmvault", "find", "web01@all", "--name", "hostname"))
	sort.Strings(hits)
	for _, h := range hits {
		if out := e.ok("vmvault", "cat", h); out != "web01\n" {
			t.Errorf("cat %s = %q", h, out)
		}
	}
	if len(hits) != 2 {
		t.Errorf("find --name hostname: %v", hits)
	}
}

// TestCpHostileNames restores a crafted image whose entries are named
// "../escape", "/abs", "a/b" and "n\x00l": each is refused by name, the
// rest is restored, and nothing is written outside DEST.
func TestCpHostileNames(t *testing.T) {
	imgs := fstest.Images(t)
	e := newEnv(t)
	work := t.TempDir()
	dest := filepath.Join(work, "dest")
	out, errs, code := e.run("vmvault", "cp", "--image", filepath.Join(imgs, "hostile.img"), "p0/", dest)
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", code, out, errs)
	}
	for _, name := range []string{"../escape", "/abs", "a/b", `n\x00l`} {
		if !strings.Contains(errs, name+": refusing") {
			t.Errorf("no refusal for %q in:\n%s", name, errs)
		}
	}
	var files []string
	filepath.Walk(work, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			rel, _ := filepath.Rel(work, p)
			files = append(files, rel)
		}
		return nil
	})
	sort.Strings(files)
	if got := strings.Join(files, " "); got != ". dest dest/good.txt dest/lost+found dest/sub" {
		t.Errorf("files after cp: %s", got)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(work), "escape")); err == nil {
		t.Error("escape was written outside the destination")
	}
}

// TestCpTree restores the ext2 tree from a restore point and compares it
// with the source tree the image was built from: content, modes, times,
// symlinks, hard links, sparseness.
func TestCpTree(t *testing.T) {
	imgs := fstest.Images(t)
	e := newEnv(t)
	e.capture("--vm", "db01", "--disk", "disk0="+filepath.Join(imgs, "ext2.img"))
	dest := filepath.Join(t.TempDir(), "restored")
	e.ok("vmvault", "cp", "db01@latest:disk0/p0/", dest)
	out, err := exec.Command("diff", "-r", "--no-dereference", "-x", "lost+found", "-x", "tri.bin", "-x", "fifo", filepath.Join(imgs, "src"), dest).CombinedOutput()
	if err != nil {
		t.Errorf("diff: %v\n%s", err, out)
	}
	if fi, err := os.Lstat(filepath.Join(dest, "fifo")); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("fifo not restored as a FIFO: %v", err)
	}
	var a, b syscall.Stat_t
	for _, name := range []string{"hello.txt", "etc/hostname", "sparse.bin", "fast-link", "empty-dir"} {
		if err := syscall.Lstat(filepath.Join(imgs, "src", name), &a); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Lstat(filepath.Join(dest, name), &b); err != nil {
			t.Fatal(err)
		}
		if a.Mode != b.Mode || a.Uid != b.Uid || a.Gid != b.Gid || a.Mtim != b.Mtim || a.Size != b.Size {
			t.Errorf("%s: restored mode %o uid %d gid %d mtime %v size %d; source %o %d %d %v %d",
				name, b.Mode, b.Uid, b.Gid, b.Mtim, b.Size, a.Mode, a.Uid, a.Gid, a.Mtim, a.Size)
		}
	}
	if err := syscall.Stat(filepath.Join(dest, "sparse.bin"), &b); err != nil || b.Blocks*512 > 1<<20 {
		t.Errorf("sparse.bin restored with %d blocks (not sparse)", b.Blocks)
	}
	var h1, h2 syscall.Stat_t
	syscall.Stat(filepath.Join(dest, "hard-a"), &h1)
	syscall.Stat(filepath.Join(dest, "hard-b"), &h2)
	if h1.Ino != h2.Ino || h1.Nlink != 2 {
		t.Errorf("hard links not kept: %d/%d links %d", h1.Ino, h2.Ino, h1.Nlink)
	}
	// timeline: one bodyfile line per file, readable by mactime
	body := e.ok("vmvault", "timeline", "db01@latest:disk0/p0")
	if n := strings.Count(body, "\n"); n != 5043 {
		t.Errorf("timeline has %d lines", n)
	}
	if !strings.Contains(body, "0|/hello.txt|") {
		t.Errorf("timeline lacks hello.txt")
	}
	fstest.NeedTools(t, "mactime")
	bf := filepath.Join(t.TempDir(), "body")
	os.WriteFile(bf, []byte(body), 0o600)
	tl, err := exec.Command("mactime", "-b", bf, "-z", "UTC").CombinedOutput()
	if err != nil || !strings.Contains(string(tl), "Wed Nov 15 2023 22:13:20") || !strings.Contains(string(tl), "/hello.txt") {
		t.Errorf("mactime: %v\n%.2000s", err, tl)
	}
}

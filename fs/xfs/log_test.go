package xfs

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
	"github.com/vmvault/vmvault/repo/extent"
)

// TestLogClean checks LogClean against states the kernel leaves an XFS
// log in, on a log in its first pass and on a small one that wrapped
// twice: fresh from mkfs, a copy taken while mounted with changes logged
// (needs replaying), a copy of a frozen filesystem (its log is covered:
// xfs_logprint calls it dirty, but what a replay would write is the
// superblock alone, and the free-space map read from it equals the one
// after the kernel replayed it), one after unmount (clean), and the dirty
// copy after the kernel replayed it (clean). xfs_logprint's verdict is the
// oracle for the others. Allocated refuses what LogClean refuses.
func TestLogClean(t *testing.T) {
	fstest.NeedRoot(t)
	fstest.NeedTools(t, "mkfs.xfs", "xfs_freeze", "xfs_logprint", "mount", "umount")
	t.Run("first-pass", func(t *testing.T) { logStates(t, 512<<20, 0) })
	// mkfs.xfs makes logs below 64 MiB only when told --unsupported (the
	// kernel mounts them: older mkfs made them).
	t.Run("wrapped", func(t *testing.T) { logStates(t, 320<<20, 3, "--unsupported", "-l", "size=1368b") })
}

// logStates runs TestLogClean's states; with minCycle > 0 the log is
// written until it is in that pass.
func logStates(t *testing.T, size int64, minCycle uint32, mkfsArgs ...string) {
	dir := t.TempDir()
	img := filepath.Join(dir, "xfs.img")
	mkfsXFS(t, img, size, mkfsArgs...)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	mounted := ""
	unmount := func() {
		if mounted != "" {
			runCmd(t, "umount", mounted)
			mounted = ""
		}
	}
	t.Cleanup(unmount)
	mountIt := func(p string) {
		runCmd(t, "mount", "-o", "loop,nouuid", p, mnt)
		mounted = mnt
	}
	copyImage := func(from, name string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, mustRead(t, from), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write := func(sub string, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			p := filepath.Join(mnt, sub, strings.Repeat("f", 1+i%40)+string(rune('a'+i%26)))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(strings.Repeat("x", 5000*(i%7+1))), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		runCmd(t, "sync")
	}
	open := func(p string) *FS {
		t.Helper()
		b := mustRead(t, p)
		fsys, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		return fsys
	}
	cycle := func() uint32 {
		f := open(img)
		lin, _ := f.fsbToLinear(f.logStart, f.logBlocks)
		l := &xlog{f: f, base: int64(lin) * f.blockSize, n: int64(f.logBlocks) * f.blockSize / bbSize, head: -1}
		if err := l.scan(context.Background()); err != nil {
			return 0 // torn while being written: look again later
		}
		return l.cycle
	}

	fresh := copyImage(img, "fresh.img")
	mountIt(img)
	for i := 0; minCycle > 0 && cycle() < minCycle; i++ {
		if i == 400 {
			t.Fatalf("the log is in pass %d after %d rounds of writes", cycle(), i)
		}
		write("churn", 200)
		if err := os.RemoveAll(filepath.Join(mnt, "churn")); err != nil {
			t.Fatal(err)
		}
	}
	write("d", 300)
	dirty := copyImage(img, "dirty.img") // taken with the filesystem mounted: the log holds the writes
	runCmd(t, "xfs_freeze", "-f", mnt)
	frozen := copyImage(img, "frozen.img")
	runCmd(t, "xfs_freeze", "-u", mnt)
	write("e", 50)
	unmount()
	unmounted := copyImage(img, "unmounted.img")

	// The kernel replays a copy's log when it mounts it.
	replay := func(from, name string) string {
		p := copyImage(from, name)
		mountIt(p)
		unmount()
		return p
	}
	replayed, frozenReplayed := replay(dirty, "replayed.img"), replay(frozen, "frozen-replayed.img")

	for _, c := range []struct {
		path    string
		clean   bool
		covered bool // xfs_logprint: dirty
	}{
		{fresh, true, false},
		{dirty, false, false},
		{frozen, true, true},
		{unmounted, true, false},
		{replayed, true, false},
	} {
		t.Run(filepath.Base(c.path), func(t *testing.T) {
			// xfs_logprint -t names the state of the log it finds.
			lp, _ := exec.Command("xfs_logprint", "-t", c.path).CombinedOutput()
			if oracleClean := strings.Contains(string(lp), "state: <CLEAN>"); oracleClean != (c.clean && !c.covered) {
				t.Errorf("xfs_logprint disagrees with the expectation (clean=%v):\n%s", c.clean, lp)
			}
			fsys := open(c.path)
			err := fsys.LogClean(context.Background())
			if (err == nil) != c.clean {
				t.Errorf("LogClean = %v, want clean=%v", err, c.clean)
			}
			if _, aerr := fsys.Allocated(context.Background()); (aerr == nil) != c.clean {
				t.Errorf("Allocated error = %v, want clean=%v", aerr, c.clean)
			}
		})
	}
	t.Logf("the log is in pass %d", cycle())
	a, err := open(frozen).Allocated(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := open(frozenReplayed).Allocated(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("the frozen copy's free space differs after the kernel replayed its log: %d vs %d allocated bytes", extent.Sum(a), extent.Sum(b))
	}
}

// TestLogCleanDamaged: a clean log changed in ways a crash or damage could
// leave it is never called clean.
func TestLogCleanDamaged(t *testing.T) {
	fstest.NeedTools(t, "mkfs.xfs")
	img := filepath.Join(t.TempDir(), "xfs.img")
	mkfsXFS(t, img, 320<<20)
	orig := mustRead(t, img)
	open := func(b []byte) *FS {
		t.Helper()
		fsys, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		return fsys
	}
	f0 := open(orig)
	if err := f0.LogClean(context.Background()); err != nil {
		t.Fatalf("fresh filesystem: %v", err)
	}
	lin, err := f0.fsbToLinear(f0.logStart, f0.logBlocks)
	if err != nil {
		t.Fatal(err)
	}
	logOff := int64(lin) * f0.blockSize
	for _, c := range []struct {
		name string
		edit func(b []byte)
	}{
		{"unmount flag cleared", func(b []byte) { b[logOff+bbSize+9] &^= opUnmount }},
		{"two operations", func(b []byte) { binary.BigEndian.PutUint32(b[logOff+40:], 2) }},
		{"record from a newer pass later in the log", func(b []byte) {
			binary.BigEndian.PutUint32(b[logOff+16*bbSize:], 2)
		}},
		{"lsn of another block", func(b []byte) { binary.BigEndian.PutUint32(b[logOff+20:], 7) }},
		{"never written", func(b []byte) { clear(b[logOff : logOff+2*bbSize]) }},
		{"record longer than the written part", func(b []byte) { binary.BigEndian.PutUint32(b[logOff+12:], 1<<20) }},
		{"external log", func(b []byte) { binary.BigEndian.PutUint64(b[48:], 0) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := append([]byte(nil), orig...)
			c.edit(b)
			fsys, err := Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				return // refused outright: never called clean
			}
			if err := fsys.LogClean(context.Background()); err == nil {
				t.Error("called clean")
			} else {
				t.Log(err)
			}
		})
	}
}

// runCmd runs a command and fails the test with its output when it fails.
func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// mkfsXFS makes a sparse file of size bytes at p holding a new XFS.
func mkfsXFS(t *testing.T, p string, size int64, args ...string) {
	t.Helper()
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	runCmd(t, "mkfs.xfs", append(append([]string{"-q", "-f"}, args...), p)...)
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLogCleanGrowfs: right after xfs_growfs adds allocation groups, the
// log may hold a superblock with the new geometry that the superblock on
// disk does not have yet. Whatever LogClean says of a copy taken then,
// a map it allows must equal the map after the kernel replayed the copy.
func TestLogCleanGrowfs(t *testing.T) {
	fstest.NeedRoot(t)
	fstest.NeedTools(t, "mkfs.xfs", "xfs_growfs", "losetup", "mount", "umount")
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "xfs.img"), filepath.Join(dir, "mnt")
	mkfsXFS(t, img, 512<<20)
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	dev := runCmd(t, "losetup", "-f", "--show", img)
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	runCmd(t, "mount", dev, mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	if err := os.Truncate(img, 1<<30); err != nil {
		t.Fatal(err)
	}
	runCmd(t, "losetup", "-c", dev)
	runCmd(t, "xfs_growfs", mnt)
	grown := filepath.Join(dir, "grown.img")
	if err := os.WriteFile(grown, mustRead(t, img), 0o600); err != nil {
		t.Fatal(err)
	}
	replayed := filepath.Join(dir, "replayed.img")
	if err := os.WriteFile(replayed, mustRead(t, grown), 0o600); err != nil {
		t.Fatal(err)
	}
	m2 := filepath.Join(dir, "m2")
	if err := os.Mkdir(m2, 0o755); err != nil {
		t.Fatal(err)
	}
	runCmd(t, "mount", "-o", "loop,nouuid", replayed, m2)
	runCmd(t, "umount", m2)

	alloc := func(p string) ([]extent.Range, error) {
		b := mustRead(t, p)
		fsys, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		return fsys.Allocated(context.Background())
	}
	got, err := alloc(grown)
	if err != nil {
		t.Logf("refused, as it may be: %v", err)
		return
	}
	want, err := alloc(replayed)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the copy's map (%d bytes allocated) differs from the map after replay (%d)", extent.Sum(got), extent.Sum(want))
	}
}

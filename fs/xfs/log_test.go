package xfs

import (
	"context"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
)

// TestLogClean checks LogClean against states the kernel leaves an XFS
// log in: fresh from mkfs, a copy taken while mounted with changes logged
// (needs replaying), a copy of a frozen filesystem (its log is covered,
// not clean: the kernel logged the superblock after the last unmount
// record, and a replay rewrites it), one after unmount (clean), and the
// dirty copy again after the kernel replayed it (clean). xfs_logprint's
// verdict is the oracle. Allocated refuses what is not clean.
func TestLogClean(t *testing.T) {
	fstest.NeedRoot(t)
	fstest.NeedTools(t, "mkfs.xfs", "xfs_freeze", "xfs_logprint", "mount", "umount")
	dir := t.TempDir()
	img := filepath.Join(dir, "xfs.img")
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 512<<20); err != nil {
		t.Fatal(err)
	}
	run("mkfs.xfs", "-q", "-f", img)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	mounted := false
	unmount := func() {
		if mounted {
			run("umount", mnt)
			mounted = false
		}
	}
	t.Cleanup(unmount)
	mountIt := func() {
		run("mount", "-o", "loop", img, mnt)
		mounted = true
	}
	snapshot := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			p := filepath.Join(mnt, "d", strings.Repeat("f", 1+i%40)+string(rune('a'+i%26)))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(strings.Repeat("x", 5000*(i%7+1))), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		run("sync")
	}

	fresh := snapshot("fresh.img")
	mountIt()
	write(300)
	dirty := snapshot("dirty.img") // taken with the filesystem mounted: the log holds the writes
	run("xfs_freeze", "-f", mnt)
	frozen := snapshot("frozen.img")
	run("xfs_freeze", "-u", mnt)
	write(50)
	unmount()
	unmounted := snapshot("unmounted.img")

	// The kernel replays the dirty copy's log when it mounts it.
	replayed := snapshot("replayed.img")
	if err := os.WriteFile(replayed, mustRead(t, dirty), 0o600); err != nil {
		t.Fatal(err)
	}
	run("mount", "-o", "loop,nouuid", replayed, mnt)
	mounted = true
	unmount()

	for _, c := range []struct {
		path  string
		clean bool
	}{
		{fresh, true},
		{dirty, false},
		{frozen, false},
		{unmounted, true},
		{replayed, true},
	} {
		t.Run(filepath.Base(c.path), func(t *testing.T) {
			// xfs_logprint -t names the state of the log it finds.
			lp, _ := exec.Command("xfs_logprint", "-t", c.path).CombinedOutput()
			if oracleClean := strings.Contains(string(lp), "state: <CLEAN>"); oracleClean != c.clean {
				t.Errorf("xfs_logprint disagrees with the expectation (clean=%v):\n%s", c.clean, lp)
			}
			f, err := os.Open(c.path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, _ := f.Stat()
			fsys, err := Open(f, st.Size())
			if err != nil {
				t.Fatal(err)
			}
			err = fsys.LogClean(context.Background())
			if (err == nil) != c.clean {
				t.Errorf("LogClean = %v, want clean=%v", err, c.clean)
			}
			if _, aerr := fsys.Allocated(context.Background()); (aerr == nil) != c.clean {
				t.Errorf("Allocated error = %v, want clean=%v", aerr, c.clean)
			}
		})
	}
}

// TestLogCleanDamaged: a clean log changed in ways a crash or damage could
// leave it is never called clean.
func TestLogCleanDamaged(t *testing.T) {
	fstest.NeedTools(t, "mkfs.xfs")
	img := filepath.Join(t.TempDir(), "xfs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 320<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-f", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v\n%s", err, out)
	}
	orig := mustRead(t, img)
	open := func(b []byte) *FS {
		t.Helper()
		fsys, err := Open(byteReader(b), int64(len(b)))
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
		{"unmount flag cleared", func(b []byte) { b[logOff+bbSize+9] &^= logUnmount }},
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
			fsys, err := Open(byteReader(b), int64(len(b)))
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

type byteReader []byte

func (b byteReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

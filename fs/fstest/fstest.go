// Package fstest builds the filesystem test images (scripts/make-fs-images.sh)
// once per machine and gives tests the tools they need, skipping — outside
// CI only — when a tool or root is missing. MemFS is an in-memory
// filesystem for tests of the code above the readers, able to hold what a
// hostile image holds.
package fstest

import (
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/vmvault/vmvault/fs"
)

var (
	once   sync.Once
	dir    string
	buildE error
	output []byte
)

// NeedTools skips the test when a tool is missing, or fails it in CI.
func NeedTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required in CI (.ci/run installs it): %v", tool, err)
			}
			t.Skipf("skipping: %s not installed (apt-get install e2fsprogs ntfs-3g dosfstools mtools sleuthkit fdisk attr)", tool)
		}
	}
}

// NeedRoot skips the test when not root, or fails it in CI.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; this test needs it")
		}
		t.Skip("skipping: needs root (ntfs-3g and loop mounts)")
	}
}

// Images returns the directory holding the test images, building them on
// first use. VMVAULT_FSIMG overrides the location (default
// $TMPDIR/vmvault-fsimg); the script rebuilds only when it changed.
func Images(t testing.TB) string {
	t.Helper()
	NeedRoot(t)
	NeedTools(t, "mke2fs", "debugfs", "mkntfs", "ntfs-3g", "mkfs.vfat", "mcopy", "sfdisk", "setfattr", "python3")
	once.Do(func() {
		dir = os.Getenv("VMVAULT_FSIMG")
		if dir == "" {
			dir = filepath.Join(os.TempDir(), "vmvault-fsimg")
		}
		_, file, _, _ := runtime.Caller(0)
		script := filepath.Join(filepath.Dir(file), "..", "..", "scripts", "make-fs-images.sh")
		cmd := exec.Command("bash", script, dir)
		output, buildE = cmd.CombinedOutput()
	})
	if buildE != nil {
		t.Fatalf("make-fs-images.sh: %v\n%s", buildE, output)
	}
	return dir
}

// Seed returns a committed fuzz seed image from testdata/fs (gunzipped).
func Seed(t testing.TB, name string) []byte {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	f, err := os.Open(filepath.Join(filepath.Dir(file), "..", "..", "testdata", "fs", name+".gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Exercise calls every method of fsys on everything reachable from the
// root, within fixed bounds (entries, depth, bytes per file), so a fuzz
// target finds panics, hangs and unbounded allocations anywhere in a
// reader. Errors are expected on malformed input and ignored.
func Exercise(fsys fs.FileSystem) {
	ctx := context.Background()
	budget := 500
	buf := make([]byte, 64<<10)
	seen := map[fs.Ino]bool{}
	var rec func(dir fs.Ino, depth int)
	rec = func(dir fs.Ino, depth int) {
		if depth > 64 || seen[dir] {
			return
		}
		seen[dir] = true
		ents, err := fsys.ReadDir(ctx, dir)
		if err != nil {
			return
		}
		for _, e := range ents {
			if budget--; budget < 0 {
				return
			}
			_, _ = fsys.Lookup(ctx, dir, e.Name)
			st, err := fsys.Stat(ctx, e.Ino)
			if err != nil {
				continue
			}
			_, _ = fsys.Readlink(ctx, e.Ino)
			if names, err := fsys.ListXattr(ctx, e.Ino); err == nil {
				for _, n := range names {
					_, _ = fsys.GetXattr(ctx, e.Ino, n)
				}
			}
			switch st.Type {
			case fs.TypeDir:
				rec(e.Ino, depth+1)
			case fs.TypeRegular:
				f, err := fsys.Open(ctx, e.Ino)
				if err != nil {
					continue
				}
				for off := int64(0); off < f.Size() && off < 256<<10; off += int64(len(buf)) {
					if _, err := f.ReadAt(buf, off); err != nil {
						break
					}
				}
				_, _ = f.ReadAt(buf[:10], f.Size()-5)
				if sf, ok := f.(fs.SparseFile); ok {
					_, _ = sf.DataExtents()
				}
			}
		}
	}
	_, _ = fs.Resolve(ctx, fsys, "/d/l", true)
	rec(fsys.Root(), 0)
	if am, ok := fsys.(fs.AllocationMapper); ok {
		_, _ = am.Allocated(ctx)
	}
}

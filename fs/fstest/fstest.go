// Package fstest builds the filesystem test images (scripts/make-fs-images.sh)
// once per machine and gives tests the tools they need, skipping — outside
// CI only — when a tool or root is missing.
package fstest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
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

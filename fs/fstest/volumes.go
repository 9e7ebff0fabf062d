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
	volOnce   sync.Once
	volDir    string
	volErr    error
	volOutput []byte
)

// VolumeImages returns the directory holding the XFS and LVM2 test images
// of scripts/make-volume-images.sh, building them on first use.
// VMVAULT_VOLIMG overrides the location (default $TMPDIR/vmvault-volimg);
// the script rebuilds only when it changed.
func VolumeImages(t testing.TB) string {
	t.Helper()
	NeedRoot(t)
	NeedTools(t, "mkfs.xfs", "xfs_db", "pvcreate", "vgcreate", "lvcreate", "lvs", "mke2fs", "mkswap", "sfdisk", "setfattr", "setfacl", "python3")
	volOnce.Do(func() {
		volDir = os.Getenv("VMVAULT_VOLIMG")
		if volDir == "" {
			volDir = filepath.Join(os.TempDir(), "vmvault-volimg")
		}
		_, file, _, _ := runtime.Caller(0)
		script := filepath.Join(filepath.Dir(file), "..", "..", "scripts", "make-volume-images.sh")
		volOutput, volErr = exec.Command("bash", script, volDir).CombinedOutput()
	})
	if volErr != nil {
		t.Fatalf("make-volume-images.sh: %v\n%s", volErr, volOutput)
	}
	return volDir
}

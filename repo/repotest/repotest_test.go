package repotest_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/backend/faulty"
	"github.com/vmvault/vmvault/repo/backend/local"
	"github.com/vmvault/vmvault/repo/backend/mem"
	"github.com/vmvault/vmvault/repo/format"
	"github.com/vmvault/vmvault/repo/repotest"
)

func data(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

// TestCaptureAndRead: restore points from bytes and files, with tags,
// time and a base, read back through OpenDisk, in memory and on disk.
func TestCaptureAndRead(t *testing.T) {
	ctx := context.Background()
	fb := faulty.New(mem.New(), 1)
	memRepo := repotest.New(t, repotest.Options{Backend: fb, ChunkSize: 128 << 10, CacheSize: 1 << 20})
	localRepo, dir := repotest.NewLocal(t, repotest.Options{})
	if fb.Calls(faulty.Save, 0) == 0 {
		t.Error("New did not use Options.Backend")
	}
	if got := memRepo.Config().ChunkSize; got != 128<<10 {
		t.Errorf("chunk size %d", got)
	}
	if got := localRepo.Config().ChunkSize; got != format.MinChunkSize {
		t.Errorf("default chunk size %d", got)
	}
	if _, err := local.Open(dir); err != nil || localRepo.Backend().Location() != dir {
		t.Errorf("local repository at %s (location %s): %v", dir, localRepo.Backend().Location(), err)
	}
	img0 := data(300<<10+17, 1)
	img1 := data(64<<10, 2)
	file := filepath.Join(t.TempDir(), "disk1.raw")
	if err := os.WriteFile(file, img1, 0o600); err != nil {
		t.Fatal(err)
	}
	when := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	for name, r := range map[string]*repo.Repository{"mem": memRepo, "local": localRepo} {
		t.Run(name, func(t *testing.T) {
			first := repotest.Capture(t, r, "web01", repotest.Bytes("disk0", img0), repotest.File("disk1", file))
			img0b := bytes.Clone(img0)
			img0b[5] ^= 1
			second := repotest.CapturePoint(t, r, repotest.Point{VM: "web01", Tags: []string{"nightly"}, Time: when, Base: first,
				Disks: []repotest.Disk{repotest.Bytes("disk0", img0b)}})
			if !second.Time.Equal(when) || len(second.Tags) != 1 || second.Tags[0] != "nightly" || second.VM != "web01" {
				t.Errorf("second restore point: %+v", second.Manifest)
			}
			for _, c := range []struct {
				rp   *repo.RestorePoint
				disk string
				want []byte
			}{{first, "disk0", img0}, {first, "disk1", img1}, {second, "disk0", img0b}} {
				d := repotest.OpenDisk(t, r, c.rp, c.disk)
				if got := repotest.ReadAll(t, d); !bytes.Equal(got, c.want) {
					t.Errorf("%s of %s differs (%d bytes, want %d)", c.disk, c.rp.ID.Short(), len(got), len(c.want))
				}
			}
			rps, _, err := r.ListRestorePoints(ctx)
			if err != nil || len(rps) != 2 {
				t.Errorf("%d restore points listed: %v", len(rps), err)
			}
		})
	}
}

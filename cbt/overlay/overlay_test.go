package overlay

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/vmvault/vmvault/cbt"
	nbdoverlay "github.com/vmvault/vmvault/nbd/overlay"
	"github.com/vmvault/vmvault/repo/repotest"
)

// TestCommit: the committed restore point is the booted one plus the
// overlay writes, read as an extents incremental of only the written
// blocks; disks without an overlay are carried over; an overlay in use
// is refused, and Discard removes the overlays.
func TestCommit(t *testing.T) {
	ctx := context.Background()
	r := repotest.New(t, repotest.Options{ChunkSize: 64 << 10})
	d0 := bytes.Repeat([]byte("disk zero "), 100000)
	d1 := bytes.Repeat([]byte("disk one! "), 50000)
	booted := repotest.Capture(t, r, "vm", repotest.Bytes("d0", d0), repotest.Bytes("d1", d1))

	root := t.TempDir()
	dir := nbdoverlay.Path(root, booted.ID.String(), "d0")
	disk := repotest.OpenDisk(t, r, booted, "d0")
	ov, err := nbdoverlay.Open(dir, nbdoverlay.Meta{VM: "vm", RestorePoint: booted.ID.String(), Disk: "d0"}, diskBase{disk})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), d0...)
	copy(want[300000:], bytes.Repeat([]byte{7}, 10000))
	if err := ov.WriteAt(ctx, want[300000:310000], 300000); err != nil {
		t.Fatal(err)
	}
	found, _, err := nbdoverlay.List(root)
	if err != nil || len(found) != 1 {
		t.Fatalf("list: %v %v", found, err)
	}
	if _, err := Open(ctx, r, booted, found); !errors.Is(err, nbdoverlay.ErrBusy) {
		t.Fatalf("an overlay in use was opened for commit: %v", err)
	}
	if err := ov.Close(); err != nil {
		t.Fatal(err)
	}

	src, err := Open(ctx, r, booted, found)
	if err != nil {
		t.Fatal(err)
	}
	rp, err := src.Commit(ctx, cbt.Options{Tags: []string{"recovered"}})
	if err != nil {
		t.Fatal(err)
	}
	if rp.Lineage != cbt.LineageOverlay || len(rp.Tags) != 1 || rp.Tags[0] != "recovered" {
		t.Fatalf("commit manifest: lineage %q tags %v", rp.Lineage, rp.Tags)
	}
	for _, md := range rp.Disks {
		if md.Stats.Mode != "extents" || md.Parent != booted.ID.String() {
			t.Errorf("disk %s: mode %s parent %s", md.Name, md.Stats.Mode, md.Parent)
		}
	}
	if s := rp.Disks[0].Stats; s.BytesChanged != src.ChangedBytes || s.BytesRead != 64<<10 {
		t.Errorf("d0 read %d bytes for %d changed, want one 64 KiB chunk", s.BytesRead, s.BytesChanged)
	}
	if got := repotest.ReadAll(t, repotest.OpenDisk(t, r, rp, "d0")); !bytes.Equal(got, want) {
		t.Error("d0 differs from the restore point plus the overlay")
	}
	if got := repotest.ReadAll(t, repotest.OpenDisk(t, r, rp, "d1")); !bytes.Equal(got, d1) {
		t.Error("d1 (no overlay) differs from the booted restore point")
	}
	if err := src.Discard(); err != nil {
		t.Fatal(err)
	}
	if found, _, _ := nbdoverlay.List(root); len(found) != 0 {
		t.Fatalf("overlays left after Discard: %v", found)
	}
	if _, err := Open(ctx, r, booted, []nbdoverlay.Found{{Dir: filepath.Join(root, "x"), Meta: nbdoverlay.Meta{Disk: "nope"}}}); err == nil {
		t.Fatal("an overlay of a disk the restore point lacks was accepted")
	}
}

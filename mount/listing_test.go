package mount

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
	"github.com/vmvault/vmvault/repo/repotest"
)

// names reads a directory stream as "name:ino" entries.
func names(t *testing.T, ds gofs.DirStream, errno uint32) []string {
	t.Helper()
	if errno != 0 {
		t.Fatalf("readdir: errno %d", errno)
	}
	var out []string
	for ds.HasNext() {
		e, en := ds.Next()
		if en != 0 {
			t.Fatalf("next: errno %d", en)
		}
		out = append(out, fmt.Sprintf("%s:%d", e.Name, e.Ino))
	}
	return out
}

// TestListing: the top levels of the tree (VMs, restore points with
// latest, raw disks) without a kernel mount, from a repository made by
// repotest; inode numbers stay the same from one listing to the next.
func TestListing(t *testing.T) {
	ctx := context.Background()
	r := repotest.New(t, repotest.Options{})
	t0 := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	disk := make([]byte, 100<<10)
	older := repotest.CapturePoint(t, r, repotest.Point{VM: "web01", Time: t0, Disks: []repotest.Disk{repotest.Bytes("disk0", disk)}})
	newer := repotest.CapturePoint(t, r, repotest.Point{VM: "web01", Time: t0.Add(time.Hour), Base: older, Disks: []repotest.Disk{repotest.Bytes("disk0", disk)}})
	db := repotest.CapturePoint(t, r, repotest.Point{VM: "db", Time: t0.Add(2 * time.Hour), Disks: []repotest.Disk{repotest.Bytes("sdb", disk), repotest.Bytes("sda", nil)}})

	root := New(r, nil, nil).(*rootNode)
	ds, errno := root.Readdir(ctx)
	first := names(t, ds, uint32(errno))
	ds, errno = root.Readdir(ctx)
	if again := names(t, ds, uint32(errno)); strings.Join(again, " ") != strings.Join(first, " ") {
		t.Errorf("second listing %v differs from the first %v", again, first)
	}
	if got := strings.Join(first, " "); got != fmt.Sprintf("db:%d web01:%d", root.m.ino("vm/db"), root.m.ino("vm/web01")) {
		t.Errorf("root: %s", got)
	}

	vm := &vmNode{m: root.m, vm: "web01"}
	ds, errno = vm.Readdir(ctx)
	want := []string{
		fmt.Sprintf("latest:%d", root.m.ino("latest/web01")),
		fmt.Sprintf("%s:%d", DirName(older), root.m.ino("rp/"+older.ID.String())),
		fmt.Sprintf("%s:%d", DirName(newer), root.m.ino("rp/"+newer.ID.String())),
	}
	if got := names(t, ds, uint32(errno)); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("web01: %v, want %v", got, want)
	}

	for _, c := range []struct {
		rp   *repo.RestorePoint
		want string
	}{{db, "sdb.raw sda.raw"}, {newer, "disk0.raw"}} {
		dn := &disksNode{m: root.m, rp: c.rp}
		ds, errno := dn.Readdir(ctx)
		var got []string
		for _, e := range names(t, ds, uint32(errno)) {
			got = append(got, e[:strings.IndexByte(e, ':')])
		}
		if strings.Join(got, " ") != c.want {
			t.Errorf("disks of %s: %v, want %s", c.rp.VM, got, c.want)
		}
	}
}

// TestSkippedNote: a restore point whose capture skipped free space lists
// vmvault-skipped.txt, which names every skipping disk and its
// partitions; one that skipped nothing has no such file.
func TestSkippedNote(t *testing.T) {
	ctx := context.Background()
	r := repotest.New(t, repotest.Options{})
	m := New(r, nil, nil).(*rootNode).m
	st := &format.SkipStats{FreeSpace: true, Bytes: 5 << 20, Scope: "disk", Volumes: []format.SkipVolume{
		{Partition: "p1", Filesystem: "ext4", Offset: 1 << 20, Size: 64 << 20, Bytes: 5 << 20, Ranges: 3, What: "free space"}}}
	rp := &repo.RestorePoint{ID: format.ID{1, 2, 3, 4}, Manifest: &format.Manifest{VM: "vm", Time: time.Unix(1e9, 0), Disks: []format.ManifestDisk{
		{Name: "disk0", Stats: format.DiskStats{Skipped: st}}, {Name: "disk1"}}}}
	for _, c := range []struct {
		rp   *repo.RestorePoint
		want bool
	}{{rp, true}, {&repo.RestorePoint{ID: format.ID{5}, Manifest: &format.Manifest{VM: "vm", Disks: []format.ManifestDisk{{Name: "disk0"}}}}, false}} {
		ds, errno := (&rpNode{m: m, rp: c.rp}).Readdir(ctx)
		listed := strings.Contains(strings.Join(names(t, ds, uint32(errno)), " "), skippedFile+":")
		if listed != c.want || (skippedNote(c.rp) != nil) != c.want {
			t.Errorf("restore point %s: note listed %v, want %v", c.rp.ID.Short(), listed, c.want)
		}
	}
	note := string(skippedNote(rp))
	for _, want := range []string{"deleted files", "disk0:", "5.0 MiB (free space) in the whole disk", "p1 (ext4, 64.0 MiB at 1.0 MiB): free space, 5.0 MiB in 3 ranges"} {
		if !strings.Contains(note, want) {
			t.Errorf("note lacks %q:\n%s", want, note)
		}
	}
	if strings.Contains(note, "disk1") {
		t.Errorf("note names a disk that skipped nothing:\n%s", note)
	}
}

package freespace

import (
	"bytes"
	"context"
	"reflect"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
	"github.com/vmvault/vmvault/repo/extent"
)

// FuzzCompute maps mutated disks (partition tables and the filesystems of
// the seed images): no panic, and what it skips lies on the disk, inside
// the partitions it reports, normalized.
func FuzzCompute(f *testing.F) {
	for _, s := range []string{"mbr.img", "gpt.img", "fat12.img", "ext4.img", "ext2.img", "ntfs.img"} {
		f.Add(fstest.Seed(f, s))
	}
	f.Fuzz(func(t *testing.T, disk []byte) {
		m, err := Compute(context.Background(), bytes.NewReader(disk), int64(len(disk)), Options{FreeSpace: true, Swap: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := extent.Check(m.Skip, int64(len(disk))); err != nil {
			t.Fatal(err)
		}
		if len(m.Skip) > 0 && !reflect.DeepEqual(m.Skip, extent.Normalize(m.Skip)) {
			t.Fatalf("not normalized: %v", m.Skip)
		}
		var parts []extent.Range
		for _, v := range m.Volumes {
			parts = append(parts, extent.Range{Offset: v.Offset, Length: v.Size})
		}
		if out := extent.Subtract(m.Skip, extent.Normalize(parts)); len(out) > 0 {
			t.Fatalf("skips outside partitions: %v", out)
		}
	})
}

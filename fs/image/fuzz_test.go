package image

import (
	"bytes"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
	"github.com/vmvault/vmvault/repo/extent"
)

// FuzzOpen reads mutated MBR (with an extended chain) and GPT disks, an
// LVM2 PV and XFS, and every volume and filesystem they point at.
func FuzzOpen(f *testing.F) {
	for _, s := range []string{"mbr.img", "gpt.img", "fat12.img", "ext2.img", "lvm.img", "xfs4.img"} {
		f.Add(fstest.Seed(f, s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		for _, p := range d.Partitions {
			if p.Start < 0 || p.Size < 0 || p.Start+p.Size > int64(len(b)) {
				t.Fatalf("partition %+v outside the %d-byte disk", p, len(b))
			}
			if fsys, err := d.OpenFS(p); err == nil {
				fstest.Exercise(fsys)
			}
			for _, r := range p.DiskRanges(extent.Range{Offset: 0, Length: p.Size}) {
				if r.Offset < 0 || r.End() > int64(len(b)) {
					t.Fatalf("volume %s maps to %+v outside the %d-byte disk", p.Name, r, len(b))
				}
			}
		}
	})
}

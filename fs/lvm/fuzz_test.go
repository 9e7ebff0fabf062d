package lvm

import (
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
)

// FuzzReadPV reads mutated PV labels and metadata areas (the seed PV's
// first bytes; zeros follow up to 16 MiB) and parses what it finds.
func FuzzReadPV(f *testing.F) {
	f.Add(fstest.Seed(f, "lvm.img"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pv, err := ReadPV(padded{b, seedSize}, seedSize)
		if err != nil {
			return
		}
		for _, text := range pv.Texts {
			_, _ = ParseVG(text)
		}
	})
}

// FuzzParseVG parses mutated metadata texts.
func FuzzParseVG(f *testing.F) {
	f.Add(`vg { id = "v" seqno = 3 extent_size = 8192 physical_volumes { pv0 { id = "a-b" pe_start = 2048 pe_count = 100 } }
logical_volumes { lv { status = ["VISIBLE"] segment1 { start_extent = 0 extent_count = 10 type = "striped" stripe_count = 2 stripe_size = 128 stripes = ["pv0", 0, "pv0", 50] } } } }
# comment
contents = "Text Format Volume Group"`)
	f.Fuzz(func(t *testing.T, text string) {
		vg, err := ParseVG(text)
		if err != nil {
			return
		}
		for _, lv := range vg.LVs {
			end := int64(0)
			for _, s := range lv.Segments {
				if s.Start != end || s.Length <= 0 || len(s.Stripes) == 0 {
					t.Fatalf("LV %s: segment %+v after %d", lv.Name, s, end)
				}
				end += s.Length
			}
			if lv.Segments != nil && end != lv.Size {
				t.Fatalf("LV %s: segments cover %d of %d", lv.Name, end, lv.Size)
			}
		}
	})
}

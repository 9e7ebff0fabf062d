package lvm

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/fstest"
)

// padded is a seed image: its first bytes, then zeros up to size.
type padded struct {
	b    []byte
	size int64
}

func (p padded) ReadAt(q []byte, off int64) (int, error) {
	if off < 0 || off >= p.size {
		return 0, io.EOF
	}
	n := min(int64(len(q)), p.size-off)
	c := 0
	if off < int64(len(p.b)) {
		c = copy(q[:n], p.b[off:])
	}
	clear(q[c:n])
	if int(n) < len(q) {
		return int(n), io.EOF
	}
	return int(n), nil
}

const seedSize = 16 << 20

// TestSeedPV reads the committed PV seed (scripts/make-fuzz-seeds.sh): VG
// vgf, extents of 1 MiB after a 1 MiB header; LV a in two segments, PE 6-7
// then PE 1-2; LV b-c at PE 9-10.
func TestSeedPV(t *testing.T) {
	pv, err := ReadPV(padded{fstest.Seed(t, "lvm.img"), seedSize}, seedSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(pv.Texts) != 1 || pv.DeviceSize != seedSize || len(pv.UUID) != 32 {
		t.Fatalf("%+v", pv)
	}
	vg, err := ParseVG(pv.Texts[0])
	if err != nil {
		t.Fatal(err)
	}
	const mib = 1 << 20
	if vg.Name != "vgf" || vg.ExtentSize != mib || len(vg.PVs) != 1 || vg.PVs[0].UUID != pv.UUID || vg.PVs[0].PEStart != mib {
		t.Fatalf("%+v", vg)
	}
	want := map[string][]Segment{
		"a": {
			{Start: 0, Length: 2 * mib, Type: "striped", Stripes: []Area{{pv.UUID, 7 * mib}}},
			{Start: 2 * mib, Length: 2 * mib, Type: "striped", Stripes: []Area{{pv.UUID, 2 * mib}}},
		},
		"b-c": {{Start: 0, Length: 2 * mib, Type: "striped", Stripes: []Area{{pv.UUID, 10 * mib}}}},
	}
	if len(vg.LVs) != len(want) {
		t.Fatalf("LVs %+v", vg.LVs)
	}
	for _, lv := range vg.LVs {
		w := want[lv.Name]
		if !lv.Visible || lv.Unsupported != "" || len(lv.Segments) != len(w) {
			t.Fatalf("%+v", lv)
		}
		for i := range w {
			g := lv.Segments[i]
			if g.Start != w[i].Start || g.Length != w[i].Length || g.Type != w[i].Type || len(g.Stripes) != 1 || g.Stripes[0] != w[i].Stripes[0] {
				t.Errorf("%s segment %d: %+v, want %+v", lv.Name, i, g, w[i])
			}
		}
	}
}

// TestChecksums damages the label and the metadata text of the seed.
func TestChecksums(t *testing.T) {
	seed := fstest.Seed(t, "lvm.img")
	label := bytes.Clone(seed)
	label[512+40]++ // inside the PV header, covered by the label CRC
	if _, err := ReadPV(padded{label, seedSize}, seedSize); !errors.Is(err, fs.ErrCorrupt) {
		t.Errorf("damaged label: %v", err)
	}
	text := bytes.Clone(seed)
	i := bytes.LastIndex(text, []byte("seqno = "))
	text[i]++
	if _, err := ReadPV(padded{text, seedSize}, seedSize); err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Errorf("damaged metadata: %v", err)
	}
}

func TestParseVG(t *testing.T) {
	const pv = `physical_volumes { pv0 { id = "aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg" pe_start = 2048 pe_count = 100 } pv1 { id = "x" pe_start = 2048 pe_count = 100 } }`
	lv := func(body string) string {
		return `vg { id = "v" seqno = 3 extent_size = 8192 ` + pv + ` logical_volumes { lv { status = ["READ", "VISIBLE"] ` + body + ` } } }`
	}
	for _, c := range []struct {
		name, text, unsupported string
		segs                    int
		stripeSize              int64
		bad                     bool
	}{
		{"linear", lv(`segment1 { start_extent = 0 extent_count = 10 type = "striped" stripe_count = 1 stripes = ["pv0", 5] }`), "", 1, 0, false},
		{"striped", lv(`segment1 { start_extent = 0 extent_count = 10 type = "striped" stripe_count = 2 stripe_size = 128 stripes = ["pv0", 0, "pv1", 50] }`), "", 1, 64 << 10, false},
		{"out of order", lv(`segment2 { start_extent = 4 extent_count = 6 type = "striped" stripe_count = 1 stripes = ["pv0", 0] } segment1 { start_extent = 0 extent_count = 4 type = "striped" stripe_count = 1 stripes = ["pv0", 90] }`), "", 2, 0, false},
		{"thin", lv(`segment1 { start_extent = 0 extent_count = 10 type = "thin" thin_pool = "pool" }`), "thin volume in pool pool", 0, 0, false},
		{"raid1", lv(`segment1 { start_extent = 0 extent_count = 10 type = "raid1" }`), `segment type "raid1"`, 0, 0, false},
		{"gap", lv(`segment1 { start_extent = 1 extent_count = 10 type = "striped" stripe_count = 1 stripes = ["pv0", 0] }`), "", 0, 0, true},
		{"past the PV", lv(`segment1 { start_extent = 0 extent_count = 10 type = "striped" stripe_count = 1 stripes = ["pv0", 95] }`), "", 0, 0, true},
		{"unknown PV", lv(`segment1 { start_extent = 0 extent_count = 10 type = "striped" stripe_count = 1 stripes = ["pv9", 0] }`), "", 0, 0, true},
		{"stripes uneven", lv(`segment1 { start_extent = 0 extent_count = 9 type = "striped" stripe_count = 2 stripe_size = 128 stripes = ["pv0", 0, "pv1", 0] }`), "", 0, 0, true},
		{"stripe size not a power of 2", lv(`segment1 { start_extent = 0 extent_count = 10 type = "striped" stripe_count = 2 stripe_size = 100 stripes = ["pv0", 0, "pv1", 0] }`), "", 0, 0, true},
		{"unclosed", `vg { seqno = 1`, "", 0, 0, true},
		{"unclosed string", `vg { id = "abc }`, "", 0, 0, true},
		{"too deep", strings.Repeat("a {", 40) + strings.Repeat("}", 40), "", 0, 0, true},
		{"no extent size", `vg { seqno = 1 ` + pv + ` }`, "", 0, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			vg, err := ParseVG(c.text)
			if c.bad {
				if !errors.Is(err, fs.ErrCorrupt) {
					t.Fatalf("err %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(vg.LVs) != 1 {
				t.Fatalf("LVs %+v", vg.LVs)
			}
			l := vg.LVs[0]
			if !strings.Contains(l.Unsupported, c.unsupported) || (c.unsupported == "") != (l.Unsupported == "") || len(l.Segments) != c.segs || l.Size != 10*8192*512 {
				t.Fatalf("%+v", l)
			}
			if c.segs > 0 && l.Segments[0].StripeSize != c.stripeSize {
				t.Errorf("stripe size %d", l.Segments[0].StripeSize)
			}
			if c.name == "out of order" && l.Segments[0].Stripes[0].Offset != 2048*512+90*8192*512 {
				t.Errorf("first segment %+v", l.Segments[0])
			}
		})
	}
}

// TestHiddenAndSnapshot: LVs without the VISIBLE flag (pool internals)
// are marked hidden; an old-style snapshot's copy-on-write LV says whose
// snapshot it is instead of pretending to hold a filesystem.
func TestHiddenAndSnapshot(t *testing.T) {
	text := `vg { id = "v" seqno = 1 extent_size = 8 physical_volumes { pv0 { id = "p" pe_start = 8 pe_count = 100 } }
logical_volumes {
origin { status = ["READ", "VISIBLE"] segment1 { start_extent = 0 extent_count = 4 type = "striped" stripe_count = 1 stripes = ["pv0", 0] } }
snap { status = ["READ", "VISIBLE"] segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 10] } }
snapshot0 { status = ["READ"] segment1 { start_extent = 0 extent_count = 4 type = "snapshot" origin = "origin" cow_store = "snap" chunk_size = 8 } }
pool_tdata { status = ["READ", "WRITE"] segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 20] } }
} }`
	vg, err := ParseVG(text)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]LV{}
	for _, lv := range vg.LVs {
		got[lv.Name] = lv
	}
	if l := got["origin"]; !l.Visible || l.Unsupported != "" {
		t.Errorf("origin: %+v", l)
	}
	if l := got["snap"]; !l.Visible || !strings.Contains(l.Unsupported, "snapshot of origin") {
		t.Errorf("snap: %+v", l)
	}
	if got["snapshot0"].Visible || got["pool_tdata"].Visible {
		t.Errorf("hidden LVs visible: %+v %+v", got["snapshot0"], got["pool_tdata"])
	}
}

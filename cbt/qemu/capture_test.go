package qemu

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/repo"
)

func diskStats(t *testing.T, rp *repo.RestorePoint, name string) (mode, reason string, changed, read int64) {
	t.Helper()
	d, err := rp.Disk(name)
	if err != nil {
		t.Fatal(err)
	}
	return d.Stats.Mode, d.Stats.Reason, d.Stats.BytesChanged, d.Stats.BytesRead
}

// TestCaptureChain captures two disks (qcow2 with a persistent bitmap,
// raw with a non-persistent one) of one VM: a full capture, then
// incrementals. Writes the guest makes right after the transaction are
// not in the restore point (point in time, both disks) and are in the
// next one; each incremental reads only the dirty granules; QEMU is left
// with one recording bitmap per disk and nothing else.
func TestCaptureChain(t *testing.T) {
	e := newEnv(t)
	v := startVM(t, e.dir, newDisk(t, e.dir, "vd0", "qcow2", 32<<20, 1), newDisk(t, e.dir, "vd1", "raw", 16<<20, 2))
	o := e.opts(v)
	var want map[string][]byte
	o.afterTransaction = func() {
		want = snapshot(v)
		v.write(0, 5<<20, 4096, 0xa1) // after the point in time
		v.write(1, 1<<20, 8192, 0xa2)
	}
	rp1, err := CaptureVM(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	e.check(rp1, want)
	for _, d := range []string{"vd0", "vd1"} {
		if mode, reason, _, _ := diskStats(t, rp1, d); mode != "full" || reason != "no previous restore point" {
			t.Errorf("first capture of %s: %s (%s)", d, mode, reason)
		}
	}
	bitmaps := v.clean(e.tmp)
	for i, d := range rp1.Disks {
		if d.ChangeToken != bitmaps[i] {
			t.Errorf("disk %s: restore point token %q, QEMU's bitmap %q", d.Name, d.ChangeToken, bitmaps[i])
		}
	}
	var cfg Config
	if err := json.Unmarshal(rp1.Config, &cfg); err != nil || cfg.Name != "testvm" || len(cfg.Disks) != 2 || cfg.UUID == "" || cfg.MemoryBytes != 64<<20 {
		t.Errorf("config %+v: %v", cfg, err)
	}

	for round, writes := range [][][3]int64{
		{{0, 10 << 20, 100 << 10}, {1, 0, 4096}}, // + the writes after rp1's transaction
		{{0, 31<<20 + 4096, 4096}, {0, 12 << 20, 64 << 10}},
		{{1, 15<<20 - 1, 1}, {0, 20<<20 - 512, 1024}, {1, 3 << 20, 1}}, // across granule boundaries
	} {
		for _, w := range writes {
			v.write(int(w[0]), w[1], w[2], byte(0x10+round))
		}
		rp, err := CaptureVM(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		e.check(rp, want)
		for _, d := range []string{"vd0", "vd1"} {
			mode, reason, changed, read := diskStats(t, rp, d)
			if mode != "extents" {
				t.Errorf("round %d disk %s: %s (%s), want extents", round, d, mode, reason)
			}
			if float64(read) > 1.2*float64(changed) {
				t.Errorf("round %d disk %s: read %d bytes for %d dirty", round, d, read, changed)
			}
		}
		if round == 2 { // 2 granules each for the writes above, 1 for the write after the previous transaction
			for _, d := range []string{"vd0", "vd1"} {
				if _, _, changed, _ := diskStats(t, rp, d); changed != 3*64<<10 {
					t.Errorf("round 2: %s has %d dirty bytes, want 3 granules", d, changed)
				}
			}
		}
		v.clean(e.tmp)
	}
}

// TestDisksByDevice: without --disk every writable device is captured,
// named by its id; a spec names a node or a device.
func TestDisksByDevice(t *testing.T) {
	e := newEnv(t)
	v := startVM(t, e.dir, newDisk(t, e.dir, "vd0", "qcow2", 8<<20, 1), newDisk(t, e.dir, "vd1", "qcow2", 8<<20, 2))
	o := e.opts(v)
	rp, err := CaptureVM(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range rp.Disks {
		names = append(names, d.Name)
	}
	if strings.Join(names, ",") != "vd0,vd1" {
		t.Errorf("disks %v", names)
	}
	o.Disks = []DiskSpec{{Name: "data", Node: "n-vd1"}}
	rp, err = CaptureVM(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rp.Disks) != 1 || rp.Disks[0].Name != "data" {
		t.Errorf("disks %+v", rp.Disks)
	}
	o.Disks = []DiskSpec{{Node: "nope"}}
	if _, err := CaptureVM(context.Background(), o); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown node: %v", err)
	}
}

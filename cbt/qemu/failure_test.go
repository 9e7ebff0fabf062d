package qemu

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// failingReader fails (or cancels the capture) once n bytes were read.
type failingReader struct {
	r      io.ReaderAt
	n      atomic.Int64
	cancel context.CancelFunc // nil: return an error
}

var errInjected = errors.New("injected read error")

func (f *failingReader) ReadAt(p []byte, off int64) (int, error) {
	if f.n.Add(int64(len(p))) > 256<<10 {
		if f.cancel != nil {
			f.cancel()
			return 0, context.Canceled
		}
		return 0, errInjected
	}
	return f.r.ReadAt(p, off)
}

// TestFailedCaptureLosesNothing: a capture that fails while reading (an
// injected read error; Ctrl-C, i.e. a cancelled context) leaves no export,
// job, node or temp file, and the writes it would have covered — before
// and after its transaction — are all in the next capture, which is
// still incremental: the new bitmap was merged back into the previous one.
func TestFailedCaptureLosesNothing(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cancel bool
	}{{"read error", false}, {"interrupt", true}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			v := startVM(t, e.dir, newDisk(t, e.dir, "vd0", "qcow2", 32<<20, 1), newDisk(t, e.dir, "vd1", "qcow2", 8<<20, 2))
			o := e.opts(v)
			rp1, err := CaptureVM(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			before := v.clean(e.tmp)
			for i := int64(0); i < 8; i++ {
				v.write(0, i*(3<<20), 4096, 0x33)
			}
			v.write(1, 7<<20, 4096, 0x34)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			bad := o
			bad.wrapReader = func(_ string, r io.ReaderAt) io.ReaderAt {
				f := &failingReader{r: r}
				if tc.cancel {
					f.cancel = cancel
				}
				return f
			}
			bad.afterTransaction = func() { v.write(0, 30<<20, 4096, 0x35) }
			bad.Full = true // read enough to fail
			_, err = CaptureVM(ctx, bad)
			switch {
			case err == nil:
				t.Fatal("the capture succeeded")
			case tc.cancel && !errors.Is(err, context.Canceled):
				t.Fatalf("interrupted capture: %v", err)
			case !tc.cancel && !errors.Is(err, errInjected):
				t.Fatalf("failed capture: %v", err)
			}
			after := v.clean(e.tmp)
			if strings.Join(after, ",") != strings.Join(before, ",") {
				t.Errorf("bitmaps %v after the failure, want the previous ones %v back", after, before)
			}
			rps, _, _ := e.r.ListRestorePoints(context.Background())
			if len(rps) != 1 || rps[0].ID != rp1.ID {
				t.Fatalf("restore points after the failure: %d", len(rps))
			}
			var want map[string][]byte
			o.afterTransaction = func() { want = snapshot(v) }
			rp2, err := CaptureVM(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			e.check(rp2, want)
			mode, reason, changed, _ := diskStats(t, rp2, "vd0")
			if mode != "extents" || changed != 9*64<<10 {
				t.Errorf("vd0 after the failure: %s (%s), %d dirty bytes, want extents with 9 granules", mode, reason, changed)
			}
			v.clean(e.tmp)
		})
	}
}

// TestCrashAndRestart: persistent bitmaps survive a clean QEMU restart
// (incremental) and raw disks' bitmaps do not; after kill -9 and a
// restart the qcow2 disk's bitmap is gone (never saved) or inconsistent
// (saved, then in use): full captures with the reason, and incremental
// again after that.
func TestCrashAndRestart(t *testing.T) {
	e := newEnv(t)
	disks := []*testDisk{newDisk(t, e.dir, "vd0", "qcow2", 16<<20, 1), newDisk(t, e.dir, "vd1", "raw", 8<<20, 2)}
	v := startVM(t, e.dir, disks...)
	capture := func(v *testVM) map[string][3]string {
		t.Helper()
		o := e.opts(v)
		var want map[string][]byte
		o.afterTransaction = func() { want = snapshot(v) }
		rp, err := CaptureVM(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		e.check(rp, want)
		v.clean(e.tmp)
		out := map[string][3]string{}
		for _, d := range rp.Disks {
			out[d.Name] = [3]string{d.Stats.Mode, d.Stats.Reason, d.ChangeToken}
		}
		return out
	}
	capture(v)
	v.write(0, 1<<20, 4096, 1)
	v.quit()
	v = startVM(t, e.dir, disks...)
	got := capture(v)
	if got["vd0"][0] != "extents" {
		t.Errorf("qcow2 disk after a clean restart: %v, want extents (persistent bitmap)", got["vd0"])
	}
	if got["vd1"][0] != "dedup" || !strings.Contains(got["vd1"][1], "no vmvault bitmap") {
		t.Errorf("raw disk after a restart: %v, want a full read: its bitmap is not persistent", got["vd1"])
	}
	// killed before a clean shutdown saved the new bitmap: it is gone
	v.write(0, 2<<20, 4096, 2)
	v.kill()
	v = startVM(t, e.dir, disks...)
	got = capture(v)
	if got["vd0"][0] != "dedup" || !strings.Contains(got["vd0"][1], "no vmvault bitmap") {
		t.Errorf("qcow2 disk after kill -9: %v, want a full read: its bitmap was never saved", got["vd0"])
	}
	// saved by a clean shutdown, loaded (in use), then killed: inconsistent
	v.quit()
	v = startVM(t, e.dir, disks...)
	v.write(0, 2<<20, 4096, 2)
	v.kill()
	v = startVM(t, e.dir, disks...)
	got = capture(v)
	if got["vd0"][0] != "dedup" || !strings.Contains(got["vd0"][1], "inconsistent") {
		t.Errorf("qcow2 disk after kill -9: %v, want a full read: its bitmap is inconsistent", got["vd0"])
	}
	v.write(0, 3<<20, 4096, 3)
	got = capture(v)
	if got["vd0"][0] != "extents" || got["vd1"][0] != "extents" {
		t.Errorf("after the full capture: %v", got)
	}
}

// TestNewDiskMidChain: a disk hot-plugged between captures is captured in
// full while the others stay incremental.
func TestNewDiskMidChain(t *testing.T) {
	e := newEnv(t)
	v := startVM(t, e.dir, newDisk(t, e.dir, "vd0", "qcow2", 16<<20, 1))
	if _, err := CaptureVM(context.Background(), e.opts(v)); err != nil {
		t.Fatal(err)
	}
	nd := newDisk(t, e.dir, "vd1", "qcow2", 8<<20, 2)
	ctx := context.Background()
	if err := v.m.Execute(ctx, "blockdev-add", map[string]any{"driver": "qcow2", "node-name": "n-vd1",
		"file": map[string]any{"driver": "file", "filename": nd.path}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := v.m.Execute(ctx, "device_add", map[string]any{"driver": "virtio-blk-pci", "drive": "n-vd1", "id": "vd1"}, nil); err != nil {
		t.Fatal(err)
	}
	v.disks = append(v.disks, nd)
	v.write(0, 0, 4096, 9)
	o := e.opts(v)
	var want map[string][]byte
	o.afterTransaction = func() { want = snapshot(v) }
	rp, err := CaptureVM(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	e.check(rp, want)
	if mode, _, _, _ := diskStats(t, rp, "vd0"); mode != "extents" {
		t.Errorf("old disk: %s", mode)
	}
	if mode, reason, _, _ := diskStats(t, rp, "vd1"); mode != "full" || !strings.Contains(reason, "has the disk") {
		t.Errorf("new disk: %s (%s)", mode, reason)
	}
	v.clean(e.tmp)
}

// TestCleanupAfterKill: a capture process killed after its transaction
// leaves an overlay, a job, an export, the NBD server and a disabled
// bitmap. The next capture refuses to start; cleanup removes everything
// and merges the bitmaps, after which captures are incremental again
// and lose no write.
func TestCleanupAfterKill(t *testing.T) {
	e := newEnv(t)
	v := startVM(t, e.dir, newDisk(t, e.dir, "vd0", "qcow2", 16<<20, 1))
	ctx := context.Background()
	if _, err := CaptureVM(ctx, e.opts(v)); err != nil {
		t.Fatal(err)
	}
	v.write(0, 4<<20, 4096, 1)
	// what a killed process leaves: prepare without teardown
	m, err := DialMonitor(ctx, "unix:"+v.qmp)
	if err != nil {
		t.Fatal(err)
	}
	s := &session{o: e.opts(v), m: m, log: nil, run: "dead00"}
	s.log = testLogger(t)
	if err := s.prepare(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range s.disks {
		d.e.Close()
	}
	m.Close()
	v.write(0, 8<<20, 4096, 2)

	_, err = CaptureVM(ctx, e.opts(v))
	if err == nil || !strings.Contains(err.Error(), "cleanup") {
		t.Fatalf("capture over leftovers: %v", err)
	}
	done, err := Cleanup(ctx, "unix:"+v.qmp, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(done, "\n")
	for _, w := range []string{"export vmvault-exp-dead00-0", "job vmvault-job-dead00-0", "node vmvault-ovl-dead00-0", "NBD server stopped", "merged into it"} {
		if !strings.Contains(joined, w) {
			t.Errorf("cleanup did not report %q:\n%s", w, joined)
		}
	}
	if ents, _ := os.ReadDir(e.tmp); len(ents) > 0 {
		sub, _ := os.ReadDir(filepath.Join(e.tmp, ents[0].Name()))
		for _, x := range sub {
			t.Logf("left: %s", x.Name())
		}
		t.Errorf("cleanup left %d entries in the temp dir", len(ents))
	}
	v.clean(e.tmp)
	o := e.opts(v)
	var want map[string][]byte
	o.afterTransaction = func() { want = snapshot(v) }
	rp, err := CaptureVM(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	e.check(rp, want)
	if mode, reason, changed, _ := diskStats(t, rp, "vd0"); mode != "extents" || changed != 2*64<<10 {
		t.Errorf("after cleanup: %s (%s), %d dirty bytes, want both writes", mode, reason, changed)
	}
	again, err := Cleanup(ctx, "unix:"+v.qmp, testLogger(t))
	if err != nil || len(again) != 0 {
		t.Errorf("second cleanup: %v %v", again, err)
	}
}

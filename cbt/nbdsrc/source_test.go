package nbdsrc

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/cbt"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/repotest"
)

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required in CI", tool)
			}
			t.Skipf("skipping: %s not installed (apt-get install qemu-utils)", tool)
		}
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// qemuNBD serves img (format fmt) read-only on a unix socket until the
// test ends and returns its URI.
func qemuNBD(t *testing.T, img, fmt_ string, extra ...string) string {
	uri, _ := qemuNBDStop(t, img, fmt_, extra...)
	return uri
}

// qemuNBDStop is qemuNBD that also returns a function stopping the server.
func qemuNBDStop(t *testing.T, img, fmt_ string, extra ...string) (string, func()) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	args := append([]string{"-r", "-t", "-f", fmt_, "-x", "disk", "--socket", sock}, extra...)
	cmd := exec.Command("qemu-nbd", append(args, img)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() { cmd.Process.Kill(); <-exited }
	t.Cleanup(stop)
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			return "nbd+unix:///disk?socket=" + sock, stop
		}
		select {
		case <-exited:
			t.Fatalf("qemu-nbd %v: %s", args, stderr.String())
		case <-time.After(25 * time.Millisecond):
		}
		if i == 400 {
			t.Fatalf("qemu-nbd %v did not start: %s", args, stderr.String())
		}
	}
}

// rawImage writes a sparse raw image of size bytes with random data in a
// few places, text in others, and holes elsewhere.
func rawImage(t *testing.T, path string, size int64) []byte {
	t.Helper()
	b := make([]byte, size)
	rng := rand.New(rand.NewPCG(7, 7))
	for _, r := range [][2]int64{{0, 300 << 10}, {3 << 20, 1 << 20}, {size - 100<<10, 100 << 10}} {
		for i := r[0]; i < r[0]+r[1]; i++ {
			b[i] = byte(rng.Uint32())
		}
	}
	copy(b[9<<20:], bytes.Repeat([]byte("some text in a log file\n"), 20000))
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

func capture(t *testing.T, r *repo.Repository, vm string, disks ...Disk) *repo.RestorePoint {
	t.Helper()
	src, err := OpenSource(context.Background(), vm, disks)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	rp, err := cbt.Capture(context.Background(), r, src, cbt.Options{VM: vm})
	if err != nil {
		t.Fatal(err)
	}
	return rp
}

func restored(t *testing.T, r *repo.Repository, rp *repo.RestorePoint, disk string) []byte {
	t.Helper()
	d := repotest.OpenDisk(t, r, rp, disk)
	defer d.Close()
	return repotest.ReadAll(t, d)
}

// TestFormats captures qcow2, VMDK, VHDX and VDI files through qemu-nbd
// without converting them: each restore point equals qemu-img convert -O
// raw of its file, and the holes are never read.
func TestFormats(t *testing.T) {
	needTools(t, "qemu-img", "qemu-nbd")
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	rawImage(t, raw, 16<<20+4096*3) // not a multiple of the chunk size
	r := repotest.New(t, repotest.Options{})
	for _, f := range []struct{ fmt, opts string }{
		{"qcow2", ""}, {"vmdk", "subformat=streamOptimized"}, {"vmdk", "subformat=monolithicSparse"},
		{"vhdx", ""}, {"vdi", ""}, {"vpc", "subformat=dynamic"},
	} {
		t.Run(f.fmt+f.opts, func(t *testing.T) {
			img := filepath.Join(dir, "disk."+f.fmt)
			args := []string{"qemu-img", "convert", "-f", "raw", "-O", f.fmt}
			if f.opts != "" {
				args = append(args, "-o", f.opts)
			}
			run(t, append(args, raw, img)...)
			ref := filepath.Join(dir, "ref-"+f.fmt+".raw")
			run(t, "qemu-img", "convert", "-f", f.fmt, "-O", "raw", img, ref)
			want, err := os.ReadFile(ref)
			if err != nil {
				t.Fatal(err)
			}
			rp := capture(t, r, "vm-"+f.fmt+f.opts[min(len(f.opts), 10):], Disk{Name: "disk0", URI: qemuNBD(t, img, f.fmt)})
			d := rp.Disks[0]
			if got := restored(t, r, rp, "disk0"); !bytes.Equal(got, want) {
				t.Fatalf("restore differs from qemu-img convert -O raw (%d vs %d bytes)", len(got), len(want))
			}
			// qemu's vhdx and vpc drivers report no allocation: all data
			if d.Stats.Mode != "full" || (f.fmt != "vhdx" && f.fmt != "vpc" && d.Stats.BytesRead >= d.Size/2) {
				t.Errorf("%s: mode %s, read %d of %d bytes: holes were read", f.fmt, d.Stats.Mode, d.Stats.BytesRead, d.Size)
			}
		})
	}
}

// TestBitmapIncremental captures a powered-off VM's qcow2 through
// qemu-nbd --bitmap: the second capture reads only the dirty blocks, and
// a bitmap the base does not name makes a full read with the reason.
func TestBitmapIncremental(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io", "qemu-nbd")
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	rawImage(t, raw, 32<<20)
	img := filepath.Join(dir, "disk.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
	run(t, "qemu-img", "bitmap", "--add", img, "b0")
	r := repotest.New(t, repotest.Options{ChunkSize: 64 << 10})
	uri, stop := qemuNBDStop(t, img, "qcow2", "-B", "b0")
	rp1 := capture(t, r, "vm", Disk{Name: "disk0", URI: uri, Bitmap: "b0"})
	stop()
	if d := rp1.Disks[0]; d.Stats.Mode != "full" || d.ChangeToken != "b0" {
		t.Fatalf("first capture: %+v", d)
	}
	// the VM runs: writes land in the bitmap (granularity 64 KiB)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 4k", "-c", "write -P 0x5b 20M 100k", "-c", "write -z 3M 64k", img)
	want := filepath.Join(dir, "want.raw")
	run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, want)
	wantB, _ := os.ReadFile(want)

	uri = qemuNBD(t, img, "qcow2", "-B", "b0")
	rp2 := capture(t, r, "vm", Disk{Name: "disk0", URI: uri, Bitmap: "b0", Token: "b1"})
	d := rp2.Disks[0]
	const dirty = (64 + 128 + 64) << 10 // 1M+4k → 1 granule, 20M+100k → 2, 3M+64k → 1
	if d.Stats.Mode != "extents" || d.Stats.BytesChanged != dirty || d.Stats.BytesRead != dirty || d.ChangeToken != "b1" {
		t.Errorf("bitmap incremental: %+v, want extents reading %d bytes, token b1", d, dirty)
	}
	if got := restored(t, r, rp2, "disk0"); !bytes.Equal(got, wantB) {
		t.Fatal("incremental restore differs from the image")
	}
	// the restore point says b1, the export offers b0: no change info
	rp3 := capture(t, r, "vm", Disk{Name: "disk0", URI: uri, Bitmap: "b0"})
	if d := rp3.Disks[0]; d.Stats.Mode != "dedup" || !strings.Contains(d.Stats.Reason, `recorded bitmap "b1"`) {
		t.Errorf("mismatched bitmap: %+v", d.Stats)
	}
	// an export without the bitmap is an error, not an empty change list
	if _, err := OpenSource(context.Background(), "vm", []Disk{{Name: "disk0", URI: qemuNBD(t, img, "qcow2"), Bitmap: "b0"}}); err == nil {
		t.Error("opened an export that offers no bitmap b0")
	}
}

// TestReadAhead reads an export the way the writer does (chunks in order,
// skipping those outside the wanted ranges) and checks the content, that
// read-ahead fetched nothing outside them, and that it merged the chunks
// of a range into few requests.
func TestReadAhead(t *testing.T) {
	needTools(t, "qemu-img", "qemu-nbd")
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	want := rawImage(t, raw, 16<<20)
	img := filepath.Join(dir, "disk.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
	e, err := Open(context.Background(), qemuNBD(t, img, "qcow2"), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	data, err := e.DataRanges(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	const cs = 64 << 10
	var plan []extent.Range // the chunks touching data, as the writer plans them
	for off := int64(0); off < e.Size(); off += cs {
		for _, r := range data {
			if r.Offset < off+cs && off < r.End() {
				plan = append(plan, extent.Range{Offset: off, Length: min(cs, e.Size()-off)})
				break
			}
		}
	}
	e.PlanReads(plan, cs)
	var read int64
	for _, c := range plan {
		off := c.Offset
		buf := make([]byte, min(cs, e.Size()-off))
		if _, err := e.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, want[off:off+int64(len(buf))]) {
			t.Fatalf("content differs at %d", off)
		}
		read += int64(len(buf))
	}
	e.Close()
	if got := e.BytesRead(); got != read {
		t.Errorf("read %d bytes from the server for %d wanted (%d data ranges)", got, read, len(data))
	}
	// The blocks of each data range are asked for together (a request
	// per block costs the server several times as much).
	if got, chunks := e.reqs.Load(), read/cs; got > 2*int64(len(data))+1 {
		t.Errorf("%d read requests for %d chunks in %d data ranges", got, chunks, len(data))
	}
	if read >= e.Size()/2 {
		t.Errorf("base:allocation found little to skip: %d of %d", read, e.Size())
	}
}

// TestReadAheadStreams: without a plan, interleaved sequential runs of
// small reads (a filesystem's metadata) are each read ahead in growing
// requests instead of one request per read.
func TestReadAheadStreams(t *testing.T) {
	needTools(t, "qemu-img", "qemu-nbd")
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	want := rawImage(t, raw, 16<<20)
	e, err := Open(context.Background(), qemuNBD(t, raw, "raw"), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	const n, reads = 4096, 64
	starts := []int64{0, 3 << 20, 9 << 20}
	for i := range reads {
		for _, s := range starts {
			off := s + int64(i)*n
			buf := make([]byte, n)
			if _, err := e.ReadAt(buf, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, want[off:off+n]) {
				t.Fatalf("content differs at %d", off)
			}
		}
	}
	if got := e.reqs.Load(); got > 8*int64(len(starts)) {
		t.Errorf("%d read requests for %d interleaved runs of %d reads", got, len(starts), reads)
	}
}

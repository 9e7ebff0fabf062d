package main

// End-to-end tests of KVM/QEMU capture with a real guest (TCG): the tiny
// boot disk in writer mode (scripts/make-boot-disk.sh) writes numbered
// records to its two disks while vmvault-capture qemu captures them.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmvault/vmvault/cbt/qemu"
)

type qemuCaptureJSON struct {
	ID    string `json:"id"`
	Disks []struct {
		Name         string `json:"name"`
		Mode         string `json:"mode"`
		Reason       string `json:"reason"`
		BytesChanged int64  `json:"bytes_changed"`
		BytesRead    int64  `json:"bytes_read"`
	} `json:"disks"`
}

// writerGuest is a running qemu-system-x86_64 booted from the tiny boot
// disk with a data disk: its init writes records to both.
type writerGuest struct {
	t       *testing.T
	sys     string // qcow2 images
	data    string
	qmp     string // the capture's monitor
	m       *qemu.Monitor
	cmd     *exec.Cmd
	done    chan struct{}
	console string
}

func startWriterGuest(t *testing.T, dir, bootRaw string) *writerGuest {
	t.Helper()
	g := &writerGuest{t: t, sys: filepath.Join(dir, "sys.qcow2"), data: filepath.Join(dir, "data.qcow2"),
		qmp: filepath.Join(dir, "qmp.sock"), console: filepath.Join(dir, "console.log"), done: make(chan struct{})}
	sh(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", bootRaw, g.sys)
	sh(t, "qemu-img", "resize", "-q", g.sys, "64M")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", g.data, "64M")
	testQMP := filepath.Join(dir, "qmp-test.sock")
	g.cmd = exec.Command("qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "256", "-smp", "1", "-nodefaults",
		"-display", "none", "-serial", "file:"+g.console, "-name", "guest",
		"-qmp", "unix:"+g.qmp+",server=on,wait=off", "-qmp", "unix:"+testQMP+",server=on,wait=off",
		"-blockdev", "driver=qcow2,node-name=sys,file.driver=file,file.filename="+g.sys,
		"-device", "virtio-blk-pci,drive=sys,id=vda",
		"-blockdev", "driver=qcow2,node-name=data,file.driver=file,file.filename="+g.data,
		"-device", "virtio-blk-pci,drive=data,id=vdb")
	var out bytes.Buffer
	g.cmd.Stdout, g.cmd.Stderr = &out, &out
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { g.cmd.Wait(); close(g.done) }()
	t.Cleanup(func() {
		if g.m != nil {
			g.m.Close()
		}
		g.cmd.Process.Signal(syscall.SIGKILL)
		<-g.done
	})
	deadline := time.Now().Add(3 * time.Minute)
	for {
		b, _ := os.ReadFile(g.console)
		if bytes.Contains(b, []byte("VMVAULT-WRITER-START")) {
			break
		}
		select {
		case <-g.done:
			t.Fatalf("guest exited: %s\nconsole: %s", out.String(), b)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest's writer did not start; console:\n%s", b)
		}
	}
	m, err := qemu.DialMonitor(context.Background(), "unix:"+testQMP)
	if err != nil {
		t.Fatal(err)
	}
	g.m = m
	return g
}

func (g *writerGuest) qmpRun(cmd string) {
	g.t.Helper()
	if err := g.m.Execute(context.Background(), cmd, nil, nil); err != nil {
		g.t.Fatal(err)
	}
}

var recordRE = regexp.MustCompile(`^rec (\d+)\n`)

// records reads the writer's slots from a restored disk: slot s at
// base + s*stride holds "rec N\n" repeated over 4 KiB, or zeroes. It
// checks that each slot is whole and that the newest 64 records are all
// there, and returns the newest record number.
func records(t *testing.T, img string, base, stride int64) int {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]bool{}
	newest := 0
	for s := int64(0); s < 64; s++ {
		blk := b[base+s*stride : base+s*stride+4096]
		if bytes.Equal(blk, make([]byte, 4096)) {
			continue
		}
		m := recordRE.FindSubmatch(blk)
		if m == nil {
			t.Fatalf("%s slot %d: not a record: %.20q", img, s, blk)
		}
		n, _ := strconv.Atoi(string(m[1]))
		rec := bytes.Repeat([]byte(fmt.Sprintf("rec %d\n", n)), 4096)[:4096]
		if !bytes.Equal(blk, rec) || int64(n%64) != s {
			t.Fatalf("%s slot %d: record %d torn or misplaced", img, s, n)
		}
		got[n] = true
		newest = max(newest, n)
	}
	for n := max(1, newest-63); n <= newest; n++ {
		if !got[n] {
			t.Fatalf("%s: record %d missing below the newest %d: not one point in time", img, n, newest)
		}
	}
	return newest
}

// TestQEMUGuestCapture captures a running guest that writes all the
// time, full and then three times incrementally through vmvault-capture
// qemu: each restore point is one point in time for both disks (the
// guest's records), the last one (taken with the guest paused for the
// transaction) equals the disks byte for byte, each incremental reads at
// most 1.2× what the bitmap marked, and the captured system disk boots
// from vmvault serve and from a vmvault restore.
func TestQEMUGuestCapture(t *testing.T) {
	e := newEnv(t, "--chunk-size", "64KiB")
	g := startWriterGuest(t, e.dir, bootDisk(t, e.dir))
	tmp := filepath.Join(e.dir, "tmp")
	os.Mkdir(tmp, 0o700)
	capture := func() qemuCaptureJSON {
		t.Helper()
		out := e.ok("vmvault-capture", "qemu", "--json", "--vm", "guest", "--qmp", "unix:"+g.qmp, "--tmp-dir", tmp)
		var c qemuCaptureJSON
		if err := json.Unmarshal([]byte(out), &c); err != nil {
			t.Fatalf("capture JSON %q: %v", out, err)
		}
		return c
	}
	restores := 0
	restore := func(id, disk string) string {
		restores++
		f := filepath.Join(e.dir, fmt.Sprintf("%.8s-%s-%d.raw", id, disk, restores))
		e.ok("vmvault", "restore", id, "--disk", disk, "--to", f)
		return f
	}
	last := 0
	var c qemuCaptureJSON
	for round := 0; round < 4; round++ {
		var refs map[string]string
		if round < 3 {
			time.Sleep(time.Second) // the guest writes on
			c = capture()
		} else {
			// pause the guest for the transaction: the disks' content at
			// that moment is what qemu-img reads from the images
			g.qmpRun("stop")
			refs = map[string]string{"vda": filepath.Join(e.dir, "ref-vda.raw"), "vdb": filepath.Join(e.dir, "ref-vdb.raw")}
			sh(t, "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", g.sys, refs["vda"])
			sh(t, "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", g.data, refs["vdb"])
			started := g.m.Expect("JOB_STATUS_CHANGE", func(d json.RawMessage) bool {
				var j struct{ ID, Status string }
				json.Unmarshal(d, &j)
				return strings.HasPrefix(j.ID, "vmvault-") && j.Status == "running"
			})
			res := make(chan qemuCaptureJSON, 1)
			go func() { res <- capture() }()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			_, err := started.Wait(ctx, g.m)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			g.qmpRun("cont") // the guest writes while the capture reads
			c = <-res
		}
		a := records(t, restore(c.ID, "vda"), 32<<20, 256<<10)
		b := records(t, restore(c.ID, "vdb"), 0, 1<<20)
		if !(b <= a && a <= b+1) {
			t.Errorf("round %d: newest record %d on vda, %d on vdb: the disks are not of one point in time", round, a, b)
		}
		if a <= last {
			t.Errorf("round %d: newest record %d, previous capture had %d: the guest did not write?", round, a, last)
		}
		last = a
		for _, d := range c.Disks {
			want := "extents"
			if round == 0 {
				want = "full"
			}
			if d.Mode != want {
				t.Errorf("round %d disk %s: %s (%s), want %s", round, d.Name, d.Mode, d.Reason, want)
			}
			if round > 0 && float64(d.BytesRead) > 1.2*float64(d.BytesChanged) {
				t.Errorf("round %d disk %s: read %d bytes for %d dirty", round, d.Name, d.BytesRead, d.BytesChanged)
			}
		}
		for disk, ref := range refs {
			if fileSHA(t, ref) != fileSHA(t, restore(c.ID, disk)) {
				t.Errorf("disk %s of the paused capture differs from the image at the transaction", disk)
			}
		}
		t.Logf("round %d: restore point %.8s, newest record %d", round, c.ID, a)
	}
	show := e.ok("vmvault", "show", c.ID)
	for _, w := range []string{"source:   qemu", "    name:         guest", "    qemu_version:", "      - device=vda driver=qcow2"} {
		if !strings.Contains(show, w) {
			t.Errorf("show lacks %q:\n%s", w, show)
		}
	}
	g.m.Execute(context.Background(), "quit", nil, nil)
	<-g.done

	// the captured system disk boots: restored, and straight from serve
	img := restore(c.ID, "vda")
	if n := boot(t, "file="+img+",format=raw,if=virtio,snapshot=on"); n != "1" {
		t.Errorf("restored disk counted %s boots", n)
	}
	s := e.serve()
	defer s.stop()
	boot(t, "file="+s.uri("guest@latest/vda")+",format=raw,if=virtio,snapshot=on")
}

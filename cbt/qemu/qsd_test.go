package qemu

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startQSD runs qemu-storage-daemon with the qcow2 image img as node
// disk0 and returns its QMP address and a function that stops it cleanly.
func startQSD(t *testing.T, dir, img string) (string, func()) {
	t.Helper()
	needTools(t, "qemu-storage-daemon")
	sock := filepath.Join(dir, "qsd.sock")
	os.Remove(sock)
	cmd := exec.Command("qemu-storage-daemon", "--chardev", "socket,id=qmp0,path="+sock+",server=on,wait=off",
		"--monitor", "chardev=qmp0", "--blockdev", "driver=qcow2,node-name=disk0,file.driver=file,file.filename="+img)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM) // a clean shutdown: bitmaps saved
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	t.Cleanup(stop)
	for i := 0; ; i++ {
		if m, err := DialMonitor(context.Background(), "unix:"+sock); err == nil {
			m.Close()
			return "unix:" + sock, stop
		}
		select {
		case <-done:
			t.Fatalf("qemu-storage-daemon exited: %s", out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestStorageDaemon captures a disk of qemu-storage-daemon (no VM
// queries, no devices: disks by node name), incrementally across a clean
// restart, with writes made while it was stopped (qemu-io tracks them in
// the persistent bitmap).
func TestStorageDaemon(t *testing.T) {
	needTools(t, "qemu-io")
	e := newEnv(t)
	d := newDisk(t, e.dir, "vd0", "qcow2", 16<<20, 4)
	qmp, stop := startQSD(t, e.dir, d.path)
	o := Options{Repo: e.r, VM: "store01", Monitor: qmp, TmpDir: e.tmp}
	if _, err := CaptureVM(context.Background(), o); err == nil || !strings.Contains(err.Error(), "--disk") {
		t.Errorf("capture without disks: %v, want a hint to name them", err)
	}
	o.Disks = []DiskSpec{{Name: "disk0", Node: "disk0"}}
	rp1, err := CaptureVM(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	e.check(rp1, map[string][]byte{"disk0": d.mirror})
	stop()
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x77 9M 4k", d.path)
	for i := 9 << 20; i < 9<<20+4096; i++ {
		d.mirror[i] = 0x77
	}
	o.Monitor, _ = startQSD(t, e.dir, d.path)
	rp2, err := CaptureVM(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	e.check(rp2, map[string][]byte{"disk0": d.mirror})
	if md := rp2.Disks[0]; md.Stats.Mode != "extents" || md.Stats.BytesChanged != 64<<10 {
		t.Errorf("second capture: %+v", md.Stats)
	}
	if ents, _ := os.ReadDir(e.tmp); len(ents) > 0 {
		t.Errorf("%d temp files left", len(ents))
	}
}

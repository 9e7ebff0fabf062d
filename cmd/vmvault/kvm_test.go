package main

// End-to-end tests of KVM/QEMU capture with a real guest (TCG): the tiny
// boot disk in writer mode (scripts/make-boot-disk.sh) writes numbered
// records to its two disks while vmvault-capture qemu captures them.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
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
				// the backup job, not the job formatting its overlay
				// (…-create), which runs before the transaction
				return strings.HasPrefix(j.ID, "vmvault-") && !strings.HasSuffix(j.ID, "-create") && j.Status == "running"
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

// needLibvirtd starts virtlogd and libvirtd by hand (no systemd here)
// when virsh cannot reach them and this runs as root.
func needLibvirtd(t *testing.T) {
	t.Helper()
	needTools(t, "virsh", "qemu-system-x86_64", "qemu-img")
	up := func() bool { return exec.Command("virsh", "-c", "qemu:///system", "version").Run() == nil }
	if up() {
		return
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("libvirtd is not running")
		}
		t.Skip("skipping: libvirtd is not running and starting it needs root")
	}
	for _, d := range []string{"/usr/sbin/virtlogd", "/usr/sbin/libvirtd"} {
		if out, err := exec.Command(d, "-d").CombinedOutput(); err != nil {
			t.Fatalf("%s -d: %v: %s", d, err, out)
		}
	}
	for i := 0; !up(); i++ {
		if i == 100 {
			t.Fatal("libvirtd does not answer")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestLibvirtCapture drives vmvault-capture libvirt against a running
// domain under a real libvirtd: a full capture, an incremental after a
// write into the running domain (HMP qemu-io), restores equal to the
// disk, and the domain XML back from show --config.
func TestLibvirtCapture(t *testing.T) {
	needLibvirtd(t)
	e := newEnv(t, "--chunk-size", "64KiB")
	for d := e.dir; d != "/tmp" && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755) // QEMU's user reaches the image
	}
	img := filepath.Join(e.dir, "vda.qcow2")
	raw := filepath.Join(e.dir, "src.raw")
	makeImage(t, raw, 16<<20, 5)
	sh(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
	name := fmt.Sprintf("vmvault-cli-%d", time.Now().UnixNano()%1e9)
	xml := filepath.Join(e.dir, "dom.xml")
	os.WriteFile(xml, []byte(fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='%s'/><target dev='vda' bus='virtio'/></disk><video><model type='none'/></video><memballoon model='none'/></devices></domain>`, name, img)), 0o644)
	virsh := func(args ...string) string {
		return sh(t, "virsh", append([]string{"-c", "qemu:///system"}, args...)...)
	}
	virsh("define", xml)
	t.Cleanup(func() {
		exec.Command("virsh", "-c", "qemu:///system", "destroy", name).Run()
		exec.Command("virsh", "-c", "qemu:///system", "undefine", name, "--checkpoints-metadata").Run()
	})
	virsh("start", name)
	tmp := filepath.Join(e.dir, "scratch")
	os.Mkdir(tmp, 0o755)
	capture := func() qemuCaptureJSON {
		out := e.ok("vmvault-capture", "libvirt", "--json", "--tmp-dir", tmp, name)
		var c qemuCaptureJSON
		if err := json.Unmarshal([]byte(out), &c); err != nil {
			t.Fatalf("capture JSON %q: %v", out, err)
		}
		return c
	}
	c1 := capture()
	if c1.Disks[0].Mode != "full" {
		t.Errorf("first capture: %+v", c1.Disks[0])
	}
	virsh("qemu-monitor-command", name, "--hmp", `qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "write -P 0xab 1M 1M"`)
	c2 := capture()
	if d := c2.Disks[0]; d.Mode != "extents" || d.BytesChanged != 1<<20 || d.BytesRead != 1<<20 {
		t.Errorf("incremental: %+v, want 1 MiB changed and read", d)
	}
	virsh("suspend", name) // the image holds what the guest wrote
	want := filepath.Join(e.dir, "want.raw")
	sh(t, "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", img, want)
	got := filepath.Join(e.dir, "got.raw")
	e.ok("vmvault", "restore", c2.ID, "--disk", "vda", "--to", got)
	if fileSHA(t, got) != fileSHA(t, want) {
		t.Error("the restore differs from the domain's disk")
	}
	if x := e.ok("vmvault", "show", c2.ID, "--config"); !strings.Contains(x, "<name>"+name+"</name>") {
		t.Errorf("show --config is not the domain XML:\n%s", x)
	}
	if s := e.ok("vmvault", "show", c2.ID); !strings.Contains(s, "    type:         libvirt") || !strings.Contains(s, "target=vda") {
		t.Errorf("show:\n%s", s)
	}
}

// TestNBDCaptureCLI: vmvault-capture nbd captures a VHDX file served by
// qemu-nbd without converting it; the restore equals qemu-img's raw
// conversion, and a --bitmap incremental of a qcow2 reads only what the
// bitmap marks.
func TestNBDCaptureCLI(t *testing.T) {
	needTools(t, "qemu-img", "qemu-nbd", "qemu-io")
	e := newEnv(t, "--chunk-size", "64KiB")
	raw := filepath.Join(e.dir, "src.raw")
	makeImage(t, raw, 8<<20, 6)
	serve := func(img, format string, extra ...string) (string, func()) {
		sock := filepath.Join(e.dir, fmt.Sprintf("nbd-%d.sock", time.Now().UnixNano()%1e9))
		cmd := exec.Command("qemu-nbd", append(append([]string{"-r", "-t", "-f", format, "-x", "disk", "--socket", sock}, extra...), img)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		stop := func() { cmd.Process.Kill(); cmd.Wait() }
		t.Cleanup(stop)
		for i := 0; i < 400; i++ {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			time.Sleep(25 * time.Millisecond)
		}
		return "nbd+unix:///disk?socket=" + sock, stop
	}
	vhdx := filepath.Join(e.dir, "disk.vhdx")
	sh(t, "qemu-img", "convert", "-f", "raw", "-O", "vhdx", raw, vhdx)
	want := filepath.Join(e.dir, "want.raw")
	sh(t, "qemu-img", "convert", "-f", "vhdx", "-O", "raw", vhdx, want)
	uri, _ := serve(vhdx, "vhdx")
	var c qemuCaptureJSON
	json.Unmarshal([]byte(e.ok("vmvault-capture", "nbd", "--json", "--vm", "hyperv01", "--disk", "disk0="+uri)), &c)
	if e.restoreSHA(c.ID, "disk0") != fileSHA(t, want) {
		t.Error("VHDX restore differs from qemu-img convert -O raw")
	}

	qcow := filepath.Join(e.dir, "disk.qcow2")
	sh(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow)
	sh(t, "qemu-img", "bitmap", "--add", qcow, "vmvault")
	uri, stop := serve(qcow, "qcow2", "-B", "vmvault")
	e.ok("vmvault-capture", "nbd", "--vm", "kvm01", "--disk", "disk0="+uri, "--bitmap", "vmvault")
	stop()
	sh(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x42 2M 64k", qcow)
	uri, _ = serve(qcow, "qcow2", "-B", "vmvault")
	json.Unmarshal([]byte(e.ok("vmvault-capture", "nbd", "--json", "--vm", "kvm01", "--disk", "disk0="+uri, "--bitmap", "vmvault")), &c)
	if d := c.Disks[0]; d.Mode != "extents" || d.BytesRead != 64<<10 {
		t.Errorf("bitmap incremental: %+v", d)
	}
	sh(t, "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", qcow, want)
	if e.restoreSHA(c.ID, "disk0") != fileSHA(t, want) {
		t.Error("qcow2 incremental restore differs from the image")
	}
}

// TestQEMUCaptureInterrupt sends SIGINT to vmvault-capture qemu while it
// reads (the disk's reads are throttled in QEMU, the guest is paused):
// exit 130, no restore point, and QEMU holds no export, job, overlay
// node or extra bitmap, the temp dir is empty, and the next capture is
// incremental. Then `qemu cleanup` finds nothing to do.
func TestQEMUCaptureInterrupt(t *testing.T) {
	needTools(t, "qemu-system-x86_64", "qemu-img")
	e := newEnv(t, "--chunk-size", "64KiB")
	raw := filepath.Join(e.dir, "src.raw")
	makeImage(t, raw, 32<<20, 7)
	img := filepath.Join(e.dir, "vda.qcow2")
	sh(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
	qmp, testQMP := filepath.Join(e.dir, "qmp.sock"), filepath.Join(e.dir, "qmp-test.sock")
	vm := exec.Command("qemu-system-x86_64", "-S", "-machine", "pc,accel=tcg", "-nodefaults", "-display", "none", "-m", "64",
		"-qmp", "unix:"+qmp+",server=on,wait=off", "-qmp", "unix:"+testQMP+",server=on,wait=off",
		"-object", `{"qom-type":"throttle-group","id":"tg0","limits":{"bps-read":8388608}}`,
		"-blockdev", "driver=qcow2,node-name=sys,file.driver=throttle,file.throttle-group=tg0,file.file.driver=file,file.file.filename="+img,
		"-device", "virtio-blk-pci,drive=sys,id=vda")
	var vmOut bytes.Buffer
	vm.Stdout, vm.Stderr = &vmOut, &vmOut
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { vm.Process.Kill(); vm.Wait() }()
	var m *qemu.Monitor
	for i := 0; ; i++ {
		var err error
		if m, err = qemu.DialMonitor(context.Background(), "unix:"+testQMP); err == nil {
			break
		}
		if i == 200 {
			t.Fatalf("QMP: %v\n%s", err, vmOut.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
	defer m.Close()
	tmp := filepath.Join(e.dir, "tmp")
	os.Mkdir(tmp, 0o700)
	args := []string{"qemu", "--json", "--vm", "vm1", "--qmp", "unix:" + qmp, "--tmp-dir", tmp}
	e.ok("vmvault-capture", args...) // full, 16 MiB of data at 8 MiB/s
	var before []string
	bitmaps := func() []string {
		var nodes []struct {
			NodeName string `json:"node-name"`
			Bitmaps  []struct {
				Name      string `json:"name"`
				Recording bool   `json:"recording"`
			} `json:"dirty-bitmaps"`
		}
		if err := m.Execute(context.Background(), "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, n := range nodes {
			if strings.HasPrefix(n.NodeName, "vmvault-") {
				t.Errorf("node %s left", n.NodeName)
			}
			for _, b := range n.Bitmaps {
				out = append(out, fmt.Sprintf("%s/%s recording=%v", n.NodeName, b.Name, b.Recording))
			}
		}
		var jobs, exports []json.RawMessage
		m.Execute(context.Background(), "query-jobs", nil, &jobs)
		m.Execute(context.Background(), "query-block-exports", nil, &exports)
		if len(jobs)+len(exports) > 0 {
			t.Errorf("jobs %s, exports %s left", jobs, exports)
		}
		return out
	}
	before = bitmaps()

	cmd := exec.Command(filepath.Join(binDir, "vmvault-capture"), append(args, "--full")...)
	cmd.Env = e.environ()
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; !strings.Contains(stderr.String(), "capture plan"); i++ {
		if i == 400 {
			t.Fatalf("no capture plan logged: %s", stderr.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // reading
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("interrupted capture: %v, want exit 130\n%s", err, stderr.String())
	}
	if after := bitmaps(); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Errorf("bitmaps after the interrupt %v, want %v", after, before)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
		t.Errorf("%d temp entries left", len(ents))
	}
	var list []json.RawMessage
	json.Unmarshal([]byte(e.ok("vmvault", "snapshots", "--json")), &list)
	if len(list) != 1 {
		t.Errorf("%d restore points, want 1", len(list))
	}
	var c qemuCaptureJSON
	json.Unmarshal([]byte(e.ok("vmvault-capture", args...)), &c)
	if c.Disks[0].Mode != "extents" {
		t.Errorf("capture after the interrupt: %+v", c.Disks[0])
	}
	if out := e.ok("vmvault-capture", "qemu", "cleanup", "--qmp", "unix:"+qmp); out != "nothing to clean up\n" {
		t.Errorf("cleanup after clean captures: %q", out)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

package qemu

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/repotest"
)

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required in CI", tool)
			}
			t.Skipf("skipping: %s not installed (apt-get install qemu-system-x86 qemu-utils)", tool)
		}
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// testDisk is a disk image of a test VM and a mirror of its content: what
// the guest would read, kept up to date by write.
type testDisk struct {
	id     string // device id (vd0, ...) and node name (n-vd0)
	path   string
	format string
	mirror []byte
}

// newDisk makes an image of size bytes (format qcow2 or raw) holding
// random data in its first half and zeroes (holes) after.
func newDisk(t *testing.T, dir, id, format string, size int64, seed uint64) *testDisk {
	t.Helper()
	d := &testDisk{id: id, path: filepath.Join(dir, id+"."+format), format: format, mirror: make([]byte, size)}
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := int64(0); i < size/2; i++ {
		d.mirror[i] = byte(rng.Uint32())
	}
	raw := filepath.Join(dir, id+".src")
	if err := os.WriteFile(raw, d.mirror, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "convert", "-f", "raw", "-O", format, raw, d.path)
	os.Remove(raw)
	return d
}

// testVM is a qemu-system-x86_64 process (TCG, paused: no guest code
// runs) with virtio disks and a QMP socket for the capture, and one for
// the test.
type testVM struct {
	t     *testing.T
	dir   string
	qmp   string // the capture's monitor
	m     *Monitor
	disks []*testDisk
	cmd   *exec.Cmd
	done  chan struct{}
	out   bytes.Buffer
}

func startVM(t *testing.T, dir string, disks ...*testDisk) *testVM {
	t.Helper()
	needTools(t, "qemu-system-x86_64", "qemu-img")
	v := &testVM{t: t, dir: dir, qmp: filepath.Join(dir, "qmp.sock"), disks: disks, done: make(chan struct{})}
	testQMP := filepath.Join(dir, "qmp-test.sock")
	os.Remove(v.qmp)
	os.Remove(testQMP)
	args := []string{"-S", "-machine", "pc,accel=tcg", "-nodefaults", "-display", "none", "-m", "64",
		"-name", "testvm", "-uuid", "5b5c2a56-8a3e-4a8e-9f0c-0123456789ab",
		"-qmp", "unix:" + v.qmp + ",server=on,wait=off", "-qmp", "unix:" + testQMP + ",server=on,wait=off"}
	for _, d := range disks {
		args = append(args, "-blockdev", fmt.Sprintf("driver=%s,node-name=n-%s,file.driver=file,file.filename=%s", d.format, d.id, d.path),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=n-%s,id=%s", d.id, d.id))
	}
	v.cmd = exec.Command("qemu-system-x86_64", args...)
	v.cmd.Stdout, v.cmd.Stderr = &v.out, &v.out
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { v.cmd.Wait(); close(v.done) }()
	t.Cleanup(func() { v.kill() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		m, err := DialMonitor(ctx, testQMP)
		if err == nil {
			v.m = m
			return v
		}
		select {
		case <-v.done:
			t.Fatalf("qemu-system-x86_64 exited: %s", v.out.String())
		case <-ctx.Done():
			t.Fatalf("QMP: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// kill ends QEMU with SIGKILL, as a crash would.
func (v *testVM) kill() {
	if v.m != nil {
		v.m.Close()
		v.m = nil
	}
	v.cmd.Process.Signal(syscall.SIGKILL)
	<-v.done
}

// quit shuts QEMU down cleanly (persistent bitmaps are saved).
func (v *testVM) quit() {
	v.t.Helper()
	v.m.Execute(context.Background(), "quit", nil, nil)
	select {
	case <-v.done:
	case <-time.After(30 * time.Second):
		v.t.Fatal("QEMU did not quit")
	}
	v.m.Close()
	v.m = nil
}

// write writes pattern p to [off, off+n) of disk i as the guest would
// (HMP qemu-io on the device) and updates the mirror.
func (v *testVM) write(i int, off, n int64, p byte) {
	v.t.Helper()
	d := v.disks[i]
	cmd := fmt.Sprintf(`qemu-io -d /machine/peripheral/%s/virtio-backend "write -P %d %d %d"`, d.id, p, off, n)
	var out string
	if err := v.m.Execute(context.Background(), "human-monitor-command", map[string]any{"command-line": cmd}, &out); err != nil {
		v.t.Fatalf("%s: %v", cmd, err)
	}
	if strings.Contains(out, "rror") {
		v.t.Fatalf("%s: %s", cmd, out)
	}
	for j := off; j < off+n; j++ {
		d.mirror[j] = p
	}
}

// clean checks that QEMU holds nothing of a capture but one recording
// vmvault bitmap per disk (whose name it returns), and no temp files are
// left in tmp.
func (v *testVM) clean(tmp string) []string {
	v.t.Helper()
	st, err := queryState(context.Background(), v.m)
	if err != nil {
		v.t.Fatal(err)
	}
	if left := st.leftovers(); len(left) > 0 {
		v.t.Errorf("QEMU holds leftovers: %v", left)
	}
	var names []string
	for _, d := range v.disks {
		n := st.node("n-" + d.id)
		var own []string
		for _, b := range n.Bitmaps {
			if strings.HasPrefix(b.Name, prefix) {
				own = append(own, b.Name)
				if !b.Recording {
					v.t.Errorf("disk %s: bitmap %s is not recording", d.id, b.Name)
				}
			}
		}
		if len(own) != 1 {
			v.t.Errorf("disk %s: vmvault bitmaps %v, want exactly one", d.id, own)
			names = append(names, "")
			continue
		}
		names = append(names, own[0])
	}
	var exports []exportInfo
	if v.m.Execute(context.Background(), "query-block-exports", nil, &exports); len(exports) > 0 {
		v.t.Errorf("exports left: %+v", exports)
	}
	ents, _ := os.ReadDir(tmp)
	for _, e := range ents {
		v.t.Errorf("temp file left: %s", e.Name())
	}
	return names
}

type env struct {
	t   *testing.T
	dir string
	tmp string
	r   *repo.Repository
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, dir: t.TempDir()}
	e.tmp = filepath.Join(e.dir, "tmp")
	os.Mkdir(e.tmp, 0o700)
	e.r = repotest.New(t, repotest.Options{ChunkSize: 64 << 10})
	return e
}

func (e *env) opts(v *testVM) Options {
	return Options{Repo: e.r, VM: "testvm", Monitor: "unix:" + v.qmp, TmpDir: e.tmp}
}

// check compares every disk of rp with the mirrors in want.
func (e *env) check(rp *repo.RestorePoint, want map[string][]byte) {
	e.t.Helper()
	for name, w := range want {
		d := repotest.OpenDisk(e.t, e.r, rp, name)
		got := repotest.ReadAll(e.t, d)
		d.Close()
		if !bytes.Equal(got, w) {
			for i := range got {
				if got[i] != w[i] {
					e.t.Fatalf("restore point %s disk %s differs from the disk as of its transaction, first at byte %d", rp.ID.Short(), name, i)
				}
			}
			e.t.Fatalf("restore point %s disk %s: %d bytes, want %d", rp.ID.Short(), name, len(got), len(w))
		}
	}
}

func snapshot(v *testVM) map[string][]byte {
	out := map[string][]byte{}
	for _, d := range v.disks {
		out[d.id] = bytes.Clone(d.mirror)
	}
	return out
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, nil))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

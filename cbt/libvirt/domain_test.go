package libvirt

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

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
			t.Skipf("skipping: %s not installed (apt-get install libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils)", tool)
		}
	}
}

// needLibvirt returns a connection to libvirtd, starting virtlogd and
// libvirtd by hand when they are not running (no systemd here) and this
// runs as root.
func needLibvirt(t *testing.T) *golibvirt.Libvirt {
	t.Helper()
	needTools(t, "virsh", "qemu-system-x86_64", "qemu-img")
	if l, err := Connect(""); err == nil {
		t.Cleanup(func() { l.Disconnect() })
		return l
	}
	skip := func(format string, args ...any) {
		if os.Getenv("CI") != "" {
			t.Fatalf(format, args...)
		}
		t.Skipf("skipping: "+format, args...)
	}
	if os.Geteuid() != 0 {
		skip("libvirtd is not running and starting it needs root")
	}
	for _, d := range []string{"/usr/sbin/virtlogd", "/usr/sbin/libvirtd"} {
		if out, err := exec.Command(d, "-d").CombinedOutput(); err != nil {
			skip("%s -d: %v: %s", d, err, out)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		l, err := Connect("")
		if err == nil {
			t.Cleanup(func() { l.Disconnect() })
			return l
		}
		if time.Now().After(deadline) {
			skip("libvirtd does not answer: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// testDomain is a running TCG domain without an OS (it sits in SeaBIOS)
// with virtio qcow2 disks, and mirrors of their content.
type testDomain struct {
	t       *testing.T
	l       *golibvirt.Libvirt
	dom     golibvirt.Domain
	name    string
	dir     string
	targets []string
	mirrors map[string][]byte
}

// traversable makes dir and its parents up to /tmp usable by QEMU's user.
func traversable(t *testing.T, dir string) {
	for d := dir; d != "/" && d != "/tmp" && d != "."; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func newDomain(t *testing.T, l *golibvirt.Libvirt, sizes ...int64) *testDomain {
	t.Helper()
	dir := t.TempDir()
	traversable(t, dir)
	td := &testDomain{t: t, l: l, dir: dir, name: fmt.Sprintf("vmvault-test-%d", rand.Uint32()), mirrors: map[string][]byte{}}
	var disks strings.Builder
	for i, size := range sizes {
		target := fmt.Sprintf("vd%c", 'a'+i)
		td.targets = append(td.targets, target)
		m := make([]byte, size)
		rng := rand.New(rand.NewPCG(uint64(i), 9))
		for j := int64(0); j < size/2; j++ {
			m[j] = byte(rng.Uint32())
		}
		td.mirrors[target] = m
		raw := filepath.Join(dir, target+".raw")
		os.WriteFile(raw, m, 0o644)
		img := filepath.Join(dir, target+".qcow2")
		run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
		os.Remove(raw)
		fmt.Fprintf(&disks, `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='%s' bus='virtio'/></disk>`, img, target)
	}
	xml := fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>%s<video><model type='none'/></video><memballoon model='none'/></devices></domain>`, td.name, disks.String())
	dom, err := l.DomainDefineXML(xml)
	if err != nil {
		t.Fatal(err)
	}
	td.dom = dom
	t.Cleanup(func() {
		l.DomainDestroy(dom)
		// the checkpoints' metadata goes with the domain
		l.DomainUndefineFlags(dom, golibvirt.DomainUndefineCheckpointsMetadata)
	})
	if err := l.DomainCreate(dom); err != nil {
		t.Fatal(err)
	}
	return td
}

// write writes pattern p at [off, off+n) of a disk the way the guest
// would (HMP qemu-io on the device) and updates its mirror.
func (td *testDomain) write(target string, off, n int64, p byte) {
	td.t.Helper()
	cmd := fmt.Sprintf(`qemu-io -d /machine/peripheral/virtio-disk%d/virtio-backend "write -P %d %d %d"`, strings.Index("abcdefgh", target[2:]), p, off, n)
	out, err := td.l.QEMUDomainMonitorCommand(td.dom, cmd, 1)
	if err != nil || strings.Contains(out, "rror") {
		td.t.Fatalf("%s: %v %s", cmd, err, out)
	}
	m := td.mirrors[target]
	for i := off; i < off+n; i++ {
		m[i] = p
	}
}

func (td *testDomain) snapshot() map[string][]byte {
	out := map[string][]byte{}
	for k, v := range td.mirrors {
		out[k] = bytes.Clone(v)
	}
	return out
}

// checkpoints returns the domain's checkpoint names, oldest first, each
// with its parent ("name<parent").
func (td *testDomain) checkpoints() []string {
	td.t.Helper()
	s := &session{l: td.l, dom: td.dom, name: td.name}
	cps, err := s.checkpoints()
	if err != nil {
		td.t.Fatal(err)
	}
	var out []string
	for _, c := range cps {
		p := ""
		if c.x.Parent != nil {
			p = c.x.Parent.Name
		}
		out = append(out, c.c.Name+"<"+p)
	}
	return out
}

func check(t *testing.T, r *repo.Repository, rp *repo.RestorePoint, want map[string][]byte) {
	t.Helper()
	for name, w := range want {
		d := repotest.OpenDisk(t, r, rp, name)
		got := repotest.ReadAll(t, d)
		d.Close()
		if !bytes.Equal(got, w) {
			t.Fatalf("restore point %s disk %s differs from the disk as of the backup's start", rp.ID.Short(), name)
		}
	}
}

func stats(t *testing.T, rp *repo.RestorePoint, name string) (mode, reason string, changed, read int64) {
	t.Helper()
	d, err := rp.Disk(name)
	if err != nil {
		t.Fatal(err)
	}
	return d.Stats.Mode, d.Stats.Reason, d.Stats.BytesChanged, d.Stats.BytesRead
}

package libvirt

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vmvault/vmvault/repo/repotest"
)

// TestDomainChain captures a running two-disk domain under a real
// libvirtd: a full capture, then incrementals after guest writes (also
// writes right after the backup began, which belong to the next one);
// checkpoints chain, and those of forgotten restore points are deleted
// at the next capture; the domain XML is stored.
func TestDomainChain(t *testing.T) {
	l := needLibvirt(t)
	td := newDomain(t, l, 32<<20, 16<<20)
	r := repotest.New(t, repotest.Options{ChunkSize: 64 << 10})
	tmp := t.TempDir()
	traversable(t, tmp)
	var want map[string][]byte
	o := Options{Repo: r, Domain: td.name, TmpDir: tmp, afterBegin: func() {
		want = td.snapshot()
		td.write("vda", 7<<20, 4096, 0xc1)
	}}
	rp1, err := CaptureDomain(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	check(t, r, rp1, want)
	for _, d := range td.targets {
		if mode, reason, _, _ := stats(t, rp1, d); mode != "full" {
			t.Errorf("first capture of %s: %s (%s)", d, mode, reason)
		}
	}
	var cfg Config
	if err := json.Unmarshal(rp1.Config, &cfg); err != nil || cfg.Name != td.name || len(cfg.Disks) != 2 || !strings.Contains(cfg.DomainXML, "<domain") || cfg.MemoryBytes != 64<<20 {
		t.Errorf("config: %v %+v", err, cfg)
	}
	if rp1.Lineage != LineagePrefix+cfg.UUID {
		t.Errorf("lineage %q", rp1.Lineage)
	}
	ids := []string{rp1.ID.String()}
	for round := 0; round < 3; round++ {
		td.write("vda", int64(round)*(5<<20)+4096, 100<<10, byte(round+1))
		if round != 1 {
			td.write("vdb", int64(round)*(3<<20), 4096, byte(round+1))
		}
		rp, err := CaptureDomain(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		check(t, r, rp, want)
		ids = append(ids, rp.ID.String())
		for _, d := range td.targets {
			mode, reason, changed, read := stats(t, rp, d)
			if mode != "extents" || float64(read) > 1.2*float64(changed) {
				t.Errorf("round %d disk %s: %s (%s), read %d for %d dirty", round, d, mode, reason, read, changed)
			}
		}
	}
	cps := td.checkpoints()
	if len(cps) != 4 {
		t.Fatalf("checkpoints %v, want one per restore point", cps)
	}
	for i := 1; i < len(cps); i++ {
		if parent := strings.Split(cps[i], "<")[1]; parent != strings.Split(cps[i-1], "<")[0] {
			t.Errorf("checkpoint %s does not chain to %s", cps[i], cps[i-1])
		}
	}
	// retention forgets the two oldest restore points: their checkpoints go
	if err := r.Forget(context.Background(), ids[:2]); err != nil {
		t.Fatal(err)
	}
	td.write("vdb", 9<<20, 4096, 0x99)
	rp, err := CaptureDomain(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	check(t, r, rp, want)
	if mode, _, changed, _ := stats(t, rp, "vdb"); mode != "extents" || changed != 64<<10 {
		t.Errorf("after pruning: vdb %s with %d dirty bytes", mode, changed)
	}
	if got := td.checkpoints(); len(got) != 3 || strings.Split(got[0], "<")[0] != strings.Split(cps[2], "<")[0] {
		t.Errorf("checkpoints after forgetting two restore points: %v (before: %v)", got, cps)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
		t.Errorf("%d scratch entries left", len(ents))
	}
}

type failingReader struct {
	r io.ReaderAt
	n atomic.Int64
}

var errInjected = errors.New("injected read error")

func (f *failingReader) ReadAt(p []byte, off int64) (int, error) {
	if f.n.Add(int64(len(p))) > 256<<10 {
		return 0, errInjected
	}
	return f.r.ReadAt(p, off)
}

// TestDomainFailureAndLostMetadata: a failed capture deletes its
// checkpoint (libvirt merges its changes into the previous one), so the
// next capture is incremental and has every write; a domain whose
// checkpoint metadata was lost gets full captures with the reason.
func TestDomainFailureAndLostMetadata(t *testing.T) {
	l := needLibvirt(t)
	td := newDomain(t, l, 16<<20)
	r := repotest.New(t, repotest.Options{ChunkSize: 64 << 10})
	tmp := t.TempDir()
	traversable(t, tmp)
	o := Options{Repo: r, Domain: td.name, TmpDir: tmp}
	if _, err := CaptureDomain(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	before := td.checkpoints()
	td.write("vda", 1<<20, 4096, 1)
	bad := o
	bad.Full = true
	bad.wrapReader = func(_ string, r io.ReaderAt) io.ReaderAt { return &failingReader{r: r} }
	bad.afterBegin = func() { td.write("vda", 2<<20, 4096, 2) }
	if _, err := CaptureDomain(context.Background(), bad); !errors.Is(err, errInjected) {
		t.Fatalf("failing capture: %v", err)
	}
	if got := td.checkpoints(); strings.Join(got, ",") != strings.Join(before, ",") {
		t.Errorf("checkpoints after a failure %v, want %v", got, before)
	}
	var want map[string][]byte
	o.afterBegin = func() { want = td.snapshot() }
	rp, err := CaptureDomain(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	check(t, r, rp, want)
	if mode, reason, changed, _ := stats(t, rp, "vda"); mode != "extents" || changed != 2*64<<10 {
		t.Errorf("after the failure: %s (%s) %d dirty bytes, want both writes", mode, reason, changed)
	}

	// the checkpoint metadata is lost (the bitmaps stay in the image)
	for _, c := range td.checkpoints() {
		run(t, "virsh", "-c", "qemu:///system", "checkpoint-delete", td.name, strings.Split(c, "<")[0], "--metadata")
	}
	td.write("vda", 3<<20, 4096, 3)
	rp, err = CaptureDomain(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	check(t, r, rp, want)
	if mode, reason, _, _ := stats(t, rp, "vda"); mode != "dedup" || !strings.Contains(reason, "metadata was lost") {
		t.Errorf("lost checkpoint metadata: %s (%s), want a full read with the reason", mode, reason)
	}
	td.write("vda", 4<<20, 4096, 4)
	rp, err = CaptureDomain(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	check(t, r, rp, want)
	if mode, reason, _, _ := stats(t, rp, "vda"); mode != "extents" {
		t.Errorf("after the full capture: %s (%s)", mode, reason)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
		t.Errorf("%d scratch entries left", len(ents))
	}
	_ = filepath.Join
}

// TestVirtnbdbackupPeer: a domain virtnbdbackup already backs up (with
// its own checkpoint chain) is captured by vmvault too, incrementally;
// virtnbdbackup's checkpoints are never touched. (virtnbdbackup itself
// refuses to run on a domain with checkpoints of another tool.)
func TestVirtnbdbackupPeer(t *testing.T) {
	l := needLibvirt(t)
	needTools(t, "virtnbdbackup")
	td := newDomain(t, l, 16<<20)
	r := repotest.New(t, repotest.Options{ChunkSize: 64 << 10})
	tmp := t.TempDir()
	traversable(t, tmp)
	vbk := filepath.Join(t.TempDir(), "vbk")
	run(t, "virtnbdbackup", "-d", td.name, "-l", "full", "-o", vbk)
	td.write("vda", 1<<20, 4096, 1)
	run(t, "virtnbdbackup", "-d", td.name, "-l", "inc", "-o", vbk)
	theirs := td.checkpoints()
	var want map[string][]byte
	o := Options{Repo: r, Domain: td.name, TmpDir: tmp, afterBegin: func() { want = td.snapshot() }}
	rp, err := CaptureDomain(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	check(t, r, rp, want)
	if mode, reason, _, _ := stats(t, rp, "vda"); mode != "full" {
		t.Errorf("first capture: %s (%s)", mode, reason)
	}
	for i := 0; i < 2; i++ {
		td.write("vda", int64(2+i)<<20, 4096, byte(2+i))
		rp, err = CaptureDomain(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		check(t, r, rp, want)
		if mode, reason, changed, _ := stats(t, rp, "vda"); mode != "extents" || changed != 64<<10 {
			t.Errorf("incremental %d: %s (%s), %d dirty bytes", i, mode, reason, changed)
		}
	}
	all := strings.Join(td.checkpoints(), ",")
	for _, c := range theirs {
		if !strings.Contains(all, strings.Split(c, "<")[0]+"<") {
			t.Errorf("virtnbdbackup's checkpoint %s is gone: %s", c, all)
		}
	}
}

package main

// Day-2 operations: gc and prune while a VM runs from a backup, and
// reading a repository this host may not write.

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/nbd/client"
)

// TestGCBesideServe: prune and gc run while 'vmvault serve' serves; a
// restore point forgotten while a client reads it keeps serving correct
// data until the client disconnects, and gc removes it after that.
func TestGCBesideServe(t *testing.T) {
	e := newEnv(t, "--chunk-size", "64KiB")
	src := filepath.Join(e.dir, "disk.raw")
	first := makeImage(t, src, 3<<20, 21)
	id1 := e.capture("--vm", "web01", "--disk", "disk0="+src).ID
	makeImage(t, src, 3<<20, 22)
	e.capture("--vm", "web01", "--disk", "disk0="+src)

	s := e.serve()
	defer s.stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, s.uri("web01/"+id1+"/disk0"), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	half := make([]byte, len(first)/2)
	if _, err := c.ReadAt(half, 0); err != nil || !bytes.Equal(half, first[:len(half)]) {
		t.Fatalf("read before forget: %v", err)
	}

	out := e.ok("vmvault", "prune", "--keep-last", "1", "--dry-run", "--json")
	var plan struct {
		Forget struct {
			RestorePoints []struct {
				ID   string
				Keep bool
			} `json:"restore_points"`
		}
		GC struct {
			PinnedIndexes int `json:"pinned_indexes"`
		}
	}
	// The served restore point is pinned: even forgotten, gc would keep it.
	if err := json.Unmarshal([]byte(out), &plan); err != nil || len(plan.Forget.RestorePoints) != 2 || plan.GC.PinnedIndexes != 1 {
		t.Fatalf("prune --dry-run beside serve: %v\n%s", err, out)
	}
	e.ok("vmvault", "forget", id1)
	var gc struct {
		RemovedChunks int `json:"removed_chunks"`
		PinnedIndexes int `json:"pinned_indexes"`
	}
	if err := json.Unmarshal([]byte(e.ok("vmvault", "gc", "--grace", "0", "--json")), &gc); err != nil {
		t.Fatal(err)
	}
	if gc.PinnedIndexes != 1 || gc.RemovedChunks != 0 {
		t.Fatalf("gc while the forgotten restore point is served: %+v", gc)
	}
	rest := make([]byte, len(first)-len(half))
	if _, err := c.ReadAt(rest, int64(len(half))); err != nil || !bytes.Equal(rest, first[len(half):]) {
		t.Fatalf("read after forget and gc: %v", err)
	}
	c.Close()

	// Once the client is gone its restore point is unpinned.
	for i := 0; ; i++ {
		if err := json.Unmarshal([]byte(e.ok("vmvault", "gc", "--grace", "0", "--json")), &gc); err != nil {
			t.Fatal(err)
		}
		if gc.RemovedChunks > 0 {
			break
		}
		if i == 50 {
			t.Fatalf("gc never removed the forgotten restore point's chunks: %+v", gc)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := client.Dial(ctx, s.uri("web01/"+id1+"/disk0"), client.Options{}); err == nil {
		t.Fatal("a forgotten restore point is still exported")
	}
	e.ok("vmvault", "verify")
}

// TestReadOnlyRepository: restore, verify, ls, cat and snapshots work on a
// repository this host cannot write, and say that no lock was taken; a
// capture fails clearly.
func TestReadOnlyRepository(t *testing.T) {
	needRoot(t) // root ignores file permissions: a read-only bind mount
	e := newEnv(t, "--chunk-size", "64KiB")
	src := filepath.Join(e.dir, "disk.raw")
	img := makeImage(t, src, 2<<20, 23)
	id := e.capture("--vm", "web01", "--disk", "disk0="+src).ID
	ro := filepath.Join(e.dir, "ro")
	os.Mkdir(ro, 0o700)
	sh(t, "mount", "--bind", e.repo, ro)
	t.Cleanup(func() { sh(t, "umount", ro) })
	sh(t, "mount", "-o", "remount,bind,ro", ro)
	rw := e.repo
	e.repo = ro
	defer func() { e.repo = rw }()

	out := filepath.Join(e.dir, "restored.raw")
	_, errOut, code := e.run("vmvault", "restore", id[:8], "--to", out)
	if code != 0 || !strings.Contains(errOut, "read-only") {
		t.Fatalf("restore from a read-only repository: exit %d\n%s", code, errOut)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, img) {
		t.Fatal("restore differs")
	}
	if o, errOut, code := e.run("vmvault", "verify"); code != 0 || !strings.Contains(o, "nothing was recorded") {
		t.Fatalf("verify of a read-only repository: exit %d\n%s%s", code, o, errOut)
	}
	e.ok("vmvault", "snapshots")
	if o := e.ok("vmvault", "partitions", id[:8]+":disk0"); !strings.Contains(o, "partition table") {
		t.Fatalf("partitions: %s", o)
	}
	if _, errOut, code := e.run("vmvault-capture", "file", "--vm", "web01", "--disk", "disk0="+src); code == 0 || !strings.Contains(errOut, "read-only") {
		t.Fatalf("capture into a read-only repository: exit %d\n%s", code, errOut)
	}
}

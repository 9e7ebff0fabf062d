package main

// End-to-end tests of the built binaries: init, capture (full, dedup,
// extents), restore, verify after corruption, forget/prune/gc, exit codes,
// and SIGKILL of captures at random moments.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmvault/vmvault/nbd/overlay"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/backend/local"
	"github.com/vmvault/vmvault/repo/backend/pack"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vmvault-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/vmvault/vmvault/cmd/vmvault", "github.com/vmvault/vmvault/cmd/vmvault-capture")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type env struct {
	t    *testing.T
	dir  string
	repo string
	// extra is more environment for every command (credentials of a
	// repository on S3).
	extra []string
}

// environ is the environment commands run with.
func (e *env) environ() []string {
	return append(append(os.Environ(), "VMVAULT_REPOSITORY="+e.repo), e.extra...)
}

func newEnv(t *testing.T, initArgs ...string) *env {
	e := &env{t: t, dir: t.TempDir()}
	e.repo = filepath.Join(e.dir, "repo")
	e.ok("vmvault", append([]string{"init"}, initArgs...)...)
	return e
}

// run runs a binary with the repository in the environment and returns
// stdout, stderr and the exit code.
func (e *env) run(bin string, args ...string) (string, string, int) {
	e.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, bin), args...)
	cmd.Env = e.environ()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("%s %v: %v", bin, args, err)
	}
	return out.String(), errb.String(), code
}

func (e *env) ok(bin string, args ...string) string {
	e.t.Helper()
	out, errs, code := e.run(bin, args...)
	if code != 0 {
		e.t.Fatalf("%s %s: exit %d\n%s%s", bin, strings.Join(args, " "), code, out, errs)
	}
	return out
}

// image writes a deterministic disk image mixing random, text and zero data.
func makeImage(t *testing.T, path string, size int, seed uint64) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 3))
	b := make([]byte, size)
	for off := 0; off < size; off += 100_000 {
		end := min(off+100_000, size)
		switch rng.IntN(3) {
		case 0:
			for i := off; i < end; i++ {
				b[i] = byte(rng.Uint32())
			}
		case 1:
			copy(b[off:end], bytes.Repeat([]byte(fmt.Sprintf("line %d of some log text\n", off)), 100_000/20))
		}
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

func sha(b []byte) string { s := sha256.Sum256(b); return fmt.Sprintf("%x", s) }

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha(b)
}

type captureJSON struct {
	ID    string `json:"id"`
	Disks []struct {
		Name        string `json:"name"`
		Mode        string `json:"mode"`
		BytesRead   int64  `json:"bytes_read"`
		NewChunks   int64  `json:"new_chunks"`
		BytesStored int64  `json:"bytes_stored"`
	} `json:"disks"`
}

func (e *env) capture(args ...string) captureJSON {
	e.t.Helper()
	out := e.ok("vmvault-capture", append([]string{"file", "--json"}, args...)...)
	var c captureJSON
	if err := json.Unmarshal([]byte(out), &c); err != nil {
		e.t.Fatalf("capture JSON %q: %v", out, err)
	}
	return c
}

func (e *env) restoreSHA(rp, disk string) string {
	e.t.Helper()
	out := filepath.Join(e.dir, fmt.Sprintf("restore-%d.img", time.Now().UnixNano()))
	e.ok("vmvault", "restore", rp, "--disk", disk, "--to", out)
	defer os.Remove(out)
	return fileSHA(e.t, out)
}

func TestCaptureRestoreRoundTrips(t *testing.T) {
	e := newEnv(t, "--chunk-size", "64KiB")
	img := filepath.Join(e.dir, "disk.img")
	const size = 5*1024*1024 + 12345 // not a multiple of the chunk size
	v1 := makeImage(t, img, size, 1)
	c1 := e.capture("--vm", "web01", "--disk", "disk0="+img, "--tag", "first")
	if c1.Disks[0].Mode != "full" {
		t.Errorf("first capture mode %q", c1.Disks[0].Mode)
	}

	// Dedup incremental after two small changes.
	b := append([]byte(nil), v1...)
	copy(b[100:], "changed")
	copy(b[size-3:], "end")
	os.WriteFile(img, b, 0o600)
	c2 := e.capture("--vm", "web01", "--disk", "disk0="+img)
	if d := c2.Disks[0]; d.Mode != "dedup" || d.NewChunks != 2 {
		t.Errorf("dedup incremental: %+v, want 2 new chunks", d)
	}

	// Extents incremental: a change outside the list stays invisible,
	// proving only the listed ranges are read.
	v3 := append([]byte(nil), b...)
	copy(v3[2*1024*1024:], bytes.Repeat([]byte{0x5a}, 70000))
	os.WriteFile(img, v3, 0o600)
	ext := filepath.Join(e.dir, "changed.txt")
	os.WriteFile(ext, []byte(fmt.Sprintf("%d\t%d\n", 2*1024*1024, 70000)), 0o600)
	c3 := e.capture("--vm", "web01", "--disk", "disk0="+img, "--changed-extents", ext)
	if d := c3.Disks[0]; d.Mode != "extents" || d.BytesRead != 2*65536 {
		t.Errorf("extents incremental: %+v, want 2 chunks read", d)
	}
	for _, c := range []struct {
		rp   string
		want []byte
	}{{c1.ID, v1}, {c2.ID[:10], b}, {"web01@latest", v3}} {
		if got := e.restoreSHA(c.rp, "disk0"); got != sha(c.want) {
			t.Errorf("restore %s: sha256 differs from the source as of its capture", c.rp)
		}
	}

	// snapshots --json carries the documented fields.
	var list []map[string]any
	if err := json.Unmarshal([]byte(e.ok("vmvault", "snapshots", "--json")), &list); err != nil || len(list) != 3 {
		t.Fatalf("snapshots --json: %v, %d entries", err, len(list))
	}
	for _, k := range []string{"id", "vm", "time", "tags", "disks"} {
		if _, ok := list[0][k]; !ok {
			t.Errorf("snapshots --json lacks %q", k)
		}
	}
	if _, err := time.Parse(time.RFC3339, list[0]["time"].(string)); err != nil {
		t.Errorf("time not RFC 3339: %v", err)
	}
	if tags := list[0]["tags"].([]any); len(tags) != 1 || tags[0] != "first" {
		t.Errorf("tags = %v", tags)
	}
	if out := e.ok("vmvault", "snapshots", "--tag", "first"); !strings.Contains(out, "1 restore points") {
		t.Errorf("tag filter: %s", out)
	}
	// Sparse restore: the zero regions are holes.
	out := filepath.Join(e.dir, "sparse.img")
	e.ok("vmvault", "restore", "web01@latest", "--to", out)
	var st syscall.Stat_t
	if err := syscall.Stat(out, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 >= size {
		t.Errorf("restore not sparse: %d bytes allocated for %d", st.Blocks*512, size)
	}
	if _, _, code := e.run("vmvault", "restore", "web01@latest", "--to", out); code == 0 {
		t.Error("restore over an existing file without --overwrite succeeded")
	}
}

func TestCorruptionIsNamed(t *testing.T) {
	e := newEnv(t, "--chunk-size", "64KiB")
	imgA, imgB := filepath.Join(e.dir, "a.img"), filepath.Join(e.dir, "b.img")
	makeImage(t, imgA, 2<<20, 10)
	vb := makeImage(t, imgB, 2<<20, 20)
	ca := e.capture("--vm", "a", "--disk", "disk0="+imgA)
	e.capture("--vm", "b", "--disk", "disk0="+imgB)
	// Corrupt one chunk only A has.
	flipChunkByte(t, e.repo, uniqueChunk(t, e.repo, ca.ID, "disk0"), 40)

	out, _, code := e.run("vmvault", "verify")
	if code != 3 || !strings.Contains(out, "DAMAGED restore point "+ca.ID[:8]) || !strings.Contains(out, "offset ") {
		t.Fatalf("verify after corruption: exit %d\n%s", code, out)
	}
	if strings.Contains(out, "(b @") {
		t.Errorf("verify names the undamaged restore point:\n%s", out)
	}
	_, errs, code := e.run("vmvault", "restore", ca.ID, "--to", filepath.Join(e.dir, "x.img"))
	if code != 3 || !strings.Contains(errs, "offset") || !strings.Contains(errs, ca.ID[:8]) {
		t.Errorf("restore of damaged restore point: exit %d: %s", code, errs)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "x.img")); err == nil {
		t.Error("failed restore left a complete-looking image")
	}
	if got := e.restoreSHA("b@latest", "disk0"); got != sha(vb) {
		t.Error("undamaged restore point differs")
	}
}

func TestRetentionAndGC(t *testing.T) {
	e := newEnv(t, "--chunk-size", "64KiB")
	img := filepath.Join(e.dir, "d.img")
	var ids []string
	for i := 0; i < 4; i++ {
		makeImage(t, img, 1<<20, uint64(100+i))
		ids = append(ids, e.capture("--vm", "vm1", "--disk", "d="+img).ID)
	}
	out := e.ok("vmvault", "prune", "--keep-last", "2", "--dry-run", "--grace", "0s")
	if strings.Count(out, "  remove\n") != 2 || !strings.Contains(out, "would remove 2 restore points") || strings.Contains(out, "would remove 0 chunks") {
		t.Errorf("prune --dry-run plan:\n%s", out)
	}
	if n := len(strings.Split(strings.TrimSpace(e.ok("vmvault", "snapshots")), "\n")); n != 6 {
		t.Errorf("dry run removed something: %d lines", n)
	}
	out = e.ok("vmvault", "prune", "--keep-last", "2", "--grace", "0s")
	if !strings.Contains(out, "removed 2 restore points") || !strings.Contains(out, "removed ") {
		t.Errorf("prune:\n%s", out)
	}
	if _, _, code := e.run("vmvault", "show", ids[0][:12]); code == 0 {
		t.Error("pruned restore point still shown")
	}
	e.ok("vmvault", "verify")
	e.ok("vmvault", "restore", ids[3][:8], "--to", filepath.Join(e.dir, "r.img"))
	e.ok("vmvault", "forget", ids[2][:8])
	st := e.ok("vmvault", "stats", "--json")
	var s map[string]any
	json.Unmarshal([]byte(st), &s)
	if s["restore_points"].(float64) != 1 || s["unreferenced_chunks"].(float64) == 0 {
		t.Errorf("stats after forget: %s", st)
	}
	e.ok("vmvault", "gc", "--grace", "0s")
	json.Unmarshal([]byte(e.ok("vmvault", "stats", "--json")), &s)
	if s["unreferenced_chunks"].(float64) != 0 {
		t.Errorf("gc left unreferenced chunks")
	}
}

func TestExitCodes(t *testing.T) {
	e := &env{t: t, dir: t.TempDir()}
	e.repo = filepath.Join(e.dir, "nothing")
	cases := []struct {
		args []string
		code int
	}{
		{[]string{"snapshots"}, 10},
		{[]string{"snapshots", "--repo", "local:" + e.repo}, 10},
		{[]string{"snapshots", "--repo", "s3:bucket/x"}, 2},
		{[]string{"init", "--repo", "sftp:user@host:/srv"}, 2},
		{[]string{"snapshots", "--no-such-flag"}, 2},
		{[]string{"restore"}, 2},
		{[]string{"no-such-command"}, 2},
	}
	for _, c := range cases {
		if _, errs, code := e.run("vmvault", c.args...); code != c.code {
			t.Errorf("vmvault %v: exit %d, want %d (%s)", c.args, code, c.code, errs)
		}
	}
	e2 := newEnv(t)
	if out := e2.ok("vmvault", "snapshots", "--json", "--repo", "local:"+e2.repo); strings.TrimSpace(out) != "[]" {
		t.Errorf("snapshots of a new repository by local:PATH: %q", out)
	}
	if _, errs, code := e2.run("vmvault", "show", "nope@latest"); code != 1 || !strings.Contains(errs, "no such restore point") {
		t.Errorf("show of a missing restore point: %d %s", code, errs)
	}
	if _, errs, code := e2.run("vmvault", "forget", strings.Repeat("ab", 32)); code == 0 || !strings.Contains(errs, "no such restore point") {
		t.Errorf("forget of an unknown id: exit %d: %s", code, errs)
	}
	if _, _, code := e2.run("vmvault-capture", "file", "--vm", "a/b", "--disk", "d=/dev/null"); code != 2 {
		t.Errorf("bad VM name: exit %d", code)
	}
}

// TestCrashSafety SIGKILLs captures at random moments; afterwards verify
// passes, every earlier restore point restores byte-identical, and the next
// capture succeeds.
func TestCrashSafety(t *testing.T) {
	e := newEnv(t, "--chunk-size", "64KiB")
	img := filepath.Join(e.dir, "disk.img")
	const size = 48 << 20
	want := map[string]string{}
	cur := makeImage(t, img, size, 1)
	want[e.capture("--vm", "vm", "--disk", "d="+img).ID] = sha(cur)
	rng := rand.New(rand.NewPCG(42, 42))
	kills := 0
	for i := 0; kills < 24 && i < 60; i++ {
		// New data for this attempt, so it has chunks to write.
		for j := 0; j < 40; j++ {
			off := rng.IntN(size - 70000)
			for k := off; k < off+65536; k++ {
				cur[k] = byte(rng.Uint32())
			}
		}
		os.WriteFile(img, cur, 0o600)
		cmd := exec.Command(filepath.Join(binDir, "vmvault-capture"), "file", "-q", "--vm", "vm", "--disk", "d="+img, "--full", "--workers", "1")
		cmd.Env = e.environ()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		// A capture killed after committing its manifest left a complete
		// restore point: whatever appeared is of the image as of this attempt.
		var list []struct{ ID string }
		if err := json.Unmarshal([]byte(e.ok("vmvault", "snapshots", "--json", "-q")), &list); err != nil {
			t.Fatal(err)
		}
		for _, rp := range list {
			if _, ok := want[rp.ID]; !ok {
				want[rp.ID] = sha(cur)
			}
		}
		if err != nil {
			kills++
		}
	}
	if kills < 20 {
		t.Fatalf("only %d captures were killed mid-way", kills)
	}
	e.ok("vmvault", "verify")
	for id, sum := range want {
		if got := e.restoreSHA(id, "d"); got != sum {
			t.Errorf("restore point %s differs after crashes", id[:8])
		}
	}
	final := e.capture("--vm", "vm", "--disk", "d="+img)
	if got := e.restoreSHA(final.ID, "d"); got != sha(cur) {
		t.Error("capture after the crashes restores wrong data")
	}
	// Stale locks of the killed captures do not block gc.
	e.ok("vmvault", "gc", "--grace", "0s")
	e.ok("vmvault", "verify")
	t.Logf("%d captures killed, %d restore points checked", kills, len(want))
}

// imageBase is a disk image as the base of an overlay the test writes
// itself (what 'vmvault serve --writable' does for a client).
type imageBase []byte

func (b imageBase) Size() int64 { return int64(len(b)) }
func (b imageBase) ReadAt(_ context.Context, p []byte, off int64) error {
	copy(p, b[off:])
	return nil
}
func (b imageBase) Extents(_ context.Context, off, n int64) ([]extent.Extent, error) {
	return []extent.Extent{{Offset: off, Length: n}}, nil
}

// TestFileCaptureAfterOverlayCommit: an overlay commit holds writes the
// source disk never saw, so a file capture with changed extents (relative
// to the file capture before the commit) must not build on it. It reads
// the whole disk, stores only new chunks, prints why, and restores
// byte-identical to the source. This was a silent wrong restore point.
func TestFileCaptureAfterOverlayCommit(t *testing.T) {
	e := newEnv(t, "--chunk-size", "64KiB")
	src := filepath.Join(e.dir, "disk.raw")
	img := makeImage(t, src, 3<<20, 9)
	id := e.capture("--vm", "web01", "--disk", "disk0="+src).ID

	// What a VM booted from the restore point wrote, in its overlay.
	ovDir := filepath.Join(e.dir, "overlays")
	ov, err := overlay.Open(overlay.Path(ovDir, id, "disk0"), overlay.Meta{VM: "web01", RestorePoint: id, Disk: "disk0"}, imageBase(img))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := ov.WriteAt(ctx, bytes.Repeat([]byte{0xee}, 200000), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := ov.Close(); err != nil {
		t.Fatal(err)
	}
	var commit struct{ ID string }
	if err := json.Unmarshal([]byte(e.ok("vmvault", "overlay", "commit", id, "--overlay-dir", ovDir, "--json", "-q")), &commit); err != nil {
		t.Fatal(err)
	}

	// The source changes in a range its CBT reports.
	copy(img[100000:], bytes.Repeat([]byte{0x11}, 5000))
	os.WriteFile(src, img, 0o600)
	ext := filepath.Join(e.dir, "changed.tsv")
	os.WriteFile(ext, []byte("100000\t5000\n"), 0o600)
	out := e.ok("vmvault-capture", "file", "--vm", "web01", "--disk", "disk0="+src, "--changed-extents", "disk0="+ext)
	if !strings.Contains(out, "dedup (the changed extents are relative to the VM's latest restore point "+commit.ID[:8]) {
		t.Fatalf("capture after the overlay commit did not say why it read everything:\n%s", out)
	}
	rps := e.ok("vmvault", "snapshots", "--json")
	var list []struct{ ID string }
	if err := json.Unmarshal([]byte(rps), &list); err != nil || len(list) != 3 {
		t.Fatalf("snapshots: %v %s", err, rps)
	}
	latest := list[len(list)-1].ID
	if latest == commit.ID || latest == id {
		t.Fatalf("the newest restore point is not the new capture: %s", rps)
	}
	if e.restoreSHA(latest, "disk0") != sha(img) {
		t.Fatal("the restore point differs from the source disk")
	}
}

// openRepoAt opens the repository in dir through the library, for tests
// that look below the CLI.
func openRepoAt(t *testing.T, dir string) *repo.Repository {
	t.Helper()
	be, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(context.Background(), be, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// chunkIDs returns the data chunks of a restore point's disk.
func chunkIDs(t *testing.T, dir, rpID, disk string) []format.ID {
	t.Helper()
	r := openRepoAt(t, dir)
	rps, _, err := r.ListRestorePoints(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rp, err := repo.Resolve(rps, rpID)
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.OpenDisk(context.Background(), rp, disk)
	if err != nil {
		t.Fatal(err)
	}
	var out []format.ID
	for _, id := range d.Index().IDs {
		if !id.IsZero() {
			out = append(out, id)
		}
	}
	return out
}

// flipChunkByte flips byte at of a chunk's stored frame, in its pack (or
// its own object in a repository of format version 1).
func flipChunkByte(t *testing.T, dir string, id format.ID, at int64) {
	t.Helper()
	r := openRepoAt(t, dir)
	path, off := filepath.Join(dir, "chunks", id.String()[:2], id.String()), int64(0)
	if pb, ok := r.Backend().(*pack.Backend); ok {
		name, o, _, found, err := pb.Locate(context.Background(), id)
		if err != nil || !found {
			t.Fatalf("locate chunk %s: %v", id.Short(), err)
		}
		path, off = filepath.Join(dir, "packs", name.String()), o
	}
	os.Chmod(path, 0o600)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off+at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x80
	if _, err := f.WriteAt(b, off+at); err != nil {
		t.Fatal(err)
	}
}

// uniqueChunk returns a data chunk of restore point rpName's disk that no
// other restore point uses.
func uniqueChunk(t *testing.T, dir, rpName, disk string) format.ID {
	t.Helper()
	r := openRepoAt(t, dir)
	ctx := context.Background()
	rps, _, err := r.ListRestorePoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	target, err := repo.Resolve(rps, rpName)
	if err != nil {
		t.Fatal(err)
	}
	others := map[format.ID]bool{}
	for _, rp := range rps {
		for _, md := range rp.Disks {
			if rp.ID == target.ID && md.Name == disk {
				continue
			}
			d, err := r.OpenDisk(ctx, rp, md.Name)
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range d.Index().IDs {
				others[id] = true
			}
		}
	}
	for _, id := range chunkIDs(t, dir, target.ID.String(), disk) {
		if !others[id] {
			return id
		}
	}
	t.Fatalf("no chunk unique to %s", rpName)
	return format.ID{}
}

// TestCompactCrashSafety SIGKILLs compactions at random moments, with a
// capture of new data before each; afterwards every restore point restores
// byte-identical and verify is clean; a compaction run to the end then
// leaves nothing for the next one, and gc and verify after it are clean.
func TestCompactCrashSafety(t *testing.T) {
	e := newEnv(t, "--chunk-size", "64KiB", "--pack-size", "1MiB", "--compression", "s2")
	img := filepath.Join(e.dir, "disk.img")
	const size = 24 << 20
	want := map[string]string{}
	cur := makeImage(t, img, size, 5)
	want[e.capture("--vm", "vm", "--disk", "d="+img).ID] = sha(cur)
	rng := rand.New(rand.NewPCG(7, 7))
	kills := 0
	for i := 0; kills < 16 && i < 30; i++ {
		// New compressible data every round, so each compaction has
		// about a second of zstd-best work to be killed in.
		for j := 0; j < 300; j++ {
			off := rng.IntN(size - 70000)
			copy(cur[off:], bytes.Repeat([]byte(fmt.Sprintf("round %d write %d %d ", i, j, rng.IntN(1000))), 65536/16))
		}
		os.WriteFile(img, cur, 0o600)
		codec := []string{"s2", "auto"}[i%2]
		want[e.capture("--vm", "vm", "--disk", "d="+img, "--compression", codec).ID] = sha(cur)
		cmd := exec.Command(filepath.Join(binDir, "vmvault"), "compact", "-q", "--older-than", "0", "--cpu", "1")
		cmd.Env = append(os.Environ(), "VMVAULT_REPOSITORY="+e.repo)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		if err := cmd.Wait(); err != nil {
			kills++
		}
	}
	if kills < 12 {
		t.Fatalf("only %d compactions were killed mid-way", kills)
	}
	e.ok("vmvault", "verify")
	for id, sum := range want {
		if got := e.restoreSHA(id, "d"); got != sum {
			t.Errorf("restore point %s differs after killed compactions", id[:8])
		}
	}
	var rep struct {
		Packs         int `json:"packs"`
		DamagedChunks int `json:"damaged_chunks"`
	}
	out := e.ok("vmvault", "compact", "--older-than", "0", "--json")
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.DamagedChunks != 0 {
		t.Fatalf("compact --json: %v %s", err, out)
	}
	if err := json.Unmarshal([]byte(e.ok("vmvault", "compact", "--older-than", "0", "--json")), &rep); err != nil || rep.Packs != 0 {
		t.Fatalf("a compaction after a complete one read %d packs (%v)", rep.Packs, err)
	}
	e.ok("vmvault", "gc", "--grace", "0s")
	e.ok("vmvault", "verify")
	for id, sum := range want {
		if got := e.restoreSHA(id, "d"); got != sum {
			t.Errorf("restore point %s differs after compaction and gc", id[:8])
		}
	}
	t.Logf("%d compactions killed, %d restore points checked", kills, len(want))
}

// TestCodecsFromTheCommandLine: init's default codec, a capture's own
// --compression, compact's --older-than and --json, and wrong codec or
// duration names as usage errors (exit 2).
func TestCodecsFromTheCommandLine(t *testing.T) {
	e := newEnv(t, "--chunk-size", "64KiB")
	img := filepath.Join(e.dir, "disk.img")
	a := makeImage(t, img, 4<<20, 11)
	first := e.capture("--vm", "vm", "--disk", "d="+img)
	b := makeImage(t, img, 4<<20, 12)
	second := e.capture("--vm", "vm", "--disk", "d="+img, "--compression", "zstd-fastest")
	for _, c := range []struct {
		bin  string
		args []string
	}{
		{"vmvault", []string{"init", "--repo", filepath.Join(e.dir, "other"), "--compression", "lz4"}},
		{"vmvault-capture", []string{"file", "--vm", "vm", "--disk", "d=" + img, "--compression", "lz4"}},
		{"vmvault", []string{"compact", "--codec", "lz4"}},
		{"vmvault", []string{"compact", "--older-than", "a week"}},
		{"vmvault", []string{"compact", "--cpu", "-1"}},
	} {
		if _, errs, code := e.run(c.bin, c.args...); code != 2 {
			t.Errorf("%s %v: exit %d, want 2 (%s)", c.bin, c.args, code, errs)
		}
	}
	var rep struct {
		Packs      int     `json:"packs"`
		PacksYoung int     `json:"packs_young"`
		Chunks     int     `json:"chunks"`
		BytesAfter int64   `json:"bytes_after"`
		CPU        float64 `json:"cpu_seconds"`
	}
	if err := json.Unmarshal([]byte(e.ok("vmvault", "compact", "--json")), &rep); err != nil || rep.Packs != 0 || rep.PacksYoung == 0 {
		t.Fatalf("compact with the default --older-than 7d read young packs: %+v %v", rep, err)
	}
	if err := json.Unmarshal([]byte(e.ok("vmvault", "compact", "--older-than", "0", "--cpu", "1", "--json")), &rep); err != nil || rep.Chunks == 0 || rep.BytesAfter == 0 || rep.CPU <= 0 {
		t.Fatalf("compact --older-than 0: %+v %v", rep, err)
	}
	e.ok("vmvault", "verify")
	if e.restoreSHA(first.ID, "d") != sha(a) || e.restoreSHA(second.ID, "d") != sha(b) {
		t.Error("restore points differ after compaction")
	}
	if out := e.ok("vmvault", "compact", "--older-than", "0", "--dry-run"); !strings.Contains(out, "would read 0 packs") {
		t.Errorf("dry run after compaction: %s", out)
	}
}

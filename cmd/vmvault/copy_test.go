package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo/format"
)

// runEnv is env.run with more environment variables.
func (e *env) runEnv(extra []string, bin string, args ...string) (string, string, int) {
	e.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, bin), args...)
	cmd.Env = append(e.environ(), extra...)
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

func (e *env) okEnv(extra []string, bin string, args ...string) string {
	e.t.Helper()
	out, errs, code := e.runEnv(extra, bin, args...)
	if code != 0 {
		e.t.Fatalf("%s %s: exit %d\n%s%s", bin, strings.Join(args, " "), code, out, errs)
	}
	return out
}

type copyResult struct {
	Mode   string `json:"mode"`
	Result string `json:"result"`
	Copied []struct {
		Source, Copy string
	} `json:"copied"`
	Present    []string `json:"present"`
	Skipped    []string `json:"skipped"`
	ChunksSent int64    `json:"chunks_sent"`
	BytesSent  int64    `json:"bytes_sent"`
	Damage     []struct {
		RestorePoint string `json:"restore_point"`
		Disk         string `json:"disk"`
		Offset       int64  `json:"offset"`
	} `json:"damage"`
}

// copyJSON runs vmvault copy --json and returns its result and exit code.
func (e *env) copyJSON(extra []string, args ...string) (copyResult, int) {
	e.t.Helper()
	out, errs, code := e.runEnv(extra, "vmvault", append([]string{"copy", "--json"}, args...)...)
	var r copyResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		e.t.Fatalf("copy %v: exit %d, JSON %q: %v\n%s", args, code, out, err, errs)
	}
	return r, code
}

// changeImage rewrites share of img's 64 KiB blocks with new random
// bytes and returns the new content.
func changeImage(t *testing.T, path string, share float64, seed uint64) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 9))
	blocks := len(b) / (64 << 10)
	for range max(1, int(float64(blocks)*share)) {
		off := rng.IntN(blocks) * (64 << 10)
		for i := off; i < off+4096; i++ {
			b[i] = byte(rng.Uint32())
		}
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCopyCLI: local to local between twins and between repositories
// with other keys; a restore point copied restores byte-identical; the
// second copy after a 1% change sends only the new chunks; copying again
// is exit 4; a damaged source chunk is exit 3 and the rest is copied.
func TestCopyCLI(t *testing.T) {
	e := newEnv(t, "--chunk-size", "64KiB", "--pack-size", "1MiB")
	img := filepath.Join(e.dir, "disk.img")
	v1 := makeImage(t, img, 16<<20, 41)
	c1 := e.capture("--vm", "web01", "--disk", "disk0="+img)
	v2 := changeImage(t, img, 0.01, 1)
	c2 := e.capture("--vm", "web01", "--disk", "disk0="+img)
	if c2.Disks[0].NewChunks == 0 {
		t.Fatal("the changed image stored nothing new")
	}

	dst := filepath.Join(e.dir, "dst")
	e.ok("vmvault", "init", "--repo", dst, "--like", e.repo, "-q")
	r, code := e.copyJSON(nil, "--to", dst, c1.ID)
	if code != 0 || r.Result != "copied" || r.Mode != "frames" || len(r.Copied) != 1 || r.Copied[0].Copy != c1.ID {
		t.Fatalf("copy of the first restore point: exit %d %+v", code, r)
	}
	r, code = e.copyJSON(nil, "--to", dst)
	if code != 0 || len(r.Copied) != 1 || len(r.Present) != 1 {
		t.Fatalf("copy of all: exit %d %+v", code, r)
	}
	newBytes := c2.Disks[0].BytesStored
	t.Logf("incremental copy sent %d bytes in %d chunks; the capture stored %d bytes in %d chunks", r.BytesSent, r.ChunksSent, newBytes, c2.Disks[0].NewChunks)
	if float64(r.BytesSent) > 1.1*float64(newBytes) || r.ChunksSent != c2.Disks[0].NewChunks {
		t.Fatalf("incremental copy sent %d bytes (%d chunks), the new chunks are %d bytes (%d)", r.BytesSent, r.ChunksSent, newBytes, c2.Disks[0].NewChunks)
	}
	d := &env{t: t, dir: e.dir, repo: dst}
	if d.restoreSHA(c1.ID, "disk0") != sha(v1) || d.restoreSHA(c2.ID, "disk0") != sha(v2) {
		t.Fatal("a copied restore point restores different bytes")
	}
	d.ok("vmvault", "verify", "-q")
	if _, code := e.copyJSON(nil, "--to", dst); code != 4 {
		t.Fatalf("copy with nothing to do: exit %d, want 4", code)
	}

	// Pull into a repository with other chunk size: encoded anew.
	other := filepath.Join(e.dir, "other")
	e.ok("vmvault", "init", "--repo", other, "--chunk-size", "128KiB", "-q")
	o := &env{t: t, dir: e.dir, repo: other}
	r, code = o.copyJSON(nil, "--from", e.repo, "--vm", "web01", "--latest", "1")
	if code != 0 || r.Mode != "reencode" || len(r.Copied) != 1 || r.Copied[0].Source != c2.ID {
		t.Fatalf("pull of web01's latest: exit %d %+v", code, r)
	}
	if o.restoreSHA(r.Copied[0].Copy, "disk0") != sha(v2) {
		t.Fatal("the re-encoded copy restores different bytes")
	}

	// Damage a chunk only the second restore point has.
	bad := uniqueChunk(t, e.repo, c2.ID, "disk0")
	flipChunkByte(t, e.repo, bad, format.ChunkHeaderSize+20)
	dst2 := filepath.Join(e.dir, "dst2")
	e.ok("vmvault", "init", "--repo", dst2, "--like", e.repo, "-q")
	r, code = e.copyJSON(nil, "--to", dst2)
	if code != 3 || r.Result != "partial" || len(r.Skipped) != 1 || r.Skipped[0] != c2.ID || len(r.Copied) != 1 ||
		len(r.Damage) != 1 || r.Damage[0].Disk != "disk0" {
		t.Fatalf("copy with a damaged source chunk: exit %d %+v", code, r)
	}
	out, errs, _ := e.run("vmvault", "copy", "--to", dst2)
	if !strings.Contains(out, c2.ID[:8]) || !strings.Contains(out, "offset") || !strings.Contains(errs, "not copied") {
		t.Fatalf("the damage is not named with restore point and offset:\n%s%s", out, errs)
	}
}

// TestCopyEncryptedCLI: a twin shares the keys (frames, same ids; the
// twin opens with its own password); a repository with other keys gets
// chunks encoded anew; passwords come from VMVAULT_FROM/TO_PASSWORD_FILE.
func TestCopyEncryptedCLI(t *testing.T) {
	dir := t.TempDir()
	pw := func(name, pass string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(pass+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pw1, pw2, pw3 := pw("pw1", "source password"), pw("pw2", "twin password"), pw("pw3", "other password")
	e := &env{t: t, dir: dir, repo: filepath.Join(dir, "src")}
	e.okEnv([]string{"VMVAULT_PASSWORD_FILE=" + pw1}, "vmvault", "init", "--encrypt", "--insecure-kdf-for-tests", "--chunk-size", "64KiB", "-q")
	img := filepath.Join(dir, "disk.img")
	v1 := makeImage(t, img, 8<<20, 42)
	out := e.okEnv([]string{"VMVAULT_PASSWORD_FILE=" + pw1}, "vmvault-capture", "file", "--json", "--vm", "db", "--disk", "sda="+img)
	var c captureJSON
	if err := json.Unmarshal([]byte(out), &c); err != nil {
		t.Fatal(err)
	}

	twin := filepath.Join(dir, "twin")
	e.okEnv([]string{"VMVAULT_FROM_PASSWORD_FILE=" + pw1, "VMVAULT_PASSWORD_FILE=" + pw2}, "vmvault", "init", "--repo", twin, "--like", e.repo, "--insecure-kdf-for-tests", "-q")
	r, code := e.copyJSON([]string{"VMVAULT_PASSWORD_FILE=" + pw1, "VMVAULT_TO_PASSWORD_FILE=" + pw2}, "--to", twin)
	if code != 0 || r.Mode != "frames" || len(r.Copied) != 1 || r.Copied[0].Copy != c.ID {
		t.Fatalf("copy to the twin: exit %d %+v", code, r)
	}
	tw := &env{t: t, dir: dir, repo: twin}
	restored := filepath.Join(dir, "restored.img")
	tw.okEnv([]string{"VMVAULT_PASSWORD_FILE=" + pw2}, "vmvault", "restore", c.ID, "--disk", "sda", "--to", restored)
	if fileSHA(t, restored) != sha(v1) {
		t.Fatal("the twin restores different bytes")
	}
	// The source's password does not open the twin: keys are shared,
	// passwords are not.
	if _, _, code := tw.runEnv([]string{"VMVAULT_PASSWORD_FILE=" + pw1}, "vmvault", "snapshots"); code != 12 {
		t.Fatalf("the source's password on the twin: exit %d, want 12", code)
	}

	oth := filepath.Join(dir, "other")
	e.okEnv([]string{"VMVAULT_PASSWORD_FILE=" + pw3}, "vmvault", "init", "--repo", oth, "--encrypt", "--insecure-kdf-for-tests", "--chunk-size", "64KiB", "-q")
	r, code = e.copyJSON([]string{"VMVAULT_PASSWORD_FILE=" + pw1, "VMVAULT_TO_PASSWORD_FILE=" + pw3}, "--to", oth)
	if code != 0 || r.Mode != "reencode" || len(r.Copied) != 1 || r.Copied[0].Copy == c.ID {
		t.Fatalf("copy to other keys: exit %d %+v", code, r)
	}
	ot := &env{t: t, dir: dir, repo: oth}
	ot.okEnv([]string{"VMVAULT_PASSWORD_FILE=" + pw3}, "vmvault", "restore", r.Copied[0].Copy, "--disk", "sda", "--to", restored, "--overwrite")
	if fileSHA(t, restored) != sha(v1) {
		t.Fatal("the re-encoded copy restores different bytes")
	}
}

// TestCopyKilled: vmvault copy killed (SIGKILL) at random moments ten
// times, then run to the end: the destination verifies clean and restores
// byte-identical, and all it stored beyond what the restore point needs
// (packs whose index never came, temporary files) is within what was in
// flight at the kills.
func TestCopyKilled(t *testing.T) {
	e := newEnv(t, "--chunk-size", "64KiB", "--pack-size", "0")
	img := filepath.Join(e.dir, "disk.img")
	content := make([]byte, 64<<20)
	rng := rand.New(rand.NewPCG(77, 77))
	for i := range content {
		content[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(img, content, 0o600); err != nil {
		t.Fatal(err)
	}
	c := e.capture("--vm", "big", "--disk", "d="+img)
	const packSize = 1 << 20
	dst := filepath.Join(e.dir, "dst")
	e.ok("vmvault", "init", "--repo", dst, "--like", e.repo, "--pack-size", "1MiB", "-q")

	killed := 0
	for i := range 10 {
		cmd := exec.Command(filepath.Join(binDir, "vmvault"), "copy", "--to", dst, "--limit-rate", "10MiB", "-q")
		cmd.Env = e.environ()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(200+rng.IntN(500)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ProcessState.Sys().(syscall.WaitStatus).Signaled() {
			killed++
		} else {
			t.Logf("run %d ended before the kill: %v", i, err)
		}
	}
	if killed < 5 {
		t.Fatalf("only %d of 10 copies were killed in flight", killed)
	}
	r, code := e.copyJSON(nil, "--to", dst)
	if code != 0 && code != 4 {
		t.Fatalf("copy after the kills: exit %d %+v", code, r)
	}
	d := &env{t: t, dir: e.dir, repo: dst}
	d.ok("vmvault", "verify", "-q")
	if d.restoreSHA(c.ID, "d") != sha(content) {
		t.Fatal("the copy restores different bytes")
	}
	var stored int64
	_ = filepath.WalkDir(dst, func(p string, de fs.DirEntry, err error) error {
		if err == nil && !de.IsDir() {
			if fi, err := de.Info(); err == nil {
				stored += fi.Size()
			}
		}
		return nil
	})
	need := c.Disks[0].BytesStored
	// At a kill: the open pack, packs sealed and waiting for the four
	// upload slots' (local: eight writes), and up to four uploaded ones
	// not yet in a pack index (a writer indexes every four packs); the
	// rate limit keeps the queue short.
	window := int64(8 * packSize)
	t.Logf("%d kills: the destination holds %d bytes for %d needed (%.1f%% more)", killed, stored, need, 100*float64(stored-need)/float64(need))
	if stored > need+int64(killed)*window {
		t.Fatalf("the destination holds %d bytes, %d more than needed: over %d kills × %d in flight", stored, stored-need, killed, window)
	}
}

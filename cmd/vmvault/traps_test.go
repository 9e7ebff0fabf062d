package main

// Tests of the traps a new user ran into (issue 17): each checks the
// behaviour the user expected, through the built binaries.

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
	"github.com/vmvault/vmvault/repo/format"
)

// flipChunk flips one byte of the stored chunk whose content is data.
func (e *env) flipChunk(data []byte) {
	e.t.Helper()
	files, _ := filepath.Glob(filepath.Join(e.repo, "chunks", "*", format.Hash(data).String()))
	if len(files) != 1 {
		e.t.Fatalf("chunk %s: %d files", format.Hash(data).Short(), len(files))
	}
	os.Chmod(files[0], 0o600)
	b, err := os.ReadFile(files[0])
	if err != nil {
		e.t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(files[0], b, 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// TestCatDamagedStreamsGoodPrefix damages the chunk that holds the middle
// of a file: cat writes every byte in front of the damaged chunk, then
// fails with exit 3 naming the restore point, disk and offset.
func TestCatDamagedStreamsGoodPrefix(t *testing.T) {
	fstest.NeedTools(t, "mke2fs")
	e := newEnv(t, "--chunk-size", "64KiB")
	src := filepath.Join(e.dir, "src")
	os.Mkdir(src, 0o755)
	content := make([]byte, 300<<10)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range content {
		content[i] = byte(rng.Uint32())
	}
	os.WriteFile(filepath.Join(src, "f.bin"), content, 0o644)
	img := filepath.Join(e.dir, "disk.img")
	if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", src, img, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v\n%s", err, out)
	}
	id := e.capture("--vm", "web01", "--disk", "disk0="+img).ID
	image, _ := os.ReadFile(img)

	// where each 4 KiB block of the file lies in the image
	const chunk = 64 << 10
	phys := func(fileOff int) int {
		i := bytes.Index(image, content[fileOff:fileOff+4096])
		if i < 0 {
			t.Fatalf("file block at %d not found in the image", fileOff)
		}
		return i
	}
	bad := phys(150<<10) / chunk // the chunk holding the file's middle
	good := -1                   // the first file offset inside the bad chunk
	for off := 0; off < len(content); off += 4096 {
		if phys(off)/chunk == bad {
			good = off
			break
		}
	}
	if good <= 0 {
		t.Fatalf("the file starts in chunk %d: no good prefix to test", bad)
	}
	e.flipChunk(image[bad*chunk : (bad+1)*chunk])

	out, errs, code := e.run("vmvault", "cat", "web01@latest:disk0/p0/f.bin")
	if code != 3 {
		t.Errorf("exit %d, want 3: %s", code, errs)
	}
	if len(out) != good || out != string(content[:good]) {
		t.Errorf("cat wrote %d bytes (a prefix of the file: %v), want the %d bytes in front of the damaged chunk",
			len(out), strings.HasPrefix(string(content), out), good)
	}
	for _, want := range []string{id[:8], "disk disk0", "offset"} {
		if !strings.Contains(errs, want) {
			t.Errorf("error does not name %q: %s", want, errs)
		}
	}
}

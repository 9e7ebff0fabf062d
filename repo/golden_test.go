package repo

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/repo/backend/local"
)

func untar(t *testing.T, archive, dst string) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dst, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			os.MkdirAll(p, 0o700)
		case tar.TypeReg:
			os.MkdirAll(filepath.Dir(p), 0o700)
			b, _ := io.ReadAll(tr)
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestGoldenRepositoryV1 opens a repository written by format version 1.
func TestGoldenRepositoryV1(t *testing.T) {
	dir := t.TempDir()
	untar(t, "../testdata/repo-v1.tar.gz", dir)
	want, err := os.ReadFile("../testdata/repo-v1.sha256")
	if err != nil {
		t.Fatal(err)
	}
	be, err := local.Open(filepath.Join(dir, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r, err := Open(ctx, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rps, bad, err := r.ListRestorePoints(ctx)
	if err != nil || len(bad) != 0 || len(rps) != 1 {
		t.Fatalf("list: %v, %v, %d restore points", err, bad, len(rps))
	}
	rp, err := Resolve(rps, "golden@latest")
	if err != nil || rp.Tags[0] != "v1" {
		t.Fatalf("resolve: %v", err)
	}
	d, err := r.OpenDisk(ctx, rp, "disk0")
	if err != nil {
		t.Fatal(err)
	}
	out := &memWriterAt{}
	if err := d.Restore(ctx, out, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("%x", sha256.Sum256(out.bytes(d.Size()))); got != strings.TrimSpace(string(want)) {
		t.Fatalf("restored sha256 %s, want %s", got, want)
	}
	rep, err := r.Verify(ctx, VerifyOptions{})
	if err != nil || !rep.OK() {
		t.Fatalf("verify: %v %+v", err, rep)
	}
}

// goldenDisk is the disk of every golden repository after version 1:
// 300,000 bytes of random, text and zero regions.
func goldenDisk() []byte {
	b := testImage(2026, 300000)
	return b
}

// goldenPassword opens testdata/repo-v3-encrypted.tar.gz.
const goldenPassword = "golden password"

// TestWriteGolden writes the golden repositories of format versions 2 and
// 3 (run once, with VMVAULT_WRITE_GOLDEN=DIR, when a format version is
// added; never to regenerate an existing one).
func TestWriteGolden(t *testing.T) {
	out := os.Getenv("VMVAULT_WRITE_GOLDEN")
	if out == "" {
		t.Skip("writes testdata only when VMVAULT_WRITE_GOLDEN names a directory")
	}
	for _, g := range []struct {
		name string
		opts InitOptions
	}{
		{"repo-v2", InitOptions{ChunkSize: 64 << 10}},
		{"repo-v3-encrypted", InitOptions{ChunkSize: 64 << 10, Password: []byte(goldenPassword), KDF: fastKDF}},
	} {
		dir := filepath.Join(out, g.name, "repo")
		be, err := local.Create(dir)
		if err != nil {
			t.Fatal(err)
		}
		r, err := Init(context.Background(), be, g.opts)
		if err != nil {
			t.Fatal(err)
		}
		disk := goldenDisk()
		if _, err := r.Capture(context.Background(), CaptureOptions{VM: "golden", Tags: []string{g.name}},
			[]DiskSource{{Name: "disk0", Reader: bytes.NewReader(disk), Size: int64(len(disk))}}); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(out, g.name+".sha256"), []byte(fmt.Sprintf("%x\n", sha256.Sum256(disk))), 0o644)
	}
}

// TestGoldenRepositoriesV2V3 opens the repositories written by format
// versions 2 (packs) and 3 (encrypted), verifies and restores them.
func TestGoldenRepositoriesV2V3(t *testing.T) {
	for _, name := range []string{"repo-v2", "repo-v3-encrypted"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			untar(t, "../testdata/"+name+".tar.gz", dir)
			want, err := os.ReadFile("../testdata/" + name + ".sha256")
			if err != nil {
				t.Fatal(err)
			}
			be, err := local.Open(filepath.Join(dir, "repo"))
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			r, err := Open(ctx, be, Options{Password: func() ([]byte, error) { return []byte(goldenPassword), nil }})
			if err != nil {
				t.Fatal(err)
			}
			rps, bad, err := r.ListRestorePoints(ctx)
			if err != nil || len(bad) != 0 || len(rps) != 1 || rps[0].Tags[0] != name {
				t.Fatalf("list: %v, %v, %d restore points", err, bad, len(rps))
			}
			d, err := r.OpenDisk(ctx, rps[0], "disk0")
			if err != nil {
				t.Fatal(err)
			}
			out := &memWriterAt{}
			if err := d.Restore(ctx, out, RestoreOptions{}); err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprintf("%x", sha256.Sum256(out.bytes(d.Size()))); got != strings.TrimSpace(string(want)) {
				t.Fatalf("restored sha256 %s, want %s", got, want)
			}
			if rep, err := r.Verify(ctx, VerifyOptions{}); err != nil || !rep.OK() {
				t.Fatalf("verify: %v %+v", err, rep)
			}
		})
	}
}

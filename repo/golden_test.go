package repo

import (
	"archive/tar"
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

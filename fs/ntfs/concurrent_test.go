package ntfs

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/vmvault/vmvault/fs"
)

// TestConcurrentReads: files are read without go-ntfs's lock, and a
// compressed stream caches its last unit; 8 goroutines reading random
// ranges of compressed and plain files of the golden image (and listing
// directories meanwhile) see what one sequential read sees. Run with
// -race.
func TestConcurrentReads(t *testing.T) {
	z, err := os.ReadFile(filepath.Join("..", "..", "testdata", "fs", "golden", "ntfs.img.zst"))
	if err != nil {
		t.Fatal(err)
	}
	zr, _ := zstd.NewReader(nil)
	img, err := zr.DecodeAll(z, nil)
	zr.Close()
	if err != nil {
		t.Fatal(err)
	}
	f, err := Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var files []fs.File
	var want [][]byte
	for _, p := range []string{"/compressed/text.txt", "/compressed/shared-run2.bin", "/nonresident.bin", "/sparse.bin"} {
		ino, err := fs.Resolve(ctx, f, p, false)
		if err != nil {
			t.Fatal(err)
		}
		fl, err := f.Open(ctx, ino)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(io.NewSectionReader(fl, 0, fl.Size()))
		if err != nil {
			t.Fatal(err)
		}
		files, want = append(files, fl), append(want, b)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 300 {
				i := rng.IntN(len(files))
				off := rng.Int64N(int64(len(want[i])))
				n := min(int64(1+rng.IntN(100000)), int64(len(want[i]))-off)
				p := make([]byte, n)
				if _, err := files[i].ReadAt(p, off); err != nil && err != io.EOF {
					t.Error(err)
					return
				}
				if !bytes.Equal(p, want[i][off:off+n]) {
					t.Errorf("file %d at %d+%d differs", i, off, n)
					return
				}
				if rng.IntN(20) == 0 {
					if _, err := f.ReadDir(ctx, f.Root()); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
}

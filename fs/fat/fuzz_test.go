package fat

import (
	"bytes"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
)

// FuzzImage opens mutated FAT12 images (boot sector, FAT, directories with
// long names) and exercises every reader method.
func FuzzImage(f *testing.F) {
	f.Add(fstest.Seed(f, "fat12.img"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if Probe(b) == "" {
			return
		}
		fsys, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		fstest.Exercise(fsys)
	})
}

package mount

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/vmvault/vmvault/repo/repotest"
)

// TestWarningsLogged: a warning a filesystem finds while the mount reads
// it (a directory block of the golden ext4 image with a bad checksum) is
// logged once, naming restore point, disk and partition, and the listing
// still comes back.
func TestWarningsLogged(t *testing.T) {
	z, err := os.ReadFile(filepath.Join("..", "testdata", "fs", "golden", "ext4.img.zst"))
	if err != nil {
		t.Fatal(err)
	}
	zr, _ := zstd.NewReader(nil)
	img, err := zr.DecodeAll(z, nil)
	zr.Close()
	if err != nil {
		t.Fatal(err)
	}
	img[bytes.Index(img, []byte("medium.txt"))] ^= 1 // a name in the root directory's block
	ctx := context.Background()
	r := repotest.New(t, repotest.Options{})
	rp := repotest.CapturePoint(t, r, repotest.Point{VM: "vm", Disks: []repotest.Disk{repotest.Bytes("disk0", img)}})
	var logb bytes.Buffer
	m := New(r, slog.New(slog.NewTextHandler(&logb, nil)), nil).(*rootNode).m
	st := m.openDisk(ctx, rp, "disk0")
	if st.err != nil {
		t.Fatal(st.err)
	}
	fss := m.openFS(st, rp, "disk0", "p0")
	if fss.err != nil {
		t.Fatal(fss.err)
	}
	if logb.Len() != 0 {
		t.Errorf("logged before anything was read:\n%s", logb.String())
	}
	root := &node{m: m, fs: fss, ino: fss.fsys.Root()}
	for range 2 {
		ds, errno := root.Readdir(ctx)
		if got := names(t, ds, uint32(errno)); len(got) < 20 {
			t.Errorf("root listing: %v", got)
		}
	}
	log := logb.String()
	if strings.Count(log, "checksum mismatch") != 1 || !strings.Contains(log, "directory inode 2 block 0") ||
		!strings.Contains(log, "restore_point="+rp.ID.Short()) || !strings.Contains(log, "partition=p0") {
		t.Errorf("log:\n%s\nwant the root block's checksum warning once, with restore point and partition", log)
	}
}

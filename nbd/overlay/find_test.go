package overlay

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	rpA = "aaaa1111000000000000000000000000000000000000000000000000000000aa"
	rpB = "aaaa2222000000000000000000000000000000000000000000000000000000bb"
	rpC = "cccc3333000000000000000000000000000000000000000000000000000000cc"
)

// makeOverlay creates the overlay of (vm, rp, disk) below root over a base
// of size bytes, writes written bytes at offset 0 and closes it.
func makeOverlay(t *testing.T, root, vm, rp, disk string, size, written int) string {
	t.Helper()
	dir := Path(root, rp, disk)
	o, err := Open(dir, Meta{VM: vm, RestorePoint: rp, Disk: disk}, bytesBase(make([]byte, size)))
	if err != nil {
		t.Fatal(err)
	}
	if written > 0 {
		if err := o.WriteAt(context.Background(), bytes.Repeat([]byte{1}, written), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestList(t *testing.T) {
	root := t.TempDir()
	// Created times order the overlays of a VM; make them distinct.
	b0 := makeOverlay(t, root, "web01", rpB, "disk0", 1<<20, 3*BlockSize+1)
	time.Sleep(10 * time.Millisecond)
	a1 := makeOverlay(t, root, "web01", rpA, "disk1", 1<<20, 0)
	a0 := makeOverlay(t, root, "db01", rpA, "disk0", 64<<10, 1)
	// Stray content: a file at the top, a disk directory without meta.json,
	// and one whose meta.json is damaged.
	os.WriteFile(filepath.Join(root, "README"), []byte("x"), 0o600)
	os.MkdirAll(Path(root, rpC, "empty"), 0o700)
	bad := Path(root, rpC, "bad")
	os.MkdirAll(bad, 0o700)
	os.WriteFile(filepath.Join(bad, metaFile), []byte("{"), 0o600)
	// a0 is open while listing.
	o, err := Open(a0, Meta{VM: "db01", RestorePoint: rpA, Disk: "disk0"}, bytesBase(make([]byte, 64<<10)))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()

	found, skipped, err := List(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(skipped) != 1 || !strings.Contains(skipped[0].Error(), bad) {
		t.Errorf("skipped %v, want one error naming %s", skipped, bad)
	}
	type row struct {
		dir     string
		written int64
		inUse   bool
	}
	var got []row
	for _, f := range found {
		got = append(got, row{f.Dir, f.Written, f.InUse})
		if f.Dir != Path(root, f.Meta.RestorePoint, f.Meta.Disk) {
			t.Errorf("%s: meta says restore point %s disk %s", f.Dir, f.Meta.RestorePoint, f.Meta.Disk)
		}
	}
	// sorted by VM, then creation time; written rounds up to blocks
	want := []row{{a0, BlockSize, true}, {b0, 4 * BlockSize, false}, {a1, 0, false}}
	if !slices.Equal(got, want) {
		t.Errorf("found %+v\nwant  %+v", got, want)
	}

	if found, skipped, err := List(filepath.Join(root, "missing")); found != nil || skipped != nil || err != nil {
		t.Errorf("missing root: %v %v %v", found, skipped, err)
	}
}

func TestSelect(t *testing.T) {
	list := []Found{
		{Dir: "a0", Meta: Meta{RestorePoint: rpA, Disk: "disk0"}},
		{Dir: "a1", Meta: Meta{RestorePoint: rpA, Disk: "disk1"}},
		{Dir: "b0", Meta: Meta{RestorePoint: rpB, Disk: "disk0"}},
		{Dir: "c0", Meta: Meta{RestorePoint: rpC, Disk: "disk0"}},
	}
	dirs := func(fs []Found) []string {
		var out []string
		for _, f := range fs {
			out = append(out, f.Dir)
		}
		return out
	}
	for _, tc := range []struct {
		id, disk string
		want     []string
	}{
		{rpA, "", []string{"a0", "a1"}},
		{rpA, "disk1", []string{"a1"}},
		{rpA, "disk9", nil},
		{rpA[:8], "", nil}, // a prefix is not an id
		{rpB, "", []string{"b0"}},
	} {
		if got := dirs(ForRestorePoint(list, tc.id, tc.disk)); !slices.Equal(got, tc.want) {
			t.Errorf("ForRestorePoint(%.8s, %q) = %v, want %v", tc.id, tc.disk, got, tc.want)
		}
	}
	for _, tc := range []struct {
		prefix, want string
	}{
		{"aaaa1", rpA},
		{"aaaa2222", rpB},
		{"aaaa", ""}, // two restore points
		{"ccc", ""},  // too short
		{"cccc", rpC},
		{rpC, rpC},
		{"dddd", ""},
		{"", ""},
	} {
		if got := MatchRestorePoint(list, tc.prefix); got != tc.want {
			t.Errorf("MatchRestorePoint(%q) = %.8s, want %.8s", tc.prefix, got, tc.want)
		}
	}
}

// ReaderAt reads the overlay's content (base with writes applied), short
// only at the end of the disk.
func TestReaderAt(t *testing.T) {
	size := 3*BlockSize + 100
	base := bytes.Repeat([]byte{7}, size)
	o := openTestOverlay(t, t.TempDir(), base)
	defer o.Close()
	ctx := context.Background()
	if err := o.WriteAt(ctx, []byte("hello"), BlockSize-2); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(base)
	copy(want[BlockSize-2:], "hello")
	r := o.ReaderAt(ctx)
	for _, tc := range []struct {
		off, n  int
		wantN   int
		wantErr error
	}{
		{0, size, size, nil},
		{BlockSize - 4, 10, 10, nil},
		{size - 10, 10, 10, nil},
		{size - 10, 20, 10, io.EOF},
		{size, 1, 0, io.EOF},
		{size + 5, 1, 0, io.EOF},
	} {
		p := make([]byte, tc.n)
		n, err := r.ReadAt(p, int64(tc.off))
		if n != tc.wantN || !errors.Is(err, tc.wantErr) {
			t.Errorf("ReadAt(%d bytes at %d) = %d, %v; want %d, %v", tc.n, tc.off, n, err, tc.wantN, tc.wantErr)
			continue
		}
		if !bytes.Equal(p[:n], want[tc.off:tc.off+n]) {
			t.Errorf("ReadAt(%d bytes at %d): wrong content", tc.n, tc.off)
		}
	}
	if _, err := r.ReadAt(make([]byte, 1), -1<<20); err == nil || !strings.Contains(err.Error(), "negative offset") {
		t.Errorf("read at a negative offset: %v", err)
	}
}

func TestParseName(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Name
		wantErr bool
	}{
		{in: "3fa4b2c1", want: Name{RestorePoint: "3fa4b2c1"}},
		{in: "web01@latest", want: Name{RestorePoint: "web01@latest"}},
		{in: "web01@2026-11-23T10:00", want: Name{RestorePoint: "web01@2026-11-23T10:00"}},
		{in: "web01@latest/disk0", want: Name{RestorePoint: "web01@latest", Disk: "disk0"}},
		{in: "web01/850c3769", want: Name{VM: "web01", RestorePoint: "850c3769"}},
		{in: "web01/850c3769/disk0", want: Name{VM: "web01", RestorePoint: "850c3769", Disk: "disk0"}},
		{in: "web01/" + rpA + "/scsi0-0", want: Name{VM: "web01", RestorePoint: rpA, Disk: "scsi0-0"}},
		{in: "", wantErr: true},
		{in: "web01/", wantErr: true},
		{in: "/850c3769", wantErr: true},
		{in: "web01//disk0", wantErr: true},
		{in: "web01/850c3769/disk0/x", wantErr: true},
		{in: "web01@latest/disk0/x", wantErr: true},
		{in: "web01/db01@latest", wantErr: true},
	} {
		got, err := ParseName(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseName(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

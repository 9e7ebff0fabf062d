package browse

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/fstest"
)

// mbrDisk puts the seed images parts into primary MBR partitions p1, p2, …
// (type ids from types), each starting on the sector after the previous.
func mbrDisk(t *testing.T, parts [][]byte, types []byte) []byte {
	t.Helper()
	disk := make([]byte, 1024)
	for i, p := range parts {
		if len(p)%512 != 0 {
			t.Fatalf("partition %d: %d bytes is not whole sectors", i+1, len(p))
		}
		e := disk[446+16*i:]
		e[4] = types[i]
		binary.LittleEndian.PutUint32(e[8:], uint32(len(disk)/512))
		binary.LittleEndian.PutUint32(e[12:], uint32(len(p)/512))
		disk = append(disk, p...)
	}
	disk[510], disk[511] = 0x55, 0xaa
	return disk
}

func TestLocate(t *testing.T) {
	ext2 := fstest.Seed(t, "ext2.img")
	withErrors := append([]byte(nil), ext2...)
	withErrors[1024+0x3a] |= 2 // s_state: errors recorded, a filesystem warning
	disk0 := mbrDisk(t, [][]byte{withErrors, fstest.Seed(t, "fat12.img")}, []byte{0x83, 0x01})

	opens := map[string]int{}
	open := func(disks map[string][]byte) func(context.Context, string) (io.ReaderAt, int64, error) {
		return func(_ context.Context, name string) (io.ReaderAt, int64, error) {
			d, ok := disks[name]
			if !ok {
				return nil, 0, fmt.Errorf("no disk %q", name)
			}
			opens[name]++
			return bytes.NewReader(d), int64(len(d)), nil
		}
	}
	sources := map[string]*Source{
		"rp1": {Name: "3fa4b2c1", Disks: []string{"disk0", "disk1"}, Open: open(map[string][]byte{"disk0": disk0, "disk1": ext2})},
		"rp2": {Name: "5e6f7a8b", Disks: []string{"sda"}, Open: open(map[string][]byte{"sda": ext2})},
		"img": {Name: "disk.img", Single: true, Open: open(map[string][]byte{"": disk0})},
	}
	var warnings []string
	b := &Browser{
		Sources: func(_ context.Context, arg string) (*Source, string, error) {
			name, rest, _ := strings.Cut(arg, ":")
			if s, ok := sources[name]; ok {
				return s, rest, nil
			}
			return nil, "", fmt.Errorf("no source %q", name)
		},
		Warn: func(l *Location, w string) { warnings = append(warnings, l.Prefix()+" "+l.FS.Type()+": "+w) },
	}
	cases := []struct {
		arg    string
		needFS bool
		// want: "PREFIX PATH FSTYPE" of the location, or the error's text
		want    string
		notName bool // the error wraps ErrNotNamed
	}{
		{arg: "rp1:disk0/p1/small", want: "3fa4b2c1:disk0/p1 /small ext2"},
		{arg: "rp1:disk0/p2/d/../small", needFS: true, want: "3fa4b2c1:disk0/p2 /small fat12"},
		{arg: "rp1:disk0/p1", needFS: true, want: "3fa4b2c1:disk0/p1 / ext2"},
		{arg: "rp1:disk0", want: "3fa4b2c1:disk0/  -"},
		{arg: "rp1:disk0/", want: "3fa4b2c1:disk0/  -"},
		{arg: "rp1:disk0", needFS: true, want: "name a partition (p1, p2): rp1:disk0", notName: true},
		{arg: "rp1:", want: "3fa4b2c1 has 2 disks: name one as 3fa4b2c1:DISK", notName: true},
		{arg: "rp1:disk1", needFS: true, want: "3fa4b2c1:disk1/p0 / ext2"},
		{arg: "rp2:", needFS: true, want: "5e6f7a8b:sda/p0 / ext2"},
		{arg: "rp2:/p0/d", want: "5e6f7a8b:sda/p0 /d ext2"},
		{arg: "rp1:disk0/p3/x", want: `no partition "p3" on this disk (it has p1, p2)`},
		{arg: "rp1:disk9/p1", want: `no disk "disk9"`},
		{arg: "nope:disk0", want: `no source "nope"`},
		{arg: "img:p2/small", want: "p2 /small fat12"},
		{arg: "img:", want: "  -"},
		{arg: "img:", needFS: true, want: "name a partition (p1, p2): img:", notName: true},
	}
	ctx := context.Background()
	for _, c := range cases {
		l, err := b.Locate(ctx, c.arg, c.needFS)
		got := ""
		switch {
		case err != nil:
			got = err.Error()
		case l.Part == nil:
			got = l.Prefix() + " " + l.Path + " -"
		default:
			got = l.Prefix() + " " + l.Path + " " + l.FS.Type()
		}
		if !strings.HasPrefix(got, c.want) {
			t.Errorf("Locate(%q, %v) = %s, want %s", c.arg, c.needFS, got, c.want)
		}
		if errors.Is(err, ErrNotNamed) != c.notName {
			t.Errorf("Locate(%q, %v): error %v; wraps ErrNotNamed: %v, want %v", c.arg, c.needFS, err, errors.Is(err, ErrNotNamed), c.notName)
		}
	}
	// every disk is opened once, every filesystem's warnings come once
	if opens["disk0"] != 1 || opens[""] != 1 || opens["disk1"] != 1 || opens["sda"] != 1 || opens["disk9"] != 0 {
		t.Errorf("disks opened %v times; want each once per source", opens)
	}
	want := []string{"3fa4b2c1:disk0/p1 ext2: filesystem has errors recorded (run e2fsck on a copy)",
		"p1 ext2: filesystem has errors recorded (run e2fsck on a copy)"}
	l, err := b.Locate(ctx, "img:p1/d", false)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(warnings, "\n") != strings.Join(want, "\n") {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(warnings, "\n"), strings.Join(want, "\n"))
	}

	// Resolve and Stat name the location in errors
	l.Path = "/d/nothing"
	if _, err := l.Stat(ctx); err == nil || !strings.HasPrefix(err.Error(), "p1/d/nothing: ") || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat of a missing file: %v", err)
	}

	// Filesystems: every partition with a readable filesystem
	l, err = b.Locate(ctx, "rp1:disk0", false)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, fl := range b.Filesystems(l) {
		got = append(got, fl.Prefix()+fl.Path+"="+fl.FS.Type())
	}
	if s := strings.Join(got, " "); s != "3fa4b2c1:disk0/p1/=ext2 3fa4b2c1:disk0/p2/=fat12" {
		t.Errorf("Filesystems = %s", s)
	}
}

// TestFilesystemsSkipsUnreadable: the extended partition and partitions
// without a filesystem are left out of Filesystems.
func TestFilesystemsSkipsUnreadable(t *testing.T) {
	mbr := fstest.Seed(t, "mbr.img") // p1, p2 (extended), p5, p6: none holds a filesystem
	b := &Browser{}
	src := &Source{Name: "x", Disks: []string{"d"}, Open: func(context.Context, string) (io.ReaderAt, int64, error) {
		return bytes.NewReader(mbr), int64(len(mbr)), nil
	}}
	l, err := b.OpenDisk(context.Background(), src, "d")
	if err != nil {
		t.Fatal(err)
	}
	if names := PartitionNames(l.Disk); names != "p1, p2, p5, p6" {
		t.Fatalf("partitions %s", names)
	}
	if fss := b.Filesystems(l); len(fss) != 0 {
		t.Errorf("Filesystems returned %d locations on a disk without filesystems", len(fss))
	}
}

// TestReportWarnings: a warning a filesystem finds while it is read (a
// directory block of the golden ext4 image with a bad checksum, found
// when a path is resolved through it) reaches Warn at the next
// ReportWarnings, once.
func TestReportWarnings(t *testing.T) {
	z, err := os.ReadFile(filepath.Join("..", "..", "testdata", "fs", "golden", "ext4.img.zst"))
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
	var warnings []string
	src := &Source{Name: "ext4.img", Single: true, Open: func(context.Context, string) (io.ReaderAt, int64, error) {
		return bytes.NewReader(img), int64(len(img)), nil
	}}
	b := &Browser{
		Sources: func(context.Context, string) (*Source, string, error) { return src, "p0/hello.txt", nil },
		Warn:    func(l *Location, w string) { warnings = append(warnings, l.Prefix()+" "+w) },
	}
	l, err := b.Locate(context.Background(), "x", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Stat(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("warned before the directory was read: %q", warnings)
	}
	b.ReportWarnings()
	b.ReportWarnings()
	if len(warnings) != 1 || !strings.HasPrefix(warnings[0], "p0 directory inode 2 block 0: checksum mismatch") {
		t.Errorf("warnings %q, want one for the root directory's block", warnings)
	}
}

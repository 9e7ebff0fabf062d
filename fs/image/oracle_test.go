package image_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/fstest"
	"github.com/vmvault/vmvault/fs/image"
)

// node is what the oracles and our reader are compared on.
type node struct {
	typ    fs.Type
	ino    uint64
	size   int64
	mode   uint32
	uid    uint32
	gid    uint32
	nlink  uint32
	mtime  int64 // ns
	atime  int64
	ctime  int64
	target string
}

func (n node) String() string {
	return fmt.Sprintf("%s ino=%d size=%d mode=%o uid=%d gid=%d nlink=%d mtime=%d atime=%d ctime=%d target=%q",
		n.typ, n.ino, n.size, n.mode, n.uid, n.gid, n.nlink, n.mtime, n.atime, n.ctime, n.target)
}

// openPart opens partition name of an image file.
func openPart(t *testing.T, img, name string) (fs.FileSystem, image.Partition, *os.File) {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, _ := f.Stat()
	d, err := image.Open(f, fi.Size())
	if err != nil {
		t.Fatalf("open %s: %v", img, err)
	}
	p, err := d.Partition(name)
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := d.OpenFS(p)
	if err != nil {
		t.Fatalf("%s %s: %v", img, name, err)
	}
	return fsys, p, f
}

// ours lists every file of fsys (hidden metadata included when all).
func ours(t *testing.T, fsys fs.FileSystem, all bool) map[string]node {
	t.Helper()
	ctx := context.Background()
	out := map[string]node{}
	seen := map[fs.Ino]bool{}
	hidden, _ := fsys.(fs.HiddenChecker)
	var rec func(dir fs.Ino, p string)
	rec = func(dir fs.Ino, p string) {
		if seen[dir] {
			t.Fatalf("%s: directory visited twice", p)
		}
		seen[dir] = true
		ents, err := fsys.ReadDir(ctx, dir)
		if err != nil {
			t.Fatalf("readdir %s: %v", p, err)
		}
		for _, e := range ents {
			if !all && hidden != nil && hidden.Hidden(dir, e.Name) {
				continue
			}
			child := p + "/" + e.Name
			st, err := fsys.Stat(ctx, e.Ino)
			if err != nil {
				t.Fatalf("stat %s: %v", child, err)
			}
			n := node{typ: st.Type, ino: uint64(st.Ino), size: st.Size, mode: st.Mode, uid: st.UID, gid: st.GID,
				nlink: st.Nlink, mtime: st.Mtime.UnixNano(), atime: st.Atime.UnixNano(), ctime: st.Ctime.UnixNano()}
			if st.Type == fs.TypeSymlink {
				if n.target, err = fsys.Readlink(ctx, e.Ino); err != nil {
					t.Fatalf("readlink %s: %v", child, err)
				}
			}
			if _, dup := out[child]; dup {
				t.Fatalf("%s listed twice", child)
			}
			out[child] = n
			if st.Type == fs.TypeDir {
				rec(e.Ino, child)
			}
		}
	}
	rec(fsys.Root(), "")
	return out
}

// kernelTree lists a mounted filesystem with lstat.
func kernelTree(t *testing.T, root string) map[string]node {
	t.Helper()
	out := map[string]node{}
	err := filepath.WalkDir(root, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		n := node{ino: st.Ino, size: st.Size, mode: st.Mode & 0o7777, uid: st.Uid, gid: st.Gid, nlink: uint32(st.Nlink),
			mtime: st.Mtim.Nano(), atime: st.Atim.Nano(), ctime: st.Ctim.Nano()}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			n.typ = fs.TypeRegular
		case unix.S_IFDIR:
			n.typ = fs.TypeDir
		case unix.S_IFLNK:
			n.typ = fs.TypeSymlink
			n.target, _ = os.Readlink(p)
		case unix.S_IFIFO:
			n.typ = fs.TypeFIFO
		case unix.S_IFCHR:
			n.typ = fs.TypeCharDev
		case unix.S_IFBLK:
			n.typ = fs.TypeBlockDev
		case unix.S_IFSOCK:
			n.typ = fs.TypeSocket
		}
		out[strings.TrimPrefix(p, root)] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mount(t *testing.T, img string, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	cmd := append(args, img, dir)
	if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}

func sha(t *testing.T, r io.Reader) string {
	h := sha256.New()
	if _, err := io.CopyBuffer(h, r, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// compareContent checks a file's bytes against the mounted copy. Files
// over 512 MiB are compared on their data extents (SEEK_DATA), plus a
// check that our holes are where the kernel sees holes.
func compareContent(t *testing.T, fsys fs.FileSystem, ino fs.Ino, hostPath string) {
	t.Helper()
	ctx := context.Background()
	f, err := fsys.Open(ctx, fs.Ino(ino))
	if err != nil {
		t.Fatalf("open %s: %v", hostPath, err)
	}
	hf, err := os.Open(hostPath)
	if err != nil {
		t.Fatal(err)
	}
	defer hf.Close()
	if f.Size() <= 512<<20 {
		if a, b := sha(t, io.NewSectionReader(f, 0, f.Size())), sha(t, hf); a != b {
			t.Errorf("%s: content differs from the kernel's", hostPath)
		}
		return
	}
	sf, ok := f.(fs.SparseFile)
	if !ok {
		t.Fatalf("%s: large file without extents", hostPath)
	}
	ex, err := sf.DataExtents()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ex {
		a := sha(t, io.NewSectionReader(f, e.Offset, e.Length))
		b := sha(t, io.NewSectionReader(hf, e.Offset, e.Length))
		if a != b {
			t.Errorf("%s: extent %+v differs", hostPath, e)
		}
	}
	// the kernel's first data offset must be ours
	off, err := unix.Seek(int(hf.Fd()), 0, unix.SEEK_DATA)
	if err == nil && len(ex) > 0 && off != ex[0].Offset {
		t.Errorf("%s: kernel's first data at %d, ours at %d", hostPath, off, ex[0].Offset)
	}
}

func compareXattrs(t *testing.T, fsys fs.FileSystem, ino fs.Ino, hostPath string) {
	t.Helper()
	ctx := context.Background()
	names, err := fsys.ListXattr(ctx, ino)
	if err != nil {
		t.Fatalf("listxattr %s: %v", hostPath, err)
	}
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(hostPath, buf)
	if err != nil {
		t.Fatal(err)
	}
	var host []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if s != "" {
			host = append(host, s)
		}
	}
	sort.Strings(host)
	if strings.Join(names, ",") != strings.Join(host, ",") {
		t.Errorf("%s: xattrs %v, kernel %v", hostPath, names, host)
	}
	for _, name := range host {
		v, err := fsys.GetXattr(ctx, ino, name)
		if err != nil {
			t.Errorf("%s: getxattr %s: %v", hostPath, name, err)
			continue
		}
		m, err := unix.Lgetxattr(hostPath, name, buf)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(v, buf[:m]) {
			t.Errorf("%s: xattr %s = %q, kernel %q", hostPath, name, v, buf[:m])
		}
	}
}

// TestExtAgainstKernel compares every file of each ext image with the
// kernel's view of it mounted read-only: names, types, inode numbers,
// sizes, modes, owners, link counts, all three times to the nanosecond,
// symlink targets, extended attributes and content.
func TestExtAgainstKernel(t *testing.T) {
	dir := fstest.Images(t)
	for _, img := range []string{"ext2.img", "ext3.img", "ext4.img", "ext4-inline.img", "ext4-dirty.img"} {
		t.Run(img, func(t *testing.T) {
			path := filepath.Join(dir, img)
			fsys, _, _ := openPart(t, path, "p0")
			opts := []string{"mount", "-o", "ro,loop"}
			if img == "ext4-dirty.img" {
				opts = []string{"mount", "-o", "ro,loop,norecovery"}
				if w := fsys.Warnings(); len(w) == 0 || !strings.Contains(w[0], "journal") {
					t.Errorf("no journal warning: %v", w)
				}
			}
			mnt := mount(t, path, opts...)
			got, want := ours(t, fsys, true), kernelTree(t, mnt)
			compareTrees(t, got, want, true)
			checked := 0
			for p, n := range got {
				host := filepath.Join(mnt, p)
				switch n.typ {
				case fs.TypeRegular:
					compareContent(t, fsys, fs.Ino(n.ino), host)
					checked++
				}
				if n.typ != fs.TypeSymlink {
					compareXattrs(t, fsys, fs.Ino(n.ino), host)
				}
			}
			t.Logf("%s: %d entries, %d files' content compared", img, len(got), checked)
		})
	}
}

func compareTrees(t *testing.T, got, want map[string]node, exact bool) {
	t.Helper()
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			t.Errorf("missing %s (%v)", p, w)
			continue
		}
		if !exact {
			w.ino, w.nlink, w.atime, w.ctime, w.mode, w.uid, w.gid = g.ino, g.nlink, g.atime, g.ctime, g.mode, g.uid, g.gid
			if w.typ == fs.TypeDir {
				w.size, w.mtime = g.size, g.mtime
			}
		}
		if g != w {
			t.Errorf("%s:\n got  %v\n want %v", p, g, w)
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("extra %s (%v)", p, g)
		}
	}
}

// TestNTFSAgainstNTFS3G compares the NTFS image with ntfs-3g's view
// (this kernel has no NTFS driver): names, types, sizes, mtimes, symlink
// targets and content; alternate data streams against ntfs-3g's
// streams_interface=windows.
func TestNTFSAgainstNTFS3G(t *testing.T) {
	dir := fstest.Images(t)
	path := filepath.Join(dir, "ntfs.img")
	fsys, _, _ := openPart(t, path, "p0")
	mnt := mount(t, path, "ntfs-3g", "-o", "ro")
	got := ours(t, fsys, false)
	want := kernelTree(t, mnt)
	streams := map[string]node{}
	for p, n := range got {
		if strings.Contains(p, ":") {
			streams[p] = n
			delete(got, p)
		}
	}
	compareTrees(t, got, want, false)
	for p, n := range got {
		if n.typ == fs.TypeRegular {
			compareContent(t, fsys, fs.Ino(n.ino), filepath.Join(mnt, p))
		}
	}
	if len(streams) != 2 {
		t.Errorf("alternate data streams: %v", streams)
	}
	smnt := mount(t, path, "ntfs-3g", "-o", "ro,streams_interface=windows")
	for p, n := range streams {
		compareContent(t, fsys, fs.Ino(n.ino), filepath.Join(smnt, p))
	}
	if n := want["/hard-a"].nlink; n != 2 {
		t.Errorf("hard-a has %d links", n)
	}
}

// flsTree lists a filesystem with The Sleuth Kit: path → type letter and
// inode (metadata address).
func flsTree(t *testing.T, img string, offsetSectors int64) map[string]string {
	t.Helper()
	out, err := exec.Command("fls", "-r", "-p", "-o", strconv.FormatInt(offsetSectors, 10), img).Output()
	if err != nil {
		t.Fatalf("fls %s: %v", img, err)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		head, name, ok := strings.Cut(line, ":\t")
		if !ok {
			t.Fatalf("fls line %q", line)
		}
		f := strings.Fields(head)
		if len(f) < 2 || f[1] == "*" || strings.HasPrefix(name, "$") || strings.Contains(name, "/$") || strings.Contains(name, "(Volume Label") {
			continue // deleted entries, Sleuth Kit's virtual files, metadata
		}
		inode := f[len(f)-1]
		inode, _, _ = strings.Cut(inode, "-")
		m["/"+name] = f[0][2:3] + " " + inode
	}
	return m
}

var tskType = map[fs.Type]string{fs.TypeRegular: "r", fs.TypeDir: "d", fs.TypeSymlink: "l", fs.TypeFIFO: "p",
	fs.TypeCharDev: "c", fs.TypeBlockDev: "b", fs.TypeSocket: "h"}

// TestAgainstSleuthKit compares listings (paths, types and, where the
// numbering is the same, inode numbers) with fls on every image and on the
// partitions of the MBR and GPT disks.
func TestAgainstSleuthKit(t *testing.T) {
	dir := fstest.Images(t)
	fstest.NeedTools(t, "fls")
	cases := []struct {
		img, part string
		inodes    bool
	}{
		{"ext2.img", "p0", true}, {"ext3.img", "p0", true}, {"ext4.img", "p0", true},
		{"ext4-inline.img", "p0", true}, {"ntfs.img", "p0", true},
		{"fat12.img", "p0", false}, {"fat16.img", "p0", false}, {"fat32.img", "p0", false},
		{"mbr.img", "p1", false}, {"mbr.img", "p5", true}, {"mbr.img", "p6", true},
		{"gpt.img", "p1", false}, {"gpt.img", "p3", true},
	}
	for _, c := range cases {
		t.Run(c.img+"/"+c.part, func(t *testing.T) {
			path := filepath.Join(dir, c.img)
			fsys, p, _ := openPart(t, path, c.part)
			want := flsTree(t, path, p.Start/512)
			got := map[string]string{}
			for q, n := range ours(t, fsys, false) {
				got[q] = tskType[n.typ] + " " + strconv.FormatUint(n.ino&(1<<48-1), 10)
				if fsys.Type() == "ntfs" && n.typ == fs.TypeSymlink {
					got[q] = "r " + strconv.FormatUint(n.ino, 10) // TSK shows Interix links as files
				}
			}
			if !c.inodes {
				for _, m := range []map[string]string{got, want} {
					for k, v := range m {
						m[k] = v[:1]
					}
				}
			}
			if len(want) < 2 {
				t.Fatalf("fls listed only %v", want)
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s: ours %q, fls %q", k, got[k], v)
				}
			}
			for k, v := range got {
				if _, ok := want[k]; !ok {
					t.Errorf("%s (%s) not listed by fls", k, v)
				}
			}
		})
	}
}

// TestPartitionTables compares the partition tables with sfdisk's.
func TestPartitionTables(t *testing.T) {
	dir := fstest.Images(t)
	for _, img := range []string{"mbr.img", "gpt.img"} {
		t.Run(img, func(t *testing.T) {
			path := filepath.Join(dir, img)
			out, err := exec.Command("sfdisk", "-J", path).Output()
			if err != nil {
				t.Fatal(err)
			}
			var sf struct {
				PartitionTable struct {
					Label      string
					Partitions []struct {
						Node        string
						Start, Size int64
						Type        string
						Name        string
						UUID        string
					}
				}
			}
			if err := json.Unmarshal(out, &sf); err != nil {
				t.Fatal(err)
			}
			f, _ := os.Open(path)
			defer f.Close()
			fi, _ := f.Stat()
			d, err := image.Open(f, fi.Size())
			if err != nil {
				t.Fatal(err)
			}
			if want := map[string]string{"dos": "mbr", "gpt": "gpt"}[sf.PartitionTable.Label]; d.Table != want {
				t.Errorf("table %s, want %s", d.Table, want)
			}
			if len(d.Partitions) != len(sf.PartitionTable.Partitions) {
				t.Fatalf("%d partitions, sfdisk %d: %+v", len(d.Partitions), len(sf.PartitionTable.Partitions), d.Partitions)
			}
			for i, w := range sf.PartitionTable.Partitions {
				g := d.Partitions[i]
				num := strings.TrimPrefix(w.Node, path)
				if g.Name != "p"+num || g.Start != w.Start*512 || g.Size != w.Size*512 {
					t.Errorf("%s: %+v, sfdisk %+v", g.Name, g, w)
				}
				wt := strings.ToLower(w.Type)
				if d.Table == "mbr" {
					wt = "0x" + fmt.Sprintf("%02s", wt)
				}
				if g.Type != wt {
					t.Errorf("%s type %s, sfdisk %s", g.Name, g.Type, wt)
				}
				if d.Table == "gpt" && (g.PartLabel != w.Name || !strings.EqualFold(g.PartUUID, w.UUID)) {
					t.Errorf("%s: label %q uuid %s, sfdisk %q %s", g.Name, g.PartLabel, g.PartUUID, w.Name, w.UUID)
				}
			}
			want := map[string]string{"p1": "fat16", "p5": "ext4", "p6": "ext2"}
			if img == "gpt.img" {
				want = map[string]string{"p1": "fat32", "p3": "ext4"}
			}
			for _, p := range d.Partitions {
				if w, ok := want[p.Name]; ok && p.Filesystem != w {
					t.Errorf("%s: filesystem %q, want %q", p.Name, p.Filesystem, w)
				}
			}
		})
	}
}

// TestFATAgainstMtools compares FAT12/16/32 listings and every file's
// content with mtools (this kernel has no vfat driver).
func TestFATAgainstMtools(t *testing.T) {
	dir := fstest.Images(t)
	fstest.NeedTools(t, "mdir", "mtype")
	for _, img := range []string{"fat12.img", "fat16.img", "fat32.img"} {
		t.Run(img, func(t *testing.T) {
			path := filepath.Join(dir, img)
			fsys, _, _ := openPart(t, path, "p0")
			cmd := exec.Command("mdir", "-/", "-b", "-i", path, "::/")
			cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("mdir: %v", err)
			}
			want := map[string]bool{}
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				want[strings.TrimPrefix(l, "::")] = true
			}
			got := map[string]bool{}
			files := 0
			for p, n := range ours(t, fsys, false) {
				if n.typ == fs.TypeDir {
					got[p+"/"] = true
					continue
				}
				got[p] = true
				cmd := exec.Command("mtype", "-i", path, "::"+p)
				cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
				ref, err := cmd.Output()
				if err != nil {
					t.Fatalf("mtype %s: %v", p, err)
				}
				f, err := fsys.Open(context.Background(), fs.Ino(n.ino))
				if err != nil {
					t.Fatal(err)
				}
				b := make([]byte, f.Size())
				if _, err := f.ReadAt(b, 0); err != nil && err != io.EOF {
					t.Fatal(err)
				}
				if !bytes.Equal(b, ref) {
					t.Errorf("%s: content differs from mtype's", p)
				}
				files++
			}
			for p := range want {
				if !got[p] {
					t.Errorf("missing %s", p)
				}
			}
			for p := range got {
				if !want[p] {
					t.Errorf("extra %s", p)
				}
			}
			t.Logf("%s: %d entries, %d files compared", img, len(got), files)
		})
	}
}

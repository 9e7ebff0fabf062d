package image_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/fstest"
	"github.com/vmvault/vmvault/repo/extent"
)

var (
	volOnce   sync.Once
	volDir    string
	volErr    error
	volOutput []byte
)

// volumeImages builds the XFS and LVM images of
// scripts/make-volume-images.sh once per machine ($TMPDIR/vmvault-volimg,
// or VMVAULT_VOLIMG) and returns their directory.
func volumeImages(t *testing.T) string {
	t.Helper()
	fstest.NeedRoot(t)
	fstest.NeedTools(t, "mkfs.xfs", "xfs_db", "pvcreate", "vgcreate", "lvcreate", "lvs", "mke2fs", "sfdisk", "setfattr", "setfacl", "python3")
	volOnce.Do(func() {
		volDir = os.Getenv("VMVAULT_VOLIMG")
		if volDir == "" {
			volDir = filepath.Join(os.TempDir(), "vmvault-volimg")
		}
		_, file, _, _ := runtime.Caller(0)
		script := filepath.Join(filepath.Dir(file), "..", "..", "scripts", "make-volume-images.sh")
		volOutput, volErr = exec.Command("bash", script, volDir).CombinedOutput()
	})
	if volErr != nil {
		t.Fatalf("make-volume-images.sh: %v\n%s", volErr, volOutput)
	}
	return volDir
}

// TestXFSAgainstKernel compares every path of the v5 XFS images with the
// kernel's loop mount: type, inode number, size, mode, owner, link count,
// all three times to the nanosecond, symlink target, device number,
// creation time, every xattr (ACLs included) and every file's SHA-256.
func TestXFSAgainstKernel(t *testing.T) {
	dir := volumeImages(t)
	for _, img := range []string{"xfs5.img", "xfs5-1k.img"} {
		t.Run(img, func(t *testing.T) {
			path := filepath.Join(dir, img)
			fsys, _, _ := openPart(t, path, "p0")
			if fsys.Type() != "xfs" {
				t.Fatalf("type %s", fsys.Type())
			}
			mnt := mount(t, path, "mount", "-o", "ro,loop")
			got, want := ours(t, fsys, true), kernelTree(t, mnt)
			compareTrees(t, got, want, true)
			files := 0
			ctx := context.Background()
			for p, n := range got {
				host := filepath.Join(mnt, p)
				if n.typ == fs.TypeRegular {
					compareContent(t, fsys, fs.Ino(n.ino), host)
					files++
				}
				if n.typ != fs.TypeSymlink {
					compareXattrs(t, fsys, fs.Ino(n.ino), host)
				}
				st, err := fsys.Stat(ctx, fs.Ino(n.ino))
				if err != nil {
					t.Fatal(err)
				}
				var sx unix.Statx_t
				if err := unix.Statx(unix.AT_FDCWD, host, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BTIME, &sx); err != nil {
					t.Fatal(err)
				}
				if want := unix.Mkdev(sx.Rdev_major, sx.Rdev_minor); uint64(st.Rdev) != want && (n.typ == fs.TypeCharDev || n.typ == fs.TypeBlockDev) {
					t.Errorf("%s: rdev %#x, kernel %#x", p, st.Rdev, want)
				}
				if sx.Mask&unix.STATX_BTIME != 0 && st.Crtime.UnixNano() != sx.Btime.Sec*1e9+int64(sx.Btime.Nsec) {
					t.Errorf("%s: creation time %v, kernel %d.%09d", p, st.Crtime, sx.Btime.Sec, sx.Btime.Nsec)
				}
			}
			for _, p := range []string{"/bt1", "/node", "/leaf", "/block", "/sf", "/frag-a.bin", "/long-link", "/xattr-node.txt", "/bigdev", "/socket", "/reflink.bin"} {
				if _, ok := got[p]; !ok {
					t.Errorf("%s missing: the image does not have what this test is about", p)
				}
			}
			if w := fsys.Warnings(); len(w) != 0 {
				t.Errorf("warnings on a clean filesystem: %v", w)
			}
			t.Logf("%s: %d entries, %d files' content compared", img, len(got), files)
		})
	}
}

// TestXFSv4AgainstSource compares the v4 image (made by mkfs.xfs -p, as
// this kernel cannot mount v4) with the tree it was made from: names,
// types, sizes, modes, owners, targets, device numbers and content; and
// inode numbers with xfs_db's directory listings.
func TestXFSv4AgainstSource(t *testing.T) {
	dir := volumeImages(t)
	path := filepath.Join(dir, "xfs4.img")
	fsys, _, _ := openPart(t, path, "p0")
	src := filepath.Join(dir, "src4")
	got, want := ours(t, fsys, true), kernelTree(t, src)
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			t.Errorf("missing %s", p)
			continue
		}
		w.ino, w.nlink, w.atime, w.ctime, w.mtime = g.ino, g.nlink, g.atime, g.ctime, g.mtime
		if w.typ == fs.TypeDir {
			w.size = g.size
		}
		if g != w {
			t.Errorf("%s:\n got  %v\n want %v", p, g, w)
		}
		if g.typ == fs.TypeRegular {
			compareContent(t, fsys, fs.Ino(g.ino), filepath.Join(src, p))
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d entries, source has %d", len(got), len(want))
	}
	// inode numbers of one directory of each form, from xfs_db
	for _, d := range []string{"/", "/sf", "/block", "/leaf", "/node"} {
		out, err := exec.Command("xfs_db", "-r", "-c", "path "+d, "-c", "ls", path).Output()
		if err != nil {
			t.Fatalf("xfs_db ls %s: %v", d, err)
		}
		n := 0
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 6 || f[len(f)-2] == "." || f[len(f)-2] == ".." {
				continue
			}
			name := f[len(f)-2]
			ino, _ := strconv.ParseUint(f[1], 10, 64)
			p := strings.TrimSuffix(d, "/") + "/" + name
			if g, ok := got[p]; !ok || g.ino != ino {
				t.Errorf("%s: inode %d, xfs_db %d", p, g.ino, ino)
			}
			n++
		}
		if n == 0 {
			t.Errorf("xfs_db listed nothing in %s: %s", d, out)
		}
	}
}

// TestXFSAllocated checks the allocation map against xfs_db's list of free
// extents (exactly its complement) and against the kernel's FIEMAP of
// every file (no file block in free space).
func TestXFSAllocated(t *testing.T) {
	dir := volumeImages(t)
	for _, img := range []string{"xfs5.img", "xfs5-1k.img", "xfs4.img"} {
		t.Run(img, func(t *testing.T) {
			path := filepath.Join(dir, img)
			fsys, _, _ := openPart(t, path, "p0")
			am, ok := fsys.(fs.AllocationMapper)
			if !ok {
				t.Fatal("xfs does not map allocations")
			}
			alloc, err := am.Allocated(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			geo := xfsGeometry(t, path)
			total := geo["dblocks"] * geo["blocksize"]
			var free []extent.Range
			out, err := exec.Command("xfs_db", "-r", "-c", "freesp -d", path).Output()
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range strings.Split(string(out), "\n") {
				f := strings.Fields(l)
				if len(f) != 3 {
					continue
				}
				ag, err1 := strconv.ParseInt(f[0], 10, 64)
				agb, err2 := strconv.ParseInt(f[1], 10, 64)
				n, err3 := strconv.ParseInt(f[2], 10, 64)
				if err1 != nil || err2 != nil || err3 != nil {
					continue
				}
				free = append(free, extent.Range{Offset: (ag*geo["agblocks"] + agb) * geo["blocksize"], Length: n * geo["blocksize"]})
			}
			if len(free) == 0 {
				t.Fatalf("xfs_db freesp found no free space: %s", out)
			}
			free = extent.Normalize(free)
			if overlap := extent.Intersect(alloc, free); len(overlap) != 0 {
				t.Errorf("allocated ranges overlap xfs_db's free space: %v", overlap[:min(len(overlap), 5)])
			}
			if a, f := extent.Sum(alloc), extent.Sum(free); a+f != total {
				t.Errorf("allocated %d + free %d != filesystem %d bytes", a, f, total)
			}
			if img == "xfs4.img" {
				return // no kernel mount for FIEMAP
			}
			mnt := mount(t, path, "mount", "-o", "ro,loop")
			files := 0
			err = filepath.WalkDir(mnt, func(p string, d os.DirEntry, err error) error {
				if err != nil || !d.Type().IsRegular() {
					return err
				}
				for _, e := range fiemap(t, p) {
					if got := extent.Intersect([]extent.Range{e}, alloc); extent.Sum(got) != e.Length {
						t.Errorf("%s: blocks %+v lie in free space", p, e)
					}
				}
				files++
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d allocated ranges (%d of %d bytes), %d files' extents inside them", img, len(alloc), extent.Sum(alloc), total, files)
		})
	}
}

func xfsGeometry(t *testing.T, img string) map[string]int64 {
	t.Helper()
	out, err := exec.Command("xfs_db", "-r", "-c", "sb 0", "-c", "print blocksize agblocks dblocks", img).Output()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int64{}
	for _, l := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(l, " = ")
		if ok {
			m[k], _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return m
}

// fiemap returns the physical byte ranges of a file's extents (FIEMAP).
func fiemap(t *testing.T, path string) []extent.Range {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const n = 512
	type fiemapExtent struct {
		Logical, Physical, Length uint64
		_                         [2]uint64
		Flags                     uint32
		_                         [3]uint32
	}
	type fiemapReq struct {
		Start, Length                uint64
		Flags, Mapped, Count, Unused uint32
		Extents                      [n]fiemapExtent
	}
	var out []extent.Range
	start := uint64(0)
	for {
		req := &fiemapReq{Start: start, Length: ^uint64(0) - start, Flags: 1 /* FIEMAP_FLAG_SYNC */, Count: n}
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), 0xC020660B, uintptr(unsafe.Pointer(req))); e != 0 {
			t.Fatalf("FIEMAP %s: %v", path, e)
		}
		if req.Mapped == 0 {
			return out
		}
		for _, e := range req.Extents[:req.Mapped] {
			out = append(out, extent.Range{Offset: int64(e.Physical), Length: int64(e.Length)})
			start = e.Logical + e.Length
			if e.Flags&1 != 0 { // FIEMAP_EXTENT_LAST
				return out
			}
		}
	}
}

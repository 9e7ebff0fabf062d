package image_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/fstest"
	"github.com/vmvault/vmvault/fs/image"
	"github.com/vmvault/vmvault/fs/lvm"
	"github.com/vmvault/vmvault/repo/extent"
)

// TestXFSAgainstKernel compares every path of the v5 XFS images with the
// kernel's loop mount: type, inode number, size, mode, owner, link count,
// all three times to the nanosecond, symlink target, device number,
// creation time, every xattr (ACLs included) and every file's SHA-256.
func TestXFSAgainstKernel(t *testing.T) {
	dir := fstest.VolumeImages(t)
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
					compareSmall(t, fsys, n, host)
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
	dir := fstest.VolumeImages(t)
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
			compareSmall(t, fsys, g, filepath.Join(src, p))
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
	dir := fstest.VolumeImages(t)
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

// compareSmall compares a file's content with a host file's byte for
// byte when it is small, through compareContent's SHA-256 otherwise.
func compareSmall(t *testing.T, fsys fs.FileSystem, n node, host string) {
	t.Helper()
	if n.size > 1<<20 {
		compareContent(t, fsys, fs.Ino(n.ino), host)
		return
	}
	f, err := fsys.Open(context.Background(), fs.Ino(n.ino))
	if err != nil {
		t.Fatalf("open %s: %v", host, err)
	}
	got := make([]byte, f.Size())
	if _, err := f.ReadAt(got, 0); err != nil && err != io.EOF {
		t.Fatalf("read %s: %v", host, err)
	}
	want, err := os.ReadFile(host)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s: content differs", host)
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

// lvsReport is what the build script saved from the real lvm tools: lvs
// segments and, per PV device, where it starts on the disk.
type lvsReport struct {
	Segs []struct {
		VG       string `json:"vg_name"`
		LV       string `json:"lv_name"`
		Size     string `json:"lv_size"`
		StartPE  string `json:"seg_start_pe"`
		SizePE   string `json:"seg_size_pe"`
		PERanges string `json:"seg_pe_ranges"`
		Stripes  string `json:"stripes"`
		SegType  string `json:"segtype"`
		Extent   string `json:"vg_extent_size"`
	}
	PVs map[string]struct {
		Offset  *int64 `json:"offset"` // nil: not on this disk
		PEStart int64  `json:"pe_start"`
		UUID    string `json:"uuid"`
	}
}

func readLVS(t *testing.T, path string) lvsReport {
	t.Helper()
	var rep lvsReport
	var raw struct {
		Report []struct {
			Seg json.RawMessage `json:"seg"`
		} `json:"report"`
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &raw); err != nil || len(raw.Report) != 1 {
		t.Fatalf("%s: %v", path, err)
	}
	if err := json.Unmarshal(raw.Report[0].Seg, &rep.Segs); err != nil {
		t.Fatal(err)
	}
	b, err = os.ReadFile(path + ".pvs")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep.PVs); err != nil {
		t.Fatal(err)
	}
	return rep
}

// diskRanges is where lvs says an LV lies on the disk, normalized; ok is
// false when one of its PVs is not on the disk.
func (rep lvsReport) diskRanges(t *testing.T, lv string) (out []extent.Range, ok bool) {
	t.Helper()
	ok = true
	for _, s := range rep.Segs {
		if s.LV != lv {
			continue
		}
		ext, _ := strconv.ParseInt(s.Extent, 10, 64)
		size, _ := strconv.ParseInt(s.SizePE, 10, 64)
		areas := strings.Fields(s.PERanges)
		for _, a := range areas {
			dev, pes, _ := strings.Cut(a, ":")
			first, last, _ := strings.Cut(pes, "-")
			f, _ := strconv.ParseInt(first, 10, 64)
			l, _ := strconv.ParseInt(last, 10, 64)
			if l-f+1 != size/int64(len(areas)) {
				t.Fatalf("%s: area %s of a %d-extent segment", lv, a, size)
			}
			pv, found := rep.PVs[dev]
			if !found || pv.Offset == nil {
				ok = false
				continue
			}
			out = append(out, extent.Range{Offset: *pv.Offset + pv.PEStart + f*ext, Length: (l - f + 1) * ext})
		}
	}
	return extent.Normalize(out), ok
}

func openDisk(t *testing.T, path string) (*image.Disk, *os.File) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, _ := f.Stat()
	d, err := image.Open(f, fi.Size())
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	return d, f
}

// TestLVMAgainstLVMTools reads the LVs of a disk whose two PVs were made
// by pvcreate/vgcreate/lvcreate (linear, striped over both PVs, two
// segments in reverse order, swap, LUKS, an LV only the newer metadata
// copy has) and checks them against lvs: names, sizes, where every LV
// lies on the disk; each LV's bytes against the filesystem image copied
// into it; and the files of each filesystem against the kernel's loop
// mount of that image.
func TestLVMAgainstLVMTools(t *testing.T) {
	dir := fstest.VolumeImages(t)
	path := filepath.Join(dir, "lvm.img")
	rep := readLVS(t, path[:len(path)-len(".img")]+".lvs.json")
	d, _ := openDisk(t, path)
	want := map[string]int64{}
	for _, s := range rep.Segs {
		size, _ := strconv.ParseInt(s.Size, 10, 64)
		want[image.DMName(s.VG, s.LV)] = size
	}
	got := map[string]image.Partition{}
	for _, p := range d.Partitions {
		if p.Table == "lvm" {
			got[p.Name] = p
		}
	}
	if len(got) != len(want) {
		t.Errorf("LVs %v, lvs lists %v", keys(got), want)
	}
	for name, size := range want {
		v, ok := got[name]
		if !ok {
			t.Errorf("LV %s missing", name)
			continue
		}
		if v.Size != size || v.Error != "" {
			t.Errorf("%s: size %d (lvs %d), error %q", name, v.Size, size, v.Error)
		}
		wantRanges, _ := rep.diskRanges(t, v.LV)
		if g := v.DiskRanges(extent.Range{Offset: 0, Length: v.Size}); !slicesEqual(g, wantRanges) {
			t.Errorf("%s: disk ranges %v, lvs %v", name, g, wantRanges)
		}
		// any piece of the volume maps to as many bytes inside its ranges
		for _, r := range []extent.Range{{Offset: 1, Length: 70000}, {Offset: v.Size/2 - 4097, Length: 3 << 20}, {Offset: v.Size - 10, Length: 100}} {
			g := v.DiskRanges(r)
			if n := extent.Sum(g); n != min(r.End(), v.Size)-r.Offset || extent.Sum(extent.Intersect(g, wantRanges)) != n {
				t.Errorf("%s: DiskRanges(%+v) = %v", name, r, g)
			}
		}
	}
	for _, p := range d.Partitions[:2] {
		if p.Filesystem != "LVM2_member" {
			t.Errorf("%s: filesystem %q", p.Name, p.Filesystem)
		}
		if _, err := d.OpenFS(p); err == nil || !strings.Contains(err.Error(), "volume group vgtest") {
			t.Errorf("%s: OpenFS error %v", p.Name, err)
		}
	}
	for _, c := range []struct{ lv, img, fsType string }{
		{"vgtest-root", "root.img", "ext4"}, {"vgtest-split--ext4", "split.img", "ext4"},
		{"vgtest-data--x", "striped.img", "xfs"}, {"vgtest-swap", "swap.img", "swap"},
		{"vgtest-crypt", "crypt.img", "crypto_LUKS"}, {"vgtest-late", "", ""},
	} {
		t.Run(c.lv, func(t *testing.T) {
			v, err := d.Partition(c.lv)
			if err != nil {
				t.Fatal(err)
			}
			if v.Filesystem != c.fsType {
				t.Errorf("filesystem %q, want %q", v.Filesystem, c.fsType)
			}
			if c.img == "" {
				return
			}
			fsimg := filepath.Join(dir, "lvm-fs", c.img)
			want, err := os.ReadFile(fsimg)
			if err != nil {
				t.Fatal(err)
			}
			gotBytes := make([]byte, len(want))
			if _, err := d.Reader(v).ReadAt(gotBytes, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(gotBytes, want) {
				t.Fatalf("LV bytes differ from %s", c.img)
			}
			fsys, err := d.OpenFS(v)
			if c.fsType == "swap" || c.fsType == "crypto_LUKS" {
				if err == nil {
					t.Fatalf("%s opened as a filesystem", c.fsType)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			mnt := mount(t, fsimg, "mount", "-o", "ro,loop")
			gotTree := ours(t, fsys, true)
			compareTrees(t, gotTree, kernelTree(t, mnt), true)
			for p, n := range gotTree {
				if n.typ == fs.TypeRegular {
					compareSmall(t, fsys, n, filepath.Join(mnt, p))
				}
			}
		})
	}
}

// TestLVMNewestValidMetadata: the two PVs of lvm.img hold metadata of
// seqno 10 (p1) and 9 (p2, without LV "late"). With p1's copy damaged
// (one byte of its text changed), the reader falls back to p2's.
func TestLVMNewestValidMetadata(t *testing.T) {
	dir := fstest.VolumeImages(t)
	b, err := os.ReadFile(filepath.Join(dir, "lvm.img"))
	if err != nil {
		t.Fatal(err)
	}
	p1 := b[1<<20 : 2<<20]
	i := bytes.LastIndex(p1, []byte("seqno = 10\n"))
	if i < 0 {
		t.Fatal("no seqno 10 in p1's metadata")
	}
	p1[i+len("seqno = 1")] = '9'
	d, err := image.Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Partition("vgtest-late"); err == nil {
		t.Error("LV late of the damaged newer metadata is listed")
	}
	if _, err := d.Partition("vgtest-root"); err != nil {
		t.Error(err)
	}
	d, _ = openDisk(t, filepath.Join(dir, "lvm.img"))
	if _, err := d.Partition("vgtest-late"); err != nil {
		t.Errorf("undamaged image: %v", err)
	}
}

// TestLVMSpansAnotherDisk reads a disk that is one PV of a VG whose other
// PV is on another disk: the LV on this disk is read, the one spanning
// both is listed with an error and never guessed.
func TestLVMSpansAnotherDisk(t *testing.T) {
	dir := fstest.VolumeImages(t)
	d, _ := openDisk(t, filepath.Join(dir, "lvm-whole.img"))
	if d.Table != "none" || d.Partitions[0].Filesystem != "LVM2_member" {
		t.Fatalf("table %s, p0 %+v", d.Table, d.Partitions[0])
	}
	local, err := d.Partition("vgw-local")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(dir, "lvm-fs", "root.img"))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := d.Reader(local).ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Errorf("vgw-local differs from root.img (%v)", err)
	}
	if fsys, err := d.OpenFS(local); err != nil || fsys.Label() != "lvm-root" {
		t.Errorf("vgw-local: %v", err)
	}
	span, err := d.Partition("vgw-span")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(span.Error, "spans another disk") {
		t.Errorf("vgw-span error %q", span.Error)
	}
	if _, err := d.OpenFS(span); err == nil || !strings.Contains(err.Error(), "spans another disk") {
		t.Errorf("vgw-span OpenFS: %v", err)
	}
	if r := span.DiskRanges(extent.Range{Offset: 0, Length: 4096}); r != nil {
		t.Errorf("vgw-span maps to %v", r)
	}
}

// TestLVMVgcfgbackup parses vgcfgbackup's file of the VG with fs/lvm and
// compares its LVs with lvs.
func TestLVMVgcfgbackup(t *testing.T) {
	dir := fstest.VolumeImages(t)
	text, err := os.ReadFile(filepath.Join(dir, "lvm.vgcfg"))
	if err != nil {
		t.Fatal(err)
	}
	vg, err := lvm.ParseVG(string(text))
	if err != nil {
		t.Fatal(err)
	}
	rep := readLVS(t, filepath.Join(dir, "lvm.lvs.json"))
	segs := map[string]int{}
	for _, s := range rep.Segs {
		segs[s.LV]++
	}
	if len(vg.LVs) != len(segs) {
		t.Errorf("%d LVs, lvs lists %d", len(vg.LVs), len(segs))
	}
	for _, lv := range vg.LVs {
		if len(lv.Segments) != segs[lv.Name] || !lv.Visible || lv.Unsupported != "" {
			t.Errorf("%s: %d segments (lvs %d), visible %v, %q", lv.Name, len(lv.Segments), segs[lv.Name], lv.Visible, lv.Unsupported)
		}
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func slicesEqual(a, b []extent.Range) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

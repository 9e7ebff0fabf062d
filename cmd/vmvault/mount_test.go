package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/fs/fstest"
)

// mounted runs `vmvault mount` in the background and waits for it.
type mounted struct {
	dir  string
	cmd  *exec.Cmd
	logb *bytes.Buffer
}

func (e *env) mount(t *testing.T) *mounted {
	t.Helper()
	fstest.NeedTools(t, "fusermount3")
	fstest.NeedRoot(t)
	m := &mounted{dir: t.TempDir(), logb: &bytes.Buffer{}}
	m.cmd = exec.Command(filepath.Join(binDir, "vmvault"), "mount", m.dir)
	m.cmd.Env = e.environ()
	m.cmd.Stdout, m.cmd.Stderr = m.logb, m.logb
	start := time.Now()
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for !isMountpoint(m.dir) {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("mount did not appear:\n%s", m.logb)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() { m.stop(t) })
	return m
}

func isMountpoint(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mounts")
	return strings.Contains(string(b), " "+dir+" ")
}

// stop interrupts the mount and checks it leaves nothing behind.
func (m *mounted) stop(t *testing.T) {
	if m.cmd.ProcessState != nil {
		return
	}
	m.cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- m.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("vmvault mount exited with %v\n%s", err, m.logb)
		}
	case <-time.After(15 * time.Second):
		m.cmd.Process.Kill()
		t.Errorf("vmvault mount did not exit on SIGINT")
	}
	if isMountpoint(m.dir) {
		t.Errorf("%s still mounted after exit", m.dir)
		exec.Command("umount", "-l", m.dir).Run()
	}
}

func shaFile(t *testing.T, p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

type fileInfo struct {
	mode   uint32
	size   int64
	uid    uint32
	gid    uint32
	nlink  uint64
	mtime  syscall.Timespec
	target string
	sha    string
	xattrs string
}

// tree lists a directory tree with lstat, content hashes and xattrs.
func tree(t *testing.T, root string) map[string]fileInfo {
	t.Helper()
	out := map[string]fileInfo{}
	err := filepath.WalkDir(root, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(p, root)
		if rel == "" || strings.HasPrefix(rel, "/lost+found") {
			return nil
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		fi := fileInfo{mode: st.Mode, size: st.Size, uid: st.Uid, gid: st.Gid, nlink: st.Nlink, mtime: st.Mtim}
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFLNK:
			fi.target, _ = os.Readlink(p)
		case syscall.S_IFREG:
			if fi.sha, err = shaFile(t, p); err != nil {
				return err
			}
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFLNK {
			buf := make([]byte, 4096)
			if n, err := unix.Llistxattr(p, buf); err == nil {
				fi.xattrs = string(buf[:n])
			}
		}
		if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			fi.size, fi.nlink = 0, 0 // directory sizes and link counts are filesystem-specific
		}
		out[rel] = fi
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMount mounts a repository holding the MBR disk (FAT16, ext4 inline,
// ext2) and the big ext4 image and checks the layout, every file of the
// ext4 tree against a kernel loop mount of the image (type, mode, owner,
// size, link count, mtime, symlink target, xattrs, sha256), 8 parallel
// readers, the raw disk loop-mounted again, a restore point captured while
// mounted appearing, EIO on a damaged chunk with the mount staying up, and
// a clean unmount on SIGINT.
func TestMount(t *testing.T) {
	imgs := fstest.Images(t)
	e := newEnv(t)
	e.capture("--vm", "web01", "--disk", "disk0="+filepath.Join(imgs, "mbr.img"), "--disk", "disk1="+filepath.Join(imgs, "ext4.img"))
	m := e.mount(t)

	latest, err := os.Readlink(filepath.Join(m.dir, "web01", "latest"))
	if err != nil {
		t.Fatal(err)
	}
	rpDir := filepath.Join(m.dir, "web01", latest)
	var names []string
	ents, _ := os.ReadDir(rpDir)
	for _, d := range ents {
		names = append(names, d.Name())
	}
	if strings.Join(names, " ") != "disk0 disk1 disks manifest.json" {
		t.Errorf("restore point directory: %v", names)
	}
	var man struct {
		ID, VM string
	}
	if b, err := os.ReadFile(filepath.Join(rpDir, "manifest.json")); err != nil || json.Unmarshal(b, &man) != nil || man.VM != "web01" || !strings.HasSuffix(latest, man.ID[:8]) {
		t.Errorf("manifest.json: %v %+v", err, man)
	}
	names = nil
	ents, _ = os.ReadDir(filepath.Join(rpDir, "disk0"))
	for _, d := range ents {
		names = append(names, d.Name())
	}
	if strings.Join(names, " ") != "p1 p5 p6" {
		t.Errorf("disk0 partitions: %v", names)
	}
	if b, err := os.ReadFile(filepath.Join(rpDir, "disk0", "p1", "Sub Folder", "Nested", "deep file.txt")); err != nil || string(b) != "nested\n" {
		t.Errorf("FAT file through the mount: %q %v", b, err)
	}

	// every file of the ext4 tree against the kernel's view of the image
	kmnt := t.TempDir()
	sh(t, "mount", "-o", "ro,loop", filepath.Join(imgs, "ext4.img"), kmnt)
	defer exec.Command("umount", kmnt).Run()
	got, want := tree(t, filepath.Join(rpDir, "disk1", "p0")), tree(t, kmnt)
	for p, w := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("missing %s", p)
		} else if g != w {
			t.Errorf("%s:\n got  %+v\n want %+v", p, g, w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("extra %s", p)
		}
	}
	t.Logf("%d entries compared", len(want))

	// hard links share an inode number
	var a, b syscall.Stat_t
	syscall.Stat(filepath.Join(rpDir, "disk1", "p0", "hard-a"), &a)
	syscall.Stat(filepath.Join(rpDir, "disk1", "p0", "hard-b"), &b)
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hard links: inodes %d %d, nlink %d", a.Ino, b.Ino, a.Nlink)
	}

	// 8 parallel readers
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	bigWant := want["/big-300M.bin"].sha
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p := filepath.Join(rpDir, "disk1", "p0", "big-300M.bin")
			if i%2 == 1 {
				p = filepath.Join(rpDir, "disks", "disk1.raw")
			}
			f, err := os.Open(p)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			h := sha256.New()
			if _, err := io.Copy(h, io.NewSectionReader(f, int64(i)*(1<<20), 64<<20)); err != nil {
				errs <- err
				return
			}
			if i%2 == 0 {
				// compare against the kernel's bytes of the same range
				kf, _ := os.Open(filepath.Join(kmnt, "big-300M.bin"))
				defer kf.Close()
				k := sha256.New()
				io.Copy(k, io.NewSectionReader(kf, int64(i)*(1<<20), 64<<20))
				if !bytes.Equal(h.Sum(nil), k.Sum(nil)) {
					errs <- fmt.Errorf("reader %d: content differs", i)
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s, _ := shaFile(t, filepath.Join(rpDir, "disk1", "p0", "big-300M.bin")); s != bigWant {
		t.Error("big-300M.bin differs")
	}

	// the raw disk file loop-mounts and matches
	rmnt := t.TempDir()
	sh(t, "mount", "-o", "ro,loop", filepath.Join(rpDir, "disks", "disk1.raw"), rmnt)
	if s, _ := shaFile(t, filepath.Join(rmnt, "random-3M.bin")); s != want["/random-3M.bin"].sha {
		t.Error("random-3M.bin through a loop mount of disks/disk1.raw differs")
	}
	sh(t, "umount", rmnt)
	// SEEK_DATA/SEEK_HOLE on the raw disk: the ext4 image has zero chunks
	if f, err := os.Open(filepath.Join(rpDir, "disks", "disk1.raw")); err == nil {
		hole, herr := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE)
		if herr != nil || hole <= 0 || hole >= 512<<20 {
			t.Errorf("SEEK_HOLE = %d, %v", hole, herr)
		}
		f.Close()
	}

	// a restore point captured while mounted appears, with its own files
	raw := filepath.Join(e.dir, "random.img")
	makeImage(t, raw, 4<<20, 99)
	e.capture("--vm", "db01", "--disk", "disk0="+raw)
	var seen bool
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(m.dir, "db01", "latest", "disks", "disk0.raw")); err == nil {
			seen = true
			break
		}
	}
	if !seen {
		t.Fatal("restore point captured while mounted did not appear")
	}

	// damage one chunk that only db01 uses (its image is random): EIO
	// there, the rest still reads
	flipChunkByte(t, e.repo, uniqueChunk(t, e.repo, "db01@latest", "disk0"), 1000)
	_, err = shaFile(t, filepath.Join(m.dir, "db01", "latest", "disks", "disk0.raw"))
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("reading over a damaged chunk: %v, want EIO", err)
	}
	if s, err := shaFile(t, filepath.Join(rpDir, "disk1", "p0", "random-3M.bin")); err != nil || s != want["/random-3M.bin"].sha {
		t.Errorf("the mount did not stay usable after EIO: %v", err)
	}
	m.stop(t)
	if !strings.Contains(m.logb.String(), "offset") {
		t.Errorf("the log does not name the damaged chunk's offset:\n%s", m.logb)
	}
}

// TestMountReadAround checks that a small read of disks/<disk>.raw hands
// the rest of the chunks it decoded to the kernel's page cache, with the
// right bytes: readahead is switched off for the file (FADV_RANDOM), so
// only the mount's stores can make the neighbouring pages resident. Then
// 4 readers hammer the file with random 4 KiB reads while stores run and
// every byte is compared with the image.
func TestMountReadAround(t *testing.T) {
	e := newEnv(t, "--chunk-size", "256KiB")
	raw := filepath.Join(e.dir, "disk.img")
	const size = 6<<20 + 12<<10 // not a multiple of the chunk size
	src := makeImage(t, raw, size, 7)
	e.capture("--vm", "ra01", "--disk", "disk0="+raw)
	m := e.mount(t)
	f, err := os.Open(filepath.Join(m.dir, "ra01", "latest", "disks", "disk0.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
		t.Fatal(err)
	}
	mm, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mm)
	const cs = 256 << 10
	resident := func(from, to int64) (int, int) {
		from &^= 4095
		vec := make([]byte, (to-from+4095)/4096)
		r := mm[from:to]
		if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&r[0])), uintptr(len(r)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
			t.Fatal(errno)
		}
		n := 0
		for _, v := range vec {
			n += int(v & 1)
		}
		return n, len(vec)
	}
	buf := make([]byte, 4096)
	for _, off := range []int64{3*cs + 100_000, size - 5000, 17 * cs / 2} {
		start, end := off/cs*cs, min(off/cs*cs+cs, size)
		if n, _ := resident(start, end); n != 0 {
			t.Fatalf("chunk at %d: %d pages resident before any read", start, n)
		}
		k, err := f.ReadAt(buf, off)
		if k == 0 || !bytes.Equal(buf[:k], src[off:off+int64(k)]) {
			t.Fatalf("read at %d: %d bytes, %v, or wrong content", off, k, err)
		}
		var n, all int
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if n, all = resident(start, end); n == all {
				break
			}
		}
		if n != all {
			t.Fatalf("chunk [%d,%d) after a 4 KiB read at %d: %d of %d pages resident", start, end, off, n, all)
		}
		got := make([]byte, end-start)
		if _, err := f.ReadAt(got, start); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		if !bytes.Equal(got, src[start:end]) {
			t.Fatalf("chunk [%d,%d): the stored pages differ from the image", start, end)
		}
	}

	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := make([]byte, 4096)
			x := uint64(r + 1)
			for i := 0; i < 3000; i++ {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				off := int64(x%uint64(size/4096)) * 4096
				if k, err := f.ReadAt(b, off); (err != nil && !errors.Is(err, io.EOF)) || !bytes.Equal(b[:k], src[off:off+int64(k)]) {
					errs <- fmt.Errorf("reader %d at %d: %d bytes, %v, content equal %v", r, off, k, err, bytes.Equal(b[:k], src[off:off+int64(k)]))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s, _ := shaFile(t, f.Name()); s != fmt.Sprintf("%x", sha256.Sum256(src)) {
		t.Error("disks/disk0.raw differs from the image after random reads")
	}
}

// TestMountNTFSStreams mounts a restore point of the golden NTFS image and
// compares it with ntfs-3g (read-only, streams_interface=xattr) on the
// same image: the same names in every directory (no "file:stream"
// entries), and on every file and directory the same user.* attributes
// with the same values — or E2BIG from both for a stream over 64 KiB. A
// "file:stream" name does not resolve in either.
func TestMountNTFSStreams(t *testing.T) {
	fstest.NeedTools(t, "ntfs-3g")
	fstest.NeedRoot(t)
	e := newEnv(t)
	img := filepath.Join(e.dir, "ntfs.img")
	z, err := os.ReadFile(filepath.Join("..", "..", "testdata", "fs", "golden", "ntfs.img.zst"))
	if err != nil {
		t.Fatal(err)
	}
	zr, _ := zstd.NewReader(nil)
	raw, err := zr.DecodeAll(z, nil)
	zr.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	e.capture("--vm", "win", "--disk", "disk0="+img)
	m := e.mount(t)
	ours := filepath.Join(m.dir, "win", "latest", "disk0", "p0")
	kmnt := t.TempDir()
	sh(t, "ntfs-3g", "-o", "ro,streams_interface=xattr", img, kmnt)
	defer exec.Command("umount", kmnt).Run()

	listing := func(root string) map[string]string {
		out := map[string]string{}
		err := filepath.WalkDir(root, func(p string, d iofs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel := strings.TrimPrefix(p, root)
			if d.Type()&iofs.ModeSymlink != 0 {
				out[rel] = "symlink"
				return nil
			}
			names := xattrNames(t, p)
			var desc []string
			for _, n := range names {
				v, err := getXattr(p, n)
				switch {
				case errors.Is(err, syscall.E2BIG):
					desc = append(desc, n+"=E2BIG")
				case err != nil:
					desc = append(desc, n+"="+err.Error())
				default:
					desc = append(desc, fmt.Sprintf("%s=%x", n, sha256.Sum256(v)))
				}
			}
			out[rel] = strings.Join(desc, ",")
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	got, want := listing(ours), listing(kmnt)
	streams := 0
	for p, w := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("missing %s", p)
		} else if g != w {
			t.Errorf("%s: user attributes\n got  %s\n want %s", p, g, w)
		}
		streams += strings.Count(w, "user.")
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("extra %s", p)
		}
	}
	if streams < 4 || !strings.Contains(want["/dir-with-stream"], "user.dirstream=") || !strings.Contains(want["/big-stream.txt"], "E2BIG") {
		t.Errorf("the image lacks the streams this test is about (%d): %v %v", streams, want["/dir-with-stream"], want["/big-stream.txt"])
	}
	for _, root := range []string{ours, kmnt} {
		if _, err := os.Lstat(filepath.Join(root, "hello.txt:secret")); !errors.Is(err, iofs.ErrNotExist) {
			t.Errorf("%s: hello.txt:secret resolves (%v)", root, err)
		}
	}
	t.Logf("%d paths, %d streams compared", len(want), streams)
}

func xattrNames(t *testing.T, p string) []string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatalf("listxattr %s: %v", p, err)
	}
	var out []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if strings.HasPrefix(s, "user.") {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

func getXattr(p, name string) ([]byte, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// TestMountLatestFollows: a VM's latest link in a running mount follows
// the captures and forgets made after it was first read (go-fuse keeps
// the first node made for an inode number, so a link that held its target
// pointed at the first restore point forever).
func TestMountLatestFollows(t *testing.T) {
	e := newEnv(t)
	raw := filepath.Join(e.dir, "a.img")
	makeImage(t, raw, 1<<20, 1)
	first := e.capture("--vm", "web01", "--disk", "disk0="+raw)
	m := e.mount(t)
	link := filepath.Join(m.dir, "web01", "latest")
	waitLatest := func(id string) {
		t.Helper()
		var got string
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			got, _ = os.Readlink(link)
			if strings.HasSuffix(got, "_"+id[:8]) {
				if _, err := os.Stat(filepath.Join(link, "disks", "disk0.raw")); err != nil {
					t.Fatalf("latest -> %s, which does not open: %v", got, err)
				}
				return
			}
		}
		t.Fatalf("latest -> %q, want the restore point %.8s", got, id)
	}
	waitLatest(first.ID)
	makeImage(t, raw, 1<<20, 2)
	second := e.capture("--vm", "web01", "--disk", "disk0="+raw)
	waitLatest(second.ID)
	e.ok("vmvault", "forget", second.ID)
	waitLatest(first.ID)
}

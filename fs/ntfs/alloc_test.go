package ntfs

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/fstest"
	"github.com/vmvault/vmvault/repo/extent"
)

// blklsAllocated lists the allocated clusters The Sleuth Kit's blkls sees
// (from $Bitmap, its own parser) as byte ranges.
func blklsAllocated(t *testing.T, img string, cs int64) []extent.Range {
	t.Helper()
	out, err := exec.Command("blkls", "-l", "-e", img).Output()
	if err != nil {
		t.Fatalf("blkls: %v", err)
	}
	var b extent.Builder
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		addr, flag, ok := strings.Cut(sc.Text(), "|")
		n, err := strconv.ParseInt(addr, 10, 64)
		if !ok || err != nil || flag != "a" {
			continue
		}
		b.Add(n*cs, cs)
	}
	return b.Ranges()
}

// ntfsImage makes an NTFS volume of size bytes with cluster size cs and
// runs fill in it (mounted through ntfs-3g).
func ntfsImage(t *testing.T, size string, cs int, fill func(dir string)) string {
	t.Helper()
	fstest.NeedRoot(t)
	fstest.NeedTools(t, "mkntfs", "ntfs-3g", "blkls", "istat")
	img := filepath.Join(t.TempDir(), "ntfs.img")
	mnt := t.TempDir()
	for _, c := range [][]string{
		{"truncate", "-s", size, img},
		{"mkntfs", "-q", "-F", "-Q", "-c", strconv.Itoa(cs), img},
		{"ntfs-3g", img, mnt},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			exec.Command("umount", mnt).Run()
		}
	})
	fill(mnt)
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	mounted = false
	return img
}

// churn writes files of many sizes (resident, fragmented, compressed) and
// deletes some, so $Bitmap has free clusters between used ones.
func churn(t *testing.T, dir string) {
	t.Helper()
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	for i := range 60 {
		b := bytes.Repeat([]byte(fmt.Sprintf("file %d ", i)), 1+i*700)
		sum := sha256.Sum256(b)
		b = append(b, sum[:]...)
		if err := os.WriteFile(filepath.Join(dir, "sub", fmt.Sprintf("f%02d", i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 60; i += 3 {
		os.Remove(filepath.Join(dir, "sub", fmt.Sprintf("f%02d", i)))
	}
}

func openImage(t *testing.T, img string) (*FS, int64) {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return f, int64(len(b))
}

// TestAllocatedAgainstSleuthKit: on volumes with 512-byte to 64 KiB
// clusters filled through ntfs-3g and with files deleted, Allocated is
// exactly the clusters blkls calls allocated, plus the partition's end
// past the last cluster (the backup boot sector).
func TestAllocatedAgainstSleuthKit(t *testing.T) {
	for _, cs := range []int{512, 1024, 4096, 65536} {
		t.Run(fmt.Sprintf("cluster %d", cs), func(t *testing.T) {
			img := ntfsImage(t, "40M", cs, func(dir string) { churn(t, dir) })
			f, size := openImage(t, img)
			got, err := f.Allocated(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			want := blklsAllocated(t, img, int64(cs))
			end := want[len(want)-1].End()
			if clusters := f.clusters(); clusters*int64(cs) < size {
				want = extent.Normalize(append(want, extent.Range{Offset: clusters * int64(cs), Length: size - clusters*int64(cs)}))
			}
			if !reflect.DeepEqual(got, want) {
				extra, missing := extent.Subtract(got, want), extent.Subtract(want, got)
				t.Fatalf("Allocated differs from blkls: allocated only here %v, only there %v",
					extra[:min(len(extra), 8)], missing[:min(len(missing), 8)])
			}
			if free := size - extent.Sum(got); free < size/4 || end == 0 {
				t.Errorf("only %d of %d bytes free: the case does not test free space", free, size)
			}
		})
	}
}

// istatClusters lists the clusters of a file's unnamed $DATA as istat
// shows them (in file order): the first one and all of them as byte
// ranges.
func istatClusters(t *testing.T, img string, ino uint64, cs int64) (first extent.Range, all []extent.Range) {
	t.Helper()
	out, err := exec.Command("istat", img, strconv.FormatUint(ino, 10)).Output()
	if err != nil {
		t.Fatalf("istat: %v", err)
	}
	_, data, ok := strings.Cut(string(out), "Type: $DATA (128-")
	if !ok {
		t.Fatalf("istat shows no $DATA:\n%s", out)
	}
	var clusters []int64
	for _, l := range strings.Split(data, "\n")[1:] {
		if strings.HasPrefix(l, "Type:") {
			break
		}
		for _, w := range strings.Fields(l) {
			if n, err := strconv.ParseInt(w, 10, 64); err == nil && n > 0 {
				clusters = append(clusters, n)
			}
		}
	}
	if len(clusters) == 0 {
		t.Fatalf("istat lists no clusters:\n%s", out)
	}
	for _, c := range clusters {
		all = append(all, extent.Range{Offset: c * cs, Length: cs})
	}
	return extent.Range{Offset: clusters[0] * cs, Length: cs}, extent.Normalize(all)
}

// TestSwapFiles: pagefile.sys, swapfile.sys and a hiberfil.sys without a
// hibernation image are skipped but for their first 4 KiB (istat gives
// their clusters); a hibernated volume (hiberfil.sys starting "HIBR") is
// refused by Allocated and SwapFiles.
func TestSwapFiles(t *testing.T) {
	const cs = 4096
	write := func(dir, name string, size int, head string) {
		b := bytes.Repeat([]byte{0xa5}, size)
		copy(b, head)
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := ntfsImage(t, "64M", cs, func(dir string) {
		churn(t, dir)
		write(dir, "pagefile.sys", 3<<20, "")
		write(dir, "SwapFile.sys", 1<<20, "")
		write(dir, "hiberfil.sys", 2<<20, "\x00\x00\x00\x00")
	})
	f, _ := openImage(t, img)
	ctx := context.Background()
	got, err := f.SwapFiles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var want []extent.Range
	for _, name := range []string{"pagefile.sys", "SwapFile.sys", "hiberfil.sys"} {
		ino, err := fs.Resolve(ctx, f, "/"+name, false)
		if err != nil {
			t.Fatal(err)
		}
		first, cl := istatClusters(t, img, uint64(ino), cs)
		want = append(want, extent.Subtract(cl, []extent.Range{first})...) // less the first 4 KiB
	}
	want = extent.Normalize(want)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("SwapFiles = %v\nwant (istat) %v", got, want)
	}
	if _, err := f.Allocated(ctx); err != nil {
		t.Errorf("Allocated with a hiberfil.sys that holds no image: %v", err)
	}

	hib := ntfsImage(t, "64M", cs, func(dir string) { write(dir, "hiberfil.sys", 2<<20, "HIBR") })
	f, _ = openImage(t, hib)
	if _, err := f.Allocated(ctx); err == nil || !strings.Contains(err.Error(), "hibernated") {
		t.Errorf("Allocated on a hibernated volume: %v, want a refusal", err)
	}
	if got, err := f.SwapFiles(ctx); err == nil || len(got) != 0 {
		t.Errorf("SwapFiles on a hibernated volume = %v, %v; want a refusal", got, err)
	}
}

// TestAllocatedRefusesUnclean: a volume marked dirty, or whose $LogFile
// restart area has a client in use without the clean flag, is refused;
// the same restart area with the clean flag is not.
func TestAllocatedRefusesUnclean(t *testing.T) {
	img := ntfsImage(t, "16M", 4096, func(dir string) { churn(t, dir) })
	clean, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := openImage(t, img)
	ctx := context.Background()
	if _, err := f.Allocated(ctx); err != nil {
		t.Fatalf("clean volume refused: %v", err)
	}
	vol, err := f.load(recVolume)
	if err != nil {
		t.Fatal(err)
	}
	lf, err := f.load(recLogFile)
	if err != nil {
		t.Fatal(err)
	}
	logStream, err := f.openStream(lf, attrData, "")
	if err != nil {
		t.Fatal(err)
	}
	logOff := logStream.physical()[0].Offset
	// the record of $Volume: find its $VOLUME_INFORMATION by content
	vi := vol.first(attrVolumeInfo, "")
	mft := int64(binary.LittleEndian.Uint64(clean[0x30:])) * 4096
	rec3 := clean[mft+3*1024 : mft+4*1024]
	viOff := mft + 3*1024 + int64(bytes.Index(rec3, vi.content)) + 10

	restart := func(flags uint16) func(b []byte) {
		return func(b []byte) {
			p := make([]byte, 4096)
			copy(p, "RSTR")
			binary.LittleEndian.PutUint16(p[4:], 0x1e) // update sequence at 0x1e, 9 entries
			binary.LittleEndian.PutUint16(p[6:], 9)
			binary.LittleEndian.PutUint32(p[0x10:], 4096)
			binary.LittleEndian.PutUint32(p[0x14:], 4096)
			binary.LittleEndian.PutUint16(p[0x18:], 0x40)
			binary.LittleEndian.PutUint16(p[0x40+0xc:], 0) // a client in use
			binary.LittleEndian.PutUint16(p[0x40+0xe:], flags)
			binary.LittleEndian.PutUint16(p[0x1e:], 7)
			for i := 1; i <= 8; i++ {
				copy(p[0x1e+2*i:], p[i*512-2:i*512])
				binary.LittleEndian.PutUint16(p[i*512-2:], 7)
			}
			copy(b[logOff:], p)
		}
	}
	cases := []struct {
		name   string
		damage func(b []byte)
		want   string // "" = accepted
	}{
		{"dirty", func(b []byte) { b[viOff] |= volumeDirty }, "marked dirty"},
		{"log in use", restart(0), "did not shut down cleanly"},
		{"log in use, clean flag", restart(raClean), ""},
		{"chkdsk", func(b []byte) { copy(b[logOff:], "CHKD") }, "chkdsk"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := bytes.Clone(clean)
			c.damage(b)
			f, err := Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.Allocated(ctx)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("Allocated: %v, want an error about %q", err, c.want)
			}
		})
	}
}

package fat

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
	"github.com/vmvault/vmvault/repo/extent"
)

// blklsSectors lists the sectors The Sleuth Kit's blkls calls allocated
// (from the first FAT, its own parser) as byte ranges.
func blklsSectors(t *testing.T, img string) []extent.Range {
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
		if ok && err == nil && flag == "a" {
			b.Add(n*512, 512)
		}
	}
	return b.Ranges()
}

// TestAllocatedAgainstSleuthKit: FAT12, FAT16 and FAT32 volumes filled
// with mtools and with files deleted; Allocated is exactly the sectors
// blkls calls allocated. A cluster only the second FAT uses is allocated
// too; a volume whose FAT[1] says dirty or disk errors is refused.
func TestAllocatedAgainstSleuthKit(t *testing.T) {
	fstest.NeedTools(t, "mkfs.vfat", "mcopy", "mdel", "blkls")
	dir := t.TempDir()
	for _, c := range []struct {
		bits, kib int
		spc       string
	}{{12, 4096, "4"}, {16, 32768, "4"}, {32, 66000, "1"}} {
		t.Run(fmt.Sprintf("fat%d", c.bits), func(t *testing.T) {
			img := filepath.Join(dir, fmt.Sprintf("fat%d.img", c.bits))
			run := func(name string, args ...string) {
				t.Helper()
				cmd := exec.Command(name, args...)
				cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("%s %v: %v\n%s", name, args, err, out)
				}
			}
			run("mkfs.vfat", "-C", "-F", strconv.Itoa(c.bits), "-s", c.spc, img, strconv.Itoa(c.kib))
			for i := range 30 {
				p := filepath.Join(dir, fmt.Sprintf("f%02d", i))
				os.WriteFile(p, bytes.Repeat([]byte(fmt.Sprintf("file %d ", i)), 1+i*700), 0o644)
				run("mcopy", "-i", img, p, "::/")
			}
			for i := 0; i < 30; i += 3 {
				run("mdel", "-i", img, fmt.Sprintf("::/f%02d", i))
			}
			clean, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			open := func(b []byte) *FS {
				f, err := Open(bytes.NewReader(b), int64(len(b)))
				if err != nil {
					t.Fatal(err)
				}
				return f
			}
			f := open(clean)
			ctx := context.Background()
			got, err := f.Allocated(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// plus the sectors past the last whole cluster, which no file
			// can use and blkls calls free: kept as unknown
			want := blklsSectors(t, img)
			if end := f.dataStart + int64(f.clusters)*f.clusterSize; end < int64(len(clean)) {
				want = extent.Normalize(append(want, extent.Range{Offset: end, Length: int64(len(clean)) - end}))
			}
			if !reflect.DeepEqual(got, want) {
				extra, missing := extent.Subtract(got, want), extent.Subtract(want, got)
				t.Fatalf("Allocated differs from blkls: only here %v, only there %v", extra[:min(len(extra), 8)], missing[:min(len(missing), 8)])
			}
			free := extent.Subtract([]extent.Range{{Offset: f.dataStart, Length: int64(f.clusters) * f.clusterSize}}, got)
			if extent.Sum(free) < int64(len(clean))/4 || len(free) < 5 {
				t.Fatalf("free space %v: the case does not test holes between files", free)
			}

			// a free cluster marked used in the second FAT only
			c2 := uint32((free[1].Offset-f.dataStart)/f.clusterSize + 2)
			b := bytes.Clone(clean)
			second := f.fatStart + f.fatBytes
			switch c.bits {
			case 12:
				off := second + int64(c2) + int64(c2)/2
				v := binary.LittleEndian.Uint16(b[off:])
				if c2&1 == 1 {
					v |= 0xff7 << 4
				} else {
					v |= 0xff7
				}
				binary.LittleEndian.PutUint16(b[off:], v)
			case 16:
				binary.LittleEndian.PutUint16(b[second+2*int64(c2):], 0xfff7)
			case 32:
				binary.LittleEndian.PutUint32(b[second+4*int64(c2):], 0x0ffffff7)
			}
			got, err = open(b).Allocated(ctx)
			if err != nil {
				t.Fatal(err)
			}
			cl := extent.Range{Offset: f.dataStart + int64(c2-2)*f.clusterSize, Length: f.clusterSize}
			if want := extent.Normalize(append(want, cl)); !reflect.DeepEqual(got, want) {
				t.Errorf("cluster %d marked in the second FAT only: Allocated %v, want %v", c2, got, want)
			}

			if c.bits == 12 {
				return // no dirty bit
			}
			for _, bit := range []struct {
				name string
				mask uint32
				want string
			}{{"dirty", 0x8000, "not cleanly unmounted"}, {"disk errors", 0x4000, "disk errors"}} {
				b := bytes.Clone(clean)
				if c.bits == 16 {
					v := binary.LittleEndian.Uint16(b[f.fatStart+2:])
					binary.LittleEndian.PutUint16(b[f.fatStart+2:], v&^uint16(bit.mask))
				} else {
					v := binary.LittleEndian.Uint32(b[f.fatStart+4:])
					binary.LittleEndian.PutUint32(b[f.fatStart+4:], v&^(bit.mask<<12))
				}
				if _, err := open(b).Allocated(ctx); err == nil || !strings.Contains(err.Error(), bit.want) {
					t.Errorf("%s: Allocated %v, want a refusal", bit.name, err)
				}
			}
		})
	}
}

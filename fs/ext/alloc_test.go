package ext

import (
	"bufio"
	"bytes"
	"context"
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

// dumpe2fsFree returns the filesystem's free blocks as byte ranges, its
// block count and block size, as dumpe2fs (libext2fs, which computes the
// bitmaps of BLOCK_UNINIT groups itself) lists them.
func dumpe2fsFree(t *testing.T, img string) (free []extent.Range, blocks, bs int64) {
	t.Helper()
	out, err := exec.Command("dumpe2fs", img).Output()
	if err != nil {
		t.Fatalf("dumpe2fs: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	var runs [][2]int64
	for sc.Scan() {
		raw := sc.Text()
		line := strings.TrimSpace(raw)
		switch {
		case strings.HasPrefix(line, "Block count:"):
			blocks, _ = strconv.ParseInt(strings.TrimSpace(strings.TrimPrefix(line, "Block count:")), 10, 64)
		case strings.HasPrefix(line, "Block size:"):
			bs, _ = strconv.ParseInt(strings.TrimSpace(strings.TrimPrefix(line, "Block size:")), 10, 64)
		case strings.HasPrefix(raw, "  Free blocks: "): // a group's, not the superblock's count
			for _, r := range strings.Split(strings.TrimSpace(strings.TrimPrefix(line, "Free blocks:")), ", ") {
				if r == "" {
					continue
				}
				a, b, ok := strings.Cut(r, "-")
				if !ok {
					b = a
				}
				lo, err1 := strconv.ParseInt(a, 10, 64)
				hi, err2 := strconv.ParseInt(b, 10, 64)
				if err1 != nil || err2 != nil {
					t.Fatalf("dumpe2fs free blocks %q", r)
				}
				runs = append(runs, [2]int64{lo, hi})
			}
		}
	}
	if blocks == 0 || bs == 0 {
		t.Fatalf("dumpe2fs gave no geometry:\n%s", out)
	}
	for _, r := range runs {
		free = append(free, extent.Range{Offset: r[0] * bs, Length: (r[1] - r[0] + 1) * bs})
	}
	return extent.Normalize(free), blocks, bs
}

// TestAllocatedAgainstDumpe2fs builds ext2/3/4 filesystems in every layout
// the allocation map depends on (1 and 4 KiB blocks, flex_bg or not,
// BLOCK_UNINIT groups under uninit_bg and metadata_csum, meta_bg,
// sparse_super2, 64bit, a partition larger than the filesystem), fills
// them and deletes files with debugfs, and checks that Allocated is
// exactly what dumpe2fs does not list as free (plus the partition's tail
// past the filesystem). A journal that needs recovery, recorded errors and
// bigalloc are refused.
func TestAllocatedAgainstDumpe2fs(t *testing.T) {
	fstest.NeedTools(t, "mke2fs", "dumpe2fs", "debugfs")
	src := t.TempDir()
	for i := range 40 {
		b := bytes.Repeat([]byte(fmt.Sprintf("file %d ", i)), 1+i*5000)
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("f%02d", i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name   string
		size   string // image file size
		fsSize string // "" = the whole file
		args   []string
		refuse string // debugfs command that makes Allocated refuse, with the error expected
		want   string
	}{
		{name: "ext2 1k", size: "64M", args: []string{"-t", "ext2", "-b", "1024"}},
		{name: "ext3 4k", size: "160M", args: []string{"-t", "ext3", "-b", "4096"}},
		{name: "ext4 4k", size: "1G", args: []string{"-t", "ext4", "-b", "4096"}},
		{name: "ext4 1k", size: "96M", args: []string{"-t", "ext4", "-b", "1024"}},
		{name: "ext4 no flex_bg", size: "300M", args: []string{"-t", "ext4", "-O", "^flex_bg"}},
		{name: "ext4 uninit_bg", size: "300M", args: []string{"-t", "ext4", "-O", "^metadata_csum,uninit_bg"}},
		{name: "ext4 meta_bg", size: "600M", args: []string{"-t", "ext4", "-b", "1024", "-O", "meta_bg,^resize_inode"}},
		{name: "ext4 sparse_super2", size: "300M", args: []string{"-t", "ext4", "-O", "sparse_super2"}},
		{name: "ext4 64bit 3G", size: "3G", args: []string{"-t", "ext4", "-b", "4096", "-O", "64bit"}},
		{name: "partition past the fs", size: "100M", fsSize: "80M", args: []string{"-t", "ext4"}},
		{name: "journal needs recovery", size: "64M", args: []string{"-t", "ext4"}, refuse: "feature needs_recovery", want: "journal needs recovery"},
		{name: "errors recorded", size: "64M", args: []string{"-t", "ext4"}, refuse: "ssv state 3", want: "records filesystem errors"},
		{name: "not clean", size: "64M", args: []string{"-t", "ext2"}, refuse: "ssv state 0", want: "not cleanly unmounted"},
		{name: "bigalloc (not opened)", size: "64M", args: []string{"-t", "ext4", "-O", "bigalloc", "-C", "16384"}, want: "bigalloc"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "fs.img")
			run := func(name string, args ...string) {
				t.Helper()
				if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
					t.Fatalf("%s %v: %v\n%s", name, args, err, out)
				}
			}
			run("truncate", "-s", c.size, img)
			args := append([]string{"-q", "-F", "-d", src}, c.args...)
			args = append(args, img)
			if c.fsSize != "" {
				args = append(args, c.fsSize)
			}
			run("mke2fs", args...)
			// delete every third file: their blocks become free
			var rm []string
			for i := 0; i < 40; i += 3 {
				rm = append(rm, fmt.Sprintf("rm /f%02d", i))
			}
			if c.refuse != "" {
				rm = append(rm, c.refuse)
			}
			cmds := filepath.Join(t.TempDir(), "cmds")
			os.WriteFile(cmds, []byte(strings.Join(rm, "\n")+"\n"), 0o600)
			run("debugfs", "-w", "-f", cmds, img)

			fi, _ := os.Stat(img)
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fsys, err := Open(f, fi.Size())
			var got []extent.Range
			if err == nil {
				got, err = fsys.Allocated(context.Background())
			}
			if c.want != "" {
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("Allocated: %v, want an error about %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			free, blocks, bs := dumpe2fsFree(t, img)
			want := extent.Subtract([]extent.Range{{Offset: 0, Length: blocks * bs}}, free)
			if tail := fi.Size() - blocks*bs; tail > 0 {
				want = extent.Normalize(append(want, extent.Range{Offset: blocks * bs, Length: tail}))
			}
			if !reflect.DeepEqual(got, want) {
				extra, missing := extent.Subtract(got, want), extent.Subtract(want, got)
				t.Fatalf("Allocated differs from dumpe2fs: allocated but free there %v, free but allocated there %v",
					extra[:min(len(extra), 8)], missing[:min(len(missing), 8)])
			}
			if len(free) == 0 || extent.Sum(free) < fi.Size()/10 {
				t.Errorf("only %d bytes free: the case does not test free space", extent.Sum(free))
			}
			t.Logf("%d allocated ranges, %d of %d bytes free", len(got), extent.Sum(free), fi.Size())
		})
	}
}

package ext

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/vmvault/vmvault/fs"
)

// goldenExt4 returns the golden ext4 image (metadata_csum, an htree
// directory /many), decompressed.
func goldenExt4(t *testing.T) []byte {
	t.Helper()
	z, err := os.ReadFile(filepath.Join("..", "..", "testdata", "fs", "golden", "ext4.img.zst"))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	img, err := zr.DecodeAll(z, nil)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestChecksumWarnings damages one checksummed structure at a time in the
// golden ext4 image — an inode's access time, a name in a directory leaf
// block, a hash in an htree node — and checks that reading it warns,
// naming the inode, while still returning what is stored; e2fsck (the
// oracle, when installed) must call the same structure's checksum bad.
func TestChecksumWarnings(t *testing.T) {
	ctx := context.Background()
	clean := goldenExt4(t)
	f0, err := Open(bytes.NewReader(clean), int64(len(clean)))
	if err != nil {
		t.Fatal(err)
	}
	resolve := func(p string) *inode {
		ino, err := fs.Resolve(ctx, f0, p, false)
		if err != nil {
			t.Fatal(err)
		}
		in, err := f0.readInode(uint64(ino))
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	inodeOff := func(in *inode) int64 {
		table, err := f0.inodeTable((in.ino - 1) / f0.inodesPer)
		if err != nil {
			t.Fatal(err)
		}
		return int64(table)*f0.blockSize + int64((in.ino-1)%f0.inodesPer)*f0.inodeSize
	}
	dirBlock := func(in *inode, lblk uint64) int64 {
		fl, err := f0.openInode(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range fl.runs {
			if lblk >= r.lblk && lblk < r.lblk+r.count {
				return int64(r.pblk+lblk-r.lblk) * f0.blockSize
			}
		}
		t.Fatalf("inode %d has no block %d", in.ino, lblk)
		return 0
	}
	hello, root, many := resolve("/hello.txt"), resolve("/"), resolve("/many")
	if many.flags&flagIndex == 0 || root.flags&(flagInlineData|flagIndex) != 0 {
		t.Fatal("the golden image changed: /many is no htree or / is not a linear directory")
	}
	rootEnts, err := f0.ReadDir(ctx, fs.Ino(root.ino))
	if err != nil {
		t.Fatal(err)
	}
	rootBlock := dirBlock(root, 0)
	cases := []struct {
		name string
		off  int64 // byte to flip
		read func(f *FS) error
		warn string // in the warning
		fsck string // in e2fsck -fn's output
	}{
		{
			name: "inode", off: inodeOff(hello) + 0x8,
			read: func(f *FS) error { _, err := f.Stat(ctx, fs.Ino(hello.ino)); return err },
			warn: fmt.Sprintf("inode %d: checksum mismatch", hello.ino),
			fsck: fmt.Sprintf("Inode %d passes checks, but checksum does not match inode", hello.ino),
		},
		{
			name: "directory leaf", off: rootBlock + int64(bytes.Index(clean[rootBlock:rootBlock+f0.blockSize], []byte("medium.txt"))),
			read: func(f *FS) error {
				ents, err := f.ReadDir(ctx, fs.Ino(root.ino))
				if err != nil {
					return err
				}
				for _, e := range ents {
					if e.Name == "medium.txt" {
						return fmt.Errorf("medium.txt listed: the damage is not in its name")
					}
				}
				if len(ents) != len(rootEnts) {
					return fmt.Errorf("%d entries, want all %d", len(ents), len(rootEnts))
				}
				return nil
			},
			warn: fmt.Sprintf("directory inode %d block 0: checksum mismatch", root.ino),
			fsck: fmt.Sprintf("Directory inode %d, block #0: directory passes checks but fails checksum", root.ino),
		},
		{
			// the first hash of the htree root's index (after the
			// count/limit/block header at 0x20)
			name: "htree root", off: dirBlock(many, 0) + 0x28,
			read: func(f *FS) error {
				ents, err := f.ReadDir(ctx, fs.Ino(many.ino))
				if err == nil && len(ents) != 250 {
					err = fmt.Errorf("%d entries, want all 250", len(ents))
				}
				return err
			},
			warn: fmt.Sprintf("directory inode %d block 0: htree node checksum mismatch", many.ino),
			fsck: fmt.Sprintf("HTREE directory inode %d: root node fails checksum", many.ino),
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := bytes.Clone(clean)
			img[c.off] ^= 0x01
			f, err := Open(bytes.NewReader(img), int64(len(img)))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.read(f); err != nil {
				t.Fatalf("reading the damaged structure: %v", err)
			}
			ws := f.Warnings()
			if len(ws) != 1 || !strings.Contains(ws[0], c.warn) {
				t.Errorf("warnings %q, want one with %q", ws, c.warn)
			}
			// the clean image gives none for the same read
			fc, _ := Open(bytes.NewReader(clean), int64(len(clean)))
			_ = c.read(fc)
			if ws := fc.Warnings(); len(ws) != 0 {
				t.Errorf("clean image warns: %q", ws)
			}
			if _, err := exec.LookPath("e2fsck"); err != nil {
				if os.Getenv("CI") != "" {
					t.Fatal("e2fsck is required in CI")
				}
				return
			}
			p := filepath.Join(t.TempDir(), "ext4.img")
			if err := os.WriteFile(p, img, 0o600); err != nil {
				t.Fatal(err)
			}
			out, _ := exec.Command("e2fsck", "-fn", p).CombinedOutput()
			if !strings.Contains(string(out), c.fsck) {
				t.Errorf("e2fsck does not report a checksum error for %q:\n%s", c.fsck, out)
			}
		})
	}
}

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
)

// TestVolumesCLIAndMount captures the LVM disk (two PVs: ext4, striped
// XFS, two-segment ext4, swap, LUKS LVs) and an XFS disk, then reads them
// as a user would: partitions, ls and cat through RP:DISK/VG-LV/PATH, and
// the FUSE mount's MOUNT/VM/RP/DISK/VG-LV tree against the kernel's loop
// mount of the filesystem image that was copied into the LV.
func TestVolumesCLIAndMount(t *testing.T) {
	imgs := fstest.VolumeImages(t)
	e := newEnv(t)
	e.capture("--vm", "rhel", "--disk", "disk0="+filepath.Join(imgs, "lvm.img"), "--disk", "disk1="+filepath.Join(imgs, "xfs5.img"))

	parts := jsonLines[struct {
		Name, Filesystem, Label, Table, VG, LV, Error string
	}](t, e.ok("vmvault", "partitions", "--json", "rhel@latest:disk0"))
	var got []string
	for _, p := range parts {
		got = append(got, p.Name+"="+p.Filesystem)
	}
	if want := "p1=LVM2_member p2=LVM2_member vgtest-root=ext4 vgtest-split--ext4=ext4 vgtest-data--x=xfs vgtest-swap=swap vgtest-crypt=crypto_LUKS vgtest-late="; strings.Join(got, " ") != want {
		t.Errorf("partitions:\n got  %s\n want %s", strings.Join(got, " "), want)
	}
	if out := e.ok("vmvault", "partitions", "rhel@latest:disk0"); !strings.Contains(out, "striped×2 (LVM2 logical volume)") {
		t.Errorf("partitions table:\n%s", out)
	}
	if out := e.ok("vmvault", "ls", "rhel@latest:disk0/vgtest-root/etc"); out != "hostname\n" {
		t.Errorf("ls vgtest-root/etc = %q", out)
	}
	if out := e.ok("vmvault", "cat", "rhel@latest:disk0/vgtest-data--x/etc/hostname"); out != "lvm-root\n" {
		t.Errorf("cat from the striped XFS LV = %q", out)
	}
	if out := e.ok("vmvault", "cat", "rhel@latest:disk1/p0/etc/hostname"); out != "web01\n" {
		t.Errorf("cat from XFS = %q", out)
	}
	if out := e.ok("vmvault", "ls", "-l", "rhel@latest:disk1/p0/long-link"); !strings.Contains(out, "long-link -> long/long/") {
		t.Errorf("ls -l of a remote XFS symlink = %q", out)
	}
	if _, stderr, code := e.run("vmvault", "ls", "rhel@latest:disk0/vgtest-swap/"); code == 0 || !strings.Contains(stderr, "swap") {
		t.Errorf("ls of the swap LV: exit %d, %q", code, stderr)
	}

	m := e.mount(t)
	disk := filepath.Join(m.dir, "rhel", "latest", "disk0")
	ents, err := os.ReadDir(disk)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range ents {
		names = append(names, d.Name())
	}
	if strings.Join(names, " ") != "p1 p2 vgtest-crypt vgtest-data--x vgtest-late vgtest-root vgtest-split--ext4 vgtest-swap" {
		t.Errorf("disk0: %v", names)
	}
	for lv, img := range map[string]string{"vgtest-data--x": "striped.img", "vgtest-split--ext4": "split.img"} {
		kmnt := t.TempDir()
		sh(t, "mount", "-o", "ro,loop", filepath.Join(imgs, "lvm-fs", img), kmnt)
		gotTree, wantTree := tree(t, filepath.Join(disk, lv)), tree(t, kmnt)
		exec.Command("umount", kmnt).Run()
		for p, w := range wantTree {
			if g, ok := gotTree[p]; !ok {
				t.Errorf("%s: missing %s", lv, p)
			} else if g != w {
				t.Errorf("%s%s:\n got  %+v\n want %+v", lv, p, g, w)
			}
		}
		if len(gotTree) != len(wantTree) {
			t.Errorf("%s: %d entries, kernel %d", lv, len(gotTree), len(wantTree))
		}
	}
	for lv, want := range map[string]string{"vgtest-swap": "swap", "vgtest-crypt": "LUKS", "p1": "volume group vgtest"} {
		b, err := os.ReadFile(filepath.Join(disk, lv, "vmvault-error.txt"))
		if err != nil || !strings.Contains(string(b), want) {
			t.Errorf("%s/vmvault-error.txt: %q %v", lv, b, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(m.dir, "rhel", "latest", "disk1", "p0", "etc", "hostname")); err != nil || string(b) != "web01\n" {
		t.Errorf("XFS file through the mount: %q %v", b, err)
	}
}

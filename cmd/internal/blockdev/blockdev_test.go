package blockdev

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckUnused runs the mount and holder checks against a fake sysfs
// and mountinfo: device 7:3 with partitions 259:0 and 259:1.
func TestCheckUnused(t *testing.T) {
	dir := t.TempDir()
	oldSys, oldMI := sysBlock, mountInfo
	t.Cleanup(func() { sysBlock, mountInfo = oldSys, oldMI })
	sysBlock, mountInfo = filepath.Join(dir, "sys"), filepath.Join(dir, "mountinfo")
	mk := func(p, content string) {
		os.MkdirAll(filepath.Dir(filepath.Join(sysBlock, p)), 0o755)
		if content != "" {
			os.WriteFile(filepath.Join(sysBlock, p), []byte(content), 0o644)
		}
	}
	mk("7:3/loop3p1/dev", "259:0\n")
	mk("7:3/loop3p1/partition", "1\n")
	mk("7:3/loop3p2/dev", "259:1\n")
	mk("7:3/loop3p2/partition", "2\n")
	mk("7:3/bdi/dev", "7:99\n") // not a partition
	mk("7:99/holders/x", "")
	mk("7:3/holders/x", "")
	mk("259:0/holders/x", "")
	mk("259:1/holders/x", "")
	const other = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
	cases := []struct {
		name, mountinfo, holder string // holder: a holder of that device
		want                    string
	}{
		{name: "unused", mountinfo: other},
		{name: "mounted", mountinfo: other + "40 22 7:3 / /mnt/a rw - ext4 /dev/loop3 rw\n", want: "mounted (/dev/loop3 on /mnt/a)"},
		{name: "partition mounted", mountinfo: other + "41 22 259:1 / /mnt/with\\040space rw - ext4 /dev/loop3p2 rw\n", want: "mounted (/dev/loop3p2 on /mnt/with space)"},
		{name: "held", mountinfo: other, holder: "7:3", want: "/dev/loop3 is held by dm-0"},
		{name: "partition held", mountinfo: other, holder: "259:0", want: "/dev/loop3p1 is held by dm-0"},
		{name: "not a partition", mountinfo: other + "40 22 7:99 / /mnt/a rw - ext4 /dev/x rw\n", holder: "7:99"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			os.WriteFile(mountInfo, []byte(c.mountinfo), 0o644)
			for _, d := range []string{"7:3", "259:0", "259:1", "7:99"} {
				os.RemoveAll(filepath.Join(sysBlock, d, "holders"))
				os.MkdirAll(filepath.Join(sysBlock, d, "holders"), 0o755)
			}
			if c.holder != "" {
				os.Mkdir(filepath.Join(sysBlock, c.holder, "holders", "dm-0"), 0o755)
			}
			err := checkUnused("/dev/loop3", 7, 3)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
		})
	}
}

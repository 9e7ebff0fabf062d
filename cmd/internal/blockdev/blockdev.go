// Package blockdev decides whether a block device may be overwritten by a
// restore and opens it so: a device that is mounted (itself or one of its
// partitions), has holders (device-mapper, LVM, md, a loop device on top)
// or is claimed by another opener is refused with an error saying which.
//
// Invariants:
//   - The device is opened with O_EXCL, so the kernel refuses it (EBUSY)
//     while it is mounted, used as swap or by a holder, or opened
//     exclusively elsewhere, and nobody can mount or claim it while the
//     returned file stays open; the /proc and /sys checks before it only
//     make the error say what uses the device.
//   - Nothing here writes to the device.
package blockdev

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Where the kernel tells about devices and mounts (tests point them at
// fakes).
var (
	sysBlock  = "/sys/dev/block"
	mountInfo = "/proc/self/mountinfo"
)

// ErrInUse means the device is used by something else.
var ErrInUse = errors.New("block device is in use")

// OpenExclusive opens the block device at path for writing, exclusively,
// after checking nothing uses it, and returns it with its size.
func OpenExclusive(path string) (*os.File, int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil, 0, fmt.Errorf("%s is not a block device", path)
	}
	if err := checkUnused(path, unix.Major(st.Rdev), unix.Minor(st.Rdev)); err != nil {
		return nil, 0, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_EXCL, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, 0, fmt.Errorf("%s: %w: the kernel refuses exclusive access (mounted, swap, a device-mapper/LVM/md member, or opened exclusively by another program)", path, ErrInUse)
	}
	if err != nil {
		return nil, 0, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("size of %s: %w", path, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, size, nil
}

// checkUnused looks for mounts, swap and holders of the device maj:min and
// of its partitions.
func checkUnused(path string, maj, min uint32) error {
	devs := map[string]string{fmt.Sprintf("%d:%d", maj, min): path} // maj:min → name
	sys := filepath.Join(sysBlock, fmt.Sprintf("%d:%d", maj, min))
	if ents, err := os.ReadDir(sys); err == nil {
		for _, e := range ents {
			if _, err := os.Stat(filepath.Join(sys, e.Name(), "partition")); err != nil {
				continue
			}
			if b, err := os.ReadFile(filepath.Join(sys, e.Name(), "dev")); err == nil {
				devs[strings.TrimSpace(string(b))] = "/dev/" + e.Name()
			}
		}
	}
	if mounts, err := mountsOf(devs); err != nil {
		return err
	} else if len(mounts) > 0 {
		return fmt.Errorf("%s: %w: mounted (%s)", path, ErrInUse, strings.Join(mounts, ", "))
	}
	for dev, name := range devs {
		holders, _ := os.ReadDir(filepath.Join(sysBlock, dev, "holders"))
		if len(holders) > 0 {
			var hs []string
			for _, h := range holders {
				hs = append(hs, h.Name())
			}
			return fmt.Errorf("%s: %w: %s is held by %s", path, ErrInUse, name, strings.Join(hs, ", "))
		}
	}
	return nil
}

// mountsOf returns "NAME on MOUNTPOINT" for every mount of the devices
// (maj:min → name) in /proc/self/mountinfo.
func mountsOf(devs map[string]string) ([]string, error) {
	f, err := os.Open(mountInfo)
	if err != nil {
		return nil, fmt.Errorf("check mounts: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		// id parent maj:min root mountpoint ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		if name, ok := devs[fields[2]]; ok {
			out = append(out, name+" on "+unescape(fields[4]))
		}
	}
	return out, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

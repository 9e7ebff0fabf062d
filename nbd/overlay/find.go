package overlay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Path is where the overlay of (restore point, disk) lives below root;
// restorePoint is the full hex id.
func Path(root, restorePoint, disk string) string {
	return filepath.Join(root, restorePoint, disk)
}

// Found is an overlay List found on disk.
type Found struct {
	Dir  string
	Meta Meta
	// Written is how many bytes the persisted bitmap marks as written
	// (as of the overlay's last flush); 0 when the bitmap is unreadable.
	Written int64
	// InUse is true while a process has the overlay open.
	InUse bool
}

// List finds the overlays below root (root/RESTOREPOINT-ID/DISK
// directories with a meta.json), sorted by VM, then creation time, then
// directory. A missing root holds no overlays. Directories whose meta.json
// cannot be read are left out and returned in skipped (one error each,
// naming the directory); directories without one are left out silently.
func List(root string) (found []Found, skipped []error, err error) {
	rpDirs, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list overlays: %w", err)
	}
	for _, rd := range rpDirs {
		if !rd.IsDir() {
			continue
		}
		disks, err := os.ReadDir(filepath.Join(root, rd.Name()))
		if err != nil {
			return nil, nil, fmt.Errorf("list overlays: %w", err)
		}
		for _, dd := range disks {
			dir := filepath.Join(root, rd.Name(), dd.Name())
			m, err := ReadMeta(dir)
			if err != nil {
				if !errors.Is(err, os.ErrNotExist) {
					skipped = append(skipped, err)
				}
				continue
			}
			f := Found{Dir: dir, Meta: *m, InUse: InUse(dir)}
			f.Written, _ = WrittenBytes(dir, m)
			found = append(found, f)
		}
	}
	sort.Slice(found, func(i, j int) bool {
		a, b := found[i], found[j]
		if a.Meta.VM != b.Meta.VM {
			return a.Meta.VM < b.Meta.VM
		}
		if !a.Meta.Created.Equal(b.Meta.Created) {
			return a.Meta.Created.Before(b.Meta.Created)
		}
		return a.Dir < b.Dir
	})
	return found, skipped, nil
}

// ForRestorePoint returns the overlays in list that belong to the restore
// point with full id id, all disks or only disk when it is not "".
func ForRestorePoint(list []Found, id, disk string) []Found {
	var out []Found
	for _, f := range list {
		if f.Meta.RestorePoint == id && (disk == "" || f.Meta.Disk == disk) {
			out = append(out, f)
		}
	}
	return out
}

// minPrefix is the shortest id prefix MatchRestorePoint accepts.
const minPrefix = 4

// MatchRestorePoint returns the full id of the one restore point among
// list's overlays whose id starts with prefix (at least 4 characters), or
// "" when none or several do. It names overlays of restore points that
// are no longer in the repository (to discard them).
func MatchRestorePoint(list []Found, prefix string) string {
	if len(prefix) < minPrefix {
		return ""
	}
	match := ""
	for _, f := range list {
		if !strings.HasPrefix(f.Meta.RestorePoint, prefix) {
			continue
		}
		if match != "" && match != f.Meta.RestorePoint {
			return ""
		}
		match = f.Meta.RestorePoint
	}
	return match
}

// Name is what an overlay command ('vmvault overlay commit|discard') is
// given, taken apart: the overlays of one restore point, all its disks or
// one.
type Name struct {
	// RestorePoint names the restore point as the repository resolves
	// restore point names: an id prefix, VM@latest or VM@TIME.
	RestorePoint string
	// VM is set when the name was an export name VM/ID[/DISK]: the restore
	// point must belong to it.
	VM string
	// Disk is set when the name ends in a disk; "" means every disk.
	Disk string
}

// ParseName parses an overlay name. It accepts what users copy from the
// rest of vmvault: a restore point name (ID prefix, VM@latest, VM@TIME),
// optionally followed by /DISK (VM@latest/DISK is an export name), and an
// export name as 'vmvault serve' lists it, VM/ID or VM/ID/DISK (ID a full
// id or a prefix).
func ParseName(s string) (Name, error) {
	parts := strings.Split(s, "/")
	for _, p := range parts {
		if p == "" {
			return Name{}, fmt.Errorf("overlay name %q: want RESTORE_POINT[/DISK] (3fa4b2c1, web01@latest/disk0) or VM/ID[/DISK] (web01/3fa4b2c1/disk0)", s)
		}
	}
	switch {
	case strings.Contains(parts[0], "@") && len(parts) <= 2:
		n := Name{RestorePoint: parts[0]}
		if len(parts) == 2 {
			n.Disk = parts[1]
		}
		return n, nil
	case len(parts) == 1:
		return Name{RestorePoint: parts[0]}, nil
	case len(parts) <= 3 && !strings.Contains(parts[0], "@") && !strings.Contains(parts[1], "@"):
		n := Name{VM: parts[0], RestorePoint: parts[1]}
		if len(parts) == 3 {
			n.Disk = parts[2]
		}
		return n, nil
	}
	return Name{}, fmt.Errorf("overlay name %q: want RESTORE_POINT[/DISK] (3fa4b2c1, web01@latest/disk0) or VM/ID[/DISK] (web01/3fa4b2c1/disk0)", s)
}

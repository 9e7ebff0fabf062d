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

package repo

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/format"
)

// RestorePoint is a committed restore point: its ID (the hash of its
// manifest) and the manifest.
type RestorePoint struct {
	ID format.ID
	*format.Manifest
}

// Disk returns the manifest entry for the named disk.
func (rp *RestorePoint) Disk(name string) (*format.ManifestDisk, error) {
	for i := range rp.Disks {
		if rp.Disks[i].Name == name {
			return &rp.Disks[i], nil
		}
	}
	names := make([]string, len(rp.Disks))
	for i, d := range rp.Disks {
		names[i] = d.Name
	}
	return nil, fmt.Errorf("restore point %s has no disk %q (disks: %s)", rp.ID.Short(), name, strings.Join(names, ", "))
}

// ErrNotFoundRP means no restore point matches a name.
var ErrNotFoundRP = errors.New("no such restore point")

func snapshotHandle(id format.ID) backend.Handle {
	return backend.Handle{Type: backend.SnapshotFile, Name: id.String()}
}

// LoadRestorePoint loads and checks one manifest.
func (r *Repository) LoadRestorePoint(ctx context.Context, id format.ID) (*RestorePoint, error) {
	b, err := r.be.Load(ctx, snapshotHandle(id), 0, -1)
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) {
			return nil, fmt.Errorf("restore point %s: %w", id.Short(), ErrNotFoundRP)
		}
		return nil, fmt.Errorf("load restore point %s: %w", id.Short(), err)
	}
	if r.nameID(b) != id {
		return nil, fmt.Errorf("restore point %s: manifest does not match its id: %w", id.Short(), format.ErrCorrupt)
	}
	m, err := format.ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("restore point %s: %w", id.Short(), err)
	}
	return &RestorePoint{ID: id, Manifest: m}, nil
}

// BadRestorePoint is a manifest that could not be loaded.
type BadRestorePoint struct {
	Name string
	Err  error
}

// listing is the Repository's cached set of restore points. Manifests are
// immutable, so a refresh lists the snapshot names and loads only the
// manifests it has not seen; names that vanished (forgotten) are dropped.
// A manifest that failed to load is tried again at the next refresh.
type listing struct {
	mu     sync.Mutex // held during a refresh: concurrent callers share one
	rps    map[format.ID]*RestorePoint
	bad    []BadRestorePoint
	listed time.Time
}

// ListRestorePoints returns every restore point, sorted by VM then time,
// listing the backend now. Manifests that fail to load are returned
// separately, so one damaged object does not hide the others.
func (r *Repository) ListRestorePoints(ctx context.Context) ([]*RestorePoint, []BadRestorePoint, error) {
	return r.RestorePoints(ctx, 0)
}

// RestorePoints is ListRestorePoints with a cache: when the last listing
// is younger than maxAge it is returned as it was. Long-lived readers (the
// NBD server, the mount) and one-shot commands share this one
// implementation. The returned slice is the caller's; the restore points
// in it are shared and must not be modified.
func (r *Repository) RestorePoints(ctx context.Context, maxAge time.Duration) ([]*RestorePoint, []BadRestorePoint, error) {
	l := &r.listing
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rps == nil || maxAge <= 0 || r.now().Sub(l.listed) >= maxAge {
		if err := r.refreshListing(ctx); err != nil {
			return nil, nil, err
		}
	}
	rps := make([]*RestorePoint, 0, len(l.rps))
	for _, rp := range l.rps {
		rps = append(rps, rp)
	}
	SortRestorePoints(rps)
	return rps, append([]BadRestorePoint(nil), l.bad...), nil
}

// refreshListing brings r.listing up to date; the caller holds its lock.
func (r *Repository) refreshListing(ctx context.Context) error {
	l := &r.listing
	started := r.now()
	var names []string
	if err := r.be.List(ctx, backend.SnapshotFile, func(fi backend.FileInfo) error {
		names = append(names, fi.Name)
		return nil
	}); err != nil {
		return fmt.Errorf("list restore points: %w", err)
	}
	next := make(map[format.ID]*RestorePoint, len(names))
	var missing []string
	for _, n := range names {
		if id, err := format.ParseID(n); err == nil && l.rps[id] != nil {
			next[id] = l.rps[id]
		} else {
			missing = append(missing, n)
		}
	}
	var (
		mu  sync.Mutex
		bad []BadRestorePoint
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.props.ReadParallelism)
	for _, n := range missing {
		g.Go(func() error {
			id, err := format.ParseID(n)
			var rp *RestorePoint
			if err == nil {
				rp, err = r.LoadRestorePoint(gctx, id)
			}
			if errors.Is(err, ErrNotFoundRP) {
				return nil // forgotten meanwhile
			}
			if gctx.Err() != nil {
				return gctx.Err()
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				bad = append(bad, BadRestorePoint{Name: n, Err: err})
			} else {
				next[id] = rp
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	sort.Slice(bad, func(i, j int) bool { return bad[i].Name < bad[j].Name })
	l.rps, l.bad, l.listed = next, bad, started
	return nil
}

// SortRestorePoints orders by VM, then time, then ID.
func SortRestorePoints(rps []*RestorePoint) {
	sort.Slice(rps, func(i, j int) bool {
		a, b := rps[i], rps[j]
		if a.VM != b.VM {
			return a.VM < b.VM
		}
		if !a.Time.Equal(b.Time) {
			return a.Time.Before(b.Time)
		}
		return a.ID.String() < b.ID.String()
	})
}

// Latest returns the newest restore point of vm, or nil.
func Latest(rps []*RestorePoint, vm string) *RestorePoint {
	var best *RestorePoint
	for _, rp := range rps {
		if rp.VM == vm && (best == nil || rp.Time.After(best.Time)) {
			best = rp
		}
	}
	return best
}

var timeLayouts = []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02"}

// ParseTime parses the time forms accepted in restore point names; times
// without a zone are UTC.
func ParseTime(s string) (time.Time, error) {
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("time %q: use RFC 3339 (2026-11-23T10:00:00Z) or 2026-11-23[T10:00[:00]] (UTC)", s)
}

// Resolve finds the restore point a user named: a full ID, a unique ID
// prefix (at least 4 hex digits), VM@latest, or VM@TIME (the newest restore
// point of VM taken at or before TIME). A name no restore point matches
// wraps ErrNotFoundRP; when the name is a VM's, or names a VM that has no
// restore points, the error says what to write instead (hint).
func Resolve(rps []*RestorePoint, name string) (*RestorePoint, error) {
	if vm, when, ok := strings.Cut(name, "@"); ok {
		var t time.Time
		if when != "latest" {
			var err error
			if t, err = ParseTime(when); err != nil {
				return nil, fmt.Errorf("restore point %q: %w", name, err)
			}
		}
		var best *RestorePoint
		for _, rp := range rps {
			if rp.VM != vm || (!t.IsZero() && rp.Time.After(t)) {
				continue
			}
			if best == nil || rp.Time.After(best.Time) {
				best = rp
			}
		}
		if best == nil {
			return nil, fmt.Errorf("restore point %q: %w%s", name, ErrNotFoundRP, hint(rps, vm))
		}
		return best, nil
	}
	var found []*RestorePoint
	if len(name) >= 4 {
		for _, rp := range rps {
			if strings.HasPrefix(rp.ID.String(), strings.ToLower(name)) {
				found = append(found, rp)
			}
		}
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) > 1:
		return nil, fmt.Errorf("restore point %q: prefix matches %d restore points", name, len(found))
	case Latest(rps, name) != nil:
		return nil, fmt.Errorf("restore point %q: %w%s", name, ErrNotFoundRP, hint(rps, name))
	case len(name) < 4:
		return nil, fmt.Errorf("restore point %q: give at least 4 hex digits of the id, or VM@latest", name)
	}
	return nil, fmt.Errorf("restore point %q: %w", name, ErrNotFoundRP)
}

// hintShown is how many restore points or VMs a hint lists.
const hintShown = 5

// hint tells what to write instead of a name that did not resolve and
// involves vm: the VM's newest restore points when it has some, else the
// VMs that have.
func hint(rps []*RestorePoint, vm string) string {
	var of []*RestorePoint
	vms := map[string]bool{}
	for _, rp := range rps {
		vms[rp.VM] = true
		if rp.VM == vm {
			of = append(of, rp)
		}
	}
	if len(of) > 0 {
		sort.Slice(of, func(i, j int) bool { return of[i].Time.After(of[j].Time) })
		var names []string
		for _, rp := range of[:min(len(of), hintShown)] {
			names = append(names, rp.ID.Short()+" ("+rp.Time.UTC().Format("2006-01-02T15:04:05Z")+")")
		}
		more := ""
		if len(of) > hintShown {
			more = fmt.Sprintf(", … %d in all: vmvault snapshots --vm %s", len(of), vm)
		}
		return fmt.Sprintf("; %s is a VM: name one of its restore points as %s@latest, %s@TIME or by id: %s%s",
			vm, vm, vm, strings.Join(names, ", "), more)
	}
	if len(vms) == 0 {
		return "; the repository holds no restore points"
	}
	var names []string
	for v := range vms {
		names = append(names, v)
	}
	sort.Strings(names)
	more := ""
	if len(names) > hintShown {
		more = fmt.Sprintf(", … %d in all", len(names))
		names = names[:hintShown]
	}
	return fmt.Sprintf("; no VM is named %q (VMs: %s%s)", vm, strings.Join(names, ", "), more)
}

// SplitRestorePoint finds the restore point named at the start of arg,
// "RP:REST" (as in RP:DISK/PARTITION/PATH), and returns it with REST; an
// arg that is only a restore point name returns REST "". Restore point
// names may themselves contain ':' (VM@2026-11-23T10:00), so every ':' is
// tried from the left and the first prefix that names a restore point wins.
// When none does, the error wraps the first prefix's Resolve error.
func SplitRestorePoint(rps []*RestorePoint, arg string) (*RestorePoint, string, error) {
	var firstErr error
	for i := 0; i < len(arg); i++ {
		if arg[i] != ':' {
			continue
		}
		rp, err := Resolve(rps, arg[:i])
		if err == nil {
			return rp, arg[i+1:], nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	rp, err := Resolve(rps, arg)
	if err == nil {
		return rp, "", nil
	}
	if firstErr == nil {
		firstErr = err
	}
	return nil, "", fmt.Errorf("%q does not start with a restore point (RP:DISK/PARTITION/PATH): %w", arg, firstErr)
}

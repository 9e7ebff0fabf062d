package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/vmvault/vmvault/nbd/overlay"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
)

// DiskDevice serves a restore point's disk (read-only).
type DiskDevice struct{ D *repo.Disk }

// Size implements Device.
func (d DiskDevice) Size() int64 { return d.D.Size() }

// ReadAt implements Device.
func (d DiskDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	n, err := d.D.ReadAtContext(ctx, p, off)
	return fullRead(n, len(p), err)
}

// ReadSlices implements SliceReader: the bytes come from the repository's
// chunk cache, pinned while fn runs.
func (d DiskDevice) ReadSlices(ctx context.Context, off, length int64, fn func([][]byte) error) error {
	return d.D.ReadSlices(ctx, off, length, fn)
}

// Extents implements Device from the index's zero chunks.
func (d DiskDevice) Extents(_ context.Context, off, length int64) ([]extent.Extent, error) {
	return d.D.Extents(off, length)
}

// prefetchParallel is how many chunks a Prefetch loads at once: decoding
// and hashing use the CPU, so both cores work on a read-ahead window.
const prefetchParallel = 4

// Prefetch implements Device: loads the range's chunks into the shared
// cache, several at a time.
func (d DiskDevice) Prefetch(ctx context.Context, off, length int64) error {
	if length <= 0 {
		return nil
	}
	cs := d.D.ChunkSize()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(prefetchParallel)
	for pos := off / cs * cs; pos < off+length; pos += cs {
		g.Go(func() error { return d.D.Prefetch(gctx, pos, min(cs, d.D.Size()-pos)) })
	}
	return g.Wait()
}

// RepoCatalog exports every disk of every restore point of a repository as
// "VM/RESTOREPOINT-ID/DISK" (the full id; a unique prefix is accepted when
// opening) plus "VM@latest/DISK". New restore points are seen at the next
// LIST or open; forgotten ones vanish.
type RepoCatalog struct {
	Repo *repo.Repository
	// Patterns restrict the exports (see MatchExport: "web01",
	// "web01/*", "web01@latest/*", "web01/3fa4b2c1"); empty allows all. A
	// name is checked in its canonical form, so an id prefix a client
	// opens is offered exactly when the full id is.
	Patterns []string
	// OverlayDir, when set, makes exports writable: each (restore point,
	// disk) gets a persistent copy-on-write overlay below it, at
	// overlay.Path, created by the first write to the export (listing,
	// INFO and reads create none).
	OverlayDir string
	Log        *slog.Logger
	// Lock, when set, pins the restore point of every open export until
	// it is closed, so gc keeps its data even if it is forgotten while a
	// client reads it.
	Lock *repo.Lock

	mu       sync.Mutex
	overlays map[string]*writableDisk // by overlay directory
}

// An overlay is what a writable export serves once written.
var _ WritableDevice = (*overlay.Overlay)(nil)

// refresh returns the repository's restore points as of now.
func (c *RepoCatalog) refresh(ctx context.Context) ([]*repo.RestorePoint, error) {
	rps, bad, err := c.Repo.RestorePoints(ctx, 0)
	if err != nil {
		return nil, err
	}
	for _, b := range bad {
		if c.Log != nil {
			c.Log.Warn("skipping unreadable restore point", "name", b.Name, "err", b.Err)
		}
	}
	return rps, nil
}

// allowed reports whether the canonical export name (VM/ID/DISK with the
// full id, or VM@latest/DISK) is offered.
func (c *RepoCatalog) allowed(name string) bool {
	if len(c.Patterns) == 0 {
		return true
	}
	for _, p := range c.Patterns {
		if MatchExport(p, name) {
			return true
		}
	}
	return false
}

// CheckPattern reports a malformed export pattern.
func CheckPattern(pattern string) error {
	if pattern == "" {
		return errors.New("empty export pattern")
	}
	for _, p := range strings.Split(pattern, "/") {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("export pattern %q: %w", pattern, err)
		}
	}
	return nil
}

// MatchExport reports whether pattern covers the canonical export name
// (VM/RESTOREPOINT-ID/DISK with the full id, or VM@latest/DISK). Patterns
// are path.Match globs compared component by component ('/' separated):
//   - A pattern with fewer components than the name covers it when it
//     matches the name's leading components, so a pattern naming a VM or a
//     restore point covers all of its disks: "web01/*" every restore point
//     of web01 by id, "web01/*/disk0" their disk0, "web01@latest/*" the
//     latest disks.
//   - In the restore point's place, a component without glob characters
//     also matches the ids it is a prefix of, as ids are shown shortened:
//     "web01/3fa4b2c1".
//   - A one-component pattern also matches the VM of VM@latest names:
//     "web01" covers all of web01's exports, @latest included.
func MatchExport(pattern, name string) bool {
	pc, nc := strings.Split(pattern, "/"), strings.Split(name, "/")
	if len(pc) > len(nc) {
		return false
	}
	if len(pc) == 1 && len(nc) == 2 {
		if vm, ok := strings.CutSuffix(nc[0], "@latest"); ok {
			if m, _ := path.Match(pc[0], vm); m {
				return true
			}
		}
	}
	for i, p := range pc {
		if m, _ := path.Match(p, nc[i]); m {
			continue
		}
		if i == 1 && len(nc) == 3 && len(p) >= 4 && !strings.ContainsAny(p, `*?[\`) && strings.HasPrefix(nc[1], strings.ToLower(p)) {
			continue
		}
		return false
	}
	return true
}

// UnmatchedPatterns returns the patterns that match none of the exports
// the repository has now (a typo, or a VM not captured yet).
func (c *RepoCatalog) UnmatchedPatterns(ctx context.Context) ([]string, error) {
	rps, err := c.refresh(ctx)
	if err != nil {
		return nil, err
	}
	all := (&RepoCatalog{}).exports(rps)
	var out []string
	for _, p := range c.Patterns {
		used := false
		for _, e := range all {
			if MatchExport(p, e.Name) {
				used = true
				break
			}
		}
		if !used {
			out = append(out, p)
		}
	}
	return out, nil
}

func describe(rp *repo.RestorePoint, d format.ManifestDisk) string {
	return fmt.Sprintf("%s %s %s %d bytes (restore point %s)", rp.VM, rp.Time.UTC().Format("2006-01-02T15:04:05Z"), d.Name, d.Size, rp.ID.Short())
}

// ExportName is the stable name of a restore point's disk.
func ExportName(rp *repo.RestorePoint, disk string) string {
	return rp.VM + "/" + rp.ID.String() + "/" + disk
}

// List implements Catalog.
func (c *RepoCatalog) List(ctx context.Context) ([]ExportInfo, error) {
	rps, err := c.refresh(ctx)
	if err != nil {
		return nil, err
	}
	return c.exports(rps), nil
}

// exports names the allowed exports of rps (sorted by VM, then time).
func (c *RepoCatalog) exports(rps []*repo.RestorePoint) []ExportInfo {
	var out []ExportInfo
	latest := map[string]*repo.RestorePoint{}
	for _, rp := range rps {
		latest[rp.VM] = rp // sorted by time within a VM
		for _, d := range rp.Disks {
			if n := ExportName(rp, d.Name); c.allowed(n) {
				out = append(out, ExportInfo{Name: n, Description: describe(rp, d)})
			}
		}
	}
	var vms []string
	for vm := range latest {
		vms = append(vms, vm)
	}
	sort.Strings(vms)
	for _, vm := range vms {
		rp := latest[vm]
		for _, d := range rp.Disks {
			if n := vm + "@latest/" + d.Name; c.allowed(n) {
				out = append(out, ExportInfo{Name: n, Description: "latest: " + describe(rp, d)})
			}
		}
	}
	return out
}

// resolve maps an export name to a restore point and disk.
func (c *RepoCatalog) resolve(ctx context.Context, name string) (*repo.RestorePoint, string, error) {
	rps, err := c.refresh(ctx)
	if err != nil {
		return nil, "", err
	}
	if name == "" {
		list := c.exports(rps)
		if len(list) != 1 {
			return nil, "", fmt.Errorf("no default export: %d exports are offered, name one (nbdinfo --list): %w", len(list), ErrUnknownExport)
		}
		name = list[0].Name
	}
	notOffered := fmt.Errorf("export %q is not offered by this server: %w", name, ErrUnknownExport)
	parts := strings.Split(name, "/")
	var rp *repo.RestorePoint
	var disk string
	switch {
	case len(parts) == 2 && strings.HasSuffix(parts[0], "@latest"):
		vm := strings.TrimSuffix(parts[0], "@latest")
		disk = parts[1]
		if !c.allowed(vm + "@latest/" + disk) {
			return nil, "", notOffered
		}
		rp = repo.Latest(rps, vm)
	case len(parts) == 3 && len(parts[1]) >= 8:
		disk = parts[2]
		var match []*repo.RestorePoint
		for _, r := range rps {
			if r.VM == parts[0] && strings.HasPrefix(r.ID.String(), strings.ToLower(parts[1])) && c.allowed(ExportName(r, disk)) {
				match = append(match, r)
			}
		}
		if len(match) > 1 {
			return nil, "", fmt.Errorf("export %q: id prefix %s is ambiguous: %w", name, parts[1], ErrUnknownExport)
		}
		if len(match) == 0 && len(c.Patterns) > 0 {
			return nil, "", notOffered
		}
		if len(match) == 1 {
			rp = match[0]
		}
	default:
		return nil, "", fmt.Errorf("export %q: names look like VM/RESTOREPOINT-ID/DISK or VM@latest/DISK: %w", name, ErrUnknownExport)
	}
	if rp == nil {
		return nil, "", fmt.Errorf("export %q: no such restore point: %w", name, ErrUnknownExport)
	}
	if _, err := rp.Disk(disk); err != nil {
		return nil, "", fmt.Errorf("export %q: %v: %w", name, err, ErrUnknownExport)
	}
	return rp, disk, nil
}

// Open implements Catalog. A writable export's overlay is opened here
// only when it exists already (a restarted server continues it, and
// 'vmvault overlay list' shows it in use); otherwise the first write
// creates it (see writableDisk), so listing, INFO and reading clients
// leave nothing behind.
func (c *RepoCatalog) Open(ctx context.Context, name string) (*Export, error) {
	rp, diskName, err := c.resolve(ctx, name)
	if err != nil {
		return nil, err
	}
	if c.Lock != nil {
		if err := c.Lock.Pin(ctx, rp); err != nil {
			return nil, fmt.Errorf("export %q: %v: %w", name, err, ErrUnknownExport)
		}
	}
	exp, err := c.open(ctx, rp, diskName)
	if err != nil {
		c.unpin(rp)
		return nil, err
	}
	release := exp.Close
	exp.Close = func() error {
		err := release()
		c.unpin(rp)
		return err
	}
	return exp, nil
}

func (c *RepoCatalog) unpin(rp *repo.RestorePoint) {
	if c.Lock != nil {
		if err := c.Lock.Unpin(context.Background(), rp); err != nil && c.Log != nil {
			c.Log.Warn("unpin restore point", "restore_point", rp.ID.Short(), "err", err)
		}
	}
}

func (c *RepoCatalog) open(ctx context.Context, rp *repo.RestorePoint, diskName string) (*Export, error) {
	d, err := c.Repo.OpenDisk(ctx, rp, diskName)
	if err != nil {
		return nil, err
	}
	md, _ := rp.Disk(diskName)
	exp := &Export{
		Name: ExportName(rp, diskName), Description: describe(rp, *md),
		Device: DiskDevice{d}, MultiConn: true, Close: d.Close,
	}
	if c.OverlayDir == "" {
		return exp, nil
	}
	wd, release, err := c.writable(rp, diskName, DiskDevice{d})
	if err != nil {
		return nil, err
	}
	exp.Device = wd
	exp.Description += " writable overlay " + wd.dir
	exp.Close = release
	return exp, nil
}

// writable returns the shared writable device for (rp, disk), making it on
// first use and opening its overlay if one exists.
func (c *RepoCatalog) writable(rp *repo.RestorePoint, disk string, base Device) (*writableDisk, func() error, error) {
	dir := overlay.Path(c.OverlayDir, rp.ID.String(), disk)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.overlays == nil {
		c.overlays = map[string]*writableDisk{}
	}
	wd := c.overlays[dir]
	if wd == nil {
		wd = &writableDisk{dir: dir, meta: overlay.Meta{VM: rp.VM, RestorePoint: rp.ID.String(), Disk: disk}, base: base}
		if _, err := overlay.ReadMeta(dir); err == nil {
			if _, err := wd.overlay(); err != nil {
				return nil, nil, err
			}
		}
		c.overlays[dir] = wd
	}
	wd.refs++
	var once sync.Once
	release := func() error {
		var err error
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			wd.refs--
			if wd.refs == 0 {
				delete(c.overlays, dir)
				err = wd.close()
			} else {
				err = wd.Flush(context.Background())
			}
		})
		return err
	}
	return wd, release, nil
}

// writableDisk is the device of a writable export, shared by every
// connection to one (restore point, disk). It reads the restore point's
// disk until the first WRITE, WRITE_ZEROES or TRIM creates the overlay in
// dir; from then on every request goes through the overlay, which reads
// the blocks it does not hold from the same disk.
type writableDisk struct {
	dir  string
	meta overlay.Meta
	base Device
	refs int // connections holding it; guarded by RepoCatalog.mu

	mu sync.Mutex // held while the overlay is opened
	ov atomic.Pointer[overlay.Overlay]
}

var _ WritableDevice = (*writableDisk)(nil)

// overlay returns the overlay, opening (or creating) it on first use.
func (w *writableDisk) overlay() (*overlay.Overlay, error) {
	if ov := w.ov.Load(); ov != nil {
		return ov, nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if ov := w.ov.Load(); ov != nil {
		return ov, nil
	}
	ov, err := overlay.Open(w.dir, w.meta, w.base)
	if err != nil {
		return nil, err
	}
	w.ov.Store(ov)
	return ov, nil
}

// reader is what reads go to: the overlay once it exists, else the disk.
func (w *writableDisk) reader() Device {
	if ov := w.ov.Load(); ov != nil {
		return ov
	}
	return w.base
}

// Size implements Device.
func (w *writableDisk) Size() int64 { return w.base.Size() }

// ReadAt implements Device.
func (w *writableDisk) ReadAt(ctx context.Context, p []byte, off int64) error {
	return w.reader().ReadAt(ctx, p, off)
}

// Extents implements Device.
func (w *writableDisk) Extents(ctx context.Context, off, length int64) ([]extent.Extent, error) {
	return w.reader().Extents(ctx, off, length)
}

// Prefetch implements Device.
func (w *writableDisk) Prefetch(ctx context.Context, off, length int64) error {
	return w.reader().Prefetch(ctx, off, length)
}

// WriteAt implements WritableDevice.
func (w *writableDisk) WriteAt(ctx context.Context, p []byte, off int64) error {
	ov, err := w.overlay()
	if err != nil {
		return err
	}
	return ov.WriteAt(ctx, p, off)
}

// WriteZeroes implements WritableDevice.
func (w *writableDisk) WriteZeroes(ctx context.Context, off, length int64, fast bool) error {
	ov, err := w.overlay()
	if err != nil {
		return err
	}
	return ov.WriteZeroes(ctx, off, length, fast)
}

// Trim implements WritableDevice.
func (w *writableDisk) Trim(ctx context.Context, off, length int64) error {
	ov, err := w.overlay()
	if err != nil {
		return err
	}
	return ov.Trim(ctx, off, length)
}

// Flush implements WritableDevice; without an overlay nothing was written.
func (w *writableDisk) Flush(ctx context.Context) error {
	if ov := w.ov.Load(); ov != nil {
		return ov.Flush(ctx)
	}
	return nil
}

// close flushes and closes the overlay, if there is one.
func (w *writableDisk) close() error {
	if ov := w.ov.Load(); ov != nil {
		return ov.Close()
	}
	return nil
}

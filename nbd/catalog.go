package nbd

import (
	"context"
	"fmt"
	"log/slog"
	"path"
	"sort"
	"strings"
	"sync"

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
	// Patterns restrict the exports (path.Match globs on export names,
	// e.g. "web01@latest/*"); empty allows all.
	Patterns []string
	// OverlayDir, when set, makes exports writable: each (restore point,
	// disk) gets a persistent copy-on-write overlay below it, at
	// overlay.Path.
	OverlayDir string
	Log        *slog.Logger
	// Lock, when set, pins the restore point of every open export until
	// it is closed, so gc keeps its data even if it is forgotten while a
	// client reads it.
	Lock *repo.Lock

	mu       sync.Mutex
	overlays map[string]*sharedOverlay
}

type sharedOverlay struct {
	ov   *overlay.Overlay
	refs int
}

// An overlay is what a writable export serves.
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

func (c *RepoCatalog) allowed(name string) bool {
	if len(c.Patterns) == 0 {
		return true
	}
	for _, p := range c.Patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
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
	if !c.allowed(name) {
		return nil, "", fmt.Errorf("export %q is not offered by this server: %w", name, ErrUnknownExport)
	}
	parts := strings.Split(name, "/")
	var rp *repo.RestorePoint
	var disk string
	switch {
	case len(parts) == 2 && strings.HasSuffix(parts[0], "@latest"):
		vm := strings.TrimSuffix(parts[0], "@latest")
		rp = repo.Latest(rps, vm)
		disk = parts[1]
	case len(parts) == 3 && len(parts[1]) >= 8:
		var match []*repo.RestorePoint
		for _, r := range rps {
			if r.VM == parts[0] && strings.HasPrefix(r.ID.String(), strings.ToLower(parts[1])) {
				match = append(match, r)
			}
		}
		if len(match) > 1 {
			return nil, "", fmt.Errorf("export %q: id prefix %s is ambiguous: %w", name, parts[1], ErrUnknownExport)
		}
		if len(match) == 1 {
			rp = match[0]
		}
		disk = parts[2]
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

// Open implements Catalog.
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
	ov, release, err := c.openOverlay(rp, diskName, DiskDevice{d})
	if err != nil {
		return nil, err
	}
	exp.Device = ov
	exp.Description += " writable overlay " + ov.Dir()
	exp.Close = release
	return exp, nil
}

// openOverlay returns the shared overlay for (rp, disk), opening it on
// first use.
func (c *RepoCatalog) openOverlay(rp *repo.RestorePoint, disk string, base Device) (*overlay.Overlay, func() error, error) {
	dir := overlay.Path(c.OverlayDir, rp.ID.String(), disk)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.overlays == nil {
		c.overlays = map[string]*sharedOverlay{}
	}
	so := c.overlays[dir]
	if so == nil {
		ov, err := overlay.Open(dir, overlay.Meta{VM: rp.VM, RestorePoint: rp.ID.String(), Disk: disk}, base)
		if err != nil {
			return nil, nil, err
		}
		so = &sharedOverlay{ov: ov}
		c.overlays[dir] = so
	}
	so.refs++
	var once sync.Once
	release := func() error {
		var err error
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			so.refs--
			if so.refs == 0 {
				delete(c.overlays, dir)
				err = so.ov.Close()
			} else {
				err = so.ov.Flush(context.Background())
			}
		})
		return err
	}
	return so.ov, release, nil
}

// Package overlay is the capture adapter of 'vmvault overlay commit': a
// restore point with the copy-on-write overlays of its writable NBD
// exports applied (what a VM booted from the backup wrote), as a
// cbt.Source. Every disk becomes an extents incremental of the booted
// restore point that reads only the blocks the overlays hold.
//
// Invariants: the overlays are opened exclusively (an overlay a server
// has open is refused with nbd/overlay.ErrBusy), so nothing writes them
// while they are read; the new restore point's lineage is
// cbt.LineageOverlay, so no changed-block source ever builds an
// incremental on it.
package overlay

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmvault/vmvault/cbt"
	nbdoverlay "github.com/vmvault/vmvault/nbd/overlay"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/extent"
)

// Source is a restore point plus its overlays.
type Source struct {
	*cbt.DerivedSource
	// ChangedBytes is how many bytes the overlays hold.
	ChangedBytes int64

	overlays map[string]*nbdoverlay.Overlay // by disk
}

// Open opens found, the overlays of restore point rp (see
// nbd/overlay.ForRestorePoint), over rp's disks. Close the Source when done.
func Open(ctx context.Context, r *repo.Repository, rp *repo.RestorePoint, found []nbdoverlay.Found) (*Source, error) {
	s := &Source{overlays: map[string]*nbdoverlay.Overlay{}, DerivedSource: &cbt.DerivedSource{
		Repo: r, Base: rp, Changes: map[string]cbt.Change{}, Source: "overlay commit of restore point " + rp.ID.String(),
	}}
	for _, f := range found {
		if _, err := rp.Disk(f.Meta.Disk); err != nil {
			s.Close()
			return nil, fmt.Errorf("overlay %s is for disk %s, which restore point %s does not have", f.Dir, f.Meta.Disk, rp.ID.Short())
		}
		d, err := r.OpenDisk(ctx, rp, f.Meta.Disk)
		if err != nil {
			s.Close()
			return nil, err
		}
		ov, err := nbdoverlay.Open(f.Dir, nbdoverlay.Meta{VM: rp.VM, RestorePoint: rp.ID.String(), Disk: f.Meta.Disk}, diskBase{d})
		if err != nil {
			s.Close()
			return nil, err
		}
		s.overlays[f.Meta.Disk] = ov
		var changed []extent.Range
		for _, a := range ov.Allocated() {
			changed = append(changed, extent.Range{Offset: a.Offset, Length: a.Length})
			s.ChangedBytes += a.Length
		}
		s.Changes[f.Meta.Disk] = cbt.Change{Reader: ov.ReaderAt(ctx), Changed: changed}
	}
	return s, nil
}

// Close closes the overlays.
func (s *Source) Close() error {
	var errs []error
	for disk, ov := range s.overlays {
		errs = append(errs, ov.Close())
		delete(s.overlays, disk)
	}
	return errors.Join(errs...)
}

// Discard closes the overlays and deletes them (after a commit).
func (s *Source) Discard() error {
	var errs []error
	for disk, ov := range s.overlays {
		dir := ov.Dir()
		errs = append(errs, ov.Close())
		delete(s.overlays, disk)
		errs = append(errs, nbdoverlay.Discard(dir))
	}
	return errors.Join(errs...)
}

// Commit captures s as a new restore point of the booted restore point's
// VM, tagged with its tags plus tags.
func (s *Source) Commit(ctx context.Context, opts cbt.Options) (*repo.RestorePoint, error) {
	opts.VM, opts.Base = s.Base.VM, s.Base
	opts.Tags = append(append([]string{}, s.Base.Tags...), opts.Tags...)
	return cbt.Capture(ctx, s.Repo, s, opts)
}

// diskBase is a restore point's disk as the base of an overlay.
type diskBase struct{ d *repo.Disk }

func (b diskBase) Size() int64 { return b.d.Size() }

func (b diskBase) ReadAt(ctx context.Context, p []byte, off int64) error {
	n, err := b.d.ReadAtContext(ctx, p, off)
	if n == len(p) {
		return nil
	}
	if err == nil {
		err = fmt.Errorf("short read of %s at %d", b.d.Name(), off)
	}
	return err
}

func (b diskBase) Extents(_ context.Context, off, length int64) ([]extent.Extent, error) {
	return b.d.Extents(off, length)
}

package nbdsrc

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/vmvault/vmvault/cbt"
	"github.com/vmvault/vmvault/repo/extent"
)

// Disk names one disk of an NBD capture.
type Disk struct {
	Name string
	URI  string
	// Export overrides the export name in URI ("" keeps it).
	Export string
	// Bitmap, when set, is the dirty bitmap the export offers
	// (qemu-nbd --bitmap NAME): the blocks written since the capture whose
	// restore point recorded it as change token.
	Bitmap string
	// Token is the change token stored for the next capture: the bitmap
	// that records writes from now on. "" stores Bitmap (a bitmap that is
	// cleared after each capture, or never).
	Token string
}

// Source captures NBD exports of one VM. Its lineage is "nbd:VM". Without
// a bitmap a disk is read whole (only allocated areas: base:allocation);
// with one, only the blocks it marks, when the base restore point's change
// token names that bitmap.
type Source struct {
	vm    string
	disks []*srcDisk
}

type srcDisk struct {
	Disk
	e *Export
}

var _ cbt.Source = (*Source)(nil)

// LineagePrefix starts the lineage of NBD captures: "nbd:" + VM name.
const LineagePrefix = "nbd:"

// OpenSource connects to every disk's export.
func OpenSource(ctx context.Context, vm string, disks []Disk) (*Source, error) {
	s := &Source{vm: vm}
	for _, d := range disks {
		e, err := Open(ctx, d.URI, d.Export, d.Bitmap)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("disk %s: %w", d.Name, err)
		}
		s.disks = append(s.disks, &srcDisk{Disk: d, e: e})
	}
	return s, nil
}

// Close disconnects every export.
func (s *Source) Close() error {
	var errs []error
	for _, d := range s.disks {
		errs = append(errs, d.e.Close())
	}
	return errors.Join(errs...)
}

// Export returns the open export of a disk.
func (s *Source) Export(name string) (*Export, error) {
	for _, d := range s.disks {
		if d.Name == name {
			return d.e, nil
		}
	}
	return nil, fmt.Errorf("NBD source has no disk %q", name)
}

func (s *Source) disk(name string) (*srcDisk, error) {
	for _, d := range s.disks {
		if d.Name == name {
			return d, nil
		}
	}
	return nil, fmt.Errorf("NBD source has no disk %q", name)
}

// Describe implements cbt.Source.
func (s *Source) Describe(context.Context) (*cbt.Description, error) {
	desc := &cbt.Description{Lineage: LineagePrefix + s.vm, Source: "nbd"}
	for _, d := range s.disks {
		tok := d.Token
		if tok == "" {
			tok = d.Bitmap
		}
		desc.Disks = append(desc.Disks, cbt.Disk{Name: d.Name, Size: d.e.Size(), ChangeToken: tok})
	}
	return desc, nil
}

// Open implements cbt.Source.
func (s *Source) Open(_ context.Context, cd cbt.Disk) (io.ReaderAt, error) {
	d, err := s.disk(cd.Name)
	if err != nil {
		return nil, err
	}
	return d.e, nil
}

// DataRanges implements cbt.Source with base:allocation.
func (s *Source) DataRanges(ctx context.Context, cd cbt.Disk) ([]extent.Range, error) {
	d, err := s.disk(cd.Name)
	if err != nil {
		return nil, err
	}
	return d.e.DataRanges(ctx)
}

// ChangedRanges implements cbt.Source: the dirty bitmap's blocks, when
// the base restore point recorded that bitmap as its change token.
func (s *Source) ChangedRanges(ctx context.Context, cd cbt.Disk, base cbt.BaseDisk) ([]extent.Range, error) {
	d, err := s.disk(cd.Name)
	if err != nil {
		return nil, err
	}
	switch tok := base.Disk.ChangeToken; {
	case d.Bitmap == "":
		return nil, cbt.NoChangeInfo("no dirty bitmap given (--bitmap)")
	case tok == "":
		return nil, cbt.NoChangeInfo("restore point %s recorded no bitmap for this disk", base.RestorePoint.ID.Short())
	case tok != d.Bitmap:
		return nil, cbt.NoChangeInfo("restore point %s recorded bitmap %q, the export offers %q", base.RestorePoint.ID.Short(), tok, d.Bitmap)
	}
	return d.e.DirtyRanges(ctx)
}

package cbt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/vmvault/vmvault/repo/extent"
)

// FileDisk names one disk of a file capture.
type FileDisk struct {
	Name string
	Path string // raw image file or block device
	// Extents, when set, is a changed-extents list (ParseExtents) of what
	// changed since the VM's latest restore point.
	Extents string
}

// FileSource captures raw image files and block devices. Its lineage is
// LineageFile. Files have no change tokens: a changed-extents list means
// "changed since the VM's latest restore point", so it is only used when
// that restore point is a file capture holding the disk; otherwise the
// disk is read whole (dedup against the latest restore point that has it).
type FileSource struct {
	disks []*fileDisk
}

type fileDisk struct {
	FileDisk
	f       *File
	changed []extent.Range // nil: no list
}

var _ Source = (*FileSource)(nil)

// OpenFiles opens every disk and reads its changed-extents list, so a
// missing or malformed list is an error before anything is captured, also
// on a VM's first capture.
func OpenFiles(disks []FileDisk) (*FileSource, error) {
	s := &FileSource{}
	for _, d := range disks {
		f, err := OpenFile(d.Path)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("disk %s: %w", d.Name, err)
		}
		fd := &fileDisk{FileDisk: d, f: f}
		s.disks = append(s.disks, fd)
		if d.Extents == "" {
			continue
		}
		ef, err := os.Open(d.Extents)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("disk %s: changed extents: %w", d.Name, err)
		}
		fd.changed, err = ParseExtents(ef, f.Size())
		ef.Close()
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("disk %s: changed extents %s: %w", d.Name, d.Extents, err)
		}
		if fd.changed == nil {
			fd.changed = []extent.Range{}
		}
	}
	return s, nil
}

// Close closes every file.
func (s *FileSource) Close() error {
	var errs []error
	for _, d := range s.disks {
		errs = append(errs, d.f.Close())
	}
	return errors.Join(errs...)
}

func (s *FileSource) disk(name string) (*fileDisk, error) {
	for _, d := range s.disks {
		if d.Name == name {
			return d, nil
		}
	}
	return nil, fmt.Errorf("file source has no disk %q", name)
}

// Describe implements Source.
func (s *FileSource) Describe(context.Context) (*Description, error) {
	desc := &Description{Lineage: LineageFile, Source: "file"}
	for _, d := range s.disks {
		desc.Disks = append(desc.Disks, Disk{Name: d.Name, Size: d.f.Size()})
	}
	return desc, nil
}

// Open implements Source.
func (s *FileSource) Open(_ context.Context, d Disk) (io.ReaderAt, error) {
	fd, err := s.disk(d.Name)
	if err != nil {
		return nil, err
	}
	return fd.f, nil
}

// DataRanges implements Source: a sparse file's allocated extents.
func (s *FileSource) DataRanges(_ context.Context, d Disk) ([]extent.Range, error) {
	fd, err := s.disk(d.Name)
	if err != nil {
		return nil, err
	}
	return fd.f.DataRanges(), nil
}

// ChangedRanges implements Source: the disk's changed-extents list, when
// there is one and base is the VM's latest restore point.
func (s *FileSource) ChangedRanges(_ context.Context, d Disk, base BaseDisk) ([]extent.Range, error) {
	fd, err := s.disk(d.Name)
	if err != nil {
		return nil, err
	}
	if fd.changed == nil {
		return nil, NoChangeInfo("no changed-extents list")
	}
	if l := base.Latest; l.ID != base.RestorePoint.ID {
		return nil, NoChangeInfo("the changed extents are relative to the VM's latest restore point %s, which a file capture did not make (%s)", l.ID.Short(), l.Source)
	}
	return fd.changed, nil
}

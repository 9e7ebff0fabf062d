package cbt

import (
	"context"
	"io"
	"sync"

	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/extent"
)

// Change is new content for one disk of a restore point: Reader holds the
// whole disk as it is now and Changed the ranges where it may differ from
// the restore point.
type Change struct {
	Reader  io.ReaderAt
	Changed []extent.Range
}

// DerivedSource presents a restore point with some of its disks changed
// by known ranges: an overlay commit (the restore point a VM booted from
// plus what it wrote). Capture it with Options.Base set to Base: every
// disk is then an extents incremental of Base reading only the changed
// ranges. Its restore points carry no change tokens, so no changed-block
// source ever builds on them, and their lineage (LineageOverlay unless
// Lineage says otherwise) keeps changed-extents captures of other sources
// from using them as a base.
type DerivedSource struct {
	Repo    *repo.Repository
	Base    *repo.RestorePoint
	Changes map[string]Change // by disk name; disks not named are unchanged
	Source  string            // manifest source text
	Lineage string            // "" means LineageOverlay

	mu     sync.Mutex
	opened map[string]*repo.Disk
}

var _ Source = (*DerivedSource)(nil)

// Describe implements Source: the base's disks, configuration and labels.
func (s *DerivedSource) Describe(context.Context) (*Description, error) {
	for name := range s.Changes {
		if _, err := s.Base.Disk(name); err != nil {
			return nil, err
		}
	}
	desc := &Description{Lineage: s.Lineage, Source: s.Source, Config: s.Base.Config, Labels: s.Base.Labels}
	if desc.Lineage == "" {
		desc.Lineage = LineageOverlay
	}
	for _, md := range s.Base.Disks {
		desc.Disks = append(desc.Disks, Disk{Name: md.Name, Size: md.Size, Identity: Identity(s.Base, md)})
	}
	return desc, nil
}

// Open implements Source: the changed disk's reader, or the base's disk.
func (s *DerivedSource) Open(ctx context.Context, d Disk) (io.ReaderAt, error) {
	if c, ok := s.Changes[d.Name]; ok {
		return c.Reader, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if rd := s.opened[d.Name]; rd != nil {
		return rd, nil
	}
	rd, err := s.Repo.OpenDisk(ctx, s.Base, d.Name)
	if err != nil {
		return nil, err
	}
	if s.opened == nil {
		s.opened = map[string]*repo.Disk{}
	}
	s.opened[d.Name] = rd
	return rd, nil
}

// DataRanges implements Source: unknown (every byte is read when a disk
// is not an incremental of Base).
func (s *DerivedSource) DataRanges(context.Context, Disk) ([]extent.Range, error) { return nil, nil }

// ChangedRanges implements Source: the change's ranges relative to Base.
func (s *DerivedSource) ChangedRanges(_ context.Context, d Disk, base BaseDisk) ([]extent.Range, error) {
	if base.RestorePoint.ID != s.Base.ID {
		return nil, NoChangeInfo("the changes are relative to restore point %s, not %s", s.Base.ID.Short(), base.RestorePoint.ID.Short())
	}
	if c, ok := s.Changes[d.Name]; ok {
		return c.Changed, nil
	}
	return []extent.Range{}, nil
}

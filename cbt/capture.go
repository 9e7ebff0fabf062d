package cbt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
)

// Disk is one disk a source offers, as of this capture.
type Disk struct {
	Name string
	Size int64
	// Identity is a stable identity of the disk where the source has one
	// (a vSphere disk uuid); "" when it has none. A base disk with another
	// identity is never the base of a changed-ranges incremental.
	Identity string
	// ChangeToken is the source's change marker as of this capture (a
	// vSphere changeId, a dirty-bitmap name), stored with the restore point
	// and handed back as BaseDisk.ChangeToken next time; "" when none.
	ChangeToken string
}

// Description is what a source captures.
type Description struct {
	// Lineage names the chain of restore points this source continues:
	// sources whose change information refers to their own earlier
	// captures ("file", "vsphere:vm-42") differ from one another and from
	// "overlay-commit". See Lineage.
	Lineage string
	// Source is recorded in the manifest for people ("file", "vsphere direct").
	Source string
	Config json.RawMessage
	Labels map[string]string
	Disks  []Disk
}

// BaseDisk is the disk of an earlier restore point that a capture may
// build on; ChangedRanges says what changed since then.
type BaseDisk struct {
	RestorePoint *repo.RestorePoint
	Disk         format.ManifestDisk
	// Latest is the newest restore point of the VM, of any lineage (it
	// may be RestorePoint).
	Latest *repo.RestorePoint
}

// Source is where a capture reads a VM's disks. cbt.Capture decides, for
// every disk, which earlier restore point to build on and whether it may
// read only changed ranges; a source only answers questions.
type Source interface {
	// Describe returns the lineage, metadata and disks of this capture.
	Describe(ctx context.Context) (*Description, error)
	// Open returns the content of a disk as of this capture. The reader
	// belongs to the source, which closes it when it is closed.
	Open(ctx context.Context, d Disk) (io.ReaderAt, error)
	// DataRanges returns the ranges of the disk that may hold non-zero
	// bytes (allocated areas), or nil when the source cannot tell.
	DataRanges(ctx context.Context, d Disk) ([]extent.Range, error)
	// ChangedRanges returns the ranges that changed since base, a disk of
	// the newest restore point of this source's lineage whose size and
	// identity match d. An error matching ErrNoChangeInfo (see NoChangeInfo)
	// says the source cannot tell, and why: the disk is then read whole.
	// Any other error fails the capture.
	ChangedRanges(ctx context.Context, d Disk, base BaseDisk) ([]extent.Range, error)
}

// ErrNoChangeInfo means a source cannot say what changed since a base.
var ErrNoChangeInfo = errors.New("no change information")

type noChangeInfo struct{ reason string }

func (e *noChangeInfo) Error() string        { return e.reason }
func (e *noChangeInfo) Is(target error) bool { return target == ErrNoChangeInfo }

// NoChangeInfo returns an error matching ErrNoChangeInfo whose text is
// reason, for ChangedRanges.
func NoChangeInfo(format string, args ...any) error {
	return &noChangeInfo{reason: fmt.Sprintf(format, args...)}
}

// Lineages of restore points written by this package's adapters.
const (
	LineageFile    = "file"
	LineageOverlay = "overlay-commit"
)

// Lineage returns a restore point's lineage, also for restore points
// written before manifests recorded it (derived from their source text).
func Lineage(rp *repo.RestorePoint) string {
	if rp.Lineage != "" {
		return rp.Lineage
	}
	switch {
	case rp.Source == "file":
		return LineageFile
	case strings.HasPrefix(rp.Source, "vsphere"):
		return "vsphere:" + rp.Labels["vsphere.vm"]
	case strings.HasPrefix(rp.Source, "overlay commit"):
		return LineageOverlay
	}
	return rp.Source
}

// Identity returns the identity a restore point recorded for a disk, also
// for vSphere restore points written before manifests had the field (the
// uuid was a label then).
func Identity(rp *repo.RestorePoint, md format.ManifestDisk) string {
	if md.Identity != "" {
		return md.Identity
	}
	return rp.Labels["vsphere.disk."+md.Name+".uuid"]
}

// Options control one capture.
type Options struct {
	VM   string
	Tags []string
	// Full ignores earlier restore points: every allocated byte is read
	// and every chunk is checked against the repository.
	Full bool
	// Base, when set, is the restore point every disk builds on whatever
	// its lineage (overlay commit: the overlays are relative to exactly the
	// restore point that was booted).
	Base     *repo.RestorePoint
	Time     time.Time // zero: now
	Progress *repo.Progress
	LockWait time.Duration
	Workers  int
	Log      *slog.Logger
	// SkipFreeSpace skips what the guest's filesystems do not use (their
	// free blocks): it reads as zeros in the restore point. SkipSwap skips
	// swap partitions and Windows page, swap and hibernation files. See
	// skip.go for how each capture mode applies them.
	SkipFreeSpace bool
	SkipSwap      bool
	// Compression is the codec of the chunks this capture stores
	// (format.Compression*; "": the repository's default).
	Compression string
}

// Plan is the decision for one disk.
type Plan struct {
	Disk Disk
	// Base is the restore point the disk builds on (nil: full capture).
	Base *repo.RestorePoint
	// Changed lists the ranges to read (extents incremental); nil with a
	// Base means read everything and store what Base lacks (dedup).
	Changed []extent.Range
	Mode    string // "full", "dedup" or "extents"
	Reason  string // why not an extents incremental ("" when it is one)
}

// PlanDisk decides how to capture one disk of a source with lineage
// lineage, given the VM's restore points newest first:
//
//   - extents: the newest restore point of the same lineage has the disk
//     with the same size and identity, and the source can say what changed
//     since then;
//   - dedup: otherwise, when any restore point of the VM has the disk (of
//     any lineage, an overlay commit included: it only tells which chunks
//     are stored already), the whole disk is read and only new chunks are
//     stored;
//   - full: no earlier restore point has the disk, or opts.Full.
func PlanDisk(ctx context.Context, src Source, lineage string, d Disk, history []*repo.RestorePoint, opts Options) (Plan, error) {
	p := Plan{Disk: d, Mode: "full"}
	if opts.Full {
		p.Reason = "--full"
		return p, nil
	}
	has := func(rp *repo.RestorePoint) (format.ManifestDisk, bool) {
		md, err := rp.Disk(d.Name)
		if err != nil {
			return format.ManifestDisk{}, false
		}
		return *md, true
	}
	var base *repo.RestorePoint
	var reason string
	if opts.Base != nil {
		base = opts.Base
		if _, ok := has(base); !ok {
			reason = fmt.Sprintf("disk not in restore point %s", base.ID.Short())
			base = nil
		}
	} else {
		for _, rp := range history {
			if _, ok := has(rp); ok && Lineage(rp) == lineage {
				base = rp
				break
			}
		}
		switch {
		case len(history) == 0:
			reason = "no previous restore point"
		case base == nil:
			reason = fmt.Sprintf("no previous restore point of this source (%s) has the disk", lineage)
		}
	}
	if base != nil {
		md, _ := has(base)
		bid := Identity(base, md)
		switch {
		case md.Size != d.Size:
			reason = fmt.Sprintf("disk size changed from %d to %d bytes since %s", md.Size, d.Size, base.ID.Short())
		case bid != "" && d.Identity != "" && bid != d.Identity:
			reason = fmt.Sprintf("disk identity changed from %s to %s since %s", bid, d.Identity, base.ID.Short())
		default:
			bd := BaseDisk{RestorePoint: base, Disk: md, Latest: base}
			if len(history) > 0 {
				bd.Latest = history[0]
			}
			changed, err := src.ChangedRanges(ctx, d, bd)
			if err == nil {
				if err := extent.Check(changed, d.Size); err != nil {
					return p, fmt.Errorf("disk %s: the source's changed ranges: %w", d.Name, err)
				}
				if changed == nil {
					changed = []extent.Range{}
				}
				return Plan{Disk: d, Base: base, Changed: extent.Normalize(changed), Mode: "extents"}, nil
			}
			if !errors.Is(err, ErrNoChangeInfo) {
				return p, fmt.Errorf("disk %s: changes since %s: %w", d.Name, base.ID.Short(), err)
			}
			reason = err.Error()
		}
	}
	p.Reason = reason
	// Any earlier restore point holding the disk tells which chunks are
	// stored: the newest one is the likeliest to share them.
	if opts.Base != nil {
		if _, ok := has(opts.Base); ok {
			p.Base, p.Mode = opts.Base, "dedup"
		}
		return p, nil
	}
	for _, rp := range history {
		if _, ok := has(rp); ok {
			p.Base, p.Mode = rp, "dedup"
			break
		}
	}
	return p, nil
}

// Capture stores a new restore point of everything src describes and
// returns it. It owns the decisions every source shares: the base of each
// disk and the full/dedup/extents choice with its reason (PlanDisk; both
// are recorded in the manifest), narrowing reads to the source's data
// ranges, and the call into the repository writer. On any error no
// restore point is created.
func Capture(ctx context.Context, r *repo.Repository, src Source, opts Options) (*repo.RestorePoint, error) {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	if err := format.ValidName("VM", opts.VM); err != nil {
		return nil, err
	}
	desc, err := src.Describe(ctx)
	if err != nil {
		return nil, fmt.Errorf("capture %s: %w", opts.VM, err)
	}
	if len(desc.Disks) == 0 {
		return nil, fmt.Errorf("capture %s: the source has no disks", opts.VM)
	}
	var history []*repo.RestorePoint
	if !opts.Full {
		rps, bad, err := r.ListRestorePoints(ctx)
		if err != nil {
			return nil, err
		}
		for _, b := range bad {
			log.Warn("restore point cannot be read", "name", b.Name, "err", b.Err)
		}
		for i := len(rps) - 1; i >= 0; i-- { // sorted by VM, then time: newest first
			if rps[i].VM == opts.VM {
				history = append(history, rps[i])
			}
		}
	}
	var disks []repo.DiskSource
	for _, d := range desc.Disks {
		plan, err := PlanDisk(ctx, src, desc.Lineage, d, history, opts)
		if err != nil {
			return nil, fmt.Errorf("capture %s: %w", opts.VM, err)
		}
		reader, err := src.Open(ctx, d)
		if err != nil {
			return nil, fmt.Errorf("capture %s disk %s: %w", opts.VM, d.Name, err)
		}
		ds := repo.DiskSource{Name: d.Name, Reader: reader, Size: d.Size, Base: plan.Base, Changed: plan.Changed,
			ChangeToken: d.ChangeToken, Identity: d.Identity, Reason: plan.Reason}
		attrs := []any{"vm", opts.VM, "disk", d.Name, "mode", plan.Mode}
		if plan.Base != nil {
			attrs = append(attrs, "base", plan.Base.ID.Short())
		}
		if plan.Mode == "extents" {
			attrs = append(attrs, "changed_bytes", extent.Sum(plan.Changed))
		} else {
			attrs = append(attrs, "reason", plan.Reason)
			if ds.Data, err = src.DataRanges(ctx, d); err != nil {
				return nil, fmt.Errorf("capture %s disk %s: allocated areas: %w", opts.VM, d.Name, err)
			}
			if ds.Data != nil {
				ds.Data = extent.Normalize(ds.Data)
			}
		}
		if opts.SkipFreeSpace || opts.SkipSwap {
			if err := skipUnused(ctx, &ds, opts); err != nil {
				return nil, fmt.Errorf("capture %s disk %s: %w", opts.VM, d.Name, err)
			}
			attrs = append(attrs, "skip_bytes", extent.Sum(ds.Skip))
			for _, v := range ds.Skipped.Volumes {
				if v.ReadInFull != "" {
					log.Info("read in full", "vm", opts.VM, "disk", d.Name, "partition", v.Partition, "filesystem", v.Filesystem, "why", v.ReadInFull)
				}
			}
			if ds.Skipped.Note != "" {
				log.Info("read in full", "vm", opts.VM, "disk", d.Name, "why", ds.Skipped.Note)
			}
		}
		log.Info("capture plan", attrs...)
		disks = append(disks, ds)
	}
	return r.Capture(ctx, repo.CaptureOptions{
		VM: opts.VM, Source: desc.Source, Lineage: desc.Lineage, Tags: opts.Tags, Time: opts.Time,
		Config: desc.Config, Labels: desc.Labels, Progress: opts.Progress, LockWait: opts.LockWait, Workers: opts.Workers,
		Compression: opts.Compression,
	}, disks)
}

package vsphere

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"

	"github.com/vmvault/vmvault/cbt"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
)

// Options control one VM's capture.
type Options struct {
	Repo      *repo.Repository
	Transport Transport
	EnableCBT bool
	Quiesce   bool
	Full      bool // ignore the previous restore point
	Tags      []string
	Log       *slog.Logger
	LockWait  time.Duration
	Progress  *repo.Progress
	// Compression is the codec of the stored chunks ("": the repository's).
	Compression string
	// RemoveTimeout bounds the snapshot removal that runs after the
	// capture (also after cancellation). Default 10 minutes.
	RemoveTimeout time.Duration
	// SkipFreeSpace and SkipSwap: see cbt.Options.
	SkipFreeSpace bool
	SkipSwap      bool
}

// DiskResult is the outcome for one disk.
type DiskResult struct {
	Name         string        `json:"name"`
	Size         int64         `json:"size"`
	Mode         string        `json:"mode"` // full or incremental
	Reason       string        `json:"reason,omitempty"`
	BytesChanged int64         `json:"bytes_changed"`
	BytesRead    int64         `json:"bytes_read"`
	BytesStored  int64         `json:"bytes_stored"`
	NewChunks    int64         `json:"new_chunks"`
	Duration     format.Float3 `json:"duration_seconds"`
	// Skipped says what was skipped as unused by the guest (free space,
	// swap), when that was asked for.
	Skipped *format.SkipStats `json:"skipped,omitempty"`
}

// Result is the outcome for one VM.
type Result struct {
	VM              string        `json:"vm"`
	RestorePoint    string        `json:"restore_point,omitempty"`
	Parent          string        `json:"parent,omitempty"`
	Snapshot        string        `json:"snapshot,omitempty"`
	SnapshotRemoved bool          `json:"snapshot_removed"`
	Disks           []DiskResult  `json:"disks,omitempty"`
	SkippedDisks    []string      `json:"skipped_disks,omitempty"`
	Duration        format.Float3 `json:"duration_seconds"`
	Error           string        `json:"error,omitempty"`
}

// uuidLabel is the restore-point label holding a disk's vSphere uuid.
func uuidLabel(disk string) string { return "vsphere.disk." + disk + ".uuid" }

// CaptureVM captures one VM as a new restore point named after it.
func CaptureVM(ctx context.Context, vm *object.VirtualMachine, o Options) (res Result, err error) {
	start := time.Now()
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	name := vmName(vm)
	res.VM = name
	defer func() {
		res.Duration = format.Float3(time.Since(start).Seconds())
		if err != nil {
			res.Error = err.Error()
		}
	}()
	if err := format.ValidName("VM", name); err != nil {
		return res, err
	}
	var props mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"config.changeTrackingEnabled"}, &props); err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	cbtOn := props.Config != nil && props.Config.ChangeTrackingEnabled != nil && *props.Config.ChangeTrackingEnabled
	if !cbtOn && o.EnableCBT {
		log.Info("enabling changed block tracking", "vm", name)
		if err := EnableCBT(ctx, vm); err != nil {
			return res, err
		}
		cbtOn = true
	}
	if !cbtOn {
		log.Warn("changed block tracking is off: every disk is read completely (use --enable-cbt)", "vm", name)
	}

	snap, err := CreateSnapshot(ctx, vm, o.Quiesce)
	if err != nil {
		return res, err
	}
	res.Snapshot = snap.Name
	defer func() {
		timeout := o.RemoveTimeout
		if timeout == 0 {
			timeout = 10 * time.Minute
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		if rerr := snap.Remove(rctx); rerr != nil {
			log.Error("snapshot NOT removed: remove it by hand or run 'vmvault-capture vsphere cleanup'", "vm", name, "snapshot", snap.Name, "err", rerr)
			err = errors.Join(err, rerr)
			return
		}
		res.SnapshotRemoved = true
		log.Info("snapshot removed", "vm", name, "snapshot", snap.Name)
	}()

	src := &source{vm: vm, snap: snap, transport: o.Transport, cbtOn: cbtOn, log: log}
	defer src.close()
	for _, d := range snap.Config.Disks {
		if d.Independent {
			log.Warn("independent disk skipped (snapshots do not cover it)", "vm", name, "disk", d.Name, "file", d.File)
			res.SkippedDisks = append(res.SkippedDisks, d.Name)
		}
	}
	rp, err := cbt.Capture(ctx, o.Repo, src, cbt.Options{
		VM: name, Tags: o.Tags, Full: o.Full, Progress: o.Progress, LockWait: o.LockWait, Log: log,
		Compression:   o.Compression,
		SkipFreeSpace: o.SkipFreeSpace, SkipSwap: o.SkipSwap,
	})
	if err != nil {
		return res, fmt.Errorf("capture %s: %w", name, err)
	}
	res.RestorePoint = rp.ID.String()
	for _, d := range rp.Disks {
		mode := "full"
		if d.Stats.Mode == "extents" {
			mode = "incremental"
		}
		if res.Parent == "" {
			res.Parent = d.Parent
		}
		res.Disks = append(res.Disks, DiskResult{
			Name: d.Name, Size: d.Size, Mode: mode, Reason: d.Stats.Reason, BytesChanged: d.Stats.BytesChanged,
			BytesRead: d.Stats.BytesRead, BytesStored: d.Stats.BytesStored, NewChunks: d.Stats.NewChunks,
			Duration: d.Stats.DurationSecs, Skipped: d.Stats.Skipped,
		})
	}
	return res, nil
}

// source is one VM's snapshot as a cbt.Source: its lineage is the VM's
// managed object reference, its disks' identities their vSphere uuids and
// their change tokens the snapshot's changeIds. Changed Block Tracking
// answers what changed since a base changeId and which areas are
// allocated.
type source struct {
	vm        *object.VirtualMachine
	snap      *Snapshot
	transport Transport
	cbtOn     bool
	log       *slog.Logger

	mu      sync.Mutex
	readers []DiskReader
}

var _ cbt.Source = (*source)(nil)

func (s *source) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.readers {
		r.Close()
	}
	s.readers = nil
}

func (s *source) disk(name string) (DiskInfo, error) {
	for _, d := range s.snap.Config.Disks {
		if d.Name == name && !d.Independent {
			return d, nil
		}
	}
	return DiskInfo{}, fmt.Errorf("snapshot %s has no disk %s", s.snap.Name, name)
}

// Describe implements cbt.Source.
func (s *source) Describe(context.Context) (*cbt.Description, error) {
	desc := &cbt.Description{
		Lineage: "vsphere:" + s.snap.Config.MoRef, Source: "vsphere " + s.transport.Name(),
		Config: configJSON(s.snap.Config), Labels: map[string]string{"vsphere.vm": s.snap.Config.MoRef},
	}
	for _, d := range s.snap.Config.Disks {
		if d.Independent {
			continue
		}
		desc.Labels[uuidLabel(d.Name)] = d.UUID
		desc.Disks = append(desc.Disks, cbt.Disk{Name: d.Name, Size: d.Capacity, Identity: d.UUID, ChangeToken: d.ChangeID})
	}
	if len(desc.Disks) == 0 {
		return nil, fmt.Errorf("%s has no disk that can be captured", vmName(s.vm))
	}
	return desc, nil
}

// Open implements cbt.Source through the transport.
func (s *source) Open(ctx context.Context, cd cbt.Disk) (io.ReaderAt, error) {
	d, err := s.disk(cd.Name)
	if err != nil {
		return nil, err
	}
	r, err := s.transport.Open(ctx, s.snap, d)
	if err != nil {
		return nil, fmt.Errorf("%s disk %s via %s: %w", vmName(s.vm), d.Name, s.transport.Name(), err)
	}
	s.mu.Lock()
	s.readers = append(s.readers, r)
	s.mu.Unlock()
	return r, nil
}

// DataRanges implements cbt.Source: the disk's allocated areas (changed
// areas since "*"), when CBT is on; nil (read everything) otherwise.
func (s *source) DataRanges(ctx context.Context, cd cbt.Disk) ([]extent.Range, error) {
	d, err := s.disk(cd.Name)
	if err != nil || !s.cbtOn || d.ChangeID == "" {
		return nil, err
	}
	all, err := ChangedAreas(ctx, s.vm, s.snap.Ref, d, "*")
	if err != nil {
		s.log.Warn("allocated areas unknown: reading the whole disk", "vm", vmName(s.vm), "disk", d.Name, "err", err)
		return nil, nil
	}
	return all, nil
}

// ChangedRanges implements cbt.Source with QueryChangedDiskAreas since the
// base disk's changeId.
func (s *source) ChangedRanges(ctx context.Context, cd cbt.Disk, base cbt.BaseDisk) ([]extent.Range, error) {
	d, err := s.disk(cd.Name)
	switch {
	case err != nil:
		return nil, err
	case !s.cbtOn:
		return nil, cbt.NoChangeInfo("changed block tracking is off")
	case d.ChangeID == "":
		return nil, cbt.NoChangeInfo("the snapshot's disk has no changeId")
	case base.Disk.ChangeToken == "":
		return nil, cbt.NoChangeInfo("restore point %s has no changeId for this disk", base.RestorePoint.ID.Short())
	}
	areas, err := ChangedAreas(ctx, s.vm, s.snap.Ref, d, base.Disk.ChangeToken)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, cbt.NoChangeInfo("changed block tracking was reset (%v)", err)
	}
	return areas, nil
}

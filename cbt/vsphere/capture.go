package vsphere

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"

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
	// RemoveTimeout bounds the snapshot removal that runs after the
	// capture (also after cancellation). Default 10 minutes.
	RemoveTimeout time.Duration
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

	var base *repo.RestorePoint
	if !o.Full {
		rps, bad, err := o.Repo.ListRestorePoints(ctx)
		if err != nil {
			return res, err
		}
		for _, b := range bad {
			log.Warn("restore point cannot be read", "name", b.Name, "err", b.Err)
		}
		base = repo.Latest(rps, name)
	}
	if base != nil {
		res.Parent = base.ID.String()
	}

	var sources []repo.DiskSource
	labels := map[string]string{"vsphere.vm": snap.Config.MoRef}
	changed := map[string]int64{}
	for _, d := range snap.Config.Disks {
		if d.Independent {
			log.Warn("independent disk skipped (snapshots do not cover it)", "vm", name, "disk", d.Name, "file", d.File)
			res.SkippedDisks = append(res.SkippedDisks, d.Name)
			continue
		}
		src := repo.DiskSource{Name: d.Name, Size: d.Capacity, ChangeToken: d.ChangeID}
		labels[uuidLabel(d.Name)] = d.UUID
		areas, reason := planDisk(ctx, vm, snap, d, base, cbtOn, o.Full, log)
		if reason == "" {
			src.Changed = areas
		} else {
			src.FullReason = reason
			if cbtOn && d.ChangeID != "" {
				// the allocated areas bound what a full read must read
				if all, err := ChangedAreas(ctx, vm, snap.Ref, d, "*"); err == nil {
					src.Data = all
				} else {
					log.Warn("allocated areas unknown: reading the whole disk", "vm", name, "disk", d.Name, "err", err)
				}
			}
		}
		changed[d.Name] = sumRanges(src.Changed)
		r, err := o.Transport.Open(ctx, snap, d)
		if err != nil {
			return res, fmt.Errorf("%s disk %s via %s: %w", name, d.Name, o.Transport.Name(), err)
		}
		defer r.Close()
		src.Reader = r
		sources = append(sources, src)
	}
	if len(sources) == 0 {
		return res, fmt.Errorf("%s has no disk that can be captured", name)
	}
	rp, err := o.Repo.Capture(ctx, repo.CaptureOptions{
		VM: name, Source: "vsphere " + o.Transport.Name(), Tags: o.Tags, Base: base,
		Config: configJSON(snap.Config), Labels: labels, Progress: o.Progress, LockWait: o.LockWait,
	}, sources)
	if err != nil {
		return res, fmt.Errorf("capture %s: %w", name, err)
	}
	res.RestorePoint = rp.ID.String()
	for _, d := range rp.Disks {
		mode := "full"
		if d.Stats.Mode == "extents" {
			mode = "incremental"
		}
		res.Disks = append(res.Disks, DiskResult{
			Name: d.Name, Size: d.Size, Mode: mode, Reason: d.Stats.Reason, BytesChanged: changed[d.Name],
			BytesRead: d.Stats.BytesRead, BytesStored: d.Stats.BytesStored, NewChunks: d.Stats.NewChunks,
			Duration: d.Stats.DurationSecs,
		})
	}
	return res, nil
}

// planDisk decides between an incremental (the changed areas, reason "")
// and a full capture (the reason).
func planDisk(ctx context.Context, vm *object.VirtualMachine, snap *Snapshot, d DiskInfo, base *repo.RestorePoint, cbtOn, full bool, log *slog.Logger) ([]extent.Range, string) {
	name := vmName(vm)
	var reason string
	switch {
	case full:
		reason = "--full"
	case !cbtOn:
		reason = "changed block tracking is off"
	case d.ChangeID == "":
		reason = "the snapshot's disk has no changeId"
	case base == nil:
		reason = "no previous restore point"
	}
	if reason != "" {
		log.Info("full capture", "vm", name, "disk", d.Name, "reason", reason)
		return nil, reason
	}
	prev, err := base.Disk(d.Name)
	switch {
	case err != nil:
		reason = "disk not in the previous restore point " + base.ID.Short()
	case prev.ChangeToken == "":
		reason = "the previous restore point has no changeId for this disk"
	case prev.Size != d.Capacity:
		reason = fmt.Sprintf("disk size changed from %d to %d", prev.Size, d.Capacity)
	case base.Labels[uuidLabel(d.Name)] != d.UUID:
		reason = fmt.Sprintf("disk uuid changed from %s to %s", base.Labels[uuidLabel(d.Name)], d.UUID)
	}
	if reason == "" {
		areas, err := ChangedAreas(ctx, vm, snap.Ref, d, prev.ChangeToken)
		if err == nil {
			log.Info("incremental capture", "vm", name, "disk", d.Name, "since", prev.ChangeToken, "changed_bytes", sumRanges(areas))
			return areas, ""
		}
		reason = "changed block tracking was reset (" + err.Error() + ")"
	}
	log.Warn("full capture", "vm", name, "disk", d.Name, "reason", reason)
	return nil, reason
}

func sumRanges(rs []extent.Range) int64 {
	var n int64
	for _, r := range rs {
		n += r.Length
	}
	return n
}

package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cbt"
	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
)

type fileOptions struct {
	vm       string
	disks    []string
	extents  []string
	tags     []string
	full     bool
	json     bool
	workers  int
	cacheDir string
	compress string
	skip     skipFlags
}

func newFileCommand(g *cli.Global) *cobra.Command {
	var o fileOptions
	cmd := &cobra.Command{
		Use:   "file --vm NAME --disk NAME=PATH [--disk NAME=PATH...]",
		Short: "Capture raw image files or block devices",
		Long: `Capture raw disk images (or block devices) of one VM as a new restore point.

The first capture of a VM reads and stores everything (all-zero chunks are
never stored). Later captures start from the VM's latest restore point:
by default they read every disk completely and store only chunks whose
content changed; with --changed-extents they read only the listed ranges
and take every other chunk from the latest restore point.

An extents file has one "offset<TAB>length" line (decimal bytes) per changed
range since the VM's latest restore point, as produced by changed block
tracking. Give it as NAME=FILE for a disk, or as FILE when there is a single
disk; a missing or malformed file is an error. It is only used when the
latest restore point is a file capture that has the disk (not an overlay
commit or a vSphere capture, whose content the list does not describe);
otherwise the disk is read completely, only new chunks are stored, and the
reason is printed with the result.

` + skipHelp(false),
		Example: `  vmvault-capture file --vm web01 --disk disk0=/images/web01.raw
  vmvault-capture file --vm web01 --disk disk0=/images/web01.raw --changed-extents disk0=/tmp/changed.txt
  vmvault-capture file --vm db --disk sda=/dev/vg0/db-snap --tag nightly --json
  vmvault-capture file --vm web01 --disk disk0=/images/web01.raw --skip-free-space --skip-swap`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runFile(cmd, g, &o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.vm, "vm", "", "VM name (required)")
	f.StringArrayVar(&o.disks, "disk", nil, "disk as NAME=PATH (required, repeatable)")
	f.StringArrayVar(&o.extents, "changed-extents", nil, "changed ranges since the latest restore point, as [NAME=]FILE")
	f.StringArrayVar(&o.tags, "tag", nil, "tag for the restore point (repeatable)")
	f.BoolVar(&o.full, "full", false, "ignore the latest restore point: read and hash everything")
	f.BoolVar(&o.json, "json", false, "print a JSON summary")
	f.IntVar(&o.workers, "workers", 0, "hashing/compression goroutines (default: number of CPUs)")
	cli.CompressionFlag(f, &o.compress)
	o.skip.add(f, false)
	return cmd
}

type captureSummary struct {
	ID              string        `json:"id"`
	VM              string        `json:"vm"`
	Time            string        `json:"time"`
	Parent          string        `json:"parent,omitempty"`
	DurationSeconds format.Float3 `json:"duration_seconds"`
	Disks           []diskSummary `json:"disks"`
}

type diskSummary struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Parent string `json:"parent,omitempty"` // the restore point this disk built on
	format.DiskStats
}

func runFile(cmd *cobra.Command, g *cli.Global, o *fileOptions) error {
	if o.vm == "" || len(o.disks) == 0 {
		return cli.Usagef("--vm and at least one --disk NAME=PATH are required")
	}
	if err := format.ValidName("VM", o.vm); err != nil {
		return cli.Usagef("--vm: %v", err)
	}
	if err := cli.CheckCompression(o.compress); err != nil {
		return err
	}
	ctx := cmd.Context()
	r, err := g.OpenRepo(ctx, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()

	paths := map[string]string{}
	var order []string
	for _, d := range o.disks {
		name, path, ok := strings.Cut(d, "=")
		if !ok || name == "" || path == "" {
			return cli.Usagef("--disk %q: want NAME=PATH", d)
		}
		if err := format.ValidName("disk", name); err != nil {
			return cli.Usagef("--disk: %v", err)
		}
		if _, dup := paths[name]; dup {
			return cli.Usagef("--disk %s given twice", name)
		}
		paths[name] = path
		order = append(order, name)
	}
	extents := map[string]string{}
	for _, e := range o.extents {
		name, file, ok := strings.Cut(e, "=")
		if !ok {
			if len(order) != 1 {
				return cli.Usagef("--changed-extents %q: with several disks, give NAME=FILE", e)
			}
			name, file = order[0], e
		}
		if _, known := paths[name]; !known {
			return cli.Usagef("--changed-extents: no --disk named %q", name)
		}
		extents[name] = file
	}

	var disks []cbt.FileDisk
	for _, name := range order {
		disks = append(disks, cbt.FileDisk{Name: name, Path: paths[name], Extents: extents[name]})
	}
	src, err := cbt.OpenFiles(disks)
	if err != nil {
		return err
	}
	defer src.Close()

	start := time.Now()
	p := &repo.Progress{}
	stop := cli.ShowProgress("capture "+o.vm, p, g.Quiet || o.json)
	rp, err := cbt.Capture(ctx, r, src, cbt.Options{
		VM: o.vm, Tags: o.tags, Full: o.full, Progress: p, LockWait: g.LockWait, Workers: o.workers,
		SkipFreeSpace: o.skip.free, SkipSwap: o.skip.swap,
		Compression: o.compress,
	})
	stop()
	if err != nil {
		if errors.Is(err, ctx.Err()) {
			return fmt.Errorf("capture interrupted; no restore point was created: %w", err)
		}
		return err
	}
	return printCapture(cmd, g, rp, start, o.json)
}

// summarize describes a new restore point for output.
func summarize(rp *repo.RestorePoint, start time.Time) captureSummary {
	sum := captureSummary{ID: rp.ID.String(), VM: rp.VM, Time: rp.Time.Format(time.RFC3339Nano), DurationSeconds: format.Float3(time.Since(start).Seconds())}
	for _, d := range rp.Disks {
		if sum.Parent == "" {
			sum.Parent = d.Parent
		}
		sum.Disks = append(sum.Disks, diskSummary{Name: d.Name, Size: d.Size, Parent: d.Parent, DiskStats: d.Stats})
	}
	return sum
}

// printSummary prints a capture summary for people.
func printSummary(w io.Writer, rp *repo.RestorePoint, sum captureSummary) {
	fmt.Fprintf(w, "restore point %s of %s created in %.1fs\n", rp.ID.Short(), rp.VM, float64(sum.DurationSeconds))
	for _, d := range sum.Disks {
		mode := d.Mode
		if d.Reason != "" {
			mode += " (" + d.Reason + ")"
		}
		fmt.Fprintf(w, "  %s: %s %s, read %s, stored %s in %d new chunks\n", d.Name, cli.Bytes(d.Size), mode, cli.Bytes(d.BytesRead), cli.Bytes(d.BytesStored), d.NewChunks)
		cli.PrintSkipped(w, "    ", "skipped: ", d.Skipped)
	}
}

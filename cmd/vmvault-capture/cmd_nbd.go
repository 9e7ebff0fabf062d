package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cbt"
	"github.com/vmvault/vmvault/cbt/nbdsrc"
	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
)

type nbdOptions struct {
	vm         string
	disks      []string
	bitmap     string
	nextBitmap string
	tags       []string
	full       bool
	json       bool
	workers    int
	compress   string
	skip       skipFlags
}

func newNBDCommand(g *cli.Global) *cobra.Command {
	var o nbdOptions
	cmd := &cobra.Command{
		Use:   "nbd --vm NAME --disk NAME=URI [--disk NAME=URI...]",
		Short: "Capture disks served over NBD (qemu-nbd, qemu-storage-daemon, nbdkit)",
		Long: `Capture disks of one VM from NBD exports as a new restore point.

URIs are nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH. Areas
the server reports as holes or zeroes (base:allocation) are not read.

qemu-nbd and qemu-storage-daemon serve any disk format QEMU reads, so this
captures qcow2, VMDK, VHDX (Hyper-V), VDI and VHD files without converting
them, e.g.  qemu-nbd -r -f vmdk -x disk --socket /run/d.sock web01.vmdk

With --bitmap NAME every export must offer the dirty bitmap NAME
(qemu-nbd -r -B NAME of a powered-off VM's qcow2): when the VM's latest
restore point of this source recorded NAME as its change token, only the
blocks the bitmap marks are read; otherwise the disk is read whole, with
the reason. The bitmap must have recorded every write since that restore
point: clear it after each capture (qemu-img bitmap --clear), or rotate:
add a new bitmap, disable the old one, capture with --bitmap OLD
--next-bitmap NEW.

` + skipHelp(false),
		Example: `  qemu-img bitmap --add web01.qcow2 vmvault            # once, before the first capture
  qemu-nbd -r -t -f qcow2 -B vmvault -x disk --socket /run/web01.sock web01.qcow2 &
  vmvault-capture nbd --vm web01 --disk disk0='nbd+unix:///disk?socket=/run/web01.sock' --bitmap vmvault
  vmvault-capture nbd --vm hyperv01 --disk disk0=nbd://127.0.0.1:10809/disk --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runNBD(cmd, g, &o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.vm, "vm", "", "VM name (required)")
	f.StringArrayVar(&o.disks, "disk", nil, "disk as NAME=URI (required, repeatable)")
	f.StringVar(&o.bitmap, "bitmap", "", "dirty bitmap every export offers (qemu-nbd --bitmap): read only what it marks")
	f.StringVar(&o.nextBitmap, "next-bitmap", "", "change token to store instead of --bitmap: the bitmap that records writes from now on")
	f.StringArrayVar(&o.tags, "tag", nil, "tag for the restore point (repeatable)")
	f.BoolVar(&o.full, "full", false, "ignore the latest restore point: read every allocated area")
	f.BoolVar(&o.json, "json", false, "print a JSON summary")
	f.IntVar(&o.workers, "workers", 0, "hashing/compression goroutines (default: number of CPUs)")
	cli.CompressionFlag(f, &o.compress)
	o.skip.add(f, false)
	return cmd
}

// parseDisks splits repeated NAME=VALUE disk flags, in order.
func parseDisks(specs []string, what string) ([][2]string, error) {
	seen := map[string]bool{}
	var out [][2]string
	for _, d := range specs {
		name, val, ok := strings.Cut(d, "=")
		if !ok || name == "" || val == "" {
			return nil, cli.Usagef("--disk %q: want NAME=%s", d, what)
		}
		if err := format.ValidName("disk", name); err != nil {
			return nil, cli.Usagef("--disk: %v", err)
		}
		if seen[name] {
			return nil, cli.Usagef("--disk %s given twice", name)
		}
		seen[name] = true
		out = append(out, [2]string{name, val})
	}
	return out, nil
}

func runNBD(cmd *cobra.Command, g *cli.Global, o *nbdOptions) error {
	if o.vm == "" || len(o.disks) == 0 {
		return cli.Usagef("--vm and at least one --disk NAME=URI are required")
	}
	if err := format.ValidName("VM", o.vm); err != nil {
		return cli.Usagef("--vm: %v", err)
	}
	if o.nextBitmap != "" && o.bitmap == "" {
		return cli.Usagef("--next-bitmap needs --bitmap")
	}
	if err := cli.CheckCompression(o.compress); err != nil {
		return err
	}
	specs, err := parseDisks(o.disks, "URI")
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	r, err := g.OpenRepo(ctx, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	var disks []nbdsrc.Disk
	for _, s := range specs {
		disks = append(disks, nbdsrc.Disk{Name: s[0], URI: s[1], Bitmap: o.bitmap, Token: o.nextBitmap})
	}
	src, err := nbdsrc.OpenSource(ctx, o.vm, disks)
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

// printCapture prints a capture's summary: JSON (captureSummary) or one
// line per disk with its mode and reason.
func printCapture(cmd *cobra.Command, g *cli.Global, rp *repo.RestorePoint, start time.Time, asJSON bool) error {
	sum := summarize(rp, start)
	if asJSON {
		return cli.PrintJSON(cmd.OutOrStdout(), sum)
	}
	printSummary(g.Summary(cmd.OutOrStdout()), rp, sum)
	return nil
}

package main

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cbt/libvirt"
	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
)

type libvirtOptions struct {
	vm       string
	socket   string
	disks    []string
	quiesce  bool
	tmpDir   string
	tags     []string
	full     bool
	json     bool
	workers  int
	skip     skipFlags
	compress string
}

func newLibvirtCommand(g *cli.Global) *cobra.Command {
	var o libvirtOptions
	cmd := &cobra.Command{
		Use:   "libvirt DOMAIN...",
		Short: "Capture running libvirt domains through libvirt's backup API (pull mode, checkpoints)",
		Long: `Capture running libvirt-managed QEMU/KVM domains (named by name or UUID),
each as a new restore point named after the domain (--vm overrides it for a
single domain), without stopping the guest.

For each domain, libvirt starts a pull backup that creates a checkpoint
named vmvault-<repository id>-<time> and exports every disk at that point
in time over NBD on a unix socket in --tmp-dir. A disk of the domain's
newest vmvault checkpoint is incremental from it: only the blocks its
bitmap marks are read, when the domain's latest restore point recorded that
checkpoint. Any other disk is read where it is allocated. The backup job
is then ended and its scratch files removed, also after an error or Ctrl-C;
a capture that does not complete deletes its checkpoint, which makes
libvirt merge its changes into the previous one.

A disk is captured in full, with the reason, on the first capture, when it
is new, its size changed, or the checkpoint metadata was lost. vmvault
checkpoints that no restore point names any more (after forget/prune) are
deleted at the next capture. Checkpoints of other tools are left alone.

Connects to libvirtd's or virtqemud's unix socket (--socket); the scratch
directory is made writable for QEMU's user (the owner of the disk images).
--quiesce freezes the guest's file systems through the guest agent while
the backup starts.

` + skipHelp(true),
		Example: `  vmvault-capture libvirt web01
  vmvault-capture libvirt --quiesce --json web01 db01
  vmvault-capture libvirt --disk vda 5b5c2a56-8a3e-4a8e-9f0c-0123456789ab`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runLibvirt(cmd, g, &o, args) },
	}
	f := cmd.Flags()
	f.StringVar(&o.vm, "vm", "", "VM name of the restore point (default: the domain's name; one domain only)")
	f.StringVar(&o.socket, "socket", libvirt.DefaultSocket, "libvirt's unix socket")
	f.StringArrayVar(&o.disks, "disk", nil, "disk target to capture, e.g. vda (repeatable; default: every disk that is not read-only, shareable or a CD-ROM)")
	f.BoolVar(&o.quiesce, "quiesce", false, "freeze the guest's file systems through the guest agent while the backup starts")
	f.StringVar(&o.tmpDir, "tmp-dir", "/var/tmp", "directory for the scratch files and the NBD socket")
	f.StringArrayVar(&o.tags, "tag", nil, "tag for the restore points (repeatable)")
	f.BoolVar(&o.full, "full", false, "ignore the latest restore points: read every allocated area")
	f.BoolVar(&o.json, "json", false, "print a JSON summary per domain")
	f.IntVar(&o.workers, "workers", 0, "hashing/compression goroutines (default: number of CPUs)")
	cli.CompressionFlag(f, &o.compress)
	o.skip.add(f, true)
	return cmd
}

func runLibvirt(cmd *cobra.Command, g *cli.Global, o *libvirtOptions, args []string) error {
	if err := cli.CheckCompression(o.compress); err != nil {
		return err
	}
	if o.vm != "" {
		if len(args) != 1 {
			return cli.Usagef("--vm names one domain's restore points: give one domain")
		}
		if err := format.ValidName("VM", o.vm); err != nil {
			return cli.Usagef("--vm: %v", err)
		}
	}
	ctx := cmd.Context()
	r, err := g.OpenRepo(ctx, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	var errs []error
	for _, dom := range args {
		start := time.Now()
		p := &repo.Progress{}
		stop := cli.ShowProgress("capture "+dom, p, g.Quiet || o.json)
		rp, err := libvirt.CaptureDomain(ctx, libvirt.Options{
			Repo: r, Domain: dom, VM: o.vm, Socket: o.socket, Disks: o.disks, Quiesce: o.quiesce, TmpDir: o.tmpDir,
			Full: o.full, Tags: o.tags, Log: slog.Default(), LockWait: g.LockWait, Progress: p, Workers: o.workers,
			Compression:   o.compress,
			SkipFreeSpace: o.skip.free, SkipSwap: o.skip.swap,
		})
		stop()
		if err != nil {
			if errors.Is(err, ctx.Err()) {
				return errors.Join(append(errs, fmt.Errorf("capture of %s interrupted; no restore point was created: %w", dom, err))...)
			}
			errs = append(errs, err)
			if o.json {
				cli.PrintJSON(cmd.OutOrStdout(), map[string]string{"vm": dom, "error": err.Error()})
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: FAILED: %v\n", dom, err)
			}
			continue
		}
		if err := printCapture(cmd, g, rp, start, o.json); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

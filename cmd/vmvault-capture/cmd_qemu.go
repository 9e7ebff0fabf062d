package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cbt/qemu"
	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
)

type qemuOptions struct {
	vm       string
	qmp      string
	disks    []string
	agent    string
	quiesce  bool
	tmpDir   string
	tags     []string
	full     bool
	json     bool
	workers  int
	skip     skipFlags
	compress string
}

func newQEMUCommand(g *cli.Global) *cobra.Command {
	var o qemuOptions
	cmd := &cobra.Command{
		Use:   "qemu --vm NAME --qmp unix:PATH [--disk [NAME=]NODE...]",
		Short: "Capture a running QEMU VM (or qemu-storage-daemon) through QMP and dirty bitmaps",
		Long: `Capture the disks of a running qemu-system-* or qemu-storage-daemon at one
point in time, through its QMP monitor, without stopping the guest.

In one QMP transaction, for every disk: a new persistent dirty bitmap starts
recording, the previous capture's bitmap is disabled (it now holds exactly
the writes since then), and a backup job (sync=none) into a temporary qcow2
overlay in --tmp-dir freezes the view. The overlays are exported over NBD
with the previous bitmaps; a disk whose latest restore point recorded that
bitmap is read only where it marks changes, any other disk only where it is
allocated. Afterwards the export, NBD server, job, overlay and temp file are
removed, also after an error or Ctrl-C; a capture that does not complete
merges the new bitmap back into the previous one, so no write is ever
missed.

A disk is captured in full, with the reason, when it is new, its size
changed, its bitmap is missing (QEMU restarted: raw disks keep no bitmap;
qcow2 disks keep it across clean shutdowns), inconsistent (QEMU crashed) or
not the one its latest restore point recorded.

Disks: --disk NODE or --disk NAME=NODE, where NODE is a block node name
(-blockdev node-name=) or a device (-drive id=, -device id=); without
--disk, every writable device with a medium is captured, named by its id.
qemu-storage-daemon has no devices: name its nodes.

--quiesce freezes the guest's file systems through the QEMU guest agent
(--agent unix:PATH, the host end of the org.qemu.guest_agent.0 channel)
around the transaction, and always thaws them.

If a capture was killed (SIGKILL, power loss), the next one refuses to
start until 'vmvault-capture qemu cleanup' removed what it left.

` + skipHelp(true),
		Example: `  qemu-system-x86_64 ... -blockdev driver=qcow2,node-name=sys,file.driver=file,file.filename=web01.qcow2 \
      -device virtio-blk-pci,drive=sys,id=vda -qmp unix:/run/web01.qmp,server=on,wait=off
  vmvault-capture qemu --vm web01 --qmp unix:/run/web01.qmp
  vmvault-capture qemu --vm web01 --qmp unix:/run/web01.qmp --disk vda --quiesce --agent unix:/run/web01.qga --json
  vmvault-capture qemu cleanup --qmp unix:/run/web01.qmp`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runQEMU(cmd, g, &o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.vm, "vm", "", "VM name (required)")
	f.StringVar(&o.qmp, "qmp", "", "QMP monitor: unix:PATH or tcp:HOST:PORT (required)")
	f.StringArrayVar(&o.disks, "disk", nil, "disk as NODE or NAME=NODE (repeatable; default: every writable device)")
	f.BoolVar(&o.quiesce, "quiesce", false, "freeze the guest's file systems for the point in time (needs --agent)")
	f.StringVar(&o.agent, "agent", "", "guest agent socket (unix:PATH) for --quiesce")
	f.StringVar(&o.tmpDir, "tmp-dir", "", "directory for the temporary overlays and NBD socket; QEMU must be able to write there (default: $TMPDIR or /tmp)")
	f.StringArrayVar(&o.tags, "tag", nil, "tag for the restore point (repeatable)")
	f.BoolVar(&o.full, "full", false, "ignore the latest restore point: read every allocated area")
	f.BoolVar(&o.json, "json", false, "print a JSON summary")
	f.IntVar(&o.workers, "workers", 0, "hashing/compression goroutines (default: number of CPUs)")
	cli.CompressionFlag(f, &o.compress)
	o.skip.add(f, true)
	cmd.AddCommand(newQEMUCleanupCommand())
	return cmd
}

func newQEMUCleanupCommand() *cobra.Command {
	var qmp string
	cmd := &cobra.Command{
		Use:   "cleanup --qmp unix:PATH",
		Short: "Remove what an interrupted capture left in QEMU",
		Long: `Remove the exports, backup jobs and overlay nodes (with their temp files)
named vmvault-* that a killed capture left in QEMU, stop QEMU's NBD server
when it then serves nothing, and merge each capture's new dirty bitmap back
into the previous one it had disabled. The next capture of a disk whose
latest restore point recorded the merged-away bitmap is a full one; no
write is lost. Nothing else is touched.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if qmp == "" {
				return cli.Usagef("--qmp is required")
			}
			done, err := qemu.Cleanup(cmd.Context(), qmp, slog.Default())
			for _, d := range done {
				fmt.Fprintln(cmd.OutOrStdout(), d)
			}
			if err == nil && len(done) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "nothing to clean up")
			}
			return err
		},
	}
	cmd.Flags().StringVar(&qmp, "qmp", "", "QMP monitor: unix:PATH or tcp:HOST:PORT (required)")
	return cmd
}

func runQEMU(cmd *cobra.Command, g *cli.Global, o *qemuOptions) error {
	if o.vm == "" || o.qmp == "" {
		return cli.Usagef("--vm and --qmp are required")
	}
	if err := format.ValidName("VM", o.vm); err != nil {
		return cli.Usagef("--vm: %v", err)
	}
	if o.quiesce != (o.agent != "") {
		return cli.Usagef("--quiesce and --agent go together")
	}
	if err := cli.CheckCompression(o.compress); err != nil {
		return err
	}
	var disks []qemu.DiskSpec
	seen := map[string]bool{}
	for _, d := range o.disks {
		name, node, ok := strings.Cut(d, "=")
		if !ok {
			name, node = "", d
		}
		if node == "" || (ok && name == "") {
			return cli.Usagef("--disk %q: want NODE or NAME=NODE", d)
		}
		if name != "" {
			if err := format.ValidName("disk", name); err != nil {
				return cli.Usagef("--disk: %v", err)
			}
		}
		if seen[node] {
			return cli.Usagef("--disk %s given twice", node)
		}
		seen[node] = true
		disks = append(disks, qemu.DiskSpec{Name: name, Node: node})
	}
	ctx := cmd.Context()
	r, err := g.OpenRepo(ctx, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	start := time.Now()
	p := &repo.Progress{}
	stop := cli.ShowProgress("capture "+o.vm, p, g.Quiet || o.json)
	rp, err := qemu.CaptureVM(ctx, qemu.Options{
		Repo: r, VM: o.vm, Monitor: o.qmp, Disks: disks, Agent: o.agent, TmpDir: o.tmpDir,
		Full: o.full, Tags: o.tags, Log: slog.Default(), LockWait: g.LockWait, Progress: p, Workers: o.workers,
		Compression:   o.compress,
		SkipFreeSpace: o.skip.free, SkipSwap: o.skip.swap,
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

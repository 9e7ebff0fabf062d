package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/spf13/cobra"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"

	"github.com/vmvault/vmvault/cbt/vsphere"
	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
)

type vsphereOptions struct {
	url        string
	credFile   string
	insecure   bool
	caFile     string
	thumbprint string
	transport  string
	dsMap      []string
	nbdCommand string
	nbdExport  string
	proxyVM    string
	devDir     string
	enableCBT  bool
	quiesce    bool
	full       bool
	parallel   int
	tags       []string
	json       bool
	compress   string
	skip       skipFlags
}

const vsphereAuthHelp = `Credentials come from VMVAULT_VSPHERE_USER and VMVAULT_VSPHERE_PASSWORD, or
from --credentials-file FILE with lines VMVAULT_VSPHERE_USER=... and
VMVAULT_VSPHERE_PASSWORD=... (mode 0600). They are never taken from the
command line and never logged. TLS is verified against the system roots,
--ca-file or --thumbprint; --insecure turns verification off.`

func (o *vsphereOptions) addConnectFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.url, "url", "", "vCenter or ESXi URL, e.g. https://vcenter.example.com/sdk (required)")
	f.StringVar(&o.credFile, "credentials-file", "", "file with VMVAULT_VSPHERE_USER= and VMVAULT_VSPHERE_PASSWORD= lines")
	f.BoolVar(&o.insecure, "insecure", false, "do not verify the server's TLS certificate")
	f.StringVar(&o.caFile, "ca-file", "", "PEM file of CA certificates to verify the server with")
	f.StringVar(&o.thumbprint, "thumbprint", "", "expected SHA-1/SHA-256 thumbprint of the server certificate")
}

func newVSphereCommand(g *cli.Global) *cobra.Command {
	var o vsphereOptions
	cmd := &cobra.Command{
		Use:   "vsphere --url URL VM...",
		Short: "Capture vSphere VMs with snapshots and Changed Block Tracking",
		Long: `Capture vSphere VMs without an agent, the way VMware's vStorage APIs for Data
Protection do: for each VM, take a snapshot (--quiesce asks VMware Tools to
quiesce the guest), ask Changed Block Tracking which areas of each disk
changed since that disk's changeId in the VM's latest restore point, read
only those areas, store the new restore point with the snapshot's changeIds
and the VM's configuration, and remove the snapshot — also after an error
or Ctrl-C. A disk is captured in full (reason logged and in --json) when
there is no previous restore point, the disk is new, its uuid or size
changed, or CBT was reset. Independent disks are skipped with a warning.

` + skipHelp(true) + `

VMs are named by inventory path (/dc/vm/folder/web01), name or MoRef
(vm-42). Several VMs are captured --parallel at a time; each becomes its
own restore point named after the VM.

Transports (--transport):
  direct  read the snapshot's frozen base file from a datastore mounted on
          this host (NFS): --datastore-map DATASTORE=DIR (repeatable)
  https   datastore /folder HTTP range reads (powered-off VMs)
  nbd     read each disk from an NBD server that --nbd-command starts for it,
          typically nbdkit's vddk plugin with your VDDK. Placeholders, shell-
          quoted: {socket} (listen here), {vm}, {snapshot} (MoRefs), {file}
          ("[ds] dir/disk.vmdk"), {datastore}, {path}, {flat}. For example:
            --nbd-command 'nbdkit -U {socket} --exit-with-parent vddk
              libdir=/opt/vmware-vix-disklib-distrib server=vcenter.example.com
              user=backup@vsphere.local password=+/etc/vmvault/vc-password
              thumbprint=AA:BB:... vm=moref={vm} snapshot={snapshot}
              file={file} transports=nbdssl:nbd'
  hotadd  attach each snapshot disk read-only to the proxy VM this runs in
          (--proxy-vm, or found by this machine's BIOS uuid), read it as a
          local block device found by disk uuid in /dev/disk/by-id (the proxy
          needs disk.EnableUUID=TRUE), and detach it again

` + vsphereAuthHelp,
		Example: `  export VMVAULT_VSPHERE_USER=backup@vsphere.local VMVAULT_VSPHERE_PASSWORD=...
  vmvault-capture vsphere --url https://vcenter/sdk --transport direct \
      --datastore-map nfs01=/mnt/nfs01 --enable-cbt web01 /dc1/vm/db/db01
  vmvault-capture vsphere cleanup --url https://vcenter/sdk`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runVSphere(cmd, g, &o, args) },
	}
	o.addConnectFlags(cmd)
	f := cmd.Flags()
	f.StringVar(&o.transport, "transport", "direct", "how disks are read: direct, https or nbd")
	f.StringArrayVar(&o.dsMap, "datastore-map", nil, "DATASTORE=DIR: where a datastore is mounted on this host (direct transport)")
	f.StringVar(&o.nbdCommand, "nbd-command", "", "command that serves one snapshot disk over NBD on {socket} (nbd transport; see --help)")
	f.StringVar(&o.nbdExport, "nbd-export", "", "export name the --nbd-command server uses")
	f.StringVar(&o.proxyVM, "proxy-vm", "", "the VM this runs in (hotadd transport; default: found by this machine's BIOS uuid)")
	f.StringVar(&o.devDir, "dev-dir", "/dev/disk/by-id", "where hot-added disks appear by id (hotadd transport)")
	_ = f.MarkHidden("dev-dir")
	f.BoolVar(&o.enableCBT, "enable-cbt", false, "turn Changed Block Tracking on where it is off")
	f.BoolVar(&o.quiesce, "quiesce", false, "quiesce the guest file systems (VMware Tools) for the snapshot")
	f.BoolVar(&o.full, "full", false, "ignore the latest restore points: read every allocated area")
	f.IntVar(&o.parallel, "parallel", 2, "VMs captured at the same time")
	f.StringArrayVar(&o.tags, "tag", nil, "tag for the restore points (repeatable)")
	f.BoolVar(&o.json, "json", false, "print a JSON summary per VM")
	cli.CompressionFlag(f, &o.compress)
	o.skip.add(f, true)
	cmd.AddCommand(newVSphereCleanupCommand(g))
	return cmd
}

func newVSphereCleanupCommand(g *cli.Global) *cobra.Command {
	var o vsphereOptions
	cmd := &cobra.Command{
		Use:   "cleanup --url URL [VM...]",
		Short: "Remove backup snapshots that interrupted captures left behind",
		Long: `Find and remove the snapshots vmvault-capture creates (named "` + vsphere.SnapshotPrefix + `…")
that are still there because a capture was killed before it could remove
them, on the given VMs or on every VM. Other snapshots are never touched.

` + vsphereAuthHelp,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := o.connect(ctx)
			if err != nil {
				return err
			}
			defer c.Logout(context.WithoutCancel(ctx))
			var vms []*object.VirtualMachine
			for _, a := range args {
				vm, err := vsphere.FindVM(ctx, c.Client, a)
				if err != nil {
					return err
				}
				vms = append(vms, vm)
			}
			removed, err := vsphere.Cleanup(ctx, c.Client, vms, slog.Default())
			w := g.Summary(cmd.OutOrStdout())
			for _, r := range removed {
				fmt.Fprintf(w, "removed %s\n", r)
			}
			if err == nil && len(removed) == 0 {
				fmt.Fprintln(w, "no orphaned backup snapshots")
			}
			return err
		},
	}
	o.addConnectFlags(cmd)
	return cmd
}

// credentials reads the user and password from the environment or the
// credentials file; the file wins when given.
func (o *vsphereOptions) credentials() (string, string, error) {
	user, pass := os.Getenv("VMVAULT_VSPHERE_USER"), os.Getenv("VMVAULT_VSPHERE_PASSWORD")
	if o.credFile == "" {
		return user, pass, nil
	}
	f, err := os.Open(o.credFile)
	if err != nil {
		return "", "", fmt.Errorf("credentials file: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		slog.Warn("credentials file is readable by others: chmod 600 it", "file", o.credFile)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		switch {
		case !ok || strings.HasPrefix(k, "#"):
		case k == "VMVAULT_VSPHERE_USER":
			user = v
		case k == "VMVAULT_VSPHERE_PASSWORD":
			pass = v
		}
	}
	return user, pass, sc.Err()
}

func (o *vsphereOptions) connect(ctx context.Context) (*govmomi.Client, error) {
	if o.url == "" {
		return nil, cli.Usagef("--url is required")
	}
	user, pass, err := o.credentials()
	if err != nil {
		return nil, err
	}
	return vsphere.Connect(ctx, vsphere.ConnectOptions{URL: o.url, User: user, Password: pass,
		Insecure: o.insecure, CAFile: o.caFile, Thumbprint: o.thumbprint})
}

// findProxy names the VM this program runs in: --proxy-vm, or the VM whose
// BIOS uuid is this machine's.
func (o *vsphereOptions) findProxy(ctx context.Context, c *govmomi.Client) (*object.VirtualMachine, error) {
	if o.proxyVM != "" {
		return vsphere.FindVM(ctx, c.Client, o.proxyVM)
	}
	b, err := os.ReadFile("/sys/class/dmi/id/product_uuid")
	if err != nil {
		return nil, fmt.Errorf("hotadd: cannot read this machine's BIOS uuid (%v): name the proxy VM with --proxy-vm", err)
	}
	vms, err := vsphere.AllVMs(ctx, c.Client)
	if err != nil {
		return nil, err
	}
	return vsphere.ProxyByBIOSUUID(ctx, vms, strings.TrimSpace(string(b)))
}

func runVSphere(cmd *cobra.Command, g *cli.Global, o *vsphereOptions, args []string) error {
	ctx := cmd.Context()
	// what every transport needs first, then what this one needs
	if o.url == "" {
		return cli.Usagef("--url is required (the vCenter or ESXi SDK URL, e.g. https://vcenter.example.com/sdk)")
	}
	if err := cli.CheckCompression(o.compress); err != nil {
		return err
	}
	var transport func(c *govmomi.Client) vsphere.Transport
	switch o.transport {
	case "direct":
		m := map[string]string{}
		for _, kv := range o.dsMap {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" || v == "" {
				return cli.Usagef("--datastore-map %q: want DATASTORE=DIR", kv)
			}
			m[k] = v
		}
		if len(m) == 0 {
			return cli.Usagef("--transport direct needs --datastore-map DATASTORE=DIR")
		}
		transport = func(*govmomi.Client) vsphere.Transport { return &vsphere.Direct{Map: m} }
	case "https":
		transport = func(c *govmomi.Client) vsphere.Transport { return &vsphere.HTTPS{Client: c.Client} }
	case "nbd":
		if o.nbdCommand == "" || !strings.Contains(o.nbdCommand, "{socket}") {
			return cli.Usagef("--transport nbd needs --nbd-command with a {socket} placeholder")
		}
		transport = func(*govmomi.Client) vsphere.Transport {
			return &vsphere.NBD{Command: o.nbdCommand, Export: o.nbdExport}
		}
	case "hotadd":
		transport = nil // needs the connection: set up below
	default:
		return cli.Usagef("--transport must be direct, https, nbd or hotadd")
	}
	if o.parallel < 1 {
		return cli.Usagef("--parallel must be at least 1")
	}
	r, err := g.OpenRepo(ctx, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	c, err := o.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Logout(context.WithoutCancel(ctx))
	if o.transport == "hotadd" {
		proxy, err := o.findProxy(ctx, c)
		if err != nil {
			return err
		}
		transport = func(*govmomi.Client) vsphere.Transport { return &vsphere.HotAdd{Proxy: proxy, DevDir: o.devDir} }
	}

	// one progress line for all VMs (bytes to read across their disks)
	progress := &repo.Progress{}
	stopProgress := cli.ShowProgress(fmt.Sprintf("capture %d VM(s)", len(args)), progress, g.Quiet || o.json)
	results := make([]vsphere.Result, len(args))
	errs := make([]error, len(args))
	sem := make(chan struct{}, o.parallel)
	var wg sync.WaitGroup
	for i, spec := range args {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			vm, err := vsphere.FindVM(ctx, c.Client, spec)
			if err != nil {
				results[i], errs[i] = vsphere.Result{VM: spec, Error: err.Error()}, err
				return
			}
			results[i], errs[i] = vsphere.CaptureVM(ctx, vm, vsphere.Options{
				Repo: r, Transport: transport(c), EnableCBT: o.enableCBT, Quiesce: o.quiesce, Full: o.full,
				Tags: o.tags, Log: slog.Default(), LockWait: max(g.LockWait, 10*60e9), Progress: progress,
				Compression:   o.compress,
				SkipFreeSpace: o.skip.free, SkipSwap: o.skip.swap,
			})
		}()
	}
	wg.Wait()
	stopProgress()
	w := cmd.OutOrStdout()
	if !o.json {
		w = g.Summary(w) // failures are in the returned error too
	}
	for _, res := range results {
		if o.json {
			if err := cli.PrintJSON(w, res); err != nil {
				return err
			}
			continue
		}
		if res.Error != "" {
			fmt.Fprintf(w, "%s: FAILED: %s (snapshot removed: %v)\n", res.VM, res.Error, res.SnapshotRemoved)
			continue
		}
		fmt.Fprintf(w, "%s: restore point %.8s in %.1fs\n", res.VM, res.RestorePoint, float64(res.Duration))
		for _, d := range res.Disks {
			mode := d.Mode
			if d.Reason != "" {
				mode += " (" + d.Reason + ")"
			}
			fmt.Fprintf(w, "  %s: %s %s, changed %s, read %s, stored %s\n", d.Name, cli.Bytes(d.Size), mode,
				cli.Bytes(d.BytesChanged), cli.Bytes(d.BytesRead), cli.Bytes(d.BytesStored))
			cli.PrintSkipped(w, "    ", "skipped: ", d.Skipped)
		}
		for _, s := range res.SkippedDisks {
			fmt.Fprintf(w, "  %s: skipped (independent disk)\n", s)
		}
	}
	return errors.Join(errs...)
}

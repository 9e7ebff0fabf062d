// Package vsphere captures restore points of vSphere VMs the way VMware's
// vStorage APIs for Data Protection do: snapshot the VM, ask Changed Block
// Tracking which areas of each disk changed since the disk's changeId in
// the previous restore point (QueryChangedDiskAreas, looped until the whole
// capacity is covered), read only those areas through a transport, store
// the snapshot's changeIds with the new restore point, and remove the
// snapshot.
//
// Invariants:
//   - The snapshot this package creates is removed on every path out of
//     CaptureVM — success, error, cancellation — with a fresh context and a
//     timeout; snapshots it leaves after a crash carry SnapshotPrefix in
//     their name and Cleanup finds them.
//   - An incremental is only taken when it is provably complete: no
//     previous restore point, a disk missing from it, a changed disk uuid or
//     size, a missing changeId or any fault from QueryChangedDiskAreas make
//     that disk a full capture, with the reason recorded. Never a silent
//     partial incremental.
//   - Credentials never appear on a command line, in a URL that is logged,
//     or in an error.
package vsphere

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vmvault/vmvault/repo/extent"
)

// SnapshotPrefix starts the name of every snapshot this package creates.
const SnapshotPrefix = "vmvault-capture-"

const snapshotDescription = "Created by vmvault-capture for a backup and removed when it ends. " +
	"If it is still here, that backup was interrupted: remove it, or run 'vmvault-capture vsphere cleanup'."

// ConnectOptions say where and how to connect. Credentials come from the
// environment or a file (see cmd/vmvault-capture), never from the URL.
type ConnectOptions struct {
	URL        string
	User       string
	Password   string
	Insecure   bool   // skip TLS verification (only when asked)
	CAFile     string // PEM bundle to verify the server with
	Thumbprint string // SHA-1 or SHA-256 thumbprint of the server certificate
}

// Connect logs in to vCenter or ESXi.
func Connect(ctx context.Context, o ConnectOptions) (*govmomi.Client, error) {
	u, err := soap.ParseURL(o.URL)
	if err != nil {
		// url errors quote the whole URL, which may hold a password
		return nil, errors.New("vSphere URL cannot be parsed (check scheme, host and port)")
	}
	if u.User != nil && o.URL != "" && strings.Contains(o.URL, "@") {
		return nil, errors.New("vSphere URL must not carry credentials (they would end up in shell history and process lists): use VMVAULT_VSPHERE_USER/VMVAULT_VSPHERE_PASSWORD or --credentials-file")
	}
	u.User = nil
	if o.User == "" {
		return nil, errors.New("no vSphere user: set VMVAULT_VSPHERE_USER and VMVAULT_VSPHERE_PASSWORD or use --credentials-file")
	}
	sc := soap.NewClient(u, o.Insecure)
	if o.CAFile != "" {
		if err := sc.SetRootCAs(o.CAFile); err != nil {
			return nil, fmt.Errorf("CA file %s: %w", o.CAFile, err)
		}
	}
	if o.Thumbprint != "" {
		sc.SetThumbprint(u.Host, o.Thumbprint)
	}
	vc, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", u.Host, err)
	}
	c := &govmomi.Client{Client: vc, SessionManager: session.NewManager(vc)}
	if err := c.Login(ctx, url.UserPassword(o.User, o.Password)); err != nil {
		return nil, fmt.Errorf("log in to %s as %s: %w", u.Host, o.User, err)
	}
	return c, nil
}

var morefRE = regexp.MustCompile(`^(VirtualMachine:)?(vm-\d+)$`)

// FindVM resolves a VM by MoRef (vm-42 or VirtualMachine:vm-42), inventory
// path (/dc/vm/folder/name) or name.
func FindVM(ctx context.Context, c *vim25.Client, spec string) (*object.VirtualMachine, error) {
	if m := morefRE.FindStringSubmatch(spec); m != nil {
		vm := object.NewVirtualMachine(c, types.ManagedObjectReference{Type: "VirtualMachine", Value: m[2]})
		var o mo.VirtualMachine
		if err := vm.Properties(ctx, vm.Reference(), []string{"name"}, &o); err != nil {
			return nil, fmt.Errorf("VM %s: %w", spec, err)
		}
		vm.InventoryPath = o.Name
		return vm, nil
	}
	f := find.NewFinder(c)
	if !strings.HasPrefix(spec, "/") {
		if dc, err := f.DefaultDatacenter(ctx); err == nil {
			f.SetDatacenter(dc)
		} else {
			vms, lerr := f.VirtualMachineList(ctx, "/*/vm/.../"+spec)
			if lerr != nil || len(vms) != 1 {
				return nil, fmt.Errorf("VM %q: name it by inventory path or MoRef (several datacenters)", spec)
			}
			return vms[0], nil
		}
	}
	vm, err := f.VirtualMachine(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("VM %q: %w", spec, err)
	}
	return vm, nil
}

// DiskInfo describes one virtual disk of a snapshot.
type DiskInfo struct {
	Name        string `json:"name"` // repository disk name: scsi0-0, sata0-1, ide0-0, nvme0-0
	Key         int32  `json:"device_key"`
	Label       string `json:"label,omitempty"`
	File        string `json:"file"` // "[datastore] dir/disk.vmdk"
	Capacity    int64  `json:"capacity"`
	ChangeID    string `json:"change_id,omitempty"`
	UUID        string `json:"uuid,omitempty"`
	Mode        string `json:"mode,omitempty"`
	Controller  string `json:"controller"`
	Unit        int32  `json:"unit"`
	Independent bool   `json:"independent,omitempty"`
}

// NIC is one network adapter of the VM configuration.
type NIC struct {
	Type    string `json:"type"`
	MAC     string `json:"mac,omitempty"`
	Network string `json:"network,omitempty"`
}

// VMConfig is the VM configuration stored with a restore point.
type VMConfig struct {
	Name            string     `json:"name"`
	MoRef           string     `json:"moref"`
	UUID            string     `json:"uuid,omitempty"`
	HardwareVersion string     `json:"hardware_version,omitempty"`
	Firmware        string     `json:"firmware,omitempty"`
	GuestOS         string     `json:"guest_os,omitempty"`
	CPUs            int32      `json:"cpus"`
	MemoryMB        int32      `json:"memory_mb"`
	CBT             bool       `json:"change_tracking"`
	Disks           []DiskInfo `json:"disks"`
	NICs            []NIC      `json:"nics,omitempty"`
}

// Describe extracts the VM configuration and its disks from a (snapshot's)
// configuration. Disks are named by controller type, bus and unit.
func Describe(name, moref string, cfg *types.VirtualMachineConfigInfo) VMConfig {
	v := VMConfig{Name: name, MoRef: moref}
	if cfg == nil {
		return v
	}
	v.UUID, v.HardwareVersion, v.Firmware, v.GuestOS = cfg.Uuid, cfg.Version, cfg.Firmware, cfg.GuestId
	v.CPUs, v.MemoryMB = cfg.Hardware.NumCPU, cfg.Hardware.MemoryMB
	v.CBT = cfg.ChangeTrackingEnabled != nil && *cfg.ChangeTrackingEnabled
	controllers := map[int32]string{}
	for _, d := range cfg.Hardware.Device {
		dev := d.GetVirtualDevice()
		kind := ""
		switch d.(type) {
		case types.BaseVirtualSCSIController:
			kind = "scsi"
		case *types.VirtualAHCIController, *types.VirtualSATAController:
			kind = "sata"
		case *types.VirtualIDEController:
			kind = "ide"
		case *types.VirtualNVMEController:
			kind = "nvme"
		}
		if kind != "" {
			bus := int32(0)
			if c, ok := d.(types.BaseVirtualController); ok {
				bus = c.GetVirtualController().BusNumber
			}
			controllers[dev.Key] = fmt.Sprintf("%s%d", kind, bus)
		}
		if nic, ok := d.(types.BaseVirtualEthernetCard); ok {
			card := nic.GetVirtualEthernetCard()
			n := NIC{Type: strings.TrimPrefix(fmt.Sprintf("%T", d), "*types.Virtual"), MAC: card.MacAddress}
			if b, ok := card.Backing.(*types.VirtualEthernetCardNetworkBackingInfo); ok {
				n.Network = b.DeviceName
			}
			v.NICs = append(v.NICs, n)
		}
	}
	for _, d := range cfg.Hardware.Device {
		vd, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		di := DiskInfo{Key: vd.Key, Capacity: vd.CapacityInBytes, Controller: controllers[vd.ControllerKey]}
		if di.Controller == "" {
			di.Controller = fmt.Sprintf("ctrl%d", vd.ControllerKey)
		}
		if vd.UnitNumber != nil {
			di.Unit = *vd.UnitNumber
		}
		if vd.DeviceInfo != nil {
			di.Label = vd.DeviceInfo.GetDescription().Label
		}
		switch b := vd.Backing.(type) {
		case *types.VirtualDiskFlatVer2BackingInfo:
			di.File, di.ChangeID, di.UUID, di.Mode = b.FileName, b.ChangeId, b.Uuid, b.DiskMode
		case *types.VirtualDiskSparseVer2BackingInfo:
			di.File, di.ChangeID, di.UUID, di.Mode = b.FileName, b.ChangeId, b.Uuid, b.DiskMode
		case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
			di.File, di.ChangeID, di.UUID, di.Mode = b.FileName, b.ChangeId, b.Uuid, b.DiskMode
		case *types.VirtualDiskSeSparseBackingInfo:
			di.File, di.ChangeID, di.UUID, di.Mode = b.FileName, b.ChangeId, b.Uuid, b.DiskMode
		}
		di.Independent = strings.HasPrefix(di.Mode, "independent")
		di.Name = fmt.Sprintf("%s-%d", di.Controller, di.Unit)
		v.Disks = append(v.Disks, di)
	}
	sort.Slice(v.Disks, func(i, j int) bool { return v.Disks[i].Name < v.Disks[j].Name })
	return v
}

// Snapshot is a snapshot this package created.
type Snapshot struct {
	Ref    types.ManagedObjectReference
	VM     *object.VirtualMachine
	Name   string
	Config VMConfig
}

// EnableCBT turns change tracking on and lets it take effect (a snapshot
// create/remove cycle, as VMware documents).
func EnableCBT(ctx context.Context, vm *object.VirtualMachine) error {
	t, err := vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(true)})
	if err == nil {
		err = t.Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("enable change tracking on %s: %w", vm.InventoryPath, err)
	}
	s, err := CreateSnapshot(ctx, vm, false)
	if err != nil {
		return err
	}
	return s.Remove(ctx)
}

// CreateSnapshot takes a snapshot named SnapshotPrefix+time and reads its
// configuration.
func CreateSnapshot(ctx context.Context, vm *object.VirtualMachine, quiesce bool) (*Snapshot, error) {
	name := SnapshotPrefix + time.Now().UTC().Format("20060102T150405.000Z")
	t, err := vm.CreateSnapshot(ctx, name, snapshotDescription, false, quiesce)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", vm.InventoryPath, err)
	}
	info, err := t.WaitForResult(ctx)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", vm.InventoryPath, err)
	}
	ref, ok := info.Result.(types.ManagedObjectReference)
	if !ok {
		return nil, fmt.Errorf("snapshot %s: task returned %T", vm.InventoryPath, info.Result)
	}
	s := &Snapshot{Ref: ref, VM: vm, Name: name}
	var so mo.VirtualMachineSnapshot
	if err := property.DefaultCollector(vm.Client()).RetrieveOne(ctx, ref, []string{"config"}, &so); err != nil {
		_ = s.Remove(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("configuration of snapshot %s of %s: %w", name, vm.InventoryPath, err)
	}
	s.Config = Describe(vmName(vm), vm.Reference().Value, &so.Config)
	return s, nil
}

func vmName(vm *object.VirtualMachine) string {
	p := vm.InventoryPath
	return p[strings.LastIndexByte(p, '/')+1:]
}

// Remove deletes the snapshot (its changes are consolidated into the VM's
// disks).
func (s *Snapshot) Remove(ctx context.Context) error {
	return removeSnapshot(ctx, s.VM.Client(), s.Ref)
}

func removeSnapshot(ctx context.Context, c *vim25.Client, ref types.ManagedObjectReference) error {
	res, err := methods.RemoveSnapshot_Task(ctx, c, &types.RemoveSnapshot_Task{This: ref, RemoveChildren: false, Consolidate: types.NewBool(true)})
	if err == nil {
		err = object.NewTask(c, res.Returnval).Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("remove snapshot %s: %w", ref.Value, err)
	}
	return nil
}

// ChangedAreas asks which areas of a snapshot's disk changed since
// changeID ("*" for every allocated area), looping until the answers cover
// the whole capacity.
func ChangedAreas(ctx context.Context, vm *object.VirtualMachine, snap types.ManagedObjectReference, d DiskInfo, changeID string) ([]extent.Range, error) {
	var out []extent.Range
	for off := int64(0); off < d.Capacity; {
		res, err := methods.QueryChangedDiskAreas(ctx, vm.Client(), &types.QueryChangedDiskAreas{
			This: vm.Reference(), Snapshot: &snap, DeviceKey: d.Key, StartOffset: off, ChangeId: changeID,
		})
		if err != nil {
			return nil, fmt.Errorf("QueryChangedDiskAreas %s disk %s from %d: %w", vmName(vm), d.Name, off, err)
		}
		info := res.Returnval
		if info.StartOffset != off || info.Length <= 0 {
			return nil, fmt.Errorf("QueryChangedDiskAreas %s disk %s: answer covers [%d,+%d) for a query at %d", vmName(vm), d.Name, info.StartOffset, info.Length, off)
		}
		end := min(info.StartOffset+info.Length, d.Capacity)
		for _, a := range info.ChangedArea {
			if a.Start < info.StartOffset || a.Length <= 0 || a.Start+a.Length > end {
				return nil, fmt.Errorf("QueryChangedDiskAreas %s disk %s: area [%d,+%d) outside the answer [%d,%d)", vmName(vm), d.Name, a.Start, a.Length, info.StartOffset, end)
			}
			if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length >= a.Start {
				out[n-1].Length = max(out[n-1].Length, a.Start+a.Length-out[n-1].Offset)
				continue
			}
			out = append(out, extent.Range{Offset: a.Start, Length: a.Length})
		}
		off = end
	}
	if out == nil {
		out = []extent.Range{}
	}
	return out, nil
}

// Cleanup removes the snapshots this package created (by name prefix) on
// the given VMs, or on every VM when vms is empty. It returns the names of
// what it removed.
func Cleanup(ctx context.Context, c *vim25.Client, vms []*object.VirtualMachine, log *slog.Logger) ([]string, error) {
	if log == nil {
		log = slog.Default()
	}
	if len(vms) == 0 {
		all, err := viewVMs(ctx, c)
		if err != nil {
			return nil, err
		}
		vms = all
	}
	var removed []string
	var errs error
	for _, vm := range vms {
		var o mo.VirtualMachine
		if err := vm.Properties(ctx, vm.Reference(), []string{"name", "snapshot"}, &o); err != nil {
			errs = errors.Join(errs, err)
			continue
		}
		if o.Snapshot == nil {
			continue
		}
		var walk func([]types.VirtualMachineSnapshotTree)
		walk = func(ts []types.VirtualMachineSnapshotTree) {
			for _, t := range ts {
				walk(t.ChildSnapshotList)
				if !strings.HasPrefix(t.Name, SnapshotPrefix) {
					continue
				}
				if err := removeSnapshot(ctx, c, t.Snapshot); err != nil {
					errs = errors.Join(errs, fmt.Errorf("%s: %w", o.Name, err))
					continue
				}
				log.Info("removed orphaned backup snapshot", "vm", o.Name, "snapshot", t.Name, "created", t.CreateTime)
				removed = append(removed, o.Name+": "+t.Name)
			}
		}
		walk(o.Snapshot.RootSnapshotList)
	}
	return removed, errs
}

// AllVMs lists every VM of the inventory.
func AllVMs(ctx context.Context, c *vim25.Client) ([]*object.VirtualMachine, error) {
	return viewVMs(ctx, c)
}

// viewVMs lists every VM of the inventory through a container view.
func viewVMs(ctx context.Context, c *vim25.Client) ([]*object.VirtualMachine, error) {
	v, err := view.NewManager(c).CreateContainerView(ctx, c.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	defer v.Destroy(context.WithoutCancel(ctx))
	var mvs []mo.VirtualMachine
	if err := v.Retrieve(ctx, []string{"VirtualMachine"}, []string{"name"}, &mvs); err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	out := make([]*object.VirtualMachine, len(mvs))
	for i, m := range mvs {
		out[i] = object.NewVirtualMachine(c, m.Self)
		out[i].InventoryPath = m.Name
	}
	return out, nil
}

// configJSON is the VM configuration as stored in a restore point.
func configJSON(v VMConfig) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

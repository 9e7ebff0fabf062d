package vsphere

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// HotAdd attaches each snapshot disk read-only to the proxy VM this program
// runs in, finds it as a local block device by its disk uuid, reads it and
// detaches it again (always, also after errors).
type HotAdd struct {
	Proxy *object.VirtualMachine
	// DevDir is where the kernel names disks by id (default
	// /dev/disk/by-id; tests point it at a directory of their own).
	DevDir string
	// Wait bounds how long the attached disk may take to appear.
	Wait  time.Duration
	Count *Counter
}

// Name implements Transport.
func (t *HotAdd) Name() string { return "hotadd" }

// uuidHex normalizes a vSphere disk uuid ("6000C29a-1b2c-…" or
// "60 00 C2 9a …") to lower-case hex without separators.
func uuidHex(uuid string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(uuid) {
		if r >= '0' && r <= '9' || r >= 'a' && r <= 'f' {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// FindDevice looks in dir (a /dev/disk/by-id-like directory) for the
// device of the disk with this uuid: udev names VMware disks with
// disk.EnableUUID as wwn-0x<uuid> and scsi-3<uuid>. It returns the
// resolved device path, or an error naming what it looked for.
func FindDevice(dir, uuid string) (string, error) {
	hex := uuidHex(uuid)
	if len(hex) != 32 {
		return "", fmt.Errorf("disk uuid %q is not 128 bits", uuid)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	want := []string{"wwn-0x" + hex, "scsi-3" + hex}
	for _, w := range want {
		for _, e := range ents {
			if strings.ToLower(e.Name()) != w {
				continue
			}
			p, err := filepath.EvalSymlinks(filepath.Join(dir, e.Name()))
			if err != nil {
				return "", err
			}
			return p, nil
		}
	}
	return "", fmt.Errorf("no %s or %s in %s (is disk.EnableUUID set on the proxy VM?): %w", want[0], want[1], dir, os.ErrNotExist)
}

// Open implements Transport: attach, find, open.
func (t *HotAdd) Open(ctx context.Context, s *Snapshot, d DiskInfo) (DiskReader, error) {
	if t.Proxy == nil {
		return nil, errors.New("hotadd needs the proxy VM (--proxy-vm)")
	}
	key, err := t.attach(ctx, d)
	if err != nil {
		return nil, err
	}
	detach := func() error {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		return t.detach(rctx, key)
	}
	dir := t.DevDir
	if dir == "" {
		dir = "/dev/disk/by-id"
	}
	wait := t.Wait
	if wait == 0 {
		wait = 60 * time.Second
	}
	deadline := time.Now().Add(wait)
	var path string
	for {
		path, err = FindDevice(dir, d.UUID)
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("hot-added disk %s: %w", d.Name, err), detach())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, errors.Join(err, detach())
	}
	return counted{&hotDisk{File: f, detach: detach}, t.Count}, nil
}

type hotDisk struct {
	*os.File
	detach func() error
}

func (h *hotDisk) Close() error { return errors.Join(h.File.Close(), h.detach()) }

// attach adds the snapshot's disk file to the proxy VM as an independent
// non-persistent disk (nothing the proxy does reaches the file) and returns
// the new device's key.
func (t *HotAdd) attach(ctx context.Context, d DiskInfo) (int32, error) {
	devs, err := t.Proxy.Device(ctx)
	if err != nil {
		return 0, fmt.Errorf("proxy VM devices: %w", err)
	}
	ctrl, err := devs.FindDiskController("scsi")
	if err != nil {
		return 0, fmt.Errorf("proxy VM: %w", err)
	}
	disk := devs.CreateDisk(ctrl, types.ManagedObjectReference{}, d.File)
	b := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	b.DiskMode = string(types.VirtualDiskModeIndependent_nonpersistent)
	b.ThinProvisioned = nil
	b.Uuid = d.UUID
	disk.CapacityInBytes = d.Capacity
	before := map[int32]bool{}
	for _, x := range devs {
		before[x.GetVirtualDevice().Key] = true
	}
	// an existing file: no FileOperation (AddDevice would ask to create it)
	task, err := t.Proxy.Reconfigure(ctx, types.VirtualMachineConfigSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: disk},
	}})
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		return 0, fmt.Errorf("hot-add %s to the proxy VM: %w", d.File, err)
	}
	after, err := t.Proxy.Device(ctx)
	if err != nil {
		return 0, fmt.Errorf("proxy VM devices: %w", err)
	}
	for _, x := range after {
		if vd, ok := x.(*types.VirtualDisk); ok && !before[vd.Key] {
			return vd.Key, nil
		}
	}
	return 0, fmt.Errorf("hot-added %s but the proxy VM shows no new disk", d.File)
}

// detach removes the device without deleting any file.
func (t *HotAdd) detach(ctx context.Context, key int32) error {
	devs, err := t.Proxy.Device(ctx)
	if err != nil {
		return fmt.Errorf("proxy VM devices: %w", err)
	}
	dev := devs.FindByKey(key)
	if dev == nil {
		return nil
	}
	if err := t.Proxy.RemoveDevice(ctx, true, dev); err != nil {
		return fmt.Errorf("detach disk %d from the proxy VM: %w", key, err)
	}
	return nil
}

// ProxyByBIOSUUID finds the VM whose BIOS uuid is this machine's
// (/sys/class/dmi/id/product_uuid), the usual way a backup proxy finds
// itself.
func ProxyByBIOSUUID(ctx context.Context, vms []*object.VirtualMachine, biosUUID string) (*object.VirtualMachine, error) {
	want := uuidHex(biosUUID)
	for _, vm := range vms {
		var o mo.VirtualMachine
		if err := vm.Properties(ctx, vm.Reference(), []string{"config.uuid"}, &o); err != nil || o.Config == nil {
			continue
		}
		if uuidHex(o.Config.Uuid) == want {
			return vm, nil
		}
	}
	return nil, fmt.Errorf("no VM with BIOS uuid %s (name the proxy with --proxy-vm)", biosUUID)
}

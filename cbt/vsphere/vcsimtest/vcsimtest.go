// Package vcsimtest runs govmomi's vSphere simulator with Changed Block
// Tracking added, for tests of the vsphere capture source.
//
// Stock vcsim has no QueryChangedDiskAreas and never sets changeIds. A
// test-only managed object takes over QueryChangedDiskAreas and the
// snapshot calls of every VM through the registry's Handler hook (no fork
// of govmomi) and emulates ESXi: guest writes (WriteGuest) go to the VM's
// current flat file and, while tracking is on, are recorded with an epoch;
// a snapshot stamps each disk's changeId "<disk uuid>/<epoch>", then moves
// the VM onto a new delta file so the snapshot's file stays frozen;
// QueryChangedDiskAreas answers "*" with the non-zero 64 KiB blocks of the
// snapshot's file and "<uuid>/N" with the writes since snapshot N, rounded
// to 64 KiB, and answers at most MaxAreas areas per call so that clients
// must loop.
package vcsimtest

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"golang.org/x/sys/unix"
)

const block = 64 << 10

// Harness is a running simulator with CBT.
type Harness struct {
	Model        *simulator.Model
	Server       *simulator.Server
	URL          *url.URL // without credentials
	User         string
	Password     string
	DatastoreDir string // local directory of datastore LocalDS_0

	// MaxAreas caps the changed areas per QueryChangedDiskAreas answer.
	MaxAreas int
	// QueryCalls counts QueryChangedDiskAreas calls.
	QueryCalls atomic.Int64

	reg *simulator.Registry
	cbt *cbtObject

	mu      sync.Mutex
	epoch   map[string]int // VM ref → current epoch
	writes  map[diskID][]write
	pending map[string]*sync.WaitGroup // VM ref → delta switches in progress
	deltas  int
	resetAt map[string]int // VM ref → changeIds older than this epoch are invalid
}

type diskID struct {
	vm  string
	key int32
}

type write struct {
	off, n int64
	epoch  int
}

// New starts an ESXi-model simulator with vms VMs (one 10 GiB disk each)
// on one local datastore, with CBT emulation installed.
func New(t testing.TB, vms int) *Harness {
	t.Helper()
	m := simulator.ESX()
	m.Machine = vms
	m.Datastore = 1
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	m.Service.RegisterEndpoints = true
	s := m.Service.NewServer()
	h := &Harness{Model: m, Server: s, MaxAreas: 7, reg: m.Map(), epoch: map[string]int{},
		writes: map[diskID][]write{}, pending: map[string]*sync.WaitGroup{}, resetAt: map[string]int{}}
	u := *s.URL
	h.User = u.User.Username()
	h.Password, _ = u.User.Password()
	u.User = nil
	h.URL = &u
	for _, e := range h.reg.All("Datastore") {
		ds := e.(*simulator.Datastore)
		h.DatastoreDir = ds.Info.GetDatastoreInfo().Url
	}
	h.cbt = &cbtObject{h: h}
	h.cbt.Self = types.ManagedObjectReference{Type: "TestCBT", Value: "testcbt-1"}
	h.reg.Put(h.cbt)
	prev := h.reg.Handler
	h.reg.Handler = func(ctx *simulator.Context, method *simulator.Method) (mo.Reference, types.BaseMethodFault) {
		if method.This.Type == "VirtualMachine" {
			switch method.Name {
			case "QueryChangedDiskAreas", "CreateSnapshot_Task", "CreateSnapshotEx_Task":
				method.This = h.cbt.Self
				return h.cbt, nil
			}
		}
		if method.This.Type == "VirtualMachineSnapshot" && method.Name == "RemoveSnapshot_Task" {
			req := method.Body.(*types.RemoveSnapshot_Task)
			req.This = method.This
			method.This = h.cbt.Self
			return h.cbt, nil
		}
		if prev != nil {
			return prev(ctx, method)
		}
		return nil, nil
	}
	t.Cleanup(func() {
		s.Close()
		m.Remove()
	})
	return h
}

// ResetCBT makes every changeId handed out so far invalid, as ESXi does
// after a CBT reset (or a storage vMotion).
func (h *Harness) ResetCBT(vmName string) {
	vm := h.VM(vmName)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.resetAt[vm.Self.Value] = h.epochOf(vm.Self.Value)
}

// SetDiskUUID changes a disk's uuid (as when a disk is replaced).
func (h *Harness) SetDiskUUID(vmName string, key int32, uuid string) {
	vm := h.VM(vmName)
	h.reg.WithLock(h.Model.Service.Context, vm, func() {
		for _, vd := range disks(vm.Config) {
			if vd.Key == key {
				backing(vd).Uuid = uuid
			}
		}
	})
}

// VM returns the simulator's VM of that name.
func (h *Harness) VM(name string) *simulator.VirtualMachine {
	for _, e := range h.reg.All("VirtualMachine") {
		if vm := e.(*simulator.VirtualMachine); vm.Name == name {
			return vm
		}
	}
	return nil
}

// VMNames lists the VMs.
func (h *Harness) VMNames() []string {
	var names []string
	for _, e := range h.reg.All("VirtualMachine") {
		names = append(names, e.(*simulator.VirtualMachine).Name)
	}
	sort.Strings(names)
	return names
}

// LocalPath maps "[LocalDS_0] dir/x.vmdk" to the flat file on this host.
func (h *Harness) LocalPath(dsPath string) string {
	_, rel, _ := strings.Cut(dsPath, "] ")
	return filepath.Join(h.DatastoreDir, simulator.VirtualDiskBackingFileName(rel))
}

func disks(cfg *types.VirtualMachineConfigInfo) []*types.VirtualDisk {
	var out []*types.VirtualDisk
	for _, d := range cfg.Hardware.Device {
		if vd, ok := d.(*types.VirtualDisk); ok {
			out = append(out, vd)
		}
	}
	return out
}

func backing(vd *types.VirtualDisk) *types.VirtualDiskFlatVer2BackingInfo {
	return vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
}

// WriteGuest writes data at off of the VM's disk with the given device key
// (204 for the model's first disk) as the guest would.
func (h *Harness) WriteGuest(vmName string, key int32, off int64, data []byte) error {
	vm := h.VM(vmName)
	if vm == nil {
		return fmt.Errorf("no VM %s", vmName)
	}
	ref := vm.Self.Value
	h.mu.Lock()
	wg := h.pending[ref]
	h.mu.Unlock()
	if wg != nil {
		wg.Wait()
	}
	var path string
	var capacity int64
	tracking := false
	h.reg.WithLock(h.Model.Service.Context, vm, func() {
		for _, vd := range disks(vm.Config) {
			if vd.Key == key {
				path, capacity = h.LocalPath(backing(vd).FileName), vd.CapacityInBytes
			}
		}
		tracking = vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
	})
	if path == "" {
		return fmt.Errorf("VM %s has no disk %d", vmName, key)
	}
	if off < 0 || off+int64(len(data)) > capacity {
		return fmt.Errorf("write [%d,+%d) outside the %d-byte disk", off, len(data), capacity)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(capacity); err != nil {
		return err
	}
	if _, err := f.WriteAt(data, off); err != nil {
		return err
	}
	if tracking {
		h.mu.Lock()
		id := diskID{ref, key}
		h.writes[id] = append(h.writes[id], write{off, int64(len(data)), h.epochOf(ref)})
		h.mu.Unlock()
	}
	return nil
}

func (h *Harness) epochOf(ref string) int {
	if h.epoch[ref] == 0 {
		h.epoch[ref] = 1
	}
	return h.epoch[ref]
}

// cbtObject is the managed object that answers the CBT-related calls of
// every VM.
type cbtObject struct {
	Self types.ManagedObjectReference
	h    *Harness
}

func (o *cbtObject) Reference() types.ManagedObjectReference { return o.Self }

func (o *cbtObject) vm(ctx *simulator.Context, ref types.ManagedObjectReference) *simulator.VirtualMachine {
	vm, _ := ctx.Map.Get(ref).(*simulator.VirtualMachine)
	return vm
}

// snapshot stamps changeIds, runs create (the real vcsim method) under the
// VM lock, then moves the VM onto delta files once the task is done.
func (o *cbtObject) snapshot(ctx *simulator.Context, vmRef types.ManagedObjectReference, create func(*simulator.VirtualMachine) (soap.HasFault, func() types.ManagedObjectReference)) soap.HasFault {
	vm := o.vm(ctx, vmRef)
	var res soap.HasFault
	var task func() types.ManagedObjectReference
	ctx.WithLock(vm, func() {
		o.stamp(vm)
		res, task = create(vm)
	})
	if res.Fault() == nil {
		o.afterSnapshot(ctx, vm, task())
	}
	return res
}

// CreateSnapshotTask is the hooked CreateSnapshot_Task.
func (o *cbtObject) CreateSnapshotTask(ctx *simulator.Context, req *types.CreateSnapshot_Task) soap.HasFault {
	return o.snapshot(ctx, req.This, func(vm *simulator.VirtualMachine) (soap.HasFault, func() types.ManagedObjectReference) {
		res := vm.CreateSnapshotTask(ctx, req)
		return res, func() types.ManagedObjectReference { return res.(*methods.CreateSnapshot_TaskBody).Res.Returnval }
	})
}

// CreateSnapshotExTask is the hooked CreateSnapshotEx_Task.
func (o *cbtObject) CreateSnapshotExTask(ctx *simulator.Context, req *types.CreateSnapshotEx_Task) soap.HasFault {
	return o.snapshot(ctx, req.This, func(vm *simulator.VirtualMachine) (soap.HasFault, func() types.ManagedObjectReference) {
		res := vm.CreateSnapshotExTask(ctx, req)
		return res, func() types.ManagedObjectReference { return res.(*methods.CreateSnapshotEx_TaskBody).Res.Returnval }
	})
}

func (o *cbtObject) stamp(vm *simulator.VirtualMachine) {
	h := o.h
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.epochOf(vm.Self.Value)
	if vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled {
		for _, vd := range disks(vm.Config) {
			backing(vd).ChangeId = backing(vd).Uuid + "/" + strconv.Itoa(e)
		}
	}
	h.epoch[vm.Self.Value] = e + 1
}

func (o *cbtObject) afterSnapshot(ctx *simulator.Context, vm *simulator.VirtualMachine, task types.ManagedObjectReference) {
	h := o.h
	wg := &sync.WaitGroup{}
	wg.Add(1)
	h.mu.Lock()
	h.pending[vm.Self.Value] = wg
	h.mu.Unlock()
	go func() {
		defer wg.Done()
		if t, ok := ctx.Map.Get(task).(*simulator.Task); ok {
			t.Wait()
		}
		// The VM continues on a new, empty delta file; the snapshot's file
		// (its parent) stays frozen, as on ESXi.
		ctx.WithLock(vm, func() {
			for _, vd := range disks(vm.Config) {
				b := backing(vd)
				old := b.FileName
				h.mu.Lock()
				h.deltas++
				n := h.deltas
				h.mu.Unlock()
				dir, base := filepath.Split(strings.TrimSuffix(old, ".vmdk"))
				base, _, _ = strings.Cut(base, "-0")
				nu := fmt.Sprintf("%s%s-%06d.vmdk", dir, base, n)
				f, err := os.Create(h.LocalPath(nu))
				if err == nil {
					err = f.Truncate(vd.CapacityInBytes)
					f.Close()
				}
				if err != nil {
					panic(err)
				}
				parent := *b
				parent.Parent = b.Parent
				b.Parent = &parent
				b.FileName = nu
			}
		})
	}()
}

// RemoveSnapshotTask delegates; when the VM has no snapshot left, its delta
// files are consolidated into the base file and the VM is back on it.
func (o *cbtObject) RemoveSnapshotTask(ctx *simulator.Context, req *types.RemoveSnapshot_Task) soap.HasFault {
	snap, ok := ctx.Map.Get(req.This).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return &methods.RemoveSnapshot_TaskBody{Fault_: simulator.Fault("no such snapshot", &types.ManagedObjectNotFound{Obj: req.This})}
	}
	vm := o.vm(ctx, snap.Vm)
	var res soap.HasFault
	ctx.WithLock(snap, func() { res = snap.RemoveSnapshotTask(ctx, req) })
	if res.Fault() != nil {
		return res
	}
	if t, ok := ctx.Map.Get(res.(*methods.RemoveSnapshot_TaskBody).Res.Returnval).(*simulator.Task); ok {
		t.Wait()
	}
	h := o.h
	h.mu.Lock()
	wg := h.pending[vm.Self.Value]
	h.mu.Unlock()
	if wg != nil {
		wg.Wait()
	}
	ctx.WithLock(vm, func() {
		if vm.Snapshot != nil && len(vm.Snapshot.RootSnapshotList) > 0 {
			return
		}
		for _, vd := range disks(vm.Config) {
			b := backing(vd)
			var chain []string // top first
			for x := b; x != nil; x = x.Parent {
				chain = append(chain, x.FileName)
			}
			baseFile := chain[len(chain)-1]
			for k := len(chain) - 2; k >= 0; k-- {
				if err := sparseCopy(h.LocalPath(chain[k]), h.LocalPath(baseFile), vd.CapacityInBytes); err != nil {
					panic(err)
				}
				os.Remove(h.LocalPath(chain[k]))
			}
			b.FileName, b.Parent = baseFile, nil
		}
	})
	return res
}

// SparseCopy copies the data extents of src over dst (size bytes): for
// tests that keep a disk's content as of a capture.
func SparseCopy(src, dst string, size int64) error { return sparseCopy(src, dst, size) }

// sparseCopy copies the data extents of src over dst (size bytes).
func sparseCopy(src, dst string, size int64) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := out.Truncate(size); err != nil {
		return err
	}
	in, err := os.Open(src)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer in.Close()
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if _, err := io.Copy(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data)); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

func invalid(msg string) soap.HasFault {
	return &methods.QueryChangedDiskAreasBody{Fault_: simulator.Fault(msg, &types.InvalidArgument{InvalidProperty: "changeId"})}
}

// QueryChangedDiskAreas emulates ESXi's answer for a snapshot's disk.
func (o *cbtObject) QueryChangedDiskAreas(ctx *simulator.Context, req *types.QueryChangedDiskAreas) soap.HasFault {
	h := o.h
	h.QueryCalls.Add(1)
	vm := o.vm(ctx, req.This)
	if vm == nil || req.Snapshot == nil {
		return invalid("snapshot required")
	}
	snap, ok := ctx.Map.Get(*req.Snapshot).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return invalid("no such snapshot")
	}
	var disk *types.VirtualDisk
	for _, vd := range disks(&snap.Config) {
		if vd.Key == req.DeviceKey {
			disk = vd
		}
	}
	if disk == nil {
		return invalid(fmt.Sprintf("no disk with device key %d", req.DeviceKey))
	}
	b := backing(disk)
	if b.ChangeId == "" {
		return invalid("change tracking was not on when the snapshot was taken")
	}
	_, snapEpochS, _ := strings.Cut(b.ChangeId, "/")
	snapEpoch, _ := strconv.Atoi(snapEpochS)
	var blocks []int64 // block numbers, sorted, unique
	if req.ChangeId == "*" {
		f, err := os.Open(h.LocalPath(b.FileName))
		if err == nil {
			buf := make([]byte, block)
			runs := 0
			for bn := req.StartOffset / block; bn*block < disk.CapacityInBytes; bn++ {
				data, err := unix.Seek(int(f.Fd()), bn*block, unix.SEEK_DATA)
				if err != nil {
					break
				}
				if data >= (bn+1)*block {
					bn = data/block - 1
					continue
				}
				n, _ := f.ReadAt(buf, bn*block)
				for _, c := range buf[:n] {
					if c != 0 {
						if len(blocks) == 0 || blocks[len(blocks)-1] != bn-1 {
							runs++
						}
						blocks = append(blocks, bn)
						break
					}
				}
				if runs > h.MaxAreas {
					break // enough for one (partial) answer
				}
			}
			f.Close()
		}
	} else {
		uuid, nS, ok := strings.Cut(req.ChangeId, "/")
		n, err := strconv.Atoi(nS)
		h.mu.Lock()
		reset := h.resetAt[vm.Self.Value]
		h.mu.Unlock()
		if !ok || err != nil || uuid != b.Uuid || n >= snapEpoch || n < 1 || n < reset {
			return invalid(fmt.Sprintf("changeId %q is not valid for this disk", req.ChangeId))
		}
		h.mu.Lock()
		seen := map[int64]bool{}
		for _, w := range h.writes[diskID{vm.Self.Value, req.DeviceKey}] {
			if w.epoch > n && w.epoch <= snapEpoch {
				for bn := w.off / block; bn*block < w.off+w.n; bn++ {
					seen[bn] = true
				}
			}
		}
		h.mu.Unlock()
		for bn := range seen {
			blocks = append(blocks, bn)
		}
		sort.Slice(blocks, func(i, j int) bool { return blocks[i] < blocks[j] })
	}
	info := types.DiskChangeInfo{StartOffset: req.StartOffset, Length: disk.CapacityInBytes - req.StartOffset}
	for _, bn := range blocks {
		start := bn * block
		if start < req.StartOffset {
			continue
		}
		if k := len(info.ChangedArea); k > 0 && info.ChangedArea[k-1].Start+info.ChangedArea[k-1].Length == start {
			info.ChangedArea[k-1].Length += block
			continue
		}
		if len(info.ChangedArea) == h.MaxAreas {
			info.Length = start - req.StartOffset // a partial answer
			break
		}
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: start, Length: block})
	}
	return &methods.QueryChangedDiskAreasBody{Res: &types.QueryChangedDiskAreasResponse{Returnval: info}}
}

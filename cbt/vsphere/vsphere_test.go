package vsphere_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vmvault/vmvault/cbt/vsphere"
	"github.com/vmvault/vmvault/cbt/vsphere/vcsimtest"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/backend/mem"
	"github.com/vmvault/vmvault/repo/extent"
)

type env struct {
	t *testing.T
	h *vcsimtest.Harness
	c *govmomi.Client
	r *repo.Repository
}

func newEnv(t *testing.T, vms int) *env {
	h := vcsimtest.New(t, vms)
	ctx := context.Background()
	c, err := vsphere.Connect(ctx, vsphere.ConnectOptions{URL: h.URL.String(), User: h.User, Password: h.Password, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Init(ctx, mem.New(), repo.InitOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, h: h, c: c, r: r}
}

func (e *env) vm(name string) *object.VirtualMachine {
	e.t.Helper()
	vm, err := vsphere.FindVM(context.Background(), e.c.Client, name)
	if err != nil {
		e.t.Fatal(err)
	}
	return vm
}

// write puts n random bytes at off of the VM's first disk, as the guest.
func (e *env) write(vm string, off int64, n int, seed uint64) {
	e.t.Helper()
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	if err := e.h.WriteGuest(vm, 204, off, b); err != nil {
		e.t.Fatal(err)
	}
}

// snapshotFile is the local flat file the VM's disk was on when the last
// snapshot was taken (frozen since): what a restore must equal.
func (e *env) frozen(vmName string, key int32) string {
	vm := e.h.VM(vmName)
	for _, d := range vm.Config.Hardware.Device {
		if vd, ok := d.(*types.VirtualDisk); ok && vd.Key == key {
			b := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			if b.Parent != nil {
				return e.h.LocalPath(b.Parent.FileName)
			}
			return e.h.LocalPath(b.FileName)
		}
	}
	e.t.Fatalf("no disk %d", key)
	return ""
}

func (e *env) capture(vm string, tr vsphere.Transport, mod func(*vsphere.Options)) (vsphere.Result, error) {
	o := vsphere.Options{Repo: e.r, Transport: tr, EnableCBT: true}
	if mod != nil {
		mod(&o)
	}
	return vsphere.CaptureVM(context.Background(), e.vm(vm), o)
}

// equalsFile checks that a restore point's disk reads exactly as the file
// (missing bytes of a thin file are zeros).
func (e *env) equalsFile(rpID, disk, path string) {
	e.t.Helper()
	ctx := context.Background()
	id, err := repo.Resolve(e.list(), rpID)
	if err != nil {
		e.t.Fatal(err)
	}
	d, err := e.r.OpenDisk(ctx, id, disk)
	if err != nil {
		e.t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	// Compare where either side has data: the disk's non-zero chunks and
	// the file's data extents. Elsewhere both read as zeros.
	var ranges []extent.Range
	ex, err := d.Extents(0, d.Size())
	if err != nil {
		e.t.Fatal(err)
	}
	for _, x := range ex {
		if !x.Zero {
			ranges = append(ranges, extent.Range{Offset: x.Offset, Length: x.Length})
		}
	}
	for off := int64(0); off < d.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break
		}
		hole, _ := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		ranges = append(ranges, extent.Range{Offset: data, Length: min(hole, d.Size()) - data})
		off = hole
	}
	for _, rg := range ranges {
		a, b := make([]byte, rg.Length), make([]byte, rg.Length)
		d.ReadAt(a, rg.Offset)
		f.ReadAt(b, rg.Offset)
		if !bytes.Equal(a, b) {
			e.t.Fatalf("restore point %s disk %s differs from %s in [%d,+%d)", rpID[:8], disk, path, rg.Offset, rg.Length)
		}
	}
	if len(ranges) == 0 {
		e.t.Fatalf("nothing to compare for %s", path)
	}
}

func (e *env) list() []*repo.RestorePoint {
	rps, _, err := e.r.ListRestorePoints(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return rps
}

func (e *env) snapshots(vmName string) []string {
	var o mo.VirtualMachine
	vm := e.vm(vmName)
	if err := vm.Properties(context.Background(), vm.Reference(), []string{"snapshot"}, &o); err != nil {
		e.t.Fatal(err)
	}
	var names []string
	var walk func([]types.VirtualMachineSnapshotTree)
	walk = func(ts []types.VirtualMachineSnapshotTree) {
		for _, t := range ts {
			names = append(names, t.Name)
			walk(t.ChildSnapshotList)
		}
	}
	if o.Snapshot != nil {
		walk(o.Snapshot.RootSnapshotList)
	}
	return names
}

// TestFullThenIncremental: a full capture, simulated guest writes, an
// incremental that reads only the changed areas (counted at the
// transport), each restore point identical to its snapshot's frozen file,
// partial QueryChangedDiskAreas answers looped, snapshots removed.
func TestFullThenIncremental(t *testing.T) {
	for _, transport := range []string{"https", "direct", "nbd"} {
		t.Run(transport, func(t *testing.T) {
			if transport == "nbd" {
				if _, err := exec.LookPath("qemu-nbd"); err != nil {
					if os.Getenv("CI") != "" {
						t.Fatal("qemu-nbd is required in CI")
					}
					t.Skip("skipping: qemu-nbd not installed (apt-get install qemu-utils)")
				}
			}
			e := newEnv(t, 1)
			vm := e.h.VMNames()[0]
			e.write(vm, 0, 3<<20, 1)
			e.write(vm, 1<<30, 1<<20, 2)
			e.write(vm, 9<<30, 640<<10, 3)
			newTransport := func() (vsphere.Transport, *vsphere.Counter) {
				c := &vsphere.Counter{}
				switch transport {
				case "https":
					return &vsphere.HTTPS{Client: e.c.Client, Count: c}, c
				case "nbd":
					// qemu-nbd stands in for nbdkit's vddk plugin
					cmd := "qemu-nbd -r -f raw -k {socket} " + e.h.DatastoreDir + "/{flat}"
					return &vsphere.NBD{Command: cmd, Count: c}, c
				}
				return &vsphere.Direct{Map: map[string]string{"LocalDS_0": e.h.DatastoreDir}, Count: c}, c
			}
			tr, cnt := newTransport()
			r1, err := e.capture(vm, tr, nil)
			if err != nil {
				t.Fatal(err)
			}
			if d := r1.Disks[0]; d.Mode != "full" || d.Reason != "no previous restore point" || !r1.SnapshotRemoved {
				t.Fatalf("first capture: %+v", r1)
			}
			// a full read of a CBT disk reads only its allocated areas
			if got := cnt.Bytes(); got != (3<<20)+(1<<20)+(640<<10) {
				t.Errorf("full capture read %d bytes through the transport", got)
			}
			e.equalsFile(r1.RestorePoint, "scsi0-0", e.frozen(vm, 204))
			kept := filepath.Join(t.TempDir(), "disk-at-first-capture")
			if err := vcsimtest.SparseCopy(e.frozen(vm, 204), kept, 10<<30); err != nil {
				t.Fatal(err)
			}
			if s := e.snapshots(vm); len(s) != 0 {
				t.Errorf("snapshots left: %v", s)
			}

			// guest writes: 9 separate 64 KiB areas (more than MaxAreas=7
			// per answer) and one 300 KiB write across block boundaries
			var want int64
			for i := int64(0); i < 9; i++ {
				e.write(vm, 2<<30+i*(1<<20), 64<<10, uint64(10+i))
				want += 64 << 10
			}
			e.write(vm, 5<<30+10_000, 300<<10, 99)
			want += 5 * (64 << 10) // [5G+10000, +300KiB) touches 5 blocks
			before := e.h.QueryCalls.Load()
			tr, cnt = newTransport()
			r2, err := e.capture(vm, tr, nil)
			if err != nil {
				t.Fatal(err)
			}
			d := r2.Disks[0]
			if d.Mode != "incremental" || d.BytesChanged != want || r2.Parent != r1.RestorePoint {
				t.Fatalf("incremental: %+v (want %d changed bytes)", r2, want)
			}
			if got := cnt.Bytes(); got != want {
				t.Errorf("incremental read %d bytes through the transport, want %d", got, want)
			}
			if calls := e.h.QueryCalls.Load() - before; calls < 2 {
				t.Errorf("partial answers were not looped: %d QueryChangedDiskAreas calls", calls)
			}
			e.equalsFile(r2.RestorePoint, "scsi0-0", e.frozen(vm, 204))
			e.equalsFile(r1.RestorePoint, "scsi0-0", kept) // the first stays as it was
		})
	}
}

// failing is a transport whose reads fail after limit bytes.
type failing struct {
	vsphere.Transport
	limit int64
	n     int64
	mu    sync.Mutex
}

type failingReader struct {
	vsphere.DiskReader
	f *failing
}

func (f *failing) Open(ctx context.Context, s *vsphere.Snapshot, d vsphere.DiskInfo) (vsphere.DiskReader, error) {
	r, err := f.Transport.Open(ctx, s, d)
	if err != nil {
		return nil, err
	}
	return failingReader{r, f}, nil
}

func (r failingReader) ReadAt(p []byte, off int64) (int, error) {
	r.f.mu.Lock()
	r.f.n += int64(len(p))
	over := r.f.n > r.f.limit
	r.f.mu.Unlock()
	if over {
		return 0, errors.New("injected transport failure")
	}
	return r.DiskReader.ReadAt(p, off)
}

// TestSnapshotAlwaysRemoved: after a transport error and after
// cancellation the snapshot is gone and no restore point was made;
// Cleanup removes a planted orphan and leaves other snapshots alone.
func TestSnapshotAlwaysRemoved(t *testing.T) {
	e := newEnv(t, 1)
	vm := e.h.VMNames()[0]
	e.write(vm, 0, 4<<20, 1)
	direct := &vsphere.Direct{Map: map[string]string{"LocalDS_0": e.h.DatastoreDir}}

	_, err := e.capture(vm, &failing{Transport: direct, limit: 1 << 20}, nil)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("injected")) {
		t.Fatalf("capture with a failing transport: %v", err)
	}
	if s := e.snapshots(vm); len(s) != 0 {
		t.Errorf("snapshot left after a transport error: %v", s)
	}

	ctx, cancel := context.WithCancel(context.Background())
	canceling := &cancelAfter{Transport: direct, cancel: cancel}
	_, err = vsphere.CaptureVM(ctx, e.vm(vm), vsphere.Options{Repo: e.r, Transport: canceling, EnableCBT: true})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled capture: %v", err)
	}
	if s := e.snapshots(vm); len(s) != 0 {
		t.Errorf("snapshot left after cancellation: %v", s)
	}
	if n := len(e.list()); n != 0 {
		t.Errorf("%d restore points after failed captures", n)
	}

	// plant an orphan and a user's snapshot
	bg := context.Background()
	for _, name := range []string{vsphere.SnapshotPrefix + "20260101T000000.000Z", "before-upgrade"} {
		task, err := e.vm(vm).CreateSnapshot(bg, name, "", false, false)
		if err == nil {
			err = task.Wait(bg)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("snapshots before cleanup: %v", e.snapshots(vm))
	removed, err := vsphere.Cleanup(bg, e.c.Client, nil, nil)
	if err != nil || len(removed) != 1 {
		t.Fatalf("cleanup removed %v, %v", removed, err)
	}
	if s := e.snapshots(vm); len(s) != 1 || s[0] != "before-upgrade" {
		t.Errorf("after cleanup: %v", s)
	}
}

type cancelAfter struct {
	vsphere.Transport
	cancel func()
}

func (c *cancelAfter) Open(ctx context.Context, s *vsphere.Snapshot, d vsphere.DiskInfo) (vsphere.DiskReader, error) {
	r, err := c.Transport.Open(ctx, s, d)
	if err != nil {
		return nil, err
	}
	return cancelReader{r, c.cancel}, nil
}

type cancelReader struct {
	vsphere.DiskReader
	cancel func()
}

func (r cancelReader) ReadAt(p []byte, off int64) (int, error) {
	r.cancel()
	return r.DiskReader.ReadAt(p, off)
}

// TestCBTResetAndChanges: an unknown changeId (CBT reset), a changed disk
// uuid and --full each lead to a full capture with the reason recorded.
func TestCBTResetAndChanges(t *testing.T) {
	e := newEnv(t, 1)
	vm := e.h.VMNames()[0]
	e.write(vm, 0, 1<<20, 1)
	direct := &vsphere.Direct{Map: map[string]string{"LocalDS_0": e.h.DatastoreDir}}
	if _, err := e.capture(vm, direct, nil); err != nil {
		t.Fatal(err)
	}
	e.h.ResetCBT(vm)
	e.write(vm, 1<<20, 64<<10, 2)
	r, err := e.capture(vm, direct, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := r.Disks[0]; d.Mode != "full" || !bytes.Contains([]byte(d.Reason), []byte("reset")) {
		t.Errorf("after a CBT reset: %+v", d)
	}
	e.equalsFile(r.RestorePoint, "scsi0-0", e.frozen(vm, 204))

	e.h.SetDiskUUID(vm, 204, "6000C29a-0000-0000-0000-000000000001")
	r, err = e.capture(vm, direct, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := r.Disks[0]; d.Mode != "full" || !bytes.Contains([]byte(d.Reason), []byte("identity changed")) {
		t.Errorf("after a uuid change: %+v", d)
	}
	r, err = e.capture(vm, direct, func(o *vsphere.Options) { o.Full = true })
	if err != nil || r.Disks[0].Mode != "full" || r.Disks[0].Reason != "--full" {
		t.Errorf("--full: %+v %v", r, err)
	}
	// the next one is incremental again
	e.write(vm, 3<<20, 64<<10, 3)
	r, err = e.capture(vm, direct, nil)
	if err != nil || r.Disks[0].Mode != "incremental" || r.Disks[0].BytesChanged != 64<<10 {
		t.Errorf("incremental after the resets: %+v %v", r, err)
	}
}

// TestTwoDisksTwoVMs: a VM with a second disk, and two VMs captured in
// parallel.
func TestTwoDisksTwoVMs(t *testing.T) {
	e := newEnv(t, 2)
	names := e.h.VMNames()
	ctx := context.Background()
	vm0 := e.vm(names[0])
	devs, err := vm0.Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := devs.FindDiskController("scsi")
	if err != nil {
		t.Fatal(err)
	}
	disk := devs.CreateDisk(ctrl, types.ManagedObjectReference{}, "[LocalDS_0] "+names[0]+"/disk2.vmdk")
	disk.CapacityInKB = 512 << 10
	if err := vm0.AddDevice(ctx, disk); err != nil {
		t.Fatal(err)
	}
	for i, n := range names {
		e.write(n, 0, 1<<20, uint64(i))
	}
	direct := &vsphere.Direct{Map: map[string]string{"LocalDS_0": e.h.DatastoreDir}}
	var wg sync.WaitGroup
	results := make([]vsphere.Result, 2)
	errs := make([]error, 2)
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = vsphere.CaptureVM(ctx, e.vm(n), vsphere.Options{Repo: e.r, Transport: direct, EnableCBT: true, LockWait: 30e9})
		}()
	}
	wg.Wait()
	for i := range names {
		if errs[i] != nil {
			t.Fatalf("%s: %v", names[i], errs[i])
		}
	}
	if len(results[0].Disks) != 2 || len(results[1].Disks) != 1 {
		t.Fatalf("disks: %+v / %+v", results[0].Disks, results[1].Disks)
	}
	for i, n := range names {
		e.equalsFile(results[i].RestorePoint, "scsi0-0", e.frozen(n, 204))
	}
}

func TestFindDevice(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "sdb")
	os.WriteFile(target, nil, 0o600)
	for _, n := range []string{"wwn-0x6000c29a1b2c3d4e5f60718293a4b5c6", "scsi-36000c29fffffffffffffffffffffffff", "ata-QEMU_HARDDISK_QM00001"} {
		os.Symlink("sdb", filepath.Join(dir, n))
	}
	cases := []struct {
		uuid    string
		want    string
		wantErr bool
	}{
		{"6000C29a-1b2c-3d4e-5f60-718293a4b5c6", target, false},
		{"60 00 C2 9f ff ff ff ff-ff ff ff ff ff ff ff ff", target, false}, // the scsi-3 form
		{"6000C29a-0000-0000-0000-000000000000", "", true},
		{"not-a-uuid", "", true},
	}
	for _, c := range cases {
		got, err := vsphere.FindDevice(dir, c.uuid)
		if (err != nil) != c.wantErr || got != c.want {
			t.Errorf("FindDevice(%q) = %q, %v", c.uuid, got, err)
		}
	}
}

// TestHotAdd captures a VM through the hotadd transport: the snapshot's
// disk is attached to the proxy VM, found by uuid in a test by-id
// directory (where a symlink plays udev), read, and detached — also when
// the read fails.
func TestHotAdd(t *testing.T) {
	e := newEnv(t, 2)
	names := e.h.VMNames()
	vm, proxyName := names[0], names[1]
	e.write(vm, 0, 2<<20, 1)
	var uuid string
	for _, d := range e.h.VM(vm).Config.Hardware.Device {
		if vd, ok := d.(*types.VirtualDisk); ok {
			uuid = vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo).Uuid
		}
	}
	byID := t.TempDir()
	hex := strings.ToLower(strings.ReplaceAll(uuid, "-", ""))
	if err := os.Symlink(e.frozen(vm, 204), filepath.Join(byID, "wwn-0x"+hex)); err != nil {
		t.Fatal(err)
	}
	proxy := e.vm(proxyName)
	disks := func() int {
		devs, err := proxy.Device(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return len(devs.SelectByType((*types.VirtualDisk)(nil)))
	}
	before := disks()
	ha := &vsphere.HotAdd{Proxy: proxy, DevDir: byID, Wait: 2e9}
	r, err := e.capture(vm, ha, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.equalsFile(r.RestorePoint, "scsi0-0", e.frozen(vm, 204))
	if n := disks(); n != before {
		t.Errorf("proxy VM has %d disks after the capture, %d before", n, before)
	}
	e.write(vm, 4<<20, 1<<20, 2)
	if _, err := e.capture(vm, &failing{Transport: ha, limit: 64 << 10}, nil); err == nil {
		t.Fatal("capture with a failing read succeeded")
	}
	if n := disks(); n != before {
		t.Errorf("proxy VM has %d disks after a failed capture, %d before", n, before)
	}
}

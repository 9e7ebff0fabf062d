package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/vim25/soap"

	"github.com/vmvault/vmvault/cbt/vsphere"
	"github.com/vmvault/vmvault/cbt/vsphere/vcsimtest"
)

// sparseEqual compares two sparse files where either has data (SEEK_DATA);
// everywhere else both read as zeros.
func sparseEqual(t *testing.T, a, b string) bool {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	for _, f := range []*os.File{fa, fb} {
		for off := int64(0); ; {
			data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
			if err != nil {
				break
			}
			hole, _ := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
			x, y := make([]byte, hole-data), make([]byte, hole-data)
			fa.ReadAt(x, data)
			fb.ReadAt(y, data)
			if !bytes.Equal(x, y) {
				return false
			}
			off = hole
		}
	}
	return true
}

// TestCaptureVSphereCLI drives `vmvault-capture vsphere` against the
// simulator with CBT: credentials from a file (refused in the URL, never
// printed), a full then an incremental capture over https with --json,
// the restore identical to the snapshot's frozen disk, and `vsphere
// cleanup` removing a planted orphan snapshot.
func TestCaptureVSphereCLI(t *testing.T) {
	h := vcsimtest.New(t, 1)
	e := newEnv(t)
	vm := h.VMNames()[0]
	rng := rand.New(rand.NewPCG(5, 5))
	buf := make([]byte, 2<<20)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	if err := h.WriteGuest(vm, 204, 1<<20, buf); err != nil {
		t.Fatal(err)
	}
	cred := filepath.Join(e.dir, "cred")
	secret := h.Password
	os.WriteFile(cred, []byte("VMVAULT_VSPHERE_USER="+h.User+"\nVMVAULT_VSPHERE_PASSWORD="+secret+"\n"), 0o600)
	args := []string{"vsphere", "--url", h.URL.String(), "--credentials-file", cred, "--insecure", "--transport", "https", "--enable-cbt", "--json", vm}

	// credentials in the URL are refused
	u := *h.URL
	u.User = nil
	bad := strings.Replace(u.String(), "://", "://"+h.User+":"+secret+"@", 1)
	if out, errs, code := e.run("vmvault-capture", "vsphere", "--url", bad, "--insecure", "--transport", "https", vm); code == 0 || !strings.Contains(errs, "must not carry credentials") || strings.Contains(out+errs, secret) {
		t.Errorf("credentials in URL: exit %d\n%s%s", code, out, errs)
	}

	type result struct {
		RestorePoint    string `json:"restore_point"`
		SnapshotRemoved bool   `json:"snapshot_removed"`
		Disks           []struct {
			Name, Mode, Reason string
			BytesChanged       int64 `json:"bytes_changed"`
			BytesRead          int64 `json:"bytes_read"`
		}
	}
	capture := func() result {
		out, errs, code := e.run("vmvault-capture", args...)
		if code != 0 {
			t.Fatalf("capture: exit %d\n%s%s", code, out, errs)
		}
		if strings.Contains(out+errs, secret) {
			t.Fatal("the password appears in the output")
		}
		var r result
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		return r
	}
	r1 := capture()
	if len(r1.Disks) != 1 || r1.Disks[0].Mode != "full" || !r1.SnapshotRemoved {
		t.Fatalf("first: %+v", r1)
	}
	if err := h.WriteGuest(vm, 204, 5<<30, buf[:128<<10]); err != nil {
		t.Fatal(err)
	}
	r2 := capture()
	// the changed 128 KiB lie in one 256 KiB chunk, which is read whole
	if d := r2.Disks[0]; d.Mode != "incremental" || d.BytesChanged != 128<<10 || d.BytesRead != 256<<10 {
		t.Fatalf("second: %+v", r2)
	}
	// the restore equals the VM's disk as of the second snapshot
	// (the snapshot is gone and consolidated: the base file is the disk)
	path := h.LocalPath("[LocalDS_0] " + vm + "/disk1.vmdk")
	img := filepath.Join(e.dir, "restored.raw")
	e.ok("vmvault", "restore", r2.RestorePoint[:8], "--disk", "scsi0-0", "--to", img)
	if !sparseEqual(t, img, path) {
		t.Error("restore differs from the snapshot's disk")
	}

	// cleanup removes a planted orphan
	ctx := context.Background()
	su, _ := soap.ParseURL(h.URL.String())
	su.User = nil
	c, err := govmomi.NewClient(ctx, su, true)
	if err == nil {
		err = c.Login(ctx, h.Server.URL.User)
	}
	if err != nil {
		t.Fatal(err)
	}
	f := find.NewFinder(c.Client)
	dc, _ := f.DefaultDatacenter(ctx)
	f.SetDatacenter(dc)
	v, err := f.VirtualMachine(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	task, err := v.CreateSnapshot(ctx, vsphere.SnapshotPrefix+"orphan", "", false, false)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	out := e.ok("vmvault-capture", "vsphere", "cleanup", "--url", h.URL.String(), "--credentials-file", cred, "--insecure")
	if !strings.Contains(out, "removed "+vm+": "+vsphere.SnapshotPrefix+"orphan") {
		t.Errorf("cleanup: %q", out)
	}
}

// TestCaptureVSphereCaptureKey: a capture host holding only a capture key
// captures a vSphere VM full and then incrementally (CBT) into an encrypted
// repository, cannot restore it, and a full key restores the VM's disk.
func TestCaptureVSphereCaptureKey(t *testing.T) {
	h := vcsimtest.New(t, 1)
	dir := t.TempDir()
	full, capture := filepath.Join(dir, "full.pw"), filepath.Join(dir, "capture.pw")
	os.WriteFile(full, []byte("full secret\n"), 0o600)
	os.WriteFile(capture, []byte("capture secret\n"), 0o600)
	t.Setenv("VMVAULT_PASSWORD_FILE", full)
	e := newEnv(t, "--encrypt", "--insecure-kdf-for-tests")
	e.ok("vmvault", "key", "add", "--capture-only", "--insecure-kdf-for-tests", "--new-password-file", capture)
	vm := h.VMNames()[0]
	rng := rand.New(rand.NewPCG(6, 6))
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	if err := h.WriteGuest(vm, 204, 3<<20, buf); err != nil {
		t.Fatal(err)
	}
	cred := filepath.Join(dir, "cred")
	os.WriteFile(cred, []byte("VMVAULT_VSPHERE_USER="+h.User+"\nVMVAULT_VSPHERE_PASSWORD="+h.Password+"\n"), 0o600)
	args := []string{"vsphere", "--url", h.URL.String(), "--credentials-file", cred, "--insecure", "--transport", "https", "--enable-cbt", "--json", vm}
	type result struct {
		RestorePoint string `json:"restore_point"`
		Disks        []struct{ Mode string }
	}
	t.Setenv("VMVAULT_PASSWORD_FILE", capture)
	var rs []result
	for i := range 2 {
		if i == 1 {
			if err := h.WriteGuest(vm, 204, 2<<30, buf[:64<<10]); err != nil {
				t.Fatal(err)
			}
		}
		var r result
		if err := json.Unmarshal([]byte(e.ok("vmvault-capture", args...)), &r); err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	if rs[0].Disks[0].Mode != "full" || rs[1].Disks[0].Mode != "incremental" {
		t.Fatalf("capture key: %+v then %+v", rs[0], rs[1])
	}
	img := filepath.Join(dir, "restored.raw")
	if _, errs, code := e.run("vmvault", "restore", rs[1].RestorePoint[:8], "--disk", "scsi0-0", "--to", img); code == 0 || !strings.Contains(errs, "capture key") {
		t.Fatalf("restore with a capture key: exit %d: %s", code, errs)
	}
	t.Setenv("VMVAULT_PASSWORD_FILE", full)
	e.ok("vmvault", "restore", rs[1].RestorePoint[:8], "--disk", "scsi0-0", "--to", img)
	if !sparseEqual(t, img, h.LocalPath("[LocalDS_0] "+vm+"/disk1.vmdk")) {
		t.Error("restore differs from the snapshot's disk")
	}
}

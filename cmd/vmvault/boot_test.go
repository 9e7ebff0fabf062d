package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// bootDisk builds the instant-boot test disk with scripts/make-boot-disk.sh.
func bootDisk(t *testing.T, dir string) string {
	t.Helper()
	needTools(t, "qemu-system-x86_64", "syslinux", "mkfs.fat", "mcopy", "busybox", "sfdisk", "mke2fs", "cpio")
	img := filepath.Join(dir, "boot.raw")
	out, err := exec.Command("../../scripts/make-boot-disk.sh", img).CombinedOutput()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("make-boot-disk.sh: %v\n%s", err, out)
		}
		t.Skipf("skipping: cannot build the boot disk here: %v\n%s", err, out)
	}
	return img
}

var bootMarker = regexp.MustCompile(`VMVAULT-BOOT-OK boots=(\d+)`)

// boot runs qemu-system-x86_64 (TCG) from drive until the guest powers off
// and returns the boot count its init printed.
func boot(t *testing.T, drive string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, "qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "256", "-smp", "1",
		"-display", "none", "-no-reboot", "-monitor", "none", "-serial", "stdio", "-nodefaults", "-drive", drive).CombinedOutput()
	m := bootMarker.FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("boot from %s: %v\n%s", drive, err, out)
	}
	t.Logf("booted from %s in %s", drive, time.Since(start).Round(time.Millisecond))
	return string(m[1])
}

// Instant recovery: a VM boots straight from a restore point served over
// NBD, read-only with a qemu snapshot, and writable into an overlay that
// survives a server restart; the restore point never changes.
func TestInstantBoot(t *testing.T) {
	e := newEnv(t)
	img := bootDisk(t, e.dir)
	id := e.capture("--vm", "tiny", "--disk", "disk0="+img).ID
	want := fileSHA(t, img)
	export := "tiny/" + id + "/disk0"

	s := e.serve()
	if n := boot(t, "file="+s.uri(export)+",format=raw,if=virtio,snapshot=on"); n != "1" {
		t.Fatalf("read-only boot counted %s boots, want 1", n)
	}
	if n := boot(t, "file="+s.uri("tiny@latest/disk0")+",format=raw,if=ide,snapshot=on"); n != "1" {
		t.Fatalf("second read-only boot counted %s boots, want 1 (snapshot writes leaked)", n)
	}
	s.stop()

	ov := filepath.Join(e.dir, "overlays")
	s = e.serve("--writable", "--overlay-dir", ov)
	if n := boot(t, "file="+s.uri(export)+",format=raw,if=virtio,cache=none"); n != "1" {
		t.Fatalf("first writable boot counted %s", n)
	}
	s.stop()
	s = e.serve("--writable", "--overlay-dir", ov)
	if n := boot(t, "file="+s.uri(export)+",format=raw,if=virtio"); n != "2" {
		t.Fatalf("boot after a server restart counted %s, want 2 (overlay lost?)", n)
	}
	s.stop()
	if e.restoreSHA(id, "disk0") != want {
		t.Fatal("the restore point changed")
	}
	e.ok("vmvault", "verify")
}

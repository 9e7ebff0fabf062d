package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
)

// TestEncryptedCLI: init --encrypt with a password file; a full key and a
// capture key; what each may do; a wrong password is exit code 12.
func TestEncryptedCLI(t *testing.T) {
	dir := t.TempDir()
	full, capture, wrong := filepath.Join(dir, "full.pw"), filepath.Join(dir, "capture.pw"), filepath.Join(dir, "wrong.pw")
	os.WriteFile(full, []byte("full secret\n"), 0o600)
	os.WriteFile(capture, []byte("capture secret\n"), 0o600)
	os.WriteFile(wrong, []byte("nope\n"), 0o600)
	t.Setenv("VMVAULT_PASSWORD_FILE", full)
	e := newEnv(t, "--encrypt", "--chunk-size", "64KiB")
	src := filepath.Join(e.dir, "disk.raw")
	img := makeImage(t, src, 2<<20, 31)
	id1 := e.capture("--vm", "web01", "--disk", "disk0="+src).ID
	if out := e.ok("vmvault", "key", "add", "--capture-only", "--new-password-file", capture); !strings.Contains(out, "capture key") {
		t.Fatalf("key add: %s", out)
	}
	if out := e.ok("vmvault", "key", "list"); strings.Count(out, "slot-") != 2 || !strings.Contains(out, "capture") {
		t.Fatalf("key list: %s", out)
	}

	// The capture host: captures, cannot read.
	t.Setenv("VMVAULT_PASSWORD_FILE", capture)
	copy(img[100000:], []byte("changed by the guest"))
	os.WriteFile(src, img, 0o600)
	id2 := e.capture("--vm", "web01", "--disk", "disk0="+src).ID
	out := filepath.Join(e.dir, "restored.raw")
	if _, errs, code := e.run("vmvault", "restore", id2[:8], "--to", out); code != 1 || !strings.Contains(errs, "capture key") {
		t.Fatalf("restore with a capture key: exit %d\n%s", code, errs)
	}
	if o, errs, code := e.run("vmvault", "verify"); code != 0 {
		t.Fatalf("verify with a capture key: exit %d\n%s%s", code, o, errs)
	}
	if _, errs, code := e.run("vmvault", "key", "add", "--new-password-file", wrong); code == 0 || !strings.Contains(errs, "capture key") {
		t.Fatalf("key add with a capture key: exit %d\n%s", code, errs)
	}

	// A wrong password.
	t.Setenv("VMVAULT_PASSWORD_FILE", wrong)
	if _, errs, code := e.run("vmvault", "snapshots"); code != 12 || !strings.Contains(errs, "wrong password") {
		t.Fatalf("wrong password: exit %d\n%s", code, errs)
	}

	// The full key reads what the capture key wrote.
	t.Setenv("VMVAULT_PASSWORD_FILE", full)
	if e.restoreSHA(id2, "disk0") != sha(img) {
		t.Fatal("restore of the capture key's restore point differs")
	}
	e.ok("vmvault", "verify")
	e.ok("vmvault", "forget", id1)
	e.ok("vmvault", "gc", "--grace", "0")
	e.ok("vmvault", "verify")
}

// TestEncryptedCLIRoundTrip: a capture key captures a VM with a
// partitioned disk and a filesystem (full, extents, dedup); the full key
// serves it over NBD, mounts it, lists, cats and copies files, forgets,
// collects garbage and verifies — byte-identical to the sources; with the
// capture key every reading command fails naming the reason.
func TestEncryptedCLIRoundTrip(t *testing.T) {
	imgs := fstest.Images(t)
	dir := t.TempDir()
	full, capture := filepath.Join(dir, "full.pw"), filepath.Join(dir, "capture.pw")
	os.WriteFile(full, []byte("full secret\n"), 0o600)
	os.WriteFile(capture, []byte("capture secret\n"), 0o600)
	t.Setenv("VMVAULT_PASSWORD_FILE", full)
	e := newEnv(t, "--encrypt", "--insecure-kdf-for-tests", "--chunk-size", "64KiB")
	e.ok("vmvault", "key", "add", "--capture-only", "--insecure-kdf-for-tests", "--new-password-file", capture)

	t.Setenv("VMVAULT_PASSWORD_FILE", capture)
	mbr := filepath.Join(dir, "mbr.img")
	mbrBytes, err := os.ReadFile(filepath.Join(imgs, "mbr.img"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(mbr, mbrBytes, 0o600)
	ext4 := filepath.Join(imgs, "ext4.img")
	c1 := e.capture("--vm", "web01", "--disk", "disk0="+mbr, "--disk", "disk1="+ext4)
	// A guest write of 4 KiB at 64 KiB, reported as changed extents.
	copy(mbrBytes[64<<10:], bytes.Repeat([]byte{0xAB}, 4096))
	os.WriteFile(mbr, mbrBytes, 0o600)
	ext := filepath.Join(dir, "changed.tsv")
	os.WriteFile(ext, []byte("65536\t4096\n"), 0o600)
	c2 := e.capture("--vm", "web01", "--disk", "disk0="+mbr, "--changed-extents", "disk0="+ext, "--disk", "disk1="+ext4)
	if c2.Disks[0].Mode != "extents" || c2.Disks[0].NewChunks != 1 || c2.Disks[1].Mode != "dedup" || c2.Disks[1].NewChunks != 0 {
		t.Fatalf("capture-key incrementals: %+v", c2.Disks)
	}
	for _, args := range [][]string{
		{"restore", c2.ID, "--disk", "disk0", "--to", filepath.Join(dir, "x.img")},
		{"cat", "web01@latest:disk0/p6/hostname"},
		{"ls", "web01@latest:disk1/p0/"},
		{"serve", "--socket", filepath.Join(dir, "x.sock")},
		{"mount", t.TempDir()},
	} {
		if _, errs, code := e.run("vmvault", args...); code == 0 || !strings.Contains(errs, "capture key") {
			t.Errorf("%s with a capture key: exit %d: %s", args[0], code, errs)
		}
	}

	t.Setenv("VMVAULT_PASSWORD_FILE", full)
	if e.restoreSHA(c1.ID, "disk1") != fileSHA(t, ext4) || e.restoreSHA(c2.ID, "disk0") != sha(mbrBytes) {
		t.Fatal("restores differ")
	}
	if out := e.ok("vmvault", "cat", "web01@latest:disk0/p6/hostname"); out != "web01\n" {
		t.Fatalf("cat: %q", out)
	}
	if out := e.ok("vmvault", "ls", "web01@latest:disk1/p0/"); !strings.Contains(out, "abs-link") {
		t.Fatalf("ls: %s", out)
	}
	cpDir := t.TempDir()
	e.ok("vmvault", "cp", "web01@latest:disk0/p1/Sub Folder", cpDir)
	if b, err := os.ReadFile(filepath.Join(cpDir, "Sub Folder", "Nested", "deep file.txt")); err != nil || string(b) != "nested\n" {
		t.Fatalf("cp: %q %v", b, err)
	}
	if _, err := exec.LookPath("nbdcopy"); err == nil || os.Getenv("CI") != "" {
		s := e.serve()
		out := filepath.Join(dir, "nbd.img")
		sh(t, "nbdcopy", s.uri("web01@latest/disk0"), out)
		if fileSHA(t, out) != sha(mbrBytes) {
			t.Fatal("nbdcopy of an encrypted restore point differs")
		}
		s.stop()
	}
	if os.Getuid() == 0 {
		m := e.mount(t)
		if got, err := shaFile(t, filepath.Join(m.dir, "web01", "latest", "disks", "disk1.raw")); err != nil || got != fileSHA(t, ext4) {
			t.Fatalf("the disk through the mount: %v", err)
		}
		if b, err := os.ReadFile(filepath.Join(m.dir, "web01", "latest", "disk0", "p6", "hostname")); err != nil || string(b) != "web01\n" {
			t.Fatalf("a file through the mount: %q %v", b, err)
		}
		m.stop(t)
	}
	e.ok("vmvault", "forget", c1.ID)
	e.ok("vmvault", "gc", "--grace", "0")
	e.ok("vmvault", "verify")
	if e.restoreSHA(c2.ID, "disk1") != fileSHA(t, ext4) {
		t.Fatal("restore after forget and gc differs")
	}
}

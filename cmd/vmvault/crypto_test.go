package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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

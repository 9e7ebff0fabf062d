package repo

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/repo/backend/local"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
	"github.com/vmvault/vmvault/repo/keys"
)

// fastKDF keeps tests quick; real key slots are calibrated.
var fastKDF = keys.KDF{Alg: "argon2id", Time: 1, Memory: 8 << 10, Threads: 1}

func newEncryptedRepo(t *testing.T) (*Repository, string) {
	t.Helper()
	return newLocalRepoWith(t, InitOptions{ChunkSize: cs, Password: []byte("correct horse"), KDF: fastKDF})
}

func openAs(t *testing.T, dir, password string) (*Repository, error) {
	t.Helper()
	be, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return Open(context.Background(), be, Options{Password: func() ([]byte, error) { return []byte(password), nil }})
}

// TestEncryptedRoundTrip: a full key captures (full, dedup, extents),
// restores, verifies and collects garbage; a capture key captures too,
// but cannot read contents, and verifies only what it can.
func TestEncryptedRoundTrip(t *testing.T) {
	ctx := context.Background()
	r, dir := newEncryptedRepo(t)
	img := testImage(81, 20*cs)
	rp1 := capture(t, r, "vm", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))})
	img2 := append([]byte(nil), img...)
	copy(img2[3*cs:], bytes.Repeat([]byte{9}, 1000))
	rp2 := capture(t, r, "vm", rp1, DiskSource{Name: "d", Reader: bytes.NewReader(img2), Size: int64(len(img2))})
	if rp2.Disks[0].Stats.NewChunks != 1 {
		t.Fatalf("dedup capture stored %d chunks, want 1", rp2.Disks[0].Stats.NewChunks)
	}
	restoreEquals(t, r, rp1, "d", img)
	restoreEquals(t, r, rp2, "d", img2)

	name, err := r.AddKey(ctx, keys.KindCapture, []byte("hypervisor"), fastKDF)
	if err != nil {
		t.Fatal(err)
	}
	cr, err := openAs(t, dir, "hypervisor")
	if err != nil {
		t.Fatal(err)
	}
	if enc, canRead := cr.Encrypted(); !enc || canRead {
		t.Fatalf("capture key: encrypted %v, can read %v", enc, canRead)
	}
	img3 := append([]byte(nil), img2...)
	copy(img3[7*cs:], bytes.Repeat([]byte{7}, 5000))
	rps, _, _ := cr.ListRestorePoints(ctx)
	base := Latest(rps, "vm")
	rp3 := capture(t, cr, "vm", base, DiskSource{Name: "d", Reader: bytes.NewReader(img3), Size: int64(len(img3)),
		Changed: []extent.Range{{Offset: 7 * cs, Length: 5000}}})
	if s := rp3.Disks[0].Stats; s.Mode != "extents" || s.NewChunks != 1 {
		t.Fatalf("capture-key extents capture: %+v", s)
	}
	d, err := cr.OpenDisk(ctx, rp3, "d")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReadAt(make([]byte, 10), 0); !errors.Is(err, keys.ErrCaptureKey) {
		t.Fatalf("a capture key read chunk contents: %v", err)
	}
	if _, err := cr.AddKey(ctx, keys.KindFull, []byte("x"), fastKDF); !errors.Is(err, keys.ErrCaptureKey) {
		t.Fatalf("a capture key added a key: %v", err)
	}
	rep, err := cr.Verify(ctx, VerifyOptions{})
	if err != nil || !rep.OK() || !rep.ContentsUnchecked || rep.CheckedAllData {
		t.Fatalf("capture-key verify: %v %+v", err, rep)
	}
	// The full key reads what the capture key wrote.
	fr, err := openAs(t, dir, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	restoreEquals(t, fr, rp3, "d", img3)
	if rep, err := fr.Verify(ctx, VerifyOptions{}); err != nil || !rep.OK() || !rep.CheckedAllData {
		t.Fatalf("full-key verify: %v %+v", err, rep)
	}
	if err := fr.Forget(ctx, []string{rp1.ID.String()}); err != nil {
		t.Fatal(err)
	}
	if _, err := fr.GC(ctx, GCOptions{}); err != nil {
		t.Fatal(err)
	}
	restoreEquals(t, fr, rp2, "d", img2)
	if err := fr.RemoveKey(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := openAs(t, dir, "hypervisor"); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("a removed key still opens: %v", err)
	}
}

// TestKeyManagement: add a password, remove the old one, open with the
// new; the last full key stays; a wrong password is its own error.
func TestKeyManagement(t *testing.T) {
	ctx := context.Background()
	r, dir := newEncryptedRepo(t)
	slots, err := r.KeySlots(ctx)
	if err != nil || len(slots) != 1 || slots[0].Kind != keys.KindFull {
		t.Fatalf("slots: %+v %v", slots, err)
	}
	if err := r.RemoveKey(ctx, slots[0].Name); err == nil || !strings.Contains(err.Error(), "last full key") {
		t.Fatalf("removing the only key: %v", err)
	}
	if _, err := r.AddKey(ctx, keys.KindFull, []byte("new password"), fastKDF); err != nil {
		t.Fatal(err)
	}
	if err := r.RemoveKey(ctx, slots[0].Name); err != nil {
		t.Fatal(err)
	}
	if _, err := openAs(t, dir, "correct horse"); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("old password: %v", err)
	}
	if _, err := openAs(t, dir, "new password"); err != nil {
		t.Fatal(err)
	}
	be, _ := local.Open(dir)
	if _, err := Open(ctx, be, Options{}); !errors.Is(err, ErrNeedPassword) {
		t.Fatalf("open without a password: %v", err)
	}
}

// TestEncryptedTampering: a flipped byte in a chunk, an index, a manifest
// or a key object, and a chunk frame swapped for another valid one, are
// found; nothing panics.
func TestEncryptedTampering(t *testing.T) {
	ctx := context.Background()
	r, dir := newEncryptedRepo(t)
	img := testImage(91, 8*cs)
	rp := capture(t, r, "vm", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))})
	ids := mustIndex(t, r, rp).IDs

	// Swap: chunk 0's frame stored where chunk 4's belongs (both valid).
	frame0, err := r.be.Load(ctx, chunkHandle(ids[0]), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	pack4, off4, len4, _, _ := r.packs.Locate(ctx, ids[4])
	if int64(len(frame0)) <= len4 {
		p := filepath.Join(dir, "packs", pack4.String())
		os.Chmod(p, 0o600)
		f, _ := os.OpenFile(p, os.O_RDWR, 0)
		f.WriteAt(frame0, off4)
		f.Close()
	} else {
		t.Skip("chunk 0's frame is longer than chunk 4's")
	}
	// A flipped byte in chunk 1's ciphertext (its last byte: text chunks
	// compress to a few dozen bytes).
	frame1, err := r.be.Load(ctx, chunkHandle(ids[1]), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	flipChunkByte(t, r, dir, ids[1], int64(len(frame1)-1))
	r2, err := openAs(t, dir, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := r2.Verify(ctx, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bad := map[format.ID]bool{}
	for id := range rep.BadChunks {
		bad[id] = true
	}
	if !bad[ids[1]] || !bad[ids[4]] || len(rep.BadChunks) != 2 {
		t.Fatalf("verify after a flipped byte (%s) and a swapped frame (%s): %+v", ids[1].Short(), ids[4].Short(), rep.BadChunks)
	}
	// A manifest and an index with a flipped byte do not open.
	flipByte(t, filepath.Join(dir, "index", rp.Disks[0].Index), 40)
	flipByte(t, filepath.Join(dir, "snapshots", rp.ID.String()), 40)
	r3, err := openAs(t, dir, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	rps, badm, err := r3.ListRestorePoints(ctx)
	if err != nil || len(rps) != 0 || len(badm) != 1 || !errors.Is(badm[0].Err, keys.ErrTampered) {
		t.Fatalf("list after a flipped manifest byte: %v %v %v", rps, badm, err)
	}
	if _, err := r3.loadIndex(ctx, rp.Disks[0].Index); !errors.Is(err, keys.ErrTampered) {
		t.Fatalf("load of a flipped index: %v", err)
	}
	// A key object with a flipped byte opens with nothing.
	var slot string
	filepath.WalkDir(filepath.Join(dir, "keys"), func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), "slot-") {
			slot = p
		}
		return nil
	})
	b, _ := os.ReadFile(slot)
	i := bytes.Index(b, []byte(`"sealed": "`)) + 20
	b[i] ^= 1
	os.Chmod(slot, 0o600)
	os.WriteFile(slot, b, 0o600)
	if _, err := openAs(t, dir, "correct horse"); err == nil {
		t.Fatal("a damaged key slot opened")
	}
}

// TestNoPlaintext: a known 1 MiB pattern captured into an encrypted
// repository appears in no object, not even 64 bytes of it, and no object
// is named by the unkeyed hash of a chunk.
func TestNoPlaintext(t *testing.T) {
	r, dir := newEncryptedRepo(t)
	marker := make([]byte, 1<<20)
	for i := range marker {
		marker[i] = byte(i*7 + i/251)
	}
	img := append(append(testImage(99, 4*cs), marker...), testImage(98, 4*cs)...)
	capture(t, r, "vm", nil, DiskSource{Name: "d", Reader: bytes.NewReader(img), Size: int64(len(img))})
	unkeyed := map[string]bool{}
	for off := 0; off < len(img); off += cs {
		unkeyed[format.Hash(img[off:min(off+cs, len(img))]).String()] = true
	}
	windows := map[string]bool{}
	for off := 0; off+64 <= len(marker); off += 64 {
		windows[string(marker[off:off+64])] = true
	}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if unkeyed[d.Name()] {
			t.Errorf("%s is named by the unkeyed hash of a chunk", p)
		}
		b, _ := os.ReadFile(p)
		for i := 0; i+64 <= len(b); i++ {
			if windows[string(b[i:i+64])] {
				t.Errorf("%s holds 64 bytes of the marker at %d", p, i)
				return nil
			}
		}
		return nil
	})
}

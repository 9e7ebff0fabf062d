package cbt

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/backend/mem"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
)

// fakeSource answers ChangedRanges from a table: changed for any base, or
// err; it records the bases it was asked about.
type fakeSource struct {
	lineage string
	changed []extent.Range
	err     error
	asked   []BaseDisk
}

func (f *fakeSource) Describe(context.Context) (*Description, error) {
	return &Description{Lineage: f.lineage, Source: f.lineage}, nil
}
func (f *fakeSource) Open(context.Context, Disk) (io.ReaderAt, error) {
	return nil, errors.New("unused")
}
func (f *fakeSource) DataRanges(context.Context, Disk) ([]extent.Range, error) {
	return nil, nil
}
func (f *fakeSource) ChangedRanges(_ context.Context, _ Disk, b BaseDisk) ([]extent.Range, error) {
	f.asked = append(f.asked, b)
	return f.changed, f.err
}

func rp(id byte, lineage, source string, t int, disks ...format.ManifestDisk) *repo.RestorePoint {
	return &repo.RestorePoint{ID: format.ID{id}, Manifest: &format.Manifest{
		VM: "vm", Source: source, Lineage: lineage, Time: time.Unix(int64(t), 0), Disks: disks}}
}

func md(size int64, identity, token string) format.ManifestDisk {
	return format.ManifestDisk{Name: "d0", Size: size, Identity: identity, ChangeToken: token}
}

// TestPlanDisk covers the base choice and the full/dedup/extents decision
// every source shares.
func TestPlanDisk(t *testing.T) {
	file1 := rp(1, "file", "file", 1, md(100, "", ""))
	vs1 := rp(2, "vsphere:vm-1", "vsphere direct", 2, md(100, "u1", "c1"))
	ovl := rp(3, LineageOverlay, "overlay commit of restore point 01", 3, md(100, "", ""))
	legacyVS := &repo.RestorePoint{ID: format.ID{4}, Manifest: &format.Manifest{VM: "vm", Source: "vsphere https", Time: time.Unix(4, 0),
		Labels: map[string]string{"vsphere.vm": "vm-1", "vsphere.disk.d0.uuid": "u1"}, Disks: []format.ManifestDisk{md(100, "", "c1")}}}
	other := rp(5, "file", "file", 5, format.ManifestDisk{Name: "other", Size: 100})
	changes := []extent.Range{{Offset: 10, Length: 5}}
	noInfo := NoChangeInfo("cannot tell")
	tests := []struct {
		name     string
		lineage  string
		disk     Disk
		history  []*repo.RestorePoint // newest first
		opts     Options
		err      error
		wantMode string
		wantBase *repo.RestorePoint
		reason   string // substring of the reason
		askedAbt *repo.RestorePoint
	}{
		{"missing base", "file", Disk{Name: "d0", Size: 100}, nil, Options{}, nil, "full", nil, "no previous restore point", nil},
		{"same source", "file", Disk{Name: "d0", Size: 100}, []*repo.RestorePoint{file1}, Options{}, nil, "extents", file1, "", file1},
		{"other source is no extents base but dedups", "file", Disk{Name: "d0", Size: 100}, []*repo.RestorePoint{vs1}, Options{}, nil, "dedup", vs1, "no previous restore point of this source", nil},
		{"overlay commit newest: extents base is the older capture of the source", "vsphere:vm-1", Disk{Name: "d0", Size: 100, Identity: "u1"},
			[]*repo.RestorePoint{ovl, vs1, file1}, Options{}, nil, "extents", vs1, "", vs1},
		{"overlay commit newest, source refuses: dedup against the commit", "file", Disk{Name: "d0", Size: 100},
			[]*repo.RestorePoint{ovl, file1}, Options{}, noInfo, "dedup", ovl, "cannot tell", file1},
		{"changed size", "file", Disk{Name: "d0", Size: 200}, []*repo.RestorePoint{file1}, Options{}, nil, "dedup", file1, "size changed from 100 to 200", nil},
		{"changed identity", "vsphere:vm-1", Disk{Name: "d0", Size: 100, Identity: "u2"}, []*repo.RestorePoint{vs1}, Options{}, nil, "dedup", vs1, "identity changed from u1 to u2", nil},
		{"legacy vsphere manifest: lineage and identity from source text and labels", "vsphere:vm-1", Disk{Name: "d0", Size: 100, Identity: "u1"},
			[]*repo.RestorePoint{legacyVS}, Options{}, nil, "extents", legacyVS, "", legacyVS},
		{"legacy vsphere manifest, other uuid", "vsphere:vm-1", Disk{Name: "d0", Size: 100, Identity: "u9"},
			[]*repo.RestorePoint{legacyVS}, Options{}, nil, "dedup", legacyVS, "identity changed", nil},
		{"disk not in any restore point", "file", Disk{Name: "d0", Size: 100}, []*repo.RestorePoint{other}, Options{}, nil, "full", nil, "has the disk", nil},
		{"--full", "file", Disk{Name: "d0", Size: 100}, []*repo.RestorePoint{file1}, Options{Full: true}, nil, "full", nil, "--full", nil},
		{"forced base of another lineage", LineageOverlay, Disk{Name: "d0", Size: 100}, []*repo.RestorePoint{ovl, vs1}, Options{Base: vs1}, nil, "extents", vs1, "", vs1},
		{"forced base without the disk", LineageOverlay, Disk{Name: "d0", Size: 100}, nil, Options{Base: other}, nil, "full", nil, "disk not in restore point", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := &fakeSource{lineage: tc.lineage, changed: changes, err: tc.err}
			p, err := PlanDisk(context.Background(), src, tc.lineage, tc.disk, tc.history, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if p.Mode != tc.wantMode || p.Base != tc.wantBase || !strings.Contains(p.Reason, tc.reason) || (tc.reason == "") != (p.Reason == "") {
				t.Fatalf("plan = mode %s base %v reason %q; want mode %s base %v reason ~%q", p.Mode, p.Base, p.Reason, tc.wantMode, tc.wantBase, tc.reason)
			}
			if p.Mode == "extents" && (len(p.Changed) != 1 || p.Changed[0] != changes[0]) {
				t.Fatalf("changed = %v", p.Changed)
			}
			if tc.askedAbt == nil && len(src.asked) > 0 || tc.askedAbt != nil && (len(src.asked) != 1 || src.asked[0].RestorePoint != tc.askedAbt) {
				t.Fatalf("source asked about %v, want %v", src.asked, tc.askedAbt)
			}
			if len(src.asked) == 1 && len(tc.history) > 0 && src.asked[0].Latest != tc.history[0] {
				t.Fatalf("Latest = %v, want the newest restore point", src.asked[0].Latest)
			}
		})
	}
}

// TestPlanDiskRejectsBadRanges: a source that reports ranges outside the
// disk fails the capture instead of producing a wrong restore point.
func TestPlanDiskRejectsBadRanges(t *testing.T) {
	base := rp(1, "file", "file", 1, md(100, "", ""))
	src := &fakeSource{lineage: "file", changed: []extent.Range{{Offset: 90, Length: 20}}}
	if _, err := PlanDisk(context.Background(), src, "file", Disk{Name: "d0", Size: 100}, []*repo.RestorePoint{base}, Options{}); err == nil {
		t.Fatal("ranges past the disk's end accepted")
	}
	src = &fakeSource{lineage: "file", err: errors.New("network down")}
	if _, err := PlanDisk(context.Background(), src, "file", Disk{Name: "d0", Size: 100}, []*repo.RestorePoint{base}, Options{}); err == nil {
		t.Fatal("a source failure other than ErrNoChangeInfo turned into a full capture")
	}
}

// TestFileSourceAfterOverlayCommit reproduces the silent wrong restore
// point: after an overlay commit, a file capture with changed extents
// (relative to the file capture before it) must not build on the commit.
func TestFileSourceAfterOverlayCommit(t *testing.T) {
	ctx := context.Background()
	r, err := repo.Init(ctx, mem.New(), repo.InitOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	img := bytes.Repeat([]byte("source disk content "), 40000) // 800,000 bytes
	path := filepath.Join(dir, "disk.raw")
	write := func() {
		if err := os.WriteFile(path, img, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write()
	capture := func(fd FileDisk) *repo.RestorePoint {
		t.Helper()
		src, err := OpenFiles([]FileDisk{fd})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		rp, err := Capture(ctx, r, src, Options{VM: "vm"})
		if err != nil {
			t.Fatal(err)
		}
		return rp
	}
	first := capture(FileDisk{Name: "d0", Path: path})

	// The overlay commit: the booted restore point plus writes the source never saw.
	booted := append([]byte(nil), img...)
	copy(booted[300000:], bytes.Repeat([]byte{0xee}, 70000))
	commit, err := Capture(ctx, r, &DerivedSource{Repo: r, Base: first, Source: "overlay commit",
		Changes: map[string]Change{"d0": {Reader: bytes.NewReader(booted), Changed: []extent.Range{{Offset: 300000, Length: 70000}}}}},
		Options{VM: "vm", Base: first})
	if err != nil {
		t.Fatal(err)
	}
	if commit.Lineage != LineageOverlay || commit.Disks[0].Stats.Mode != "extents" || commit.Disks[0].Parent != first.ID.String() {
		t.Fatalf("overlay commit: %+v", commit.Disks[0])
	}

	// The source changes; its extents list covers only that change.
	copy(img[100000:], bytes.Repeat([]byte{0x11}, 1000))
	write()
	ext := filepath.Join(dir, "changed.tsv")
	os.WriteFile(ext, []byte("100000\t1000\n"), 0o600)
	next := capture(FileDisk{Name: "d0", Path: path, Extents: ext})
	d := next.Disks[0]
	if d.Stats.Mode != "dedup" || !strings.Contains(d.Stats.Reason, commit.ID.Short()) || d.Parent != commit.ID.String() {
		t.Fatalf("capture after the overlay commit: mode %s parent %s reason %q", d.Stats.Mode, d.Parent, d.Stats.Reason)
	}
	disk, err := r.OpenDisk(ctx, next, "d0")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(img))
	if _, err := disk.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, img) {
		t.Fatal("the restore point differs from the source disk")
	}

	// The next file capture builds on the file capture again.
	copy(img[500000:], bytes.Repeat([]byte{0x22}, 10))
	write()
	os.WriteFile(ext, []byte("500000\t10\n"), 0o600)
	last := capture(FileDisk{Name: "d0", Path: path, Extents: ext})
	if d := last.Disks[0]; d.Stats.Mode != "extents" || d.Parent != next.ID.String() {
		t.Fatalf("second capture after the commit: %+v", d)
	}

	// A missing extents list is an error, also on a VM's first capture.
	if _, err := OpenFiles([]FileDisk{{Name: "d0", Path: path, Extents: filepath.Join(dir, "nonexist.tsv")}}); err == nil {
		t.Fatal("a missing extents list was ignored")
	}
}

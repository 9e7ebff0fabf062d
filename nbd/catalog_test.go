package nbd

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/nbd/overlay"
	"github.com/vmvault/vmvault/nbd/proto"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/repotest"
)

func TestMatchExport(t *testing.T) {
	const id = "3fa4b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3"
	byID, latest := "web01/"+id+"/disk0", "web01@latest/disk0"
	cases := []struct {
		pattern, name string
		want          bool
	}{
		{"web01/*", byID, true}, // the README's and --help's example
		{"web01/*", latest, false},
		{"web01/*", "db01/" + id + "/disk0", false},
		{"web01/*/*", byID, true},
		{"web01/*/disk0", byID, true},
		{"web01/*/disk1", byID, false},
		{"web01@latest/*", latest, true},
		{"web01@latest/*", byID, false},
		{"web01@latest", latest, true},
		{"web01", byID, true},
		{"web01", latest, true},
		{"web0", latest, false},
		{"web*", latest, true},
		{"*@latest/disk0", latest, true},
		{"web01/3fa4b2c1", byID, true}, // an id as snapshots shows it
		{"web01/3FA4B2C1", byID, true},
		{"web01/3fa4b2c1/disk0", byID, true},
		{"web01/3fa4b2c2", byID, false},
		{"web01/3fa", byID, false}, // prefixes need 4 digits, as restore point names
		{"web01/3fa4b2c1?", byID, false},
		{"web01/" + id + "/disk0", byID, true},
		{"web01/" + id + "/disk0/x", byID, false},
		{"*", byID, true},
		{"*", latest, true},
		{"*/*", latest, true},
		{"db01", latest, false},
	}
	for _, c := range cases {
		if got := MatchExport(c.pattern, c.name); got != c.want {
			t.Errorf("MatchExport(%q, %q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
	for _, bad := range []string{"", "web01/[", "[/x"} {
		if CheckPattern(bad) == nil {
			t.Errorf("CheckPattern(%q) accepted", bad)
		}
	}
	if err := CheckPattern("web01/*"); err != nil {
		t.Error(err)
	}
}

// TestCatalogPatterns lists and opens exports of two VMs through patterns,
// by full names and id prefixes: what LIST shows is exactly what opens.
func TestCatalogPatterns(t *testing.T) {
	ctx := context.Background()
	r := repotest.New(t, repotest.Options{})
	img := testImage()[:100000]
	w1 := repotest.CapturePoint(t, r, repotest.Point{VM: "web01", Time: time.Unix(1000, 0), Disks: []repotest.Disk{repotest.Bytes("disk0", img), repotest.Bytes("disk1", img[:5000])}})
	w2 := repotest.CapturePoint(t, r, repotest.Point{VM: "web01", Time: time.Unix(2000, 0), Disks: []repotest.Disk{repotest.Bytes("disk0", img)}})
	db := repotest.CapturePoint(t, r, repotest.Point{VM: "db01", Time: time.Unix(1500, 0), Disks: []repotest.Disk{repotest.Bytes("sda", img[:7000])}})
	name := func(rp *repo.RestorePoint, disk string) string { return ExportName(rp, disk) }
	cases := []struct {
		patterns []string
		want     []string
	}{
		{nil, []string{name(db, "sda"), name(w1, "disk0"), name(w1, "disk1"), name(w2, "disk0"), "db01@latest/sda", "web01@latest/disk0"}},
		{[]string{"web01/*"}, []string{name(w1, "disk0"), name(w1, "disk1"), name(w2, "disk0")}},
		{[]string{"web01"}, []string{name(w1, "disk0"), name(w1, "disk1"), name(w2, "disk0"), "web01@latest/disk0"}},
		{[]string{"web01@latest/*"}, []string{"web01@latest/disk0"}},
		{[]string{"web01/" + w1.ID.Short()}, []string{name(w1, "disk0"), name(w1, "disk1")}},
		{[]string{"*/*/disk0", "db01@latest"}, []string{name(w1, "disk0"), name(w2, "disk0"), "db01@latest/sda"}},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.patterns, ","), func(t *testing.T) {
			cat := &RepoCatalog{Repo: r, Patterns: c.patterns}
			list, err := cat.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range list {
				got = append(got, e.Name)
			}
			slices.Sort(got)
			want := slices.Clone(c.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("LIST %q\nwant %q", got, want)
			}
			// every export of the repository opens exactly when listed,
			// by its full name and by an id prefix
			all, _ := (&RepoCatalog{Repo: r}).List(ctx)
			for _, e := range all {
				names := []string{e.Name}
				if parts := strings.Split(e.Name, "/"); len(parts) == 3 {
					names = append(names, parts[0]+"/"+parts[1][:8]+"/"+parts[2])
				}
				for _, n := range names {
					exp, err := cat.Open(ctx, n)
					if ok := slices.Contains(want, e.Name); ok != (err == nil) {
						t.Errorf("open %s: %v, listed %v", n, err, ok)
					}
					if err == nil {
						exp.Close()
					}
				}
			}
			unmatched, err := cat.UnmatchedPatterns(ctx)
			if err != nil || len(unmatched) != 0 {
				t.Errorf("unmatched patterns %q, %v", unmatched, err)
			}
		})
	}
	cat := &RepoCatalog{Repo: r, Patterns: []string{"web01/*", "web2/*"}}
	if u, _ := cat.UnmatchedPatterns(ctx); !slices.Equal(u, []string{"web2/*"}) {
		t.Errorf("unmatched patterns %q, want web2/*", u)
	}
}

// TestOverlayOnFirstWrite: listing, INFO, GO and reads of a writable
// export create no overlay; the first write does, a second connection
// sees it, and once it exists a new connection opens it at once (in use).
func TestOverlayOnFirstWrite(t *testing.T) {
	ovRoot := t.TempDir()
	f := newFixture(t, ovRoot)
	dir := overlay.Path(ovRoot, f.rp.ID.String(), "disk0")
	exists := func() bool {
		_, err := os.Stat(dir)
		return err == nil
	}
	tc := dialTest(t, f.sock)
	tc.option(proto.OptList, nil)
	for _, n := range []string{f.name(), "web01@latest/disk0"} {
		if r := tc.option(proto.OptInfo, nameReq(n, 0, 0)); r[len(r)-1].typ != proto.RepAck {
			t.Fatalf("INFO %s: %+v", n, r)
		}
	}
	tc.goExport(f.name(), true)
	if b, e, _ := tc.readAt(1000, 5000, 0); e != 0 || string(b) != string(f.img[1000:6000]) {
		t.Fatalf("read: errno %d", e)
	}
	if e := tc.simple(proto.CmdFlush, 0, 0, 0, nil); e != 0 {
		t.Fatalf("flush: errno %d", e)
	}
	tc2 := dialTest(t, f.sock)
	tc2.goExport("web01@latest/disk0", false)
	if exists() {
		t.Fatal("an overlay was created without a write")
	}

	p := []byte(strings.Repeat("w", 3000))
	if e := tc.simple(proto.CmdWrite, 0, 70000, uint32(len(p)), p); e != 0 {
		t.Fatalf("write: errno %d", e)
	}
	if !exists() || !overlay.InUse(dir) {
		t.Fatalf("no overlay in use after the first write (exists %v)", exists())
	}
	if b, e, _ := tc2.readAt(70000, len(p), 0); e != 0 || string(b) != string(p) {
		t.Fatal("the second connection does not see the first write")
	}
	tc.c.Close()
	tc2.c.Close()
	waitFor(t, func() bool { return !overlay.InUse(dir) })

	// It exists now: opening the export opens it (in use before a write).
	tc3 := dialTest(t, f.sock)
	tc3.goExport(f.name(), false)
	if !overlay.InUse(dir) {
		t.Error("an existing overlay is not opened with its export")
	}
	if b, e, _ := tc3.readAt(69999, len(p)+2, 0); e != 0 || string(b[1:len(p)+1]) != string(p) || b[0] != f.img[69999] {
		t.Error("a new connection does not read the overlay's data")
	}
	if tc3.flags&proto.FlagReadOnly != 0 {
		t.Errorf("writable export is read-only: flags %#x", tc3.flags)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i == 400 {
			t.Fatal("timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

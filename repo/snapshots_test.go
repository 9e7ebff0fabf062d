package repo

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo/format"
)

func TestSplitRestorePoint(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	mk := func(vm string, h int, id byte) *RestorePoint {
		var x format.ID
		x[0], x[1] = id, id
		return &RestorePoint{ID: x, Manifest: &format.Manifest{VM: vm, Time: t0.Add(time.Duration(h) * time.Hour)}}
	}
	rps := []*RestorePoint{mk("web01", 0, 0xa1), mk("web01", 24, 0xa2), mk("db", -1, 0xb1)}
	cases := []struct {
		arg     string
		want    int // index into rps, -1 error
		rest    string
		errLike string // for errors: a part of the message
	}{
		{"web01@latest:disk0/p2/etc/hostname", 1, "disk0/p2/etc/hostname", ""},
		{"web01@latest", 1, "", ""},
		{"web01@latest:", 1, "", ""},
		{"a1a1:disk0", 0, "disk0", ""},
		{rps[2].ID.String() + ":sda/p1", 2, "sda/p1", ""},
		// ':' inside the name: "web01@2026-11-23T10" is no restore point,
		// "web01@2026-11-23T10:00" is
		{"web01@2026-11-23T10:00:disk0/p1/x", 0, "disk0/p1/x", ""},
		{"web01@2026-11-24T10:00", 1, "", ""},
		// the first prefix that names a restore point wins
		{"web01@2026-11-23T10:00:30:disk0", 0, "30:disk0", ""},
		// a path may contain ':' (NTFS streams) after the restore point
		{"db@latest:disk0/p1/file:stream", 2, "disk0/p1/file:stream", ""},
		{"nope@latest:disk0", -1, "", `"nope@latest:disk0" does not start with a restore point (RP:DISK/PARTITION/PATH): restore point "nope@latest": no such restore point`},
		{"web01@2026-11-22:disk0", -1, "", "no such restore point"},
		{"a1:disk0", -1, "", "at least 4 hex digits"},
		{"", -1, "", "does not start with a restore point"},
	}
	for _, c := range cases {
		got, rest, err := SplitRestorePoint(rps, c.arg)
		if c.want < 0 {
			if err == nil || !strings.Contains(err.Error(), c.errLike) {
				t.Errorf("SplitRestorePoint(%q) = %v, %q, %v; want an error with %q", c.arg, got, rest, err, c.errLike)
			}
			continue
		}
		if err != nil || got != rps[c.want] || rest != c.rest {
			t.Errorf("SplitRestorePoint(%q) = %v, %q, %v; want restore point %d, %q", c.arg, got, rest, err, c.want, c.rest)
		}
	}
	if _, _, err := SplitRestorePoint(rps, "nope@latest:disk0"); !errors.Is(err, ErrNotFoundRP) {
		t.Errorf("error %v does not wrap ErrNotFoundRP", err)
	}
}

// TestResolveHints: a name that does not resolve but names a VM (or a VM
// without restore points) says what to write instead.
func TestResolveHints(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	var rps []*RestorePoint
	for i := 0; i < 7; i++ {
		var x format.ID
		x[0], x[1] = 0xa0+byte(i), byte(i)
		rps = append(rps, &RestorePoint{ID: x, Manifest: &format.Manifest{VM: "web01", Time: t0.Add(time.Duration(i) * time.Hour)}})
	}
	var db format.ID
	db[0] = 0xdb
	rps = append(rps, &RestorePoint{ID: db, Manifest: &format.Manifest{VM: "db", Time: t0}})
	cases := []struct {
		rps      []*RestorePoint
		name     string
		want     []string
		wantNot  []string
		notFound bool
	}{
		{rps, "web01", []string{`"web01": no such restore point; web01 is a VM: name one of its restore points as web01@latest, web01@TIME or by id: a6060000 (2026-11-23T16:00:00Z), a5050000`, "… 7 in all: vmvault snapshots --vm web01"}, []string{"a1010000"}, true},
		{rps, "db", []string{"db is a VM", "db@latest", "db000000 (2026-11-23T10:00:00Z)"}, []string{"in all", "4 hex digits"}, true},
		{rps, "web01@2026-11-22", []string{"web01 is a VM", "a6060000"}, nil, true},
		{rps, "web02@latest", []string{`no VM is named "web02" (VMs: db, web01)`}, nil, true},
		{nil, "web02@latest", []string{"the repository holds no restore points"}, nil, true},
		{rps, "cafe", []string{`restore point "cafe": no such restore point`}, []string{";"}, true},
		{rps, "ca", []string{"at least 4 hex digits"}, nil, false},
	}
	for _, c := range cases {
		_, err := Resolve(c.rps, c.name)
		if err == nil {
			t.Errorf("Resolve(%q) resolved", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Resolve(%q): %v\nwant %q in it", c.name, err, w)
			}
		}
		for _, w := range c.wantNot {
			if strings.Contains(err.Error(), w) {
				t.Errorf("Resolve(%q): %v\nwant no %q in it", c.name, err, w)
			}
		}
		if errors.Is(err, ErrNotFoundRP) != c.notFound {
			t.Errorf("Resolve(%q): %v wraps ErrNotFoundRP: %v", c.name, err, !c.notFound)
		}
	}
}

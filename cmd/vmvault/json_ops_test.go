package main

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
)

// TestOpsJSON: the documents forget, prune, gc and unlock print with
// --json, field by field (scripts depend on these names).
func TestOpsJSON(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	rp := func(b byte, vm string, h int) *repo.RestorePoint {
		var id format.ID
		id[0] = b
		return &repo.RestorePoint{ID: id, Manifest: &format.Manifest{VM: vm, Time: t0.Add(time.Duration(h) * time.Hour)}}
	}
	a, b := rp(0xaa, "web01", 1), rp(0xbb, "web01", 0)
	idA, idB := a.ID.String(), b.ID.String()

	policy := newForgetJSON(false)
	policy.addDecisions([]repo.Decision{{RestorePoint: a, Keep: true, Reasons: []string{"last 1"}}, {RestorePoint: b}})
	named := newForgetJSON(true)
	named.addNamed(b)
	named.addDamaged(idA)
	rep := &repo.GCReport{RestorePoints: 3, ReferencedChunks: 100, ReferencedIndexes: 4, RemovedChunks: 7, RemovedIndexes: 1, RemovedBytes: 12345, KeptYoung: 2, RemovedTemp: 1}
	gc := newGCJSON(rep, time.Hour, false)
	lock := repo.LockInfo{Name: "0123abcd", Lock: format.Lock{Exclusive: true, Operation: "gc", Hostname: "h", PID: 42, Started: t0, Refreshed: t0.Add(time.Minute)}}
	garbage := repo.LockInfo{Name: "garbage", Stale: true, StaleReason: "invalid character"}

	cases := []struct {
		name string
		v    any
		want string
	}{
		{"forget by policy", policy, `{"dry_run":false,"plan":[` +
			`{"id":"` + idA + `","short_id":"aa000000","vm":"web01","time":"2026-11-23T11:00:00Z","keep":true,"reasons":["last 1"]},` +
			`{"id":"` + idB + `","short_id":"bb000000","vm":"web01","time":"2026-11-23T10:00:00Z","keep":false}],` +
			`"removed":[{"id":"` + idB + `","short_id":"bb000000","vm":"web01","time":"2026-11-23T10:00:00Z"}]}`},
		{"forget by name, dry run", named, `{"dry_run":true,"removed":[` +
			`{"id":"` + idB + `","short_id":"bb000000","vm":"web01","time":"2026-11-23T10:00:00Z"},{"id":"` + idA + `","short_id":"aa000000"}]}`},
		{"forget nothing", newForgetJSON(false), `{"dry_run":false,"removed":[]}`},
		{"gc", gc, `{"dry_run":false,"grace_seconds":3600,"restore_points":3,"referenced_chunks":100,"referenced_indexes":4,` +
			`"removed_chunks":7,"removed_indexes":1,"removed_bytes":12345,"kept_young":2,"removed_temp":1}`},
		{"prune", pruneJSON{Forget: newForgetJSON(true), GC: newGCJSON(&repo.GCReport{}, 0, true)}, `{"forget":{"dry_run":true,"removed":[]},` +
			`"gc":{"dry_run":true,"grace_seconds":0,"restore_points":0,"referenced_chunks":0,"referenced_indexes":0,"removed_chunks":0,"removed_indexes":0,"removed_bytes":0,"kept_young":0,"removed_temp":0}}`},
		{"locks", newLocksJSON([]repo.LockInfo{lock, garbage}), `[{"name":"0123abcd","exclusive":true,"operation":"gc","hostname":"h","pid":42,` +
			`"started":"2026-11-23T10:00:00Z","refreshed":"2026-11-23T10:01:00Z","stale":false},` +
			`{"name":"garbage","exclusive":false,"stale":true,"stale_reason":"invalid character"}]`},
		{"no locks", newLocksJSON(nil), `[]`},
		{"unlock", unlockJSON{Removed: 2, All: true}, `{"removed":2,"all":true}`},
	}
	for _, c := range cases {
		var buf bytes.Buffer
		if err := cli.PrintJSON(&buf, c.v); err != nil {
			t.Fatal(err)
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, buf.Bytes()); err != nil {
			t.Fatal(err)
		}
		if compact.String() != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, compact.String(), c.want)
		}
	}
}

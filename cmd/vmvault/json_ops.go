package main

// The --json output of forget, prune, gc and unlock: one JSON document per
// command on stdout (cli.PrintJSON), nothing else there; warnings and
// errors stay on stderr. Wiring, per command:
//
//	forget:  j := newForgetJSON(dryRun); j.addNamed(rp) / j.addDamaged(id)
//	         for named restore points, or j.addDecisions(repo.ApplyPolicy(...))
//	         instead of policyFlags.plan's text; after r.Forget (or on a
//	         dry run) cli.PrintJSON(w, j).
//	gc:      cli.PrintJSON(w, newGCJSON(rep, grace, dryRun)).
//	prune:   cli.PrintJSON(w, pruneJSON{Forget: j, GC: newGCJSON(...)}),
//	         one document for both halves.
//	unlock:  --list: cli.PrintJSON(w, newLocksJSON(locks));
//	         removing: cli.PrintJSON(w, unlockJSON{Removed: n, All: all}).

import (
	"time"

	"github.com/vmvault/vmvault/repo"
)

// rpRefJSON names a restore point.
type rpRefJSON struct {
	ID      string `json:"id"`
	ShortID string `json:"short_id"`
	VM      string `json:"vm,omitempty"` // "" for a damaged manifest
	Time    string `json:"time,omitempty"`
}

func rpRef(rp *repo.RestorePoint) rpRefJSON {
	return rpRefJSON{ID: rp.ID.String(), ShortID: rp.ID.Short(), VM: rp.VM, Time: rp.Time.UTC().Format(time.RFC3339Nano)}
}

// decisionJSON is one line of a retention plan.
type decisionJSON struct {
	rpRefJSON
	Keep    bool     `json:"keep"`
	Reasons []string `json:"reasons,omitempty"` // why it is kept
}

// forgetJSON is what forget did (or, with dry_run, would do); prune's
// forget half.
type forgetJSON struct {
	DryRun bool `json:"dry_run"`
	// Plan is every restore point the policy looked at, newest first per
	// VM, when a policy (--keep-*) chose what to remove.
	Plan []decisionJSON `json:"plan,omitempty"`
	// Removed are the restore points removed (would be, on a dry run).
	Removed []rpRefJSON `json:"removed"`
}

func newForgetJSON(dryRun bool) *forgetJSON {
	return &forgetJSON{DryRun: dryRun, Removed: []rpRefJSON{}}
}

// addDecisions records a retention plan and the restore points it removes.
func (f *forgetJSON) addDecisions(ds []repo.Decision) {
	for _, d := range ds {
		f.Plan = append(f.Plan, decisionJSON{rpRefJSON: rpRef(d.RestorePoint), Keep: d.Keep, Reasons: d.Reasons})
		if !d.Keep {
			f.Removed = append(f.Removed, rpRef(d.RestorePoint))
		}
	}
}

// addNamed records a restore point named on the command line.
func (f *forgetJSON) addNamed(rp *repo.RestorePoint) { f.Removed = append(f.Removed, rpRef(rp)) }

// addDamaged records a restore point whose manifest cannot be read,
// named by its full id.
func (f *forgetJSON) addDamaged(id string) {
	short := id
	if len(short) > 8 {
		short = short[:8]
	}
	f.Removed = append(f.Removed, rpRefJSON{ID: id, ShortID: short})
}

// gcJSON is what gc did (or, with dry_run, would do).
type gcJSON struct {
	DryRun            bool    `json:"dry_run"`
	GraceSeconds      float64 `json:"grace_seconds"`
	RestorePoints     int     `json:"restore_points"`
	ReferencedChunks  int     `json:"referenced_chunks"`
	ReferencedIndexes int     `json:"referenced_indexes"`
	RemovedChunks     int     `json:"removed_chunks"`
	RemovedIndexes    int     `json:"removed_indexes"`
	RemovedBytes      int64   `json:"removed_bytes"`
	KeptYoung         int     `json:"kept_young"` // unreferenced, younger than the grace period
	RemovedTemp       int     `json:"removed_temp"`
}

func newGCJSON(rep *repo.GCReport, grace time.Duration, dryRun bool) gcJSON {
	return gcJSON{
		DryRun: dryRun, GraceSeconds: grace.Seconds(),
		RestorePoints: rep.RestorePoints, ReferencedChunks: rep.ReferencedChunks, ReferencedIndexes: rep.ReferencedIndexes,
		RemovedChunks: rep.RemovedChunks, RemovedIndexes: rep.RemovedIndexes, RemovedBytes: rep.RemovedBytes,
		KeptYoung: rep.KeptYoung, RemovedTemp: rep.RemovedTemp,
	}
}

// pruneJSON is prune's one document: its forget half, then its gc half.
type pruneJSON struct {
	Forget *forgetJSON `json:"forget"`
	GC     gcJSON      `json:"gc"`
}

// lockJSON is one lock of 'unlock --list'.
type lockJSON struct {
	Name      string     `json:"name"`
	Exclusive bool       `json:"exclusive"`
	Operation string     `json:"operation,omitempty"`
	Hostname  string     `json:"hostname,omitempty"`
	PID       int        `json:"pid,omitempty"`
	Started   *time.Time `json:"started,omitempty"`
	Refreshed *time.Time `json:"refreshed,omitempty"`
	Stale     bool       `json:"stale"`
	// StaleReason says why a stale lock is stale (also: why it cannot be
	// read).
	StaleReason string `json:"stale_reason,omitempty"`
}

func newLocksJSON(ls []repo.LockInfo) []lockJSON {
	out := make([]lockJSON, 0, len(ls))
	for _, l := range ls {
		j := lockJSON{Name: l.Name, Exclusive: l.Exclusive, Operation: l.Operation, Hostname: l.Hostname, PID: l.PID,
			Stale: l.Stale, StaleReason: l.StaleReason}
		if !l.Started.IsZero() {
			t := l.Started.UTC()
			j.Started = &t
		}
		if !l.Refreshed.IsZero() {
			t := l.Refreshed.UTC()
			j.Refreshed = &t
		}
		out = append(out, j)
	}
	return out
}

// unlockJSON is what unlock removed.
type unlockJSON struct {
	Removed int  `json:"removed"`
	All     bool `json:"all"` // --remove-all: active locks too
}

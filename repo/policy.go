package repo

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/format"
)

// Policy is a retention policy applied per VM: keep the newest Last restore
// points, and the newest restore point of each of the newest N hours, days,
// ISO weeks, months and years that have one (times in UTC).
type Policy struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
}

// Empty reports whether the policy keeps nothing (and so must not be used).
func (p Policy) Empty() bool { return p == Policy{} }

func (p Policy) String() string {
	var parts []string
	for _, b := range p.buckets() {
		if b.n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", b.name, b.n))
		}
	}
	return strings.Join(parts, ", ")
}

type bucket struct {
	name string
	n    int
	key  func(time.Time) string
}

func (p Policy) buckets() []bucket {
	return []bucket{
		{"last", p.Last, nil},
		{"hourly", p.Hourly, func(t time.Time) string { return t.Format("2006-01-02T15") }},
		{"daily", p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{"weekly", p.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }},
		{"monthly", p.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
		{"yearly", p.Yearly, func(t time.Time) string { return t.Format("2006") }},
	}
}

// Decision says whether a restore point is kept and why.
type Decision struct {
	RestorePoint *RestorePoint
	Keep         bool
	Reasons      []string
}

// ApplyPolicy decides for every restore point, VM by VM, newest first.
func ApplyPolicy(rps []*RestorePoint, p Policy) []Decision {
	byVM := map[string][]*RestorePoint{}
	var vms []string
	for _, rp := range rps {
		if _, ok := byVM[rp.VM]; !ok {
			vms = append(vms, rp.VM)
		}
		byVM[rp.VM] = append(byVM[rp.VM], rp)
	}
	sort.Strings(vms)
	var out []Decision
	for _, vm := range vms {
		list := byVM[vm]
		sort.SliceStable(list, func(i, j int) bool { return list[i].Time.After(list[j].Time) })
		decisions := make([]Decision, len(list))
		for i, rp := range list {
			decisions[i].RestorePoint = rp
		}
		for _, b := range p.buckets() {
			kept, last := 0, ""
			for i, rp := range list {
				if kept >= b.n {
					break
				}
				key := rp.ID.String() // "last": every restore point is its own bucket
				if b.key != nil {
					key = b.key(rp.Time.UTC())
				}
				if key == last {
					continue
				}
				last = key
				decisions[i].Keep = true
				decisions[i].Reasons = append(decisions[i].Reasons, b.name)
				kept++
			}
		}
		out = append(out, decisions...)
	}
	return out
}

// Forget removes restore point manifests (by object name, so even a damaged
// manifest can be removed). Their chunks stay until gc. It takes no lock:
// readers and captures that pin a forgotten restore point keep its data
// until they release it (see the package doc).
//
// Restore points an object lock still protects are left alone; the error
// (a *ProtectedError) says which, and until when, after the others are
// forgotten.
func (r *Repository) Forget(ctx context.Context, names []string) error {
	var prot *ProtectedError
	for _, n := range names {
		id, err := format.ParseID(n)
		if err != nil {
			return fmt.Errorf("forget: %w", err)
		}
		if until, err := r.ProtectedUntil(ctx, id); err != nil && !errors.Is(err, backend.ErrNotFound) {
			return fmt.Errorf("forget: %w", err)
		} else if !until.IsZero() {
			if prot == nil {
				prot = &ProtectedError{Until: map[string]time.Time{}}
			}
			prot.Until[n] = until
			continue
		}
		if err := r.be.Remove(ctx, backend.Handle{Type: backend.SnapshotFile, Name: n}); err != nil {
			return fmt.Errorf("forget %s: %w", n[:8], err)
		}
	}
	if prot != nil {
		return prot
	}
	return nil
}

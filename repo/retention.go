package repo

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/format"
)

// Immutable restore points. A repository created with an object lock
// period (format.Config.ObjectLockSeconds) has every object but locks
// written with a retention of that period by its backend (S3 Object
// Lock): until then nobody — not a stolen key with delete permission
// either — can delete or overwrite it. forget, prune and gc know the
// period and leave protected objects alone, saying until when, instead of
// failing on them; the backend is the last line of defense.

// ErrProtected means an object lock still protects a restore point.
var ErrProtected = errors.New("protected by the object lock")

// retain tells a backend that can retain objects (backend.Retainer) to
// give every object the config's object lock. A backend that cannot
// (a local directory) gets none: forget, prune and gc still honour the
// period.
func retain(ctx context.Context, be backend.Backend, cfg *format.Config) error {
	if cfg.ObjectLockSeconds == 0 {
		return nil
	}
	rt, ok := backend.Find[backend.Retainer](be)
	if !ok {
		return nil
	}
	return rt.Retain(ctx, time.Duration(cfg.ObjectLockSeconds)*time.Second, cfg.ObjectLockMode)
}

// lockPeriod is the object lock period (0: none).
func (r *Repository) lockPeriod() time.Duration {
	return time.Duration(r.cfg.ObjectLockSeconds) * time.Second
}

// protectedUntil is when an object written at mtime (storage clock) can
// be removed; zero when it can now.
func (r *Repository) protectedUntil(mtime time.Time) time.Time {
	p := r.lockPeriod()
	if p == 0 || mtime.IsZero() {
		return time.Time{}
	}
	until := mtime.Add(p)
	if !until.After(r.storageNow()) {
		return time.Time{}
	}
	return until
}

// ProtectedUntil says until when the object lock protects a restore point
// (its manifest, and with it what it references); zero when it does not.
func (r *Repository) ProtectedUntil(ctx context.Context, id format.ID) (time.Time, error) {
	if r.lockPeriod() == 0 {
		return time.Time{}, nil
	}
	fi, err := r.be.Stat(ctx, snapshotHandle(id))
	if err != nil {
		return time.Time{}, fmt.Errorf("restore point %s: %w", id.Short(), err)
	}
	return r.protectedUntil(fi.ModTime), nil
}

// ProtectedError lists restore points forget left alone.
type ProtectedError struct {
	Until map[string]time.Time // by restore point id
}

func (e *ProtectedError) Error() string {
	var parts []string
	for id, t := range e.Until {
		parts = append(parts, fmt.Sprintf("%s until %s", id[:min(8, len(id))], t.UTC().Format(time.RFC3339)))
	}
	return fmt.Sprintf("%d restore points are protected by the object lock and were kept: %s", len(parts), strings.Join(parts, ", "))
}

func (e *ProtectedError) Unwrap() error { return ErrProtected }

// removable reports whether the object lock allows removing an object of
// type t written at mtime (lock objects are never retained).
func (r *Repository) removable(t backend.FileType, mtime time.Time) bool {
	return t == backend.LockFile || r.protectedUntil(mtime).IsZero()
}

package format

import (
	"encoding/json"
	"fmt"
	"time"
)

// Lock kinds. Readers pin the restore points they read, writers add
// objects (and pin their bases), maintenance (gc) runs one at a time.
// Locks written before kinds existed have none: Exclusive ones are
// maintenance, shared ones are taken for writers (the conservative
// reading).
const (
	LockReader      = "reader"
	LockWriter      = "writer"
	LockMaintenance = "maintenance"
)

// Lock is the content of a lock object. A lock is refreshed (or its pins
// changed) by writing a new object and removing the old one, so lock
// objects stay immutable.
type Lock struct {
	// Exclusive is set on maintenance locks, so that builds that know only
	// shared and exclusive locks keep out of a gc's way.
	Exclusive bool      `json:"exclusive"`
	Kind      string    `json:"kind,omitempty"`
	Operation string    `json:"operation"`
	Hostname  string    `json:"hostname"`
	PID       int       `json:"pid"`
	Started   time.Time `json:"started"`
	Refreshed time.Time `json:"refreshed"`
	// Epoch is the backend's modification time of the holder's first lock
	// object: when the lock became visible, on the storage's clock. gc
	// compares it with other storage times, never with a host's clock.
	Epoch time.Time `json:"epoch,omitzero"`
	// Pins names restore points the holder reads or builds on, and Indexes
	// their disk indexes: gc keeps those indexes and their chunks while the
	// lock lives, even when the restore points are forgotten meanwhile.
	Pins    []string `json:"pins,omitempty"`
	Indexes []string `json:"indexes,omitempty"`
	// Phase is LockPhaseDeleting on a gc's lock while it removes objects
	// (and while it waits for running writers to finish before it does),
	// and LockPhaseWaiting on a writer's lock while it waits for such a gc
	// and has not touched the repository.
	Phase string `json:"phase,omitempty"`
}

// Lock phases.
const (
	LockPhaseDeleting = "deleting"
	LockPhaseWaiting  = "waiting"
)

// EffectiveKind is the lock's kind, derived for locks without one.
func (l *Lock) EffectiveKind() string {
	switch {
	case l.Kind != "":
		return l.Kind
	case l.Exclusive:
		return LockMaintenance
	}
	return LockWriter
}

// Marshal encodes a lock.
func (l *Lock) Marshal() ([]byte, error) { return json.Marshal(l) }

// maxLockPins bounds the pins one lock object may carry when parsed.
const maxLockPins = 1 << 20

// ParseLock decodes a lock.
func ParseLock(b []byte) (*Lock, error) {
	var l Lock
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("lock: %v: %w", err, ErrCorrupt)
	}
	if l.PID < 0 || l.Refreshed.IsZero() || l.Started.IsZero() {
		return nil, fmt.Errorf("lock: missing fields: %w", ErrCorrupt)
	}
	switch l.Kind {
	case "", LockReader, LockWriter, LockMaintenance:
	default:
		return nil, fmt.Errorf("lock: unknown kind %q: %w", l.Kind, ErrCorrupt)
	}
	if l.Phase != "" && l.Phase != LockPhaseDeleting && l.Phase != LockPhaseWaiting {
		return nil, fmt.Errorf("lock: unknown phase %q: %w", l.Phase, ErrCorrupt)
	}
	if len(l.Pins) > maxLockPins || len(l.Indexes) > maxLockPins {
		return nil, fmt.Errorf("lock: too many pins: %w", ErrCorrupt)
	}
	for _, s := range append(append([]string(nil), l.Pins...), l.Indexes...) {
		if _, err := ParseID(s); err != nil {
			return nil, fmt.Errorf("lock: pin: %v: %w", err, ErrCorrupt)
		}
	}
	return &l, nil
}

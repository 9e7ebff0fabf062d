package format

import (
	"encoding/json"
	"fmt"
	"time"
)

// Lock is the content of a lock object. A lock is refreshed by writing a new
// object and removing the old one, so lock objects stay immutable.
type Lock struct {
	Exclusive bool      `json:"exclusive"`
	Operation string    `json:"operation"`
	Hostname  string    `json:"hostname"`
	PID       int       `json:"pid"`
	Started   time.Time `json:"started"`
	Refreshed time.Time `json:"refreshed"`
}

// Marshal encodes a lock.
func (l *Lock) Marshal() ([]byte, error) { return json.Marshal(l) }

// ParseLock decodes a lock.
func ParseLock(b []byte) (*Lock, error) {
	var l Lock
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("lock: %v: %w", err, ErrCorrupt)
	}
	if l.PID < 0 || l.Refreshed.IsZero() || l.Started.IsZero() {
		return nil, fmt.Errorf("lock: missing fields: %w", ErrCorrupt)
	}
	return &l, nil
}

package format

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// StateVersion is the version of the repository state objects below.
const StateVersion = 1

// Damaged is the list of chunks verify found damaged and no verify has
// found good since. Captures store these chunks again instead of trusting
// an index that lists them; the damaged copy was set aside first
// (Quarantine names it).
type Damaged struct {
	Version int            `json:"version"`
	Chunks  []DamagedChunk `json:"chunks"`
}

// DamagedChunk is one entry of Damaged.
type DamagedChunk struct {
	ID      string    `json:"id"`
	Problem string    `json:"problem"`
	Found   time.Time `json:"found"`
	// Quarantine is the state object holding the damaged bytes as found
	// ("" when the chunk was missing).
	Quarantine string `json:"quarantine,omitempty"`
}

// VerifyRecord says when a restore point was last verified, and how.
type VerifyRecord struct {
	Version      int       `json:"version"`
	RestorePoint string    `json:"restore_point"`
	Time         time.Time `json:"time"`
	OK           bool      `json:"ok"`
	// AllData is set when every chunk was read and checked (not a subset,
	// not existence only); only such records let a later verify skip the
	// restore point.
	AllData bool `json:"all_data"`
	Damaged int  `json:"damaged"` // damage entries (bad chunks by offset, bad indexes)
}

// maxStateEntries bounds the entries a state object may hold when parsed.
const maxStateEntries = 1 << 26

// ParseDamaged decodes and checks a damaged list.
func ParseDamaged(b []byte) (*Damaged, error) {
	var d Damaged
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("damaged list: %v: %w", err, ErrCorrupt)
	}
	if d.Version != StateVersion {
		return nil, fmt.Errorf("damaged list version %d: %w", d.Version, ErrUnsupportedVersion)
	}
	if len(d.Chunks) > maxStateEntries {
		return nil, fmt.Errorf("damaged list: %d entries: %w", len(d.Chunks), ErrCorrupt)
	}
	for _, c := range d.Chunks {
		if _, err := ParseID(c.ID); err != nil {
			return nil, fmt.Errorf("damaged list: %v: %w", err, ErrCorrupt)
		}
	}
	return &d, nil
}

// Marshal encodes a damaged list, sorted by id.
func (d *Damaged) Marshal() ([]byte, error) {
	d.Version = StateVersion
	slices.SortFunc(d.Chunks, func(a, b DamagedChunk) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return json.MarshalIndent(d, "", " ")
}

// ParseVerifyRecord decodes and checks a verify record.
func ParseVerifyRecord(b []byte) (*VerifyRecord, error) {
	var v VerifyRecord
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("verify record: %v: %w", err, ErrCorrupt)
	}
	if v.Version != StateVersion {
		return nil, fmt.Errorf("verify record version %d: %w", v.Version, ErrUnsupportedVersion)
	}
	if _, err := ParseID(v.RestorePoint); err != nil || v.Time.IsZero() {
		return nil, fmt.Errorf("verify record: bad restore point or time: %w", ErrCorrupt)
	}
	return &v, nil
}

// Marshal encodes a verify record.
func (v *VerifyRecord) Marshal() ([]byte, error) {
	v.Version = StateVersion
	return json.Marshal(v)
}

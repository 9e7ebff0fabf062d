// Package format defines every byte vmvault writes into a repository: the
// config, chunk frames, fixed disk indexes, restore point manifests and lock
// files. One file per format; each parser treats its input as hostile
// (bounds-checked, no allocation driven by an unchecked length, no panic)
// and is fuzzed.
//
// Invariants:
//   - Every format carries a version; readers reject versions they do not
//     know with ErrUnsupportedVersion instead of guessing.
//   - Chunks are addressed by the BLAKE3-256 hash of their raw content. The
//     all-zero ID (ZeroID) is reserved for all-zero chunks, which are never
//     stored.
//   - A fixed index holds one ID per chunk of a disk and a checksum over all
//     IDs, so a damaged or truncated index is detected on open.
//
// Magic values and version numbers below are frozen: changing them makes
// existing repositories unreadable.
package format

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"

	"github.com/zeebo/blake3"
)

// Format versions this build reads and writes.
const (
	ConfigVersion   = 3 // 2: chunk frames in packs; 3: encrypted
	IndexVersion    = 1
	ManifestVersion = 1
	ChunkVersion    = 1
)

// Limits on the chunk size chosen at init.
const (
	MinChunkSize     = 64 << 10
	MaxChunkSize     = 8 << 20
	DefaultChunkSize = 256 << 10
)

// HashBLAKE3 is the only chunk hash so far; the config records it.
const HashBLAKE3 = "blake3"

// ErrUnsupportedVersion marks data written by a newer (or unknown) format.
var ErrUnsupportedVersion = errors.New("unsupported format version")

// ErrCorrupt marks data that fails its own consistency checks.
var ErrCorrupt = errors.New("corrupt data")

// ID names a chunk (or an index, or a restore point) by content hash.
type ID [32]byte

// ZeroID stands for an all-zero chunk in an index; it is never stored.
var ZeroID ID

// Hash returns the ID of data.
func Hash(data []byte) ID { return ID(blake3.Sum256(data)) }

// String returns the lowercase hex form.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 8 hex digits, for display.
func (id ID) Short() string { return id.String()[:8] }

// IsZero reports whether id is ZeroID.
func (id ID) IsZero() bool { return id == ZeroID }

// ParseID parses a 64-digit lowercase hex ID.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 64 {
		return id, fmt.Errorf("parse id %q: want 64 hex digits", s)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("parse id %q: %w", s, err)
	}
	if id.String() != s {
		return id, fmt.Errorf("parse id %q: not lowercase hex", s)
	}
	return id, nil
}

// ValidChunkSize reports whether n is a power of two within the limits.
func ValidChunkSize(n int64) error {
	if n < MinChunkSize || n > MaxChunkSize || bits.OnesCount64(uint64(n)) != 1 {
		return fmt.Errorf("chunk size %d: must be a power of two from %d to %d", n, MinChunkSize, MaxChunkSize)
	}
	return nil
}

// ChunkCount returns how many chunks of chunkSize cover size bytes.
func ChunkCount(size, chunkSize int64) int64 {
	return (size + chunkSize - 1) / chunkSize
}

var zeroBlock [64 << 10]byte

// IsZero reports whether every byte of b is zero. It runs on every chunk a
// capture reads, so it compares against a static zero block with the
// vectorised bytes.Equal.
func IsZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

package format

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Manifest describes one restore point. It is JSON, stored as a snapshot
// object named by the hash of its bytes, and written last: a restore point
// exists exactly when its manifest does.
type Manifest struct {
	Version int       `json:"version"`
	VM      string    `json:"vm"`
	Time    time.Time `json:"time"`
	Source  string    `json:"source,omitempty"`
	// Lineage names the chain of captures this restore point continues
	// ("file", "vsphere:vm-42", "overlay-commit"): a changed-ranges
	// incremental only builds on a restore point of its own lineage.
	// Empty in restore points written before it existed.
	Lineage  string            `json:"lineage,omitempty"`
	Hostname string            `json:"hostname,omitempty"`
	Tags     []string          `json:"tags,omitempty"`
	Disks    []ManifestDisk    `json:"disks"`
	Config   json.RawMessage   `json:"config,omitempty"` // source VM configuration, kept verbatim
	Labels   map[string]string `json:"labels,omitempty"`
	// Origin is set on a restore point vmvault copy wrote with chunks
	// encoded anew (different keys or chunk size): the repository and
	// restore point it is a copy of. A copy of stored frames is the
	// source's manifest byte for byte (same id) and has none.
	Origin *Origin `json:"origin,omitempty"`
}

// Origin names the restore point a copy was made from.
type Origin struct {
	Repository   string `json:"repository"`    // the source repository's config id
	RestorePoint string `json:"restore_point"` // its id there
}

// ManifestDisk describes one disk of a restore point.
type ManifestDisk struct {
	Name        string `json:"name"`
	Size        int64  `json:"size"`
	ChunkSize   int64  `json:"chunk_size"`
	Index       string `json:"index"`
	ChangeToken string `json:"change_token,omitempty"`
	// Identity is the source's stable identity of the disk (a vSphere disk
	// uuid), when it has one.
	Identity string    `json:"identity,omitempty"`
	Parent   string    `json:"parent,omitempty"` // restore point id this disk was captured against
	Stats    DiskStats `json:"stats"`
}

// DiskStats records what a capture did for one disk.
type DiskStats struct {
	Mode   string `json:"mode"` // "full", "dedup" or "extents"
	Reason string `json:"reason,omitempty"`
	// BytesChanged is what the source reported changed since the parent
	// (extents mode).
	BytesChanged int64  `json:"bytes_changed,omitempty"`
	BytesRead    int64  `json:"bytes_read"`
	Chunks       int64  `json:"chunks"`
	ZeroChunks   int64  `json:"zero_chunks"`
	NewChunks    int64  `json:"new_chunks"`
	BytesStored  int64  `json:"bytes_stored"`
	DurationSecs Float3 `json:"duration_seconds"`
	// Skipped, when set, records that the capture skipped what the guest's
	// filesystems do not use (free space, swap): restore points written
	// before it existed, and captures that skip nothing, have none.
	Skipped *SkipStats `json:"skipped,omitempty"`
}

// SkipStats records what a capture did not read because the guest does
// not use it: those bytes of the disk read as zeros in this restore
// point, whatever the source held there (deleted files' data among them).
type SkipStats struct {
	FreeSpace bool `json:"free_space,omitempty"` // free blocks were skipped
	Swap      bool `json:"swap,omitempty"`       // swap partitions and page files were skipped
	// Bytes is what was skipped in the chunks this capture read: all of
	// the disk (Scope "disk"), or in an extents incremental the chunks
	// its changed ranges touched (Scope "changed"; the other chunks are
	// the parent's, with what the parent skipped).
	Bytes int64  `json:"bytes"`
	Scope string `json:"scope"`
	// Volumes says, per partition, what was found to skip and why a
	// partition was read in full.
	Volumes []SkipVolume `json:"volumes,omitempty"`
	Note    string       `json:"note,omitempty"`
}

// SkipVolume is one partition of a SkipStats.
type SkipVolume struct {
	Partition  string `json:"partition"`
	Filesystem string `json:"filesystem,omitempty"`
	Offset     int64  `json:"offset"`
	Size       int64  `json:"size"`
	Bytes      int64  `json:"bytes"`  // found to skip in the partition
	Ranges     int    `json:"ranges"` // in that many ranges
	What       string `json:"what,omitempty"`
	ReadInFull string `json:"read_in_full,omitempty"` // why nothing is skipped
}

// Float3 is a float printed with millisecond precision.
type Float3 float64

// MarshalJSON implements json.Marshaler.
func (f Float3) MarshalJSON() ([]byte, error) { return []byte(fmt.Sprintf("%.3f", float64(f))), nil }

// ValidName checks a VM, disk or tag name: 1–200 bytes of printable UTF-8
// without '/', '\\', ':', '@' (separators in restore point paths), and not
// "." or "..".
func ValidName(kind, s string) error {
	if s == "" || len(s) > 200 || !utf8.ValidString(s) || s == "." || s == ".." {
		return fmt.Errorf("invalid %s name %q", kind, s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || strings.ContainsRune(`/\:@`, r) {
			return fmt.Errorf("invalid %s name %q: character %q not allowed", kind, s, r)
		}
	}
	return nil
}

// Marshal encodes the manifest after validating it.
func (m *Manifest) Marshal() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return json.MarshalIndent(m, "", "  ")
}

// Validate checks the fields a reader relies on.
func (m *Manifest) Validate() error {
	if m.Version != ManifestVersion {
		return fmt.Errorf("manifest version %d: %w", m.Version, ErrUnsupportedVersion)
	}
	if err := ValidName("VM", m.VM); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if m.Time.IsZero() {
		return fmt.Errorf("manifest: no capture time: %w", ErrCorrupt)
	}
	for _, t := range m.Tags {
		if err := ValidName("tag", t); err != nil {
			return fmt.Errorf("manifest: %w", err)
		}
	}
	if len(m.Disks) == 0 {
		return fmt.Errorf("manifest: no disks: %w", ErrCorrupt)
	}
	if m.Origin != nil {
		if _, err := ParseID(m.Origin.RestorePoint); err != nil || m.Origin.Repository == "" {
			return fmt.Errorf("manifest: origin %+v: %w", *m.Origin, ErrCorrupt)
		}
	}
	seen := map[string]bool{}
	for _, d := range m.Disks {
		if err := ValidName("disk", d.Name); err != nil {
			return fmt.Errorf("manifest: %w", err)
		}
		if seen[d.Name] {
			return fmt.Errorf("manifest: disk %q twice: %w", d.Name, ErrCorrupt)
		}
		seen[d.Name] = true
		if d.Size < 0 || d.Size > MaxDiskSize {
			return fmt.Errorf("manifest: disk %q size %d out of range: %w", d.Name, d.Size, ErrCorrupt)
		}
		if err := ValidChunkSize(d.ChunkSize); err != nil {
			return fmt.Errorf("manifest: disk %q: %v: %w", d.Name, err, ErrCorrupt)
		}
		if _, err := ParseID(d.Index); err != nil {
			return fmt.Errorf("manifest: disk %q index: %v: %w", d.Name, err, ErrCorrupt)
		}
		if d.Parent != "" {
			if _, err := ParseID(d.Parent); err != nil {
				return fmt.Errorf("manifest: disk %q parent: %v: %w", d.Name, err, ErrCorrupt)
			}
		}
	}
	return nil
}

// ParseManifest decodes and validates a manifest.
func ParseManifest(b []byte) (*Manifest, error) {
	var probe struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, fmt.Errorf("manifest: %v: %w", err, ErrCorrupt)
	}
	if probe.Version != ManifestVersion {
		return nil, fmt.Errorf("manifest version %d: %w", probe.Version, ErrUnsupportedVersion)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest: %v: %w", err, ErrCorrupt)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Lines describes the skip record for people: what was skipped, then one
// line per partition (vmvault show, capture output, the mount's
// vmvault-skipped.txt).
func (s *SkipStats) Lines() []string {
	var asked []string
	if s.FreeSpace {
		asked = append(asked, "free space")
	}
	if s.Swap {
		asked = append(asked, "swap")
	}
	where := "the whole disk"
	if s.Scope == "changed" {
		where = "the chunks this incremental read (the others are the parent's, with what it skipped)"
	}
	out := []string{fmt.Sprintf("%s (%s) in %s, reading as zeros", iec(s.Bytes), strings.Join(asked, " and "), where)}
	if s.Note != "" {
		out = append(out, s.Note)
	}
	for _, v := range s.Volumes {
		fsys := v.Filesystem
		if fsys == "" {
			fsys = "unknown"
		}
		head := fmt.Sprintf("%s (%s, %s at %s)", v.Partition, fsys, iec(v.Size), iec(v.Offset))
		if v.ReadInFull != "" {
			out = append(out, fmt.Sprintf("%s: read in full: %s", head, v.ReadInFull))
			continue
		}
		out = append(out, fmt.Sprintf("%s: %s, %s in %d ranges", head, v.What, iec(v.Bytes), v.Ranges))
	}
	return out
}

// iec writes a byte count as people read it (1.5 GiB).
func iec(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n), 0
	for v >= 1024 && unit < 6 {
		v /= 1024
		unit++
	}
	return fmt.Sprintf("%.1f %ciB", v, " KMGTPE"[unit])
}

// Package cbt is vmvault's capture layer: source → cbt.Capture → repo
// writer → backend.
//
// A Source (capture.go) describes a VM's disks as of one capture (size,
// identity, change token), opens them, and answers two questions: which
// ranges may hold data, and which changed since a given earlier restore
// point. Capture alone decides, for every disk, which restore point it
// builds on and whether it may read only changed ranges (PlanDisk), and
// records the decision with its reason in the manifest. Adapters stay
// small: raw files and block devices with changed-extent lists
// (FileSource), a restore point with known changes (DerivedSource, and
// cbt/overlay for overlay commit), vSphere snapshots with Changed Block
// Tracking (cbt/vsphere). Options.SkipFreeSpace and SkipSwap narrow any
// source's reads to what the guest's filesystems use (skip.go).
//
// This file holds what plain sources share: opening image files and block
// devices, their allocated ranges, and changed-extent lists in text form
// (one "offset<TAB>length" line per range, bytes, as CBT tools write them).
//
// Invariants: a changed-range list handed to the writer lies within the
// disk and is sorted and merged; anything malformed is an error, never a
// silently shorter list. A changed-ranges incremental only builds on a
// restore point of the source's own lineage with the same disk size and
// identity, and only with the source's say-so; everything else reads the
// whole disk (a missed range would be a silently wrong restore point).
package cbt

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/repo/extent"
)

// File is a raw disk image file or block device opened for reading.
type File struct {
	*os.File
	size int64
}

// OpenFile opens path and determines its size (also for block devices).
func OpenFile(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open source disk: %w", err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("size of source disk %s: %w", path, err)
	}
	return &File{File: f, size: size}, nil
}

// Size returns the disk size in bytes.
func (f *File) Size() int64 { return f.size }

// DataRanges returns the ranges of a sparse file that hold data, from
// SEEK_DATA/SEEK_HOLE; everything else reads as zeros. It returns nil when
// the file or filesystem cannot tell (block devices, some filesystems), and
// then every byte must be read.
func (f *File) DataRanges() []extent.Range {
	var out []extent.Range
	for off := int64(0); off < f.size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // no data after off
		}
		if err != nil {
			return nil
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil || hole <= data {
			return nil
		}
		hole = min(hole, f.size)
		out = append(out, extent.Range{Offset: data, Length: hole - data})
		off = hole
	}
	if out == nil {
		out = []extent.Range{}
	}
	return out
}

// MaxExtents bounds the number of lines an extents list may have.
const MaxExtents = 16 << 20

// ParseExtents reads a changed-extents list: lines "offset<TAB>length" in
// decimal bytes (any blanks separate the fields); empty lines and lines
// starting with '#' are ignored. Every range must lie within diskSize. The
// result is sorted and merged.
func ParseExtents(r io.Reader, diskSize int64) ([]extent.Range, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 4096)
	var out []extent.Range
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 2 {
			return nil, fmt.Errorf("extents line %d: want \"offset<TAB>length\", got %q", line, text)
		}
		off, err1 := strconv.ParseInt(fields[0], 10, 64)
		n, err2 := strconv.ParseInt(fields[1], 10, 64)
		if err1 != nil || err2 != nil || off < 0 || n < 0 {
			return nil, fmt.Errorf("extents line %d: offset and length must be non-negative decimal integers, got %q", line, text)
		}
		if off > diskSize-n {
			return nil, fmt.Errorf("extents line %d: range [%d,+%d) ends past the disk end (%d bytes)", line, off, n, diskSize)
		}
		if len(out) >= MaxExtents {
			return nil, fmt.Errorf("extents: more than %d ranges", MaxExtents)
		}
		out = append(out, extent.Range{Offset: off, Length: n})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("extents line %d: %w", line+1, err)
	}
	return extent.Normalize(out), nil
}

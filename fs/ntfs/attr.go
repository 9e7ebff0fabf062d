package ntfs

import (
	"encoding/binary"
	"fmt"
	"sort"

	"www.velocidex.com/golang/go-ntfs/parser"

	"github.com/vmvault/vmvault/fs"
)

// Attribute types this package reads itself.
const (
	attrStandardInfo = 0x10
	attrFileName     = 0x30
	attrData         = 0x80
	attrIndexRoot    = 0x90
	attrIndexAlloc   = 0xa0
	attrBitmap       = 0xb0
	attrReparsePoint = 0xc0
	attrEA           = 0xe0

	attrFlagCompressed = 0x0001
	attrFlagSparse     = 0x8000

	// maxAttrBytes bounds one attribute header read from an MFT record.
	maxAttrBytes = 64 << 10
	// maxRuns bounds the data runs of one stream (all its extents).
	maxRuns = 1 << 20
	// maxClusters bounds VCNs, LCNs and run lengths: 2^40 clusters of at
	// most 2 MiB keep every byte offset below 2^61.
	maxClusters = 1 << 40
)

// attr is one attribute as stored in an MFT record, parsed from its raw
// bytes (go-ntfs only finds it, following attribute lists).
type attr struct {
	typ      uint32
	name     string
	flags    uint16
	resident bool
	content  []byte // resident attributes

	// non-resident attributes: this extent maps VCNs lowVCN..highVCN; the
	// sizes are valid in the extent whose lowVCN is 0
	lowVCN, highVCN int64
	cuShift         uint8 // compression unit: 2^cuShift clusters
	allocSize       int64
	dataSize        int64
	initSize        int64
	runs            []run
}

// run maps length clusters from VCN vcn to LCN lcn (sparse: a hole).
type run struct {
	vcn, lcn, length int64
	sparse           bool
}

// rawAttr reads the bytes of an attribute go-ntfs found.
func rawAttr(a *parser.NTFS_ATTRIBUTE) ([]byte, error) {
	n := int(a.Length())
	if n < 16 || n > maxAttrBytes {
		return nil, fmt.Errorf("ntfs: attribute of %d bytes: %w", n, fs.ErrCorrupt)
	}
	b := make([]byte, n)
	if m, _ := a.Reader.ReadAt(b, a.Offset); m != n {
		return nil, fmt.Errorf("ntfs: attribute of %d bytes truncated at %d: %w", n, m, fs.ErrCorrupt)
	}
	return b, nil
}

// parseAttr decodes an attribute header, its name, and its resident
// content or its run list.
func parseAttr(b []byte) (*attr, error) {
	le := binary.LittleEndian
	if len(b) < 16 {
		return nil, fmt.Errorf("ntfs: attribute header of %d bytes: %w", len(b), fs.ErrCorrupt)
	}
	a := &attr{typ: le.Uint32(b), resident: b[8] == 0, flags: le.Uint16(b[12:])}
	nameLen, nameOff := int(b[9]), int(le.Uint16(b[10:]))
	if nameLen > 0 {
		if nameOff+2*nameLen > len(b) {
			return nil, fmt.Errorf("ntfs: attribute %#x name past its end: %w", a.typ, fs.ErrCorrupt)
		}
		a.name = utf16le(b[nameOff : nameOff+2*nameLen])
	}
	if a.resident {
		if len(b) < 0x18 {
			return nil, fmt.Errorf("ntfs: resident attribute %#x header of %d bytes: %w", a.typ, len(b), fs.ErrCorrupt)
		}
		size, off := int(le.Uint32(b[0x10:])), int(le.Uint16(b[0x14:]))
		if off > len(b) || size > len(b)-off {
			return nil, fmt.Errorf("ntfs: resident attribute %#x: %d bytes at %d in %d: %w", a.typ, size, off, len(b), fs.ErrCorrupt)
		}
		a.content = b[off : off+size]
		return a, nil
	}
	if len(b) < 0x40 {
		return nil, fmt.Errorf("ntfs: non-resident attribute %#x header of %d bytes: %w", a.typ, len(b), fs.ErrCorrupt)
	}
	a.lowVCN = int64(le.Uint64(b[0x10:]))
	a.highVCN = int64(le.Uint64(b[0x18:]))
	pairs := int(le.Uint16(b[0x20:]))
	a.cuShift = b[0x22]
	a.allocSize = int64(le.Uint64(b[0x28:]))
	a.dataSize = int64(le.Uint64(b[0x30:]))
	a.initSize = int64(le.Uint64(b[0x38:]))
	switch {
	case a.lowVCN < 0 || a.lowVCN > maxClusters || a.highVCN < a.lowVCN-1:
		return nil, fmt.Errorf("ntfs: attribute %#x maps VCNs %d..%d: %w", a.typ, a.lowVCN, a.highVCN, fs.ErrCorrupt)
	case a.dataSize < 0 || a.initSize < 0 || a.allocSize < 0:
		return nil, fmt.Errorf("ntfs: attribute %#x with negative sizes: %w", a.typ, fs.ErrCorrupt)
	case pairs > len(b):
		return nil, fmt.Errorf("ntfs: attribute %#x run list at %d of %d bytes: %w", a.typ, pairs, len(b), fs.ErrCorrupt)
	case a.cuShift > 16:
		return nil, fmt.Errorf("ntfs: attribute %#x compression unit 2^%d clusters: %w", a.typ, a.cuShift, fs.ErrCorrupt)
	}
	runs, err := decodeRuns(b[pairs:], a.lowVCN)
	if err != nil {
		return nil, fmt.Errorf("ntfs: attribute %#x: %w", a.typ, err)
	}
	a.runs = runs
	return a, nil
}

// decodeRuns decodes NTFS mapping pairs: per run a header byte (low
// nibble: bytes of the length, high nibble: bytes of the signed LCN delta,
// 0 for a hole), the length, and the delta from the previous run's LCN.
func decodeRuns(b []byte, vcn int64) ([]run, error) {
	var out []run
	lcn := int64(0)
	for i := 0; i < len(b) && b[i] != 0; {
		lenBytes, offBytes := int(b[i]&0x0f), int(b[i]>>4)
		i++
		if lenBytes == 0 || lenBytes > 8 || offBytes > 8 || i+lenBytes+offBytes > len(b) {
			return nil, fmt.Errorf("run list entry at %d (header %#x): %w", i-1, b[i-1], fs.ErrCorrupt)
		}
		length := int64(0)
		for k := lenBytes - 1; k >= 0; k-- {
			length = length<<8 | int64(b[i+k])
		}
		i += lenBytes
		if length <= 0 || length > maxClusters {
			return nil, fmt.Errorf("run of %d clusters: %w", length, fs.ErrCorrupt)
		}
		r := run{vcn: vcn, length: length, sparse: offBytes == 0}
		if offBytes > 0 {
			delta := int64(int8(b[i+offBytes-1])) // sign from the top byte
			for k := offBytes - 2; k >= 0; k-- {
				delta = delta<<8 | int64(b[i+k])
			}
			i += offBytes
			if delta > maxClusters || delta < -maxClusters {
				return nil, fmt.Errorf("run at VCN %d moves %d clusters: %w", vcn, delta, fs.ErrCorrupt)
			}
			lcn += delta
			if lcn < 0 || lcn > maxClusters {
				return nil, fmt.Errorf("run at VCN %d starts at LCN %d: %w", vcn, lcn, fs.ErrCorrupt)
			}
			r.lcn = lcn
		}
		if len(out) >= maxRuns {
			return nil, fmt.Errorf("more than %d runs: %w", maxRuns, fs.ErrCorrupt)
		}
		out = append(out, r)
		vcn += length
		if vcn > maxClusters {
			return nil, fmt.Errorf("runs past VCN 2^40: %w", fs.ErrCorrupt)
		}
	}
	return out, nil
}

// record is the parts of one MFT record (with its attribute list
// followed) this package reads.
type record struct {
	num    uint64
	dir    bool
	attrs  []*attr
	broken []error // attributes that could not be parsed
}

// find returns the attributes of one type and name (all extents).
func (r *record) find(typ uint32, name string) []*attr {
	var out []*attr
	for _, a := range r.attrs {
		if a.typ == typ && a.name == name {
			out = append(out, a)
		}
	}
	return out
}

// first returns the first attribute of one type and name, or nil.
func (r *record) first(typ uint32, name string) *attr {
	for _, a := range r.attrs {
		if a.typ == typ && a.name == name {
			return a
		}
	}
	return nil
}

// streamNames lists the named $DATA streams, sorted, each once.
func (r *record) streamNames() []string {
	seen := map[string]bool{}
	var out []string
	for _, a := range r.attrs {
		if a.typ == attrData && a.name != "" && !seen[a.name] {
			seen[a.name] = true
			out = append(out, a.name)
		}
	}
	sort.Strings(out)
	return out
}

// parseRecord parses every attribute of an MFT record go-ntfs loaded.
func (f *FS) parseRecord(n uint64, e *parser.MFT_ENTRY) *record {
	r := &record{num: n, dir: e.Flags().IsSet("DIRECTORY")}
	type key struct {
		typ    uint32
		name   string
		lowVCN int64
	}
	seen := map[key]bool{}
	for _, a := range e.EnumerateAttributes(f.ctx) {
		b, err := rawAttr(a)
		if err != nil {
			r.broken = append(r.broken, err)
			continue
		}
		pa, err := parseAttr(b)
		if err != nil {
			r.broken = append(r.broken, err)
			continue
		}
		if pa.typ == 0x20 { // $ATTRIBUTE_LIST: go-ntfs already followed it
			continue
		}
		// a hostile attribute list can name one extent twice
		if k := (key{pa.typ, pa.name, pa.lowVCN}); !pa.resident {
			if seen[k] {
				continue
			}
			seen[k] = true
		}
		r.attrs = append(r.attrs, pa)
	}
	return r
}

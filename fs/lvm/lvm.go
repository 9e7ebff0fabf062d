// Package lvm reads LVM2 physical volumes: the PV label, the text metadata
// of the volume group in the PV's metadata areas, and the layout of its
// logical volumes as segments of physical extents. It only describes where
// an LV's bytes lie on its PVs; fs/image turns that into readers and disk
// ranges.
//
// Read: the label (LABELONE in one of the first four sectors, CRC-checked),
// the PV header (UUID, size, data and metadata areas), every metadata
// area's header (magic, CRC) and its current metadata text (CRC-checked,
// wrapped around the end of its circular buffer when it has to be). A VG's
// metadata is taken from the valid copy with the highest seqno among all
// the PVs given. Segment types linear and striped are mapped ("striped"
// with one stripe is LVM's linear); other types (thin, thin-pool, mirror,
// raid*, cache, vdo, snapshot, …) are reported by name and not mapped.
//
// Invariants: every length in a label or metadata header is checked
// against the device size before it is used; the metadata text is read
// only up to its area's size (and at most maxText); the text parser is
// bounded in nesting depth and never recurses without limit; a malformed
// structure is an error wrapping fs.ErrCorrupt, never a panic.
package lvm

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"strings"

	"github.com/vmvault/vmvault/fs"
)

const (
	sector      = 512
	labelID     = "LABELONE"
	labelType   = "LVM2 001"
	mdaMagic    = " LVM2 x[5A%r0N*>"
	initialCRC  = 0xf597a6cf
	mdaHdrSize  = 512
	maxText     = 16 << 20 // bounds the metadata text read from one area
	maxAreas    = 16       // data or metadata areas listed in one PV header
	rawIgnored  = 0x1      // RAW_LOCN_IGNORED: the area holds no metadata
	labelScanSz = 4        // the label lies in one of the first 4 sectors
)

var le = binary.LittleEndian

func corrupt(format string, args ...any) error {
	return fmt.Errorf("lvm: %s: %w", fmt.Sprintf(format, args...), fs.ErrCorrupt)
}

// crc is LVM's checksum: the CRC-32 (IEEE) table run from 0xf597a6cf with
// no final inversion.
func crc(b []byte) uint32 {
	return ^crc32.Update(^uint32(initialCRC), crc32.IEEETable, b)
}

// PV is one physical volume as its label and metadata describe it.
type PV struct {
	UUID       string // 32 characters, without dashes
	DeviceSize int64  // bytes, from the PV header
	// Texts are the valid metadata texts found in the PV's metadata
	// areas (usually one).
	Texts []string
	// Warnings lists metadata areas that were skipped (bad checksum,
	// unreadable).
	Warnings []string
}

// Probe reports whether an LVM2 label lies in one of the first sectors.
func Probe(r io.ReaderAt) bool {
	_, _, err := findLabel(r)
	return err == nil
}

func findLabel(r io.ReaderAt) ([]byte, int64, error) {
	buf := make([]byte, sector)
	for s := int64(0); s < labelScanSz; s++ {
		if _, err := r.ReadAt(buf, s*sector); err != nil {
			return nil, 0, fmt.Errorf("lvm: read sector %d: %w", s, err)
		}
		if string(buf[:8]) != labelID || string(buf[24:32]) != labelType {
			continue
		}
		if le.Uint64(buf[8:]) != uint64(s) {
			continue // a label copied to another sector
		}
		if crc(buf[20:]) != le.Uint32(buf[16:]) {
			return nil, 0, corrupt("label in sector %d: checksum mismatch", s)
		}
		return buf, s * sector, nil
	}
	return nil, 0, fmt.Errorf("lvm: no LVM2 label in the first %d sectors", labelScanSz)
}

// ReadPV reads the label and metadata of the PV occupying r[0:size].
func ReadPV(r io.ReaderAt, size int64) (*PV, error) {
	lab, _, err := findLabel(r)
	if err != nil {
		return nil, err
	}
	off := int(le.Uint32(lab[20:]))
	if off < 32 || off+32+8 > sector {
		return nil, corrupt("PV header at offset %d of the label", off)
	}
	h := lab[off:]
	pv := &PV{UUID: string(h[:32]), DeviceSize: int64(le.Uint64(h[32:]))}
	for _, c := range pv.UUID {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '!' || c == '#') {
			return nil, corrupt("PV UUID %q", pv.UUID)
		}
	}
	pos := 40
	// data areas, then metadata areas, each list ended by a zero entry
	var mdas [][2]uint64
	for list := 0; list < 2; list++ {
		for n := 0; ; n++ {
			if pos+16 > len(h) || n > maxAreas {
				return nil, corrupt("PV header area list does not end")
			}
			o, s := le.Uint64(h[pos:]), le.Uint64(h[pos+8:])
			pos += 16
			if o == 0 {
				break
			}
			if list == 1 {
				mdas = append(mdas, [2]uint64{o, s})
			}
		}
	}
	for _, m := range mdas {
		text, err := readMDA(r, size, int64(m[0]), int64(m[1]))
		if err != nil {
			pv.Warnings = append(pv.Warnings, err.Error())
			continue
		}
		if text != "" {
			pv.Texts = append(pv.Texts, text)
		}
	}
	if len(pv.Texts) == 0 && len(pv.Warnings) > 0 {
		return nil, fmt.Errorf("lvm: PV %s has no readable metadata: %s", pv.UUID, strings.Join(pv.Warnings, "; "))
	}
	return pv, nil
}

// readMDA reads the current metadata text of the metadata area at
// [start, start+size) ("" when the area is marked as holding none).
func readMDA(r io.ReaderAt, devSize, start, size int64) (string, error) {
	if start < 0 || size < mdaHdrSize || start > devSize || size > devSize-start {
		return "", corrupt("metadata area %d+%d outside the %d-byte PV", start, size, devSize)
	}
	h := make([]byte, mdaHdrSize)
	if err := readFull(r, h, start); err != nil {
		return "", fmt.Errorf("lvm: metadata area at %d: %w", start, err)
	}
	if string(h[4:20]) != mdaMagic {
		return "", corrupt("metadata area at %d has no magic", start)
	}
	if crc(h[4:]) != le.Uint32(h) {
		return "", corrupt("metadata area header at %d: checksum mismatch", start)
	}
	if v := le.Uint32(h[20:]); v != 1 {
		return "", corrupt("metadata area at %d: version %d", start, v)
	}
	if s := int64(le.Uint64(h[24:])); s != start {
		return "", corrupt("metadata area at %d says it is at %d", start, s)
	}
	loc := h[40:]
	off, n, sum, flags := int64(le.Uint64(loc)), int64(le.Uint64(loc[8:])), le.Uint32(loc[16:]), le.Uint32(loc[20:])
	if flags&rawIgnored != 0 || n == 0 {
		return "", nil
	}
	ring := size - mdaHdrSize
	if off < mdaHdrSize || off >= size || n > ring || n > maxText {
		return "", corrupt("metadata text %d+%d in a %d-byte area at %d", off, n, size, start)
	}
	text := make([]byte, n)
	first := n
	if off+n > size {
		first = size - off // the text wraps to the start of the ring
	}
	if err := readFull(r, text[:first], start+off); err != nil {
		return "", fmt.Errorf("lvm: metadata text at %d: %w", start+off, err)
	}
	if first < n {
		if err := readFull(r, text[first:], start+mdaHdrSize); err != nil {
			return "", fmt.Errorf("lvm: metadata text at %d: %w", start+mdaHdrSize, err)
		}
	}
	if crc(text) != sum {
		return "", corrupt("metadata text at %d: checksum mismatch", start+off)
	}
	return strings.TrimRight(string(text), "\x00"), nil
}

func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

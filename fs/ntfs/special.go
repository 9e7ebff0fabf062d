package ntfs

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/vmvault/vmvault/fs"
)

// File attribute bits ($STANDARD_INFORMATION).
const (
	fileAttrReadOnly = 0x1
	fileAttrHidden   = 0x2
	fileAttrSystem   = 0x4
)

// Reparse tags this package decodes.
const (
	tagMountPoint = 0xa0000003
	tagSymlink    = 0xa000000c
	tagLxSymlink  = 0xa000001d
	tagAFUnix     = 0x80000023
	tagLxFIFO     = 0x80000024
	tagLxChr      = 0x80000025
	tagLxBlk      = 0x80000026
)

// Interix (Services for Unix) special files start with these 8 bytes.
const (
	intxSymlink = "IntxLNK\x01"
	intxChr     = "IntxCHR\x00"
	intxBlk     = "IntxBLK\x00"
	// maxIntx bounds the content read to recognize an Interix file (a
	// symlink target of 4096 UTF-16 characters).
	maxIntx = 8 + 2*4096
)

// standardInfo is the part of $STANDARD_INFORMATION this package uses.
type standardInfo struct {
	times  [4]uint64 // creation, modification, MFT change, access
	attrib uint32
}

func (r *record) standardInfo() *standardInfo {
	a := r.first(attrStandardInfo, "")
	if a == nil || !a.resident || len(a.content) < 0x24 {
		return nil
	}
	le := binary.LittleEndian
	si := &standardInfo{attrib: le.Uint32(a.content[0x20:])}
	for i := range si.times {
		si.times[i] = le.Uint64(a.content[8*i:])
	}
	return si
}

// links counts the record's names other than 8.3 DOS names.
func (r *record) links() uint32 {
	n := uint32(0)
	for _, a := range r.attrs {
		if a.typ == attrFileName && a.resident {
			if fn, err := parseFileName(a.content); err == nil && fn.namespace != nsDOS {
				n++
			}
		}
	}
	return n
}

// streamName returns the name of the idx-th (1-based) named stream.
func (r *record) streamName(idx uint64) (string, error) {
	names := r.streamNames()
	if idx == 0 || idx > uint64(len(names)) {
		return "", fmt.Errorf("ntfs: stream %d of record %d: %w", idx, r.num, fs.ErrNotExist)
	}
	return names[idx-1], nil
}

// base returns the extent of an attribute that holds its sizes (VCN 0, or
// the resident attribute), or nil.
func (r *record) base(typ uint32, name string) *attr {
	for _, a := range r.find(typ, name) {
		if a.resident || a.lowVCN == 0 {
			return a
		}
	}
	return nil
}

// size is the attribute's data size.
func (a *attr) size() int64 {
	if a.resident {
		return int64(len(a.content))
	}
	return a.dataSize
}

// kind is what a record is, as ntfs-3g shows it.
type kind struct {
	typ    fs.Type
	target string // symlinks
	rdev   uint32 // devices, Linux encoding
}

// classify decides the file type of a record: reparse points first, then
// directories, then Interix files (which carry the system attribute),
// else a regular file.
func (f *FS) classify(rec *record, si *standardInfo) kind {
	if rp := rec.base(attrReparsePoint, ""); rp != nil {
		if k, ok := f.reparseKind(rec, rp); ok {
			return k
		}
	}
	if rec.dir {
		return kind{typ: fs.TypeDir}
	}
	if si != nil && si.attrib&fileAttrSystem != 0 {
		if k, ok := f.interixKind(rec, si); ok {
			return k
		}
	}
	return kind{typ: fs.TypeRegular}
}

// attrContent reads a whole attribute of at most limit bytes.
func (f *FS) attrContent(rec *record, a *attr, typ uint32, limit int64) ([]byte, bool) {
	if a.resident {
		return a.content, int64(len(a.content)) <= limit
	}
	s, err := f.openStream(rec, typ, a.name)
	if err != nil || s.size > limit {
		return nil, false
	}
	b := make([]byte, s.size)
	if _, err := s.ReadAt(b, 0); err != nil && len(b) > 0 {
		return nil, false
	}
	return b, true
}

// reparseKind decodes symlink, junction and WSL reparse points. Other
// tags (deduplication, cloud files, …) leave the record what it is.
func (f *FS) reparseKind(rec *record, rp *attr) (kind, bool) {
	b, ok := f.attrContent(rec, rp, attrReparsePoint, 16<<10)
	if !ok || len(b) < 8 {
		return kind{}, false
	}
	le := binary.LittleEndian
	tag := le.Uint32(b)
	data := b[8:]
	if n := int(le.Uint16(b[4:])); n < len(data) {
		data = data[:n]
	}
	switch tag {
	case tagSymlink, tagMountPoint:
		if t, ok := reparseTarget(tag, data); ok {
			return kind{typ: fs.TypeSymlink, target: t}, true
		}
	case tagLxSymlink:
		if len(data) >= 4 { // version 2, then the UTF-8 target
			return kind{typ: fs.TypeSymlink, target: string(data[4:])}, true
		}
	case tagLxFIFO:
		return kind{typ: fs.TypeFIFO}, true
	case tagAFUnix:
		return kind{typ: fs.TypeSocket}, true
	case tagLxChr, tagLxBlk:
		k := kind{typ: fs.TypeCharDev}
		if tag == tagLxBlk {
			k.typ = fs.TypeBlockDev
		}
		if major, minor, ok := f.lxDev(rec); ok {
			k.rdev = linuxDev(major, minor)
		}
		return k, true
	}
	return kind{}, false
}

// reparseTarget decodes the print name (or the substitute name) of a
// symlink or junction reparse buffer.
func reparseTarget(tag uint32, b []byte) (string, bool) {
	le := binary.LittleEndian
	if len(b) < 8 {
		return "", false
	}
	buf := b[8:]
	relative := false
	if tag == tagSymlink {
		if len(b) < 12 {
			return "", false
		}
		relative = le.Uint32(b[8:])&1 != 0
		buf = b[12:]
	}
	off, ln := int(le.Uint16(b[4:])), int(le.Uint16(b[6:]))
	if ln == 0 {
		off, ln = int(le.Uint16(b[0:])), int(le.Uint16(b[2:]))
	}
	if off+ln > len(buf) {
		return "", false
	}
	target := strings.TrimPrefix(utf16le(buf[off:off+ln]), `\??\`)
	if relative {
		target = strings.ReplaceAll(target, `\`, "/")
	}
	return target, true
}

// lxDev reads the device number WSL keeps in the $LXDEV extended
// attribute (major and minor, 32 bits each).
func (f *FS) lxDev(rec *record) (major, minor uint32, ok bool) {
	a := rec.base(attrEA, "")
	if a == nil {
		return 0, 0, false
	}
	b, ok := f.attrContent(rec, a, attrEA, 64<<10)
	if !ok {
		return 0, 0, false
	}
	le := binary.LittleEndian
	for pos, n := 0, 0; pos+8 <= len(b) && n < 1024; n++ {
		next := int(le.Uint32(b[pos:]))
		nameLen, valLen := int(b[pos+5]), int(le.Uint16(b[pos+6:]))
		name := pos + 8
		val := name + nameLen + 1
		if val+valLen <= len(b) && string(b[name:name+nameLen]) == "$LXDEV" && valLen >= 8 {
			return le.Uint32(b[val:]), le.Uint32(b[val+4:]), true
		}
		if next <= 0 {
			break
		}
		pos += next
	}
	return 0, 0, false
}

// interixKind recognizes Interix FIFOs, sockets, symlinks and devices by
// the content of a system file's unnamed stream, as ntfs-3g does.
func (f *FS) interixKind(rec *record, si *standardInfo) (kind, bool) {
	a := rec.base(attrData, "")
	if a == nil {
		return kind{}, false
	}
	size := a.size()
	hidden := si.attrib&fileAttrHidden != 0
	switch {
	case size == 0 && !hidden:
		return kind{typ: fs.TypeFIFO}, true
	case size == 1 && !hidden:
		return kind{typ: fs.TypeSocket}, true
	case size <= 8 || size > maxIntx:
		return kind{}, false
	}
	b, ok := f.attrContent(rec, a, attrData, maxIntx)
	if !ok || len(b) <= 8 {
		return kind{}, false
	}
	le := binary.LittleEndian
	switch magic := string(b[:8]); {
	case magic == intxSymlink:
		return kind{typ: fs.TypeSymlink, target: utf16le(b[8:])}, true
	case (magic == intxChr || magic == intxBlk) && len(b) == 24:
		k := kind{typ: fs.TypeCharDev, rdev: linuxDev(uint32(le.Uint64(b[8:])), uint32(le.Uint64(b[16:])))}
		if magic == intxBlk {
			k.typ = fs.TypeBlockDev
		}
		return k, true
	}
	return kind{}, false
}

// linuxDev encodes a device number as Linux's new_encode_dev does.
func linuxDev(major, minor uint32) uint32 {
	return minor&0xff | (major&0xfff)<<8 | (minor&^0xff)<<12
}

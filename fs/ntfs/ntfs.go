// Package ntfs reads NTFS volumes, read-only, and presents them as an
// fs.FileSystem. www.velocidex.com/golang/go-ntfs finds MFT records
// (following the $MFT's own runs and attribute lists); everything inside a
// record is parsed here, from its raw bytes.
//
// What go-ntfs (v0.2.1) gets wrong, and what this package does instead:
//   - Directory listings: its INDEX_RECORD_ENTRY.IsValid() rejects every
//     index entry whose four $FILE_NAME times do not all lie between
//     2001-09-09 and 2033-05-18 (a heuristic for carving index slack), so
//     backdated and far-future files vanish. index.go parses the $I30
//     index itself: the root node and every index block its $BITMAP marks
//     in use, fixups checked, entries bounded by their node.
//   - Times: WinFileTime converts through int64 Unix nanoseconds, which
//     wraps before 1677 and after 2262. filetime converts every value.
//   - Compressed streams: its consumeRuns groups runs into compression
//     units by run boundaries, so a unit whose compressed clusters share a
//     data run with preceding stored units, followed by a hole that also
//     covers the next all-sparse units, is dropped and every later byte
//     shifts (the tail reads as zeros). stream.go maps each compression
//     unit from its VCN range instead: all clusters allocated means stored,
//     none means a hole, anything else is LZNT1 data (lznt1.go).
//   - It is not hardened against malformed volumes and its caches are not
//     safe for concurrent use: every call into it runs under recover (a
//     panic becomes an error wrapping fs.ErrCorrupt) and under FS.mu. File
//     content is read without it, concurrently.
//
// Choices: a directory lists each hard link under its own Win32 or POSIX
// name (8.3 DOS names are not listed but Lookup finds them); named data
// streams (alternate data streams) of files and directories are listed as
// separate entries "name:stream" next to them (as The Sleuth Kit's fls
// shows them) so they can be copied like files, IsStream tells those
// entries apart, and ListXattr/GetXattr offer the same streams as
// "user.stream" attributes (as ntfs-3g's streams_interface=xattr does);
// NTFS metadata files ($MFT, $LogFile, … in the root) are reported by
// Hidden so listings can leave them out. Special files are shown as
// ntfs-3g shows them: symbolic links and junctions (reparse points, with
// their print name as target), WSL symlinks, FIFOs, sockets and devices
// (reparse tags 0xa000001d, 0x80000023–0x80000026; the device number from
// the $LXDEV extended attribute), and Interix (Services for Unix) files,
// which carry the system attribute: an empty file that is not hidden is a
// FIFO, a 1-byte one a socket, "IntxLNK\1" a symlink, "IntxCHR\0" and
// "IntxBLK\0" devices.
//
// Invariants: fs.Ino is the MFT record number in the low 48 bits and, for a
// named stream, the stream's position (1-based, by name) in bits 48–63.
// Every length, offset and cluster number read from the volume is checked
// before use; memory a call allocates is bounded by an index block (64 KiB),
// a compression unit (1 MiB), an attribute header (64 KiB) or the caller's
// buffer, never by an unchecked field.
package ntfs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"unicode/utf16"

	"www.velocidex.com/golang/go-ntfs/parser"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/repo/extent"
)

const (
	rootRecord = 5
	streamBits = 48
	recordMask = 1<<streamBits - 1

	// maxWarnings bounds the warnings one volume collects.
	maxWarnings = 100
	// xattrMax is the largest value an extended attribute can have
	// (Linux's XATTR_SIZE_MAX): larger streams are not offered as one.
	xattrMax = 64 << 10
)

// FS is an open NTFS volume.
type FS struct {
	mu             sync.Mutex // serializes go-ntfs
	r              io.ReaderAt
	size           int64 // volume size: no attribute can be larger
	clusterSize    int64
	bytesPerSector int64
	ctx            *parser.NTFSContext
	label          string
	uuid           string

	wmu      sync.Mutex
	warnings []string
	warned   map[string]bool
}

// Probe reports whether a boot sector is NTFS's.
func Probe(boot []byte) bool { return len(boot) >= 11 && string(boot[3:11]) == "NTFS    " }

// guard turns a panic inside go-ntfs into an error.
func guard(op string, err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("ntfs: %s: malformed structure (%v): %w", op, r, fs.ErrCorrupt)
	}
}

// Open opens the NTFS volume occupying r[0:size].
func Open(r io.ReaderAt, size int64) (f *FS, err error) {
	defer guard("open", &err)
	boot := make([]byte, 512)
	if _, err := r.ReadAt(boot, 0); err != nil {
		return nil, fmt.Errorf("ntfs: read boot sector: %w", err)
	}
	if !Probe(boot) {
		return nil, fmt.Errorf("ntfs: no NTFS boot sector: %w", fs.ErrCorrupt)
	}
	bps := int64(binary.LittleEndian.Uint16(boot[0x0b:]))
	spc := int64(boot[0x0d])
	if spc > 0x80 { // large clusters: 2^(256-n) sectors
		spc = 1 << (256 - spc)
	}
	cs := bps * spc
	if bps < 256 || bps&(bps-1) != 0 || cs < 512 || cs > 2<<20 || cs&(cs-1) != 0 {
		return nil, fmt.Errorf("ntfs: %d-byte sectors, %d per cluster: %w", bps, spc, fs.ErrCorrupt)
	}
	sr := io.NewSectionReader(r, 0, size)
	paged, err := parser.NewPagedReader(sr, 4096, 1024)
	if err != nil {
		return nil, fmt.Errorf("ntfs: %w", err)
	}
	ctx, err := parser.GetNTFSContext(paged, 0)
	if err != nil {
		return nil, fmt.Errorf("ntfs: %v: %w", err, fs.ErrCorrupt)
	}
	f = &FS{r: sr, ctx: ctx, size: size, clusterSize: cs, bytesPerSector: bps}
	f.uuid = fmt.Sprintf("%016X", binary.LittleEndian.Uint64(boot[0x48:]))
	if vol, err := f.load(3); err == nil {
		if a := vol.first(0x60, ""); a != nil && a.resident { // $VOLUME_NAME
			f.label = utf16le(a.content[:min(len(a.content), 256)])
		}
	}
	if _, err := f.load(rootRecord); err != nil {
		return nil, fmt.Errorf("ntfs: root directory: %w", err)
	}
	return f, nil
}

func utf16le(b []byte) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return string(utf16.Decode(u))
}

// Type implements fs.FileSystem.
func (f *FS) Type() string { return "ntfs" }

// Label implements fs.FileSystem.
func (f *FS) Label() string { return f.label }

// UUID implements fs.FileSystem (the volume serial number).
func (f *FS) UUID() string { return f.uuid }

// Root implements fs.FileSystem.
func (f *FS) Root() fs.Ino { return rootRecord }

// Warnings implements fs.FileSystem: damaged structures found so far
// (index blocks that could not be read or parsed), each once.
func (f *FS) Warnings() []string {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return append([]string(nil), f.warnings...)
}

func (f *FS) warn(w string) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if f.warned[w] {
		return
	}
	if f.warned == nil {
		f.warned = map[string]bool{}
	}
	f.warned[w] = true
	switch {
	case len(f.warnings) < maxWarnings:
		f.warnings = append(f.warnings, w)
	case len(f.warnings) == maxWarnings:
		f.warnings = append(f.warnings, "more damaged structures were found; only the first ones are listed")
	}
}

// Hidden implements fs.HiddenChecker: NTFS metadata files in the root
// (and their streams).
func (f *FS) Hidden(dir fs.Ino, name string) bool {
	return dir == rootRecord && strings.HasPrefix(name, "$")
}

// IsStream implements fs.StreamChecker.
func (f *FS) IsStream(ino fs.Ino) bool { return ino>>streamBits != 0 }

// mftEntry loads an MFT record through go-ntfs; f.mu must be held.
func (f *FS) mftEntry(n uint64) (*parser.MFT_ENTRY, error) {
	if n > recordMask {
		return nil, fmt.Errorf("ntfs: record %d: %w", n, fs.ErrNotExist)
	}
	e, err := f.ctx.GetMFT(int64(n))
	if err != nil {
		return nil, fmt.Errorf("ntfs: MFT record %d: %v: %w", n, err, fs.ErrCorrupt)
	}
	if !e.Magic().IsValid() { // "FILE"
		return nil, fmt.Errorf("ntfs: MFT record %d has no FILE signature: %w", n, fs.ErrCorrupt)
	}
	if !e.Flags().IsSet("ALLOCATED") {
		return nil, fmt.Errorf("ntfs: MFT record %d is not in use: %w", n, fs.ErrNotExist)
	}
	return e, nil
}

// load returns the parsed attributes of MFT record n.
func (f *FS) load(n uint64) (rec *record, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer guard(fmt.Sprintf("record %d", n), &err)
	e, err := f.mftEntry(n)
	if err != nil {
		return nil, err
	}
	return f.parseRecord(n, e), nil
}

// Stat implements fs.FileSystem.
func (f *FS) Stat(ctx context.Context, ino fs.Ino) (st fs.Stat, err error) {
	defer guard("stat", &err)
	rec, err := f.load(uint64(ino) & recordMask)
	if err != nil {
		return st, err
	}
	si := rec.standardInfo()
	st = fs.Stat{Ino: ino, Type: fs.TypeRegular, Mode: 0o644, Nlink: max(rec.links(), 1)}
	if si != nil {
		st.Crtime, st.Mtime = filetime(si.times[0]), filetime(si.times[1])
		st.Ctime, st.Atime = filetime(si.times[2]), filetime(si.times[3])
	}
	var data *attr
	if idx := uint64(ino) >> streamBits; idx != 0 {
		name, err := rec.streamName(idx)
		if err != nil {
			return fs.Stat{}, err
		}
		data = rec.base(attrData, name)
		st.Nlink = 1
	} else {
		k := f.classify(rec, si)
		st.Type, st.Rdev = k.typ, k.rdev
		switch k.typ {
		case fs.TypeSymlink:
			st.Mode, st.Size = 0o777, int64(len(k.target))
		case fs.TypeDir:
			st.Mode = 0o755
		default:
			data = rec.base(attrData, "")
		}
	}
	if data != nil {
		st.Size = data.size()
		st.Sparse = data.flags&(attrFlagSparse|attrFlagCompressed) != 0
	}
	if si != nil && si.attrib&fileAttrReadOnly != 0 && st.Type != fs.TypeSymlink {
		st.Mode &^= 0o222
	}
	return st, nil
}

// ReadDir implements fs.FileSystem.
func (f *FS) ReadDir(ctx context.Context, ino fs.Ino) (out []fs.DirEntry, err error) {
	defer guard("read directory", &err)
	return f.readDir(ctx, ino, false)
}

func (f *FS) readDir(ctx context.Context, ino fs.Ino, dosNames bool) ([]fs.DirEntry, error) {
	if ino>>streamBits != 0 {
		return nil, fmt.Errorf("ntfs: %d: %w", ino, fs.ErrNotDir)
	}
	rec, err := f.load(uint64(ino))
	if err != nil {
		return nil, err
	}
	if !rec.dir {
		return nil, fmt.Errorf("ntfs: record %d: %w", ino, fs.ErrNotDir)
	}
	ents, err := f.dirEntries(ctx, rec)
	if err != nil {
		return nil, err
	}
	type key struct {
		ref  uint64
		name string
	}
	seen := map[key]bool{}
	var out []fs.DirEntry
	for _, ie := range ents {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fn := ie.fn
		if fn.namespace == nsDOS && !dosNames {
			continue
		}
		if ie.ref == uint64(ino) || fn.name == "." || fn.name == "" {
			continue // the root lists itself as "."
		}
		k := key{ie.ref, fn.name}
		if seen[k] {
			continue
		}
		seen[k] = true
		typ := fs.TypeRegular
		switch {
		case fn.flags&fnFlagReparse != 0:
			typ = fs.TypeUnknown // a symlink, junction or WSL special file
		case fn.flags&(fnFlagDirectory|fnFlagIndex) != 0:
			typ = fs.TypeDir
		case fn.flags&fnFlagSystem != 0:
			typ = fs.TypeUnknown // maybe an Interix special file
		}
		out = append(out, fs.DirEntry{Name: fn.name, Ino: fs.Ino(ie.ref), Type: typ})
		if dosNames {
			continue
		}
		child, err := f.load(ie.ref)
		if err != nil {
			continue
		}
		for si, s := range child.streamNames() {
			out = append(out, fs.DirEntry{Name: fn.name + ":" + s, Ino: fs.Ino(ie.ref | uint64(si+1)<<streamBits), Type: fs.TypeRegular})
		}
	}
	return out, nil
}

// Lookup implements fs.FileSystem. NTFS names are case-insensitive for
// Win32 callers: an exact match wins, then a case-insensitive one, then an
// 8.3 name.
func (f *FS) Lookup(ctx context.Context, dir fs.Ino, name string) (ino fs.Ino, err error) {
	defer guard("lookup", &err)
	ents, err := f.readDir(ctx, dir, false)
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		if e.Name == name {
			return e.Ino, nil
		}
	}
	for _, e := range ents {
		if strings.EqualFold(e.Name, name) {
			return e.Ino, nil
		}
	}
	dos, err := f.readDir(ctx, dir, true)
	if err != nil {
		return 0, err
	}
	for _, e := range dos {
		if strings.EqualFold(e.Name, name) {
			return e.Ino, nil
		}
	}
	return 0, fmt.Errorf("ntfs: %q in directory %d: %w", name, dir, fs.ErrNotExist)
}

// Readlink implements fs.FileSystem: the target of a symbolic link or
// junction as Windows stores it (absolute targets keep their drive letter),
// of a WSL symlink as Linux wrote it, of an Interix symlink as stored.
func (f *FS) Readlink(ctx context.Context, ino fs.Ino) (target string, err error) {
	defer guard("readlink", &err)
	rec, err := f.load(uint64(ino) & recordMask)
	if err != nil {
		return "", err
	}
	if ino>>streamBits == 0 {
		if k := f.classify(rec, rec.standardInfo()); k.typ == fs.TypeSymlink {
			return k.target, nil
		}
	}
	return "", fmt.Errorf("ntfs: record %d is not a symlink", ino)
}

// ListXattr implements fs.FileSystem: the named streams of a file or
// directory, as "user.<stream>" (the name ntfs-3g's streams_interface=xattr
// gives them). A stream entry itself has none.
func (f *FS) ListXattr(ctx context.Context, ino fs.Ino) (names []string, err error) {
	defer guard("list extended attributes", &err)
	if ino>>streamBits != 0 {
		return nil, nil
	}
	rec, err := f.load(uint64(ino))
	if err != nil {
		return nil, err
	}
	for _, s := range rec.streamNames() {
		names = append(names, "user."+s)
	}
	return names, nil
}

// GetXattr implements fs.FileSystem: "user.<stream>" reads a named
// stream; one over 64 KiB (the kernel's limit for an attribute value) is
// an error wrapping fs.ErrAttrTooBig — read it as the "name:stream" entry.
func (f *FS) GetXattr(ctx context.Context, ino fs.Ino, name string) (v []byte, err error) {
	defer guard("get extended attribute", &err)
	stream, ok := strings.CutPrefix(name, "user.")
	if !ok || stream == "" || ino>>streamBits != 0 {
		return nil, fmt.Errorf("ntfs: %s: %w", name, fs.ErrNoAttr)
	}
	rec, err := f.load(uint64(ino))
	if err != nil {
		return nil, err
	}
	if rec.base(attrData, stream) == nil {
		return nil, fmt.Errorf("ntfs: record %d has no stream %q: %w", ino, stream, fs.ErrNoAttr)
	}
	s, err := f.openStream(rec, attrData, stream)
	if err != nil {
		return nil, err
	}
	if s.size > xattrMax {
		return nil, fmt.Errorf("ntfs: stream %q of record %d has %d bytes, over the %d-byte attribute limit: %w", stream, ino, s.size, xattrMax, fs.ErrAttrTooBig)
	}
	v = make([]byte, s.size)
	if _, err := s.ReadAt(v, 0); err != nil && len(v) > 0 {
		return nil, fmt.Errorf("ntfs: read stream %q of record %d: %w", stream, ino, err)
	}
	return v, nil
}

// Open implements fs.FileSystem: the unnamed data of a regular file, or a
// named stream. Compressed and sparse streams are decoded.
func (f *FS) Open(ctx context.Context, ino fs.Ino) (file fs.File, err error) {
	defer guard("open", &err)
	num := uint64(ino) & recordMask
	rec, err := f.load(num)
	if err != nil {
		return nil, err
	}
	name := ""
	if idx := uint64(ino) >> streamBits; idx != 0 {
		if name, err = rec.streamName(idx); err != nil {
			return nil, err
		}
	} else {
		switch k := f.classify(rec, rec.standardInfo()); k.typ {
		case fs.TypeRegular:
		case fs.TypeDir:
			return nil, fmt.Errorf("ntfs: record %d: %w", ino, fs.ErrIsDir)
		default:
			return nil, fmt.Errorf("ntfs: record %d is a %s, not a regular file", ino, k.typ)
		}
	}
	if rec.base(attrData, name) == nil {
		if name == "" {
			return &File{s: &stream{cacheIdx: -1}}, nil // no $DATA: empty
		}
		return nil, fmt.Errorf("ntfs: record %d has no stream %q: %w", num, name, fs.ErrNotExist)
	}
	s, err := f.openStream(rec, attrData, name)
	if err != nil {
		return nil, fmt.Errorf("ntfs: open record %d stream %q: %w", num, name, err)
	}
	return &File{s: s}, nil
}

// File is one NTFS data stream.
type File struct{ s *stream }

// Size implements fs.File.
func (fl *File) Size() int64 { return fl.s.size }

// ReadAt implements io.ReaderAt.
func (fl *File) ReadAt(p []byte, off int64) (n int, err error) {
	if off < 0 {
		return 0, errors.New("ntfs: negative offset")
	}
	return fl.s.ReadAt(p, off)
}

// DataExtents implements fs.SparseFile: allocated clusters (whole
// compression units of compressed streams) below the initialized size.
func (fl *File) DataExtents() ([]extent.Range, error) { return fl.s.dataExtents(), nil }

var (
	_ fs.FileSystem       = (*FS)(nil)
	_ fs.HiddenChecker    = (*FS)(nil)
	_ fs.StreamChecker    = (*FS)(nil)
	_ fs.AllocationMapper = (*FS)(nil)
	_ fs.SparseFile       = (*File)(nil)
)

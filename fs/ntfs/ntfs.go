// Package ntfs reads NTFS volumes, read-only, through
// www.velocidex.com/golang/go-ntfs, and presents them as an fs.FileSystem.
//
// Choices: a directory lists each hard link under its own Win32 or POSIX
// name (8.3 DOS names are not listed but Lookup finds them); alternate data
// streams are listed as separate entries named "file:stream" (as The Sleuth
// Kit's fls shows them), so they can be copied like files; NTFS metadata
// files ($MFT, $LogFile, … in the root) are reported by Hidden so listings
// can leave them out; symbolic links and junctions (reparse points) are
// symlinks with their print name as target.
//
// Invariants: fs.Ino is the MFT record number in the low 48 bits and, for an
// alternate data stream, the stream's position (1-based, by name) in bits
// 48–63. go-ntfs is not hardened against malformed volumes, so every call
// into it runs under recover and a panic becomes an error wrapping
// fs.ErrCorrupt; calls are serialized because its caches are not safe for
// concurrent use.
package ntfs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf16"

	"www.velocidex.com/golang/go-ntfs/parser"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/repo/extent"
)

const (
	rootRecord = 5
	streamBits = 48
	recordMask = 1<<streamBits - 1

	attrReparsePoint = 0xc0
	tagSymlink       = 0xa000000c
	tagMountPoint    = 0xa0000003
	// maxRecords bounds how many index entries one directory may yield.
	maxEntries = 1 << 20
)

// FS is an open NTFS volume.
type FS struct {
	mu       sync.Mutex
	size     int64 // volume size: no attribute can be larger
	ctx      *parser.NTFSContext
	label    string
	uuid     string
	warnings []string
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
	paged, err := parser.NewPagedReader(io.NewSectionReader(r, 0, size), 4096, 1024)
	if err != nil {
		return nil, fmt.Errorf("ntfs: %w", err)
	}
	ctx, err := parser.GetNTFSContext(paged, 0)
	if err != nil {
		return nil, fmt.Errorf("ntfs: %v: %w", err, fs.ErrCorrupt)
	}
	f = &FS{ctx: ctx, size: size}
	f.uuid = fmt.Sprintf("%016X", binary.LittleEndian.Uint64(boot[0x48:]))
	if vol, err := ctx.GetMFT(3); err == nil {
		for _, a := range vol.EnumerateAttributes(ctx) {
			if a.Type().Value == 0x60 { // $VOLUME_NAME
				b := make([]byte, min(a.DataSize(), 256))
				n, _ := a.Data(ctx).ReadAt(b, 0)
				f.label = utf16le(b[:n])
			}
		}
	}
	if _, err := f.record(rootRecord); err != nil {
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

// Warnings implements fs.FileSystem.
func (f *FS) Warnings() []string { return f.warnings }

// Hidden implements fs.HiddenChecker: NTFS metadata files in the root.
func (f *FS) Hidden(dir fs.Ino, name string) bool {
	return dir == rootRecord && strings.HasPrefix(name, "$")
}

func (f *FS) record(n uint64) (*parser.MFT_ENTRY, error) {
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

// info is what Stat needs from one MFT record.
type info struct {
	dir      bool
	si       *parser.STANDARD_INFORMATION
	links    uint32
	streams  []*parser.NTFS_ATTRIBUTE // named $DATA streams, sorted by name
	data     *parser.NTFS_ATTRIBUTE   // the unnamed $DATA stream
	reparse  *parser.NTFS_ATTRIBUTE
	readOnly bool
}

func (f *FS) info(e *parser.MFT_ENTRY) info {
	var in info
	in.dir = e.Flags().IsSet("DIRECTORY")
	for _, a := range e.EnumerateAttributes(f.ctx) {
		switch a.Type().Value {
		case parser.ATTR_TYPE_STANDARD_INFORMATION:
			in.si = f.ctx.Profile.STANDARD_INFORMATION(a.Data(f.ctx), 0)
		case parser.ATTR_TYPE_FILE_NAME:
			fn := f.ctx.Profile.FILE_NAME(a.Data(f.ctx), 0)
			if fn.NameType().Name != "DOS" {
				in.links++
			}
		case parser.ATTR_TYPE_DATA:
			if !a.IsResident() && a.Runlist_vcn_start() != 0 {
				continue
			}
			if a.Name() == "" {
				in.data = a
			} else {
				in.streams = append(in.streams, a)
			}
		case attrReparsePoint:
			in.reparse = a
		}
	}
	sort.Slice(in.streams, func(i, j int) bool { return in.streams[i].Name() < in.streams[j].Name() })
	if in.si != nil {
		in.readOnly = in.si.Flags().IsSet("READ_ONLY")
	}
	return in
}

func winTime(t *parser.WinFileTime) time.Time {
	if t == nil || t.Time.IsZero() || t.Time.Unix() <= -11644473600 {
		return time.Time{}
	}
	return t.Time.UTC()
}

// Stat implements fs.FileSystem.
func (f *FS) Stat(ctx context.Context, ino fs.Ino) (st fs.Stat, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer guard("stat", &err)
	e, err := f.record(uint64(ino) & recordMask)
	if err != nil {
		return st, err
	}
	in := f.info(e)
	st = fs.Stat{Ino: ino, Type: fs.TypeRegular, Mode: 0o644, Nlink: max(in.links, 1)}
	if in.si != nil {
		st.Atime = winTime(in.si.File_accessed_time())
		st.Mtime = winTime(in.si.File_altered_time())
		st.Ctime = winTime(in.si.Mft_altered_time())
		st.Crtime = winTime(in.si.Create_time())
	}
	stream := in.data
	if idx := uint64(ino) >> streamBits; idx != 0 {
		if idx > uint64(len(in.streams)) {
			return fs.Stat{}, fmt.Errorf("ntfs: stream %d of record %d: %w", idx, uint64(ino)&recordMask, fs.ErrNotExist)
		}
		stream = in.streams[idx-1]
		st.Nlink = 1
	} else if t, ok := f.symlinkTarget(e, in); ok {
		st.Type, st.Mode, st.Size, stream = fs.TypeSymlink, 0o777, int64(len(t)), nil
	} else if in.dir {
		st.Type, st.Mode, stream = fs.TypeDir, 0o755, nil
	}
	if stream != nil {
		st.Size = stream.DataSize()
		flags := uint64(*stream.Flags())
		st.Sparse = flags&(1<<15|1) != 0 // SPARSE, COMPRESSED
	}
	if in.readOnly && st.Type != fs.TypeSymlink {
		st.Mode &^= 0o222
	}
	return st, nil
}

// ReadDir implements fs.FileSystem.
func (f *FS) ReadDir(ctx context.Context, ino fs.Ino) (out []fs.DirEntry, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer guard("read directory", &err)
	return f.readDir(ctx, ino, false)
}

func (f *FS) readDir(ctx context.Context, ino fs.Ino, dosNames bool) ([]fs.DirEntry, error) {
	if ino>>streamBits != 0 {
		return nil, fmt.Errorf("ntfs: %d: %w", ino, fs.ErrNotDir)
	}
	e, err := f.record(uint64(ino))
	if err != nil {
		return nil, err
	}
	if !e.Flags().IsSet("DIRECTORY") {
		return nil, fmt.Errorf("ntfs: record %d: %w", ino, fs.ErrNotDir)
	}
	// go-ntfs walks an index allocation in 4 KiB steps up to its claimed
	// size: refuse sizes no volume of this size can hold.
	for _, a := range e.EnumerateAttributes(f.ctx) {
		if a.Type().Value == parser.ATTR_TYPE_INDEX_ALLOCATION && (a.DataSize() < 0 || a.DataSize() > f.size) {
			return nil, fmt.Errorf("ntfs: directory %d: index of %d bytes on a %d-byte volume: %w", ino, a.DataSize(), f.size, fs.ErrCorrupt)
		}
	}
	type key struct {
		ref  uint64
		name string
	}
	seen := map[key]bool{}
	var out []fs.DirEntry
	for i, rec := range e.Dir(f.ctx) {
		if i > maxEntries {
			return nil, fmt.Errorf("ntfs: directory %d has more than %d entries: %w", ino, maxEntries, fs.ErrCorrupt)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !rec.IsValid() {
			continue
		}
		fn := rec.File()
		ns := fn.NameType().Name
		if ns == "DOS" && !dosNames {
			continue
		}
		ref := rec.MftReference() & recordMask
		name := fn.Name()
		if ref == uint64(ino) || name == "." {
			continue // the root lists itself as "."
		}
		k := key{ref, name}
		if seen[k] {
			continue
		}
		seen[k] = true
		typ := fs.TypeRegular
		if fn.Flags().IsSet("DIRECTORY") || fn.Flags().Value&0x10000000 != 0 {
			typ = fs.TypeDir
		}
		out = append(out, fs.DirEntry{Name: name, Ino: fs.Ino(ref), Type: typ})
		if typ == fs.TypeDir || dosNames {
			continue
		}
		child, err := f.record(ref)
		if err != nil {
			continue
		}
		for si, s := range f.info(child).streams {
			out = append(out, fs.DirEntry{Name: name + ":" + s.Name(), Ino: fs.Ino(ref | uint64(si+1)<<streamBits), Type: fs.TypeRegular})
		}
	}
	return out, nil
}

// Lookup implements fs.FileSystem. NTFS names are case-insensitive for
// Win32 callers: an exact match wins, then a case-insensitive one, then an
// 8.3 name.
func (f *FS) Lookup(ctx context.Context, dir fs.Ino, name string) (ino fs.Ino, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
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

// reparseTarget decodes a symlink or junction reparse point.
func (f *FS) reparseTarget(a *parser.NTFS_ATTRIBUTE) (string, bool) {
	b := make([]byte, min(a.DataSize(), 16<<10))
	n, _ := a.Data(f.ctx).ReadAt(b, 0)
	b = b[:n]
	if len(b) < 16 {
		return "", false
	}
	tag := binary.LittleEndian.Uint32(b)
	var buf []byte
	var relative bool
	switch tag {
	case tagSymlink:
		if len(b) < 20 {
			return "", false
		}
		relative = binary.LittleEndian.Uint32(b[16:])&1 != 0
		buf = b[20:]
	case tagMountPoint:
		buf = b[16:]
	default:
		return "", false
	}
	off, ln := int(binary.LittleEndian.Uint16(b[12:])), int(binary.LittleEndian.Uint16(b[14:]))
	if ln == 0 {
		off, ln = int(binary.LittleEndian.Uint16(b[8:])), int(binary.LittleEndian.Uint16(b[10:]))
	}
	if off+ln > len(buf) {
		return "", false
	}
	target := utf16le(buf[off : off+ln])
	target = strings.TrimPrefix(target, `\??\`)
	if relative {
		target = strings.ReplaceAll(target, `\`, "/")
	}
	return target, true
}

// interixMagic starts the content of an Interix (Services for Unix) symlink,
// the kind ntfs-3g creates by default; the UTF-16 target follows.
const interixMagic = "IntxLNK\x01"

// symlinkTarget recognizes reparse-point symlinks and junctions and Interix
// symlinks.
func (f *FS) symlinkTarget(e *parser.MFT_ENTRY, in info) (string, bool) {
	if in.reparse != nil {
		return f.reparseTarget(in.reparse)
	}
	if in.dir || in.data == nil || in.data.DataSize() < int64(len(interixMagic))+2 || in.data.DataSize() > 8192 {
		return "", false
	}
	rr, err := parser.OpenStream(f.ctx, e, parser.ATTR_TYPE_DATA, parser.WILDCARD_STREAM_ID, "")
	if err != nil {
		return "", false
	}
	b := make([]byte, in.data.DataSize())
	n, _ := rr.ReadAt(b, 0)
	if n != len(b) || string(b[:len(interixMagic)]) != interixMagic {
		return "", false
	}
	return utf16le(b[len(interixMagic):]), true
}

// Readlink implements fs.FileSystem: the target of a symbolic link or
// junction as Windows stores it (absolute targets keep their drive letter).
func (f *FS) Readlink(ctx context.Context, ino fs.Ino) (target string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer guard("readlink", &err)
	e, err := f.record(uint64(ino) & recordMask)
	if err != nil {
		return "", err
	}
	in := f.info(e)
	if ino>>streamBits == 0 {
		if t, ok := f.symlinkTarget(e, in); ok {
			return t, nil
		}
	}
	return "", fmt.Errorf("ntfs: record %d is not a symlink", ino)
}

// ListXattr implements fs.FileSystem. Streams are directory entries, not
// attributes, so there are none.
func (f *FS) ListXattr(ctx context.Context, ino fs.Ino) ([]string, error) { return nil, nil }

// GetXattr implements fs.FileSystem.
func (f *FS) GetXattr(ctx context.Context, ino fs.Ino, name string) ([]byte, error) {
	return nil, fmt.Errorf("ntfs: %s: %w", name, fs.ErrNoAttr)
}

// Open implements fs.FileSystem; compressed and sparse streams are
// decoded by go-ntfs.
func (f *FS) Open(ctx context.Context, ino fs.Ino) (file fs.File, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer guard("open", &err)
	e, err := f.record(uint64(ino) & recordMask)
	if err != nil {
		return nil, err
	}
	in := f.info(e)
	name := ""
	stream := in.data
	if idx := uint64(ino) >> streamBits; idx != 0 {
		if idx > uint64(len(in.streams)) {
			return nil, fmt.Errorf("ntfs: stream %d of record %d: %w", idx, uint64(ino)&recordMask, fs.ErrNotExist)
		}
		stream = in.streams[idx-1]
		name = stream.Name()
	} else if in.dir {
		return nil, fmt.Errorf("ntfs: record %d: %w", ino, fs.ErrIsDir)
	}
	if stream == nil {
		return &File{f: f}, nil
	}
	rr, err := parser.OpenStream(f.ctx, e, parser.ATTR_TYPE_DATA, parser.WILDCARD_STREAM_ID, name)
	if err != nil {
		return nil, fmt.Errorf("ntfs: open record %d stream %q: %w", uint64(ino)&recordMask, name, err)
	}
	return &File{f: f, r: rr, size: stream.DataSize()}, nil
}

// File is one NTFS data stream.
type File struct {
	f    *FS
	r    parser.RangeReaderAt
	size int64
}

// Size implements fs.File.
func (fl *File) Size() int64 { return fl.size }

// ReadAt implements io.ReaderAt.
func (fl *File) ReadAt(p []byte, off int64) (n int, err error) {
	if off < 0 {
		return 0, errors.New("ntfs: negative offset")
	}
	if off >= fl.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), fl.size-off)
	fl.f.mu.Lock()
	defer fl.f.mu.Unlock()
	defer guard("read", &err)
	for n < int(want) {
		m, rerr := fl.r.ReadAt(p[n:want], off+int64(n))
		if m <= 0 {
			if rerr == nil || rerr == io.EOF {
				// past the stream's initialized data: zeros
				clear(p[n:want])
				n = int(want)
				break
			}
			return n, fmt.Errorf("ntfs: read at %d: %w", off+int64(n), rerr)
		}
		n += m
	}
	if want < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// DataExtents implements fs.SparseFile from go-ntfs's run list.
func (fl *File) DataExtents() (out []extent.Range, err error) {
	if fl.r == nil {
		return nil, nil
	}
	fl.f.mu.Lock()
	defer fl.f.mu.Unlock()
	defer guard("ranges", &err)
	for _, r := range fl.r.Ranges() {
		if r.IsSparse || r.Length <= 0 || r.Offset >= fl.size {
			continue
		}
		l := min(r.Length, fl.size-r.Offset)
		if k := len(out); k > 0 && out[k-1].End() == r.Offset {
			out[k-1].Length += l
			continue
		}
		out = append(out, extent.Range{Offset: r.Offset, Length: l})
	}
	return out, nil
}

var _ fs.FileSystem = (*FS)(nil)

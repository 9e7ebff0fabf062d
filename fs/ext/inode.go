package ext

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/repo/extent"
)

// inode is the parsed part of an on-disk inode that the reader uses.
type inode struct {
	ino      uint64
	gen      uint32 // i_generation, part of the checksum seed
	mode     uint16
	uid, gid uint32
	size     uint64
	links    uint16
	blocks   uint64 // in 512-byte units
	flags    uint32
	block    [60]byte
	fileACL  uint64
	extra    []byte // the in-body extended attribute area (nil when none)
	atime    time.Time
	mtime    time.Time
	ctime    time.Time
	crtime   time.Time
}

func (f *FS) readInode(ino uint64) (*inode, error) {
	if ino == 0 || ino > f.inodesCount {
		return nil, corrupt("inode %d out of range 1..%d", ino, f.inodesCount)
	}
	group := (ino - 1) / f.inodesPer
	table, err := f.inodeTable(group)
	if err != nil {
		return nil, err
	}
	b := make([]byte, f.inodeSize)
	off := int64(table)*f.blockSize + int64((ino-1)%f.inodesPer)*f.inodeSize
	if err := readFull(f.r, b, off); err != nil {
		return nil, fmt.Errorf("ext: read inode %d: %w", ino, err)
	}
	f.checkInode(ino, b)
	return parseInode(b, ino, f.incompat&incompatLargeDir != 0)
}

// parseInode decodes one on-disk inode of len(b) bytes (128 or more).
func parseInode(b []byte, ino uint64, largeDir bool) (*inode, error) {
	if len(b) < 128 {
		return nil, corrupt("inode %d: %d bytes", ino, len(b))
	}
	le := binary.LittleEndian
	in := &inode{ino: ino}
	in.mode = le.Uint16(b[0x0:])
	in.uid = uint32(le.Uint16(b[0x2:])) | uint32(le.Uint16(b[0x78:]))<<16
	in.gid = uint32(le.Uint16(b[0x18:])) | uint32(le.Uint16(b[0x7a:]))<<16
	in.links = le.Uint16(b[0x1a:])
	in.flags = le.Uint32(b[0x20:])
	in.gen = le.Uint32(b[0x64:])
	copy(in.block[:], b[0x28:0x64])
	in.fileACL = uint64(le.Uint32(b[0x68:])) | uint64(le.Uint16(b[0x76:]))<<32
	in.size = uint64(le.Uint32(b[0x4:]))
	typ := in.mode & 0xf000
	if typ == 0x8000 || (typ == 0x4000 && largeDir) || typ == 0xa000 {
		in.size |= uint64(le.Uint32(b[0x6c:])) << 32
	}
	in.blocks = uint64(le.Uint32(b[0x1c:])) | uint64(le.Uint16(b[0x74:]))<<32
	extraSize := 0
	if len(b) > 128 {
		extraSize = int(le.Uint16(b[0x80:]))
		if extraSize > len(b)-128 || extraSize&3 != 0 {
			return nil, corrupt("inode %d: extra size %d", ino, extraSize)
		}
	}
	field := func(off int) (uint32, bool) {
		if 128+extraSize >= off+4 {
			return le.Uint32(b[off:]), true
		}
		return 0, false
	}
	stamp := func(secOff, extraOff int) time.Time {
		sec := int64(int32(le.Uint32(b[secOff:])))
		nsec := int64(0)
		if x, ok := field(extraOff); ok {
			sec += int64(x&3) << 32
			nsec = int64(x >> 2)
			if nsec > 999999999 {
				nsec = 0
			}
		}
		return time.Unix(sec, nsec).UTC()
	}
	in.atime = stamp(0x8, 0x8c)
	in.ctime = stamp(0xc, 0x84)
	in.mtime = stamp(0x10, 0x88)
	if _, ok := field(0x90); ok {
		in.crtime = stamp(0x90, 0x94)
	}
	if body := 128 + extraSize; len(b) >= body+4 && le.Uint32(b[body:]) == xattrMagic {
		in.extra = b[body+4:]
	}
	return in, nil
}

func (in *inode) fileType() fs.Type {
	switch in.mode & 0xf000 {
	case 0x8000:
		return fs.TypeRegular
	case 0x4000:
		return fs.TypeDir
	case 0xa000:
		return fs.TypeSymlink
	case 0x2000:
		return fs.TypeCharDev
	case 0x6000:
		return fs.TypeBlockDev
	case 0x1000:
		return fs.TypeFIFO
	case 0xc000:
		return fs.TypeSocket
	}
	return fs.TypeUnknown
}

func (f *FS) stat(in *inode) fs.Stat {
	st := fs.Stat{
		Ino:    fs.Ino(in.ino),
		Type:   in.fileType(),
		Mode:   uint32(in.mode) & fs.ModePerm,
		Size:   int64(in.size),
		UID:    in.uid,
		GID:    in.gid,
		Nlink:  uint32(in.links),
		Atime:  in.atime,
		Mtime:  in.mtime,
		Ctime:  in.ctime,
		Crtime: in.crtime,
	}
	if st.Size < 0 {
		st.Size = 0
	}
	if st.Type == fs.TypeCharDev || st.Type == fs.TypeBlockDev {
		st.Rdev = in.rdev()
	}
	if st.Type == fs.TypeRegular && in.flags&flagInlineData == 0 {
		alloc := int64(in.blocks) * 512
		if f.roCompat&roCompatHugeFile != 0 && in.flags&flagHugeFile != 0 {
			alloc = int64(in.blocks) * f.blockSize // counted in filesystem blocks
		}
		st.Sparse = alloc < st.Size
	}
	return st
}

// rdev decodes a device number in either the old 16-bit or the new 32-bit
// encoding and returns it in Linux's new_encode_dev form.
func (in *inode) rdev() uint32 {
	le := binary.LittleEndian
	var major, minor uint32
	if old := le.Uint32(in.block[0:]); old != 0 {
		major, minor = (old>>8)&0xff, old&0xff
	} else {
		n := le.Uint32(in.block[4:])
		major = (n & 0xfff00) >> 8
		minor = (n & 0xff) | ((n >> 12) & 0xfff00)
	}
	return (minor & 0xff) | (major << 8) | ((minor &^ 0xff) << 12)
}

// Stat implements fs.FileSystem.
func (f *FS) Stat(ctx context.Context, ino fs.Ino) (fs.Stat, error) {
	in, err := f.readInode(uint64(ino))
	if err != nil {
		return fs.Stat{}, err
	}
	if in.links == 0 && in.mode == 0 {
		return fs.Stat{}, fmt.Errorf("ext: inode %d is not in use: %w", ino, fs.ErrNotExist)
	}
	return f.stat(in), nil
}

// run maps count blocks of a file starting at logical block lblk to
// physical blocks from pblk; uninit runs read as zeros.
type run struct {
	lblk, pblk uint64
	count      uint64
	uninit     bool
}

// blockMap returns the runs of a file's data in logical order. Logical
// blocks not covered are holes. limit is the number of logical blocks the
// file's size covers; mappings past it are ignored (and bound the work a
// hostile tree can cause).
func (f *FS) blockMap(ctx context.Context, in *inode, limit uint64) ([]run, error) {
	if in.flags&flagExtents != 0 {
		var runs []run
		visited := 0
		if err := f.walkExtents(ctx, in.block[:], 0, limit, &runs, &visited); err != nil {
			return nil, fmt.Errorf("inode %d: %w", in.ino, err)
		}
		sort.Slice(runs, func(i, j int) bool { return runs[i].lblk < runs[j].lblk })
		for i := 1; i < len(runs); i++ {
			if runs[i].lblk < runs[i-1].lblk+runs[i-1].count {
				return nil, corrupt("inode %d: overlapping extents at logical block %d", in.ino, runs[i].lblk)
			}
		}
		return runs, nil
	}
	m := &indirectMapper{f: f, ctx: ctx, limit: limit}
	le := binary.LittleEndian
	for i := 0; i < 12 && uint64(i) < limit; i++ {
		if err := m.add(uint64(i), uint64(le.Uint32(in.block[4*i:]))); err != nil {
			return nil, fmt.Errorf("inode %d: %w", in.ino, err)
		}
	}
	per := uint64(f.blockSize / 4)
	base := uint64(12)
	for depth := 1; depth <= 3 && base < limit; depth++ {
		ptr := uint64(le.Uint32(in.block[4*(11+depth):]))
		if err := m.walk(ptr, depth, base); err != nil {
			return nil, fmt.Errorf("inode %d: %w", in.ino, err)
		}
		span := uint64(1)
		for k := 0; k < depth; k++ {
			span *= per
		}
		base += span
	}
	return m.runs, nil
}

type indirectMapper struct {
	f     *FS
	ctx   context.Context
	limit uint64
	runs  []run
}

func (m *indirectMapper) add(lblk, pblk uint64) error {
	if pblk == 0 || lblk >= m.limit {
		return nil
	}
	if pblk >= m.f.blocksCount {
		return corrupt("logical block %d points to block %d of %d", lblk, pblk, m.f.blocksCount)
	}
	if n := len(m.runs); n > 0 {
		last := &m.runs[n-1]
		if last.lblk+last.count == lblk && last.pblk+last.count == pblk {
			last.count++
			return nil
		}
	}
	if len(m.runs) >= maxRuns {
		return errTooFragmented
	}
	m.runs = append(m.runs, run{lblk: lblk, pblk: pblk, count: 1})
	return nil
}

// walk maps the blocks under one indirect block of the given depth (1 =
// single indirect) whose first logical block is base.
func (m *indirectMapper) walk(ptr uint64, depth int, base uint64) error {
	if ptr == 0 || base >= m.limit {
		return nil
	}
	if err := m.ctx.Err(); err != nil {
		return err
	}
	buf := make([]byte, m.f.blockSize)
	if err := m.f.readBlocks(buf, ptr); err != nil {
		return fmt.Errorf("indirect block: %w", err)
	}
	per := uint64(m.f.blockSize / 4)
	span := uint64(1)
	for k := 1; k < depth; k++ {
		span *= per
	}
	for i := uint64(0); i < per; i++ {
		lblk := base + i*span
		if lblk >= m.limit {
			break
		}
		p := uint64(binary.LittleEndian.Uint32(buf[4*i:]))
		if depth == 1 {
			if err := m.add(lblk, p); err != nil {
				return err
			}
		} else if err := m.walk(p, depth-1, lblk); err != nil {
			return err
		}
	}
	return nil
}

const (
	extentMagic    = 0xf30a
	maxExtentDepth = 5
	// maxExtentNodes bounds how many tree blocks one file may make us read
	// (a 16 TiB file of 128 MiB extents needs a few hundred).
	maxExtentNodes = 1 << 16
	// maxRuns bounds the block map held for one file (32 bytes a run): a
	// hostile block map of repeated pointers cannot make us allocate more.
	maxRuns = 1 << 21
)

var errTooFragmented = corrupt("file has more than %d fragments", maxRuns)

func (f *FS) walkExtents(ctx context.Context, node []byte, wantDepth int, limit uint64, runs *[]run, visited *int) error {
	le := binary.LittleEndian
	if len(node) < 12 || le.Uint16(node) != extentMagic {
		return corrupt("bad extent header")
	}
	entries := int(le.Uint16(node[2:]))
	depth := int(le.Uint16(node[6:]))
	if entries > (len(node)-12)/12 || depth > maxExtentDepth || (wantDepth >= 0 && *visited > 0 && depth != wantDepth) {
		return corrupt("extent node with %d entries at depth %d", entries, depth)
	}
	*visited++
	if *visited > maxExtentNodes {
		return corrupt("extent tree too large")
	}
	for i := 0; i < entries; i++ {
		e := node[12+12*i:]
		lblk := uint64(le.Uint32(e))
		if depth == 0 {
			n := uint64(le.Uint16(e[4:]))
			uninit := false
			if n > 32768 {
				n -= 32768
				uninit = true
			}
			pblk := uint64(le.Uint16(e[6:]))<<32 | uint64(le.Uint32(e[8:]))
			if n == 0 || lblk >= limit {
				continue
			}
			if pblk >= f.blocksCount || n > f.blocksCount-pblk {
				return corrupt("extent at logical block %d points to block %d", lblk, pblk)
			}
			if lblk+n > limit {
				n = limit - lblk
			}
			if len(*runs) >= maxRuns {
				return errTooFragmented
			}
			*runs = append(*runs, run{lblk: lblk, pblk: pblk, count: n, uninit: uninit})
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		child := uint64(le.Uint32(e[4:])) | uint64(le.Uint16(e[8:]))<<32
		buf := make([]byte, f.blockSize)
		if err := f.readBlocks(buf, child); err != nil {
			return fmt.Errorf("extent index block: %w", err)
		}
		if err := f.walkExtents(ctx, buf, depth-1, limit, runs, visited); err != nil {
			return err
		}
	}
	return nil
}

// File is the content of a regular file or symlink target.
type File struct {
	f    *FS
	size int64
	runs []run
	// inline holds the whole content of an inline-data file.
	inline []byte
}

// Size implements fs.File.
func (fl *File) Size() int64 { return fl.size }

// ReadAt implements io.ReaderAt. Holes and uninitialized extents read as
// zeros; contiguous runs are read with one call to the underlying reader.
func (fl *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("ext: negative offset")
	}
	if off >= fl.size {
		return 0, io.EOF
	}
	want := len(p)
	if rem := fl.size - off; int64(want) > rem {
		want = int(rem)
	}
	if fl.inline != nil {
		n := 0
		if off < int64(len(fl.inline)) {
			n = copy(p[:want], fl.inline[off:])
		}
		clear(p[n:want]) // inline data shorter than the size reads as zeros
		return finish(want, len(p))
	}
	bs := fl.f.blockSize
	done := 0
	i := sort.Search(len(fl.runs), func(i int) bool {
		r := fl.runs[i]
		return int64(r.lblk+r.count)*bs > off
	})
	for done < want {
		pos := off + int64(done)
		var r *run
		if i < len(fl.runs) {
			r = &fl.runs[i]
		}
		if r == nil || int64(r.lblk)*bs > pos {
			// a hole up to the next run (or the end)
			end := int64(want) + off
			if r != nil && int64(r.lblk)*bs < end {
				end = int64(r.lblk) * bs
			}
			clear(p[done : end-off])
			done = int(end - off)
			continue
		}
		runEnd := int64(r.lblk+r.count) * bs
		n := int64(want - done)
		if runEnd-pos < n {
			n = runEnd - pos
		}
		if r.uninit {
			clear(p[done : done+int(n)])
		} else {
			phys := int64(r.pblk)*bs + (pos - int64(r.lblk)*bs)
			if err := readFull(fl.f.r, p[done:done+int(n)], phys); err != nil {
				return done, fmt.Errorf("ext: read file data at %d: %w", pos, err)
			}
		}
		done += int(n)
		i++
	}
	return finish(want, len(p))
}

func finish(n, asked int) (int, error) {
	if n < asked {
		return n, io.EOF
	}
	return n, nil
}

// DataExtents implements fs.SparseFile: the byte ranges that hold data.
func (fl *File) DataExtents() ([]extent.Range, error) {
	if fl.inline != nil {
		return []extent.Range{{Offset: 0, Length: fl.size}}, nil
	}
	bs := fl.f.blockSize
	var out []extent.Range
	for _, r := range fl.runs {
		if r.uninit {
			continue
		}
		off := int64(r.lblk) * bs
		n := int64(r.count) * bs
		if off+n > fl.size {
			n = fl.size - off
		}
		if n <= 0 {
			continue
		}
		if k := len(out); k > 0 && out[k-1].End() == off {
			out[k-1].Length += n
			continue
		}
		out = append(out, extent.Range{Offset: off, Length: n})
	}
	return out, nil
}

func (f *FS) openInode(ctx context.Context, in *inode) (*File, error) {
	size := int64(in.size)
	if size < 0 {
		return nil, corrupt("inode %d: size %d", in.ino, in.size)
	}
	if in.flags&flagInlineData != 0 {
		data, err := f.inlineData(in)
		if err != nil {
			return nil, err
		}
		if int64(len(data)) > size {
			data = data[:size]
		}
		if data == nil {
			data = []byte{}
		}
		return &File{f: f, size: size, inline: data}, nil
	}
	limit := (uint64(size) + uint64(f.blockSize) - 1) / uint64(f.blockSize)
	runs, err := f.blockMap(ctx, in, limit)
	if err != nil {
		return nil, err
	}
	return &File{f: f, size: size, runs: runs}, nil
}

// Open implements fs.FileSystem.
func (f *FS) Open(ctx context.Context, ino fs.Ino) (fs.File, error) {
	in, err := f.readInode(uint64(ino))
	if err != nil {
		return nil, err
	}
	switch in.fileType() {
	case fs.TypeRegular:
	case fs.TypeDir:
		return nil, fmt.Errorf("ext: inode %d: %w", ino, fs.ErrIsDir)
	default:
		return nil, fmt.Errorf("ext: inode %d is a %s, not a regular file", ino, in.fileType())
	}
	return f.openInode(ctx, in)
}

// Readlink implements fs.FileSystem.
func (f *FS) Readlink(ctx context.Context, ino fs.Ino) (string, error) {
	in, err := f.readInode(uint64(ino))
	if err != nil {
		return "", err
	}
	if in.fileType() != fs.TypeSymlink {
		return "", fmt.Errorf("ext: inode %d is not a symlink", ino)
	}
	if in.size > 65536 {
		return "", corrupt("symlink inode %d: target of %d bytes", ino, in.size)
	}
	if in.size < 60 && in.flags&(flagExtents|flagInlineData) == 0 && (in.blocks == 0 || in.fileACL != 0 && in.blocks == uint64(f.blockSize/512)) {
		return string(in.block[:in.size]), nil
	}
	fl, err := f.openInode(ctx, in)
	if err != nil {
		return "", err
	}
	buf := make([]byte, fl.size)
	if _, err := fl.ReadAt(buf, 0); err != nil && len(buf) > 0 {
		return "", err
	}
	return string(buf), nil
}

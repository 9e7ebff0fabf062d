package xfs

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/repo/extent"
)

const (
	inodeMagic = 0x494e // "IN"

	fmtDev     = 0
	fmtLocal   = 1
	fmtExtents = 2
	fmtBtree   = 3

	diflagRealtime = 0x1
	diflag2Bigtime = 0x8
	diflag2Nrext64 = 0x10

	// bigtimeEpoch is how far before the Unix epoch a big timestamp's zero
	// lies, in seconds (2^31: the oldest 32-bit time).
	bigtimeEpoch = 1 << 31

	bmapMagic   = 0x424d4150 // "BMAP"
	bmap3Magic  = 0x424d4133 // "BMA3"
	maxBtreeLvl = 9
	// maxBtreeNodes bounds the btree blocks one fork may make us read.
	maxBtreeNodes = 1 << 16
	// maxRuns bounds the mapping held for one fork (32 bytes a run).
	maxRuns = 1 << 21
	// maxSymlink is the longest symlink target XFS stores.
	maxSymlink = 1024
)

// inode is the parsed part of an on-disk inode.
type inode struct {
	ino       uint64
	mode      uint16
	version   uint8
	format    uint8
	aformat   uint8
	uid, gid  uint32
	nlink     uint32
	size      int64
	nblocks   uint64
	nextents  uint64
	anextents uint64
	flags     uint16
	flags2    uint64
	atime     time.Time
	mtime     time.Time
	ctime     time.Time
	crtime    time.Time
	dfork     []byte // data fork (literal area up to the attribute fork)
	afork     []byte // attribute fork, nil when absent
}

func (f *FS) readInode(ino uint64) (*inode, error) {
	off, _, err := f.inoLocation(ino)
	if err != nil {
		return nil, err
	}
	b := make([]byte, f.inodeSize)
	if err := readFull(f.r, b, off); err != nil {
		return nil, fmt.Errorf("xfs: read inode %d: %w", ino, err)
	}
	in, err := f.parseInode(b, ino)
	if err != nil {
		return nil, err
	}
	return in, nil
}

// parseInode decodes one on-disk inode of f.inodeSize bytes.
func (f *FS) parseInode(b []byte, ino uint64) (*inode, error) {
	if len(b) < 100 || be.Uint16(b) != inodeMagic {
		return nil, corrupt("inode %d has no magic number", ino)
	}
	in := &inode{ino: ino}
	in.mode = be.Uint16(b[2:])
	in.version = b[4]
	in.format = b[5]
	in.uid = be.Uint32(b[8:])
	in.gid = be.Uint32(b[12:])
	core := 100
	switch in.version {
	case 1:
		in.nlink = uint32(be.Uint16(b[6:]))
	case 2:
		in.nlink = be.Uint32(b[16:])
	case 3:
		if !f.v5 || len(b) < 176 {
			return nil, corrupt("inode %d: version 3 inode on a v4 filesystem", ino)
		}
		in.nlink = be.Uint32(b[16:])
		core = 176
		f.verify(b, 100, fmt.Sprintf("inode %d", ino))
		if got := be.Uint64(b[152:]); got != ino {
			return nil, corrupt("inode %d records itself as inode %d", ino, got)
		}
		in.flags2 = be.Uint64(b[120:])
	default:
		return nil, corrupt("inode %d: version %d", ino, in.version)
	}
	size := be.Uint64(b[56:])
	if size > 1<<63-1 {
		return nil, corrupt("inode %d: size %d", ino, size)
	}
	in.size = int64(size)
	in.nblocks = be.Uint64(b[64:])
	if in.flags2&diflag2Nrext64 != 0 {
		in.nextents = be.Uint64(b[24:])
		in.anextents = uint64(be.Uint32(b[76:]))
	} else {
		in.nextents = uint64(be.Uint32(b[76:]))
		in.anextents = uint64(be.Uint16(b[80:]))
	}
	forkOff := int(b[82]) * 8
	in.aformat = b[83]
	in.flags = be.Uint16(b[90:])
	big := in.flags2&diflag2Bigtime != 0
	in.atime = f.stamp(b[32:], big)
	in.mtime = f.stamp(b[40:], big)
	in.ctime = f.stamp(b[48:], big)
	if in.version == 3 {
		in.crtime = f.stamp(b[144:], big)
	}
	lit := b[core:]
	if forkOff != 0 {
		if forkOff >= len(lit) {
			return nil, corrupt("inode %d: attribute fork at %d of a %d-byte literal area", ino, forkOff, len(lit))
		}
		in.dfork, in.afork = lit[:forkOff], lit[forkOff:]
	} else {
		in.dfork = lit
	}
	return in, nil
}

// stamp decodes an inode timestamp: seconds and nanoseconds (32 bits
// each), or with big timestamps nanoseconds since 1901-12-13.
func (f *FS) stamp(b []byte, big bool) time.Time {
	if big {
		v := be.Uint64(b)
		return time.Unix(int64(v/1e9)-bigtimeEpoch, int64(v%1e9)).UTC()
	}
	sec := int64(int32(be.Uint32(b)))
	nsec := int64(be.Uint32(b[4:]))
	if nsec > 999999999 {
		nsec = 0
	}
	return time.Unix(sec, nsec).UTC()
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

// rdev returns a device inode's number in Linux's new_encode_dev form. XFS
// stores major<<18 | minor.
func (in *inode) rdev() uint32 {
	if in.format != fmtDev || len(in.dfork) < 4 {
		return 0
	}
	d := be.Uint32(in.dfork)
	major, minor := (d>>18)&0x1ff, d&0x3ffff
	return (minor & 0xff) | (major << 8) | ((minor &^ 0xff) << 12)
}

func (f *FS) stat(in *inode) fs.Stat {
	st := fs.Stat{
		Ino:    fs.Ino(in.ino),
		Type:   in.fileType(),
		Mode:   uint32(in.mode) & fs.ModePerm,
		Size:   in.size,
		UID:    in.uid,
		GID:    in.gid,
		Nlink:  in.nlink,
		Atime:  in.atime,
		Mtime:  in.mtime,
		Ctime:  in.ctime,
		Crtime: in.crtime,
	}
	switch st.Type {
	case fs.TypeCharDev, fs.TypeBlockDev:
		st.Rdev = in.rdev()
		st.Size = 0
	case fs.TypeFIFO, fs.TypeSocket:
		st.Size = 0
	case fs.TypeRegular:
		// nblocks also counts attribute and btree blocks, so a sparse
		// file with many of those may be missed; never a false positive.
		st.Sparse = in.nblocks < uint64((st.Size+f.blockSize-1)/f.blockSize)
	}
	return st
}

// Stat implements fs.FileSystem.
func (f *FS) Stat(ctx context.Context, ino fs.Ino) (fs.Stat, error) {
	in, err := f.readInode(uint64(ino))
	if err != nil {
		return fs.Stat{}, err
	}
	if in.mode == 0 {
		return fs.Stat{}, fmt.Errorf("xfs: inode %d is not in use: %w", ino, fs.ErrNotExist)
	}
	return f.stat(in), nil
}

// run maps count blocks of a fork from logical block lblk to linear block
// pblk (AG * agBlocks + AG block); unwritten runs read as zeros.
type run struct {
	lblk, pblk uint64
	count      uint64
	unwritten  bool
}

// forkMap returns the runs of a fork (extent list or btree) in logical
// order, dropping mappings at or past limit (logical blocks).
func (f *FS) forkMap(ctx context.Context, in *inode, attr bool, limit uint64) ([]run, error) {
	format, fork, next := in.format, in.dfork, in.nextents
	what := "data"
	if attr {
		format, fork, next = in.aformat, in.afork, in.anextents
		what = "attribute"
	}
	var runs []run
	switch format {
	case fmtExtents:
		if next > uint64(len(fork)/16) {
			return nil, corrupt("inode %d: %d %s extents in a %d-byte fork", in.ino, next, what, len(fork))
		}
		for i := uint64(0); i < next; i++ {
			if err := f.addExtent(&runs, fork[16*i:], limit); err != nil {
				return nil, fmt.Errorf("inode %d %s fork: %w", in.ino, what, err)
			}
		}
	case fmtBtree:
		w := &bmbtWalk{f: f, ctx: ctx, limit: limit, owner: in.ino}
		if err := w.root(fork); err != nil {
			return nil, fmt.Errorf("inode %d %s fork: %w", in.ino, what, err)
		}
		runs = w.runs
	default:
		return nil, corrupt("inode %d: %s fork format %d is not a block map", in.ino, what, format)
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].lblk < runs[j].lblk })
	for i := 1; i < len(runs); i++ {
		if runs[i].lblk < runs[i-1].lblk+runs[i-1].count {
			return nil, corrupt("inode %d: overlapping %s extents at logical block %d", in.ino, what, runs[i].lblk)
		}
	}
	return runs, nil
}

// addExtent decodes one 16-byte extent record: 1 bit unwritten flag, 54
// bits logical block, 52 bits filesystem block, 21 bits length.
func (f *FS) addExtent(runs *[]run, rec []byte, limit uint64) error {
	l0, l1 := be.Uint64(rec), be.Uint64(rec[8:])
	unwritten := l0>>63 != 0
	lblk := (l0 & (1<<63 - 1)) >> 9
	fsb := (l0&0x1ff)<<43 | l1>>21
	count := l1 & (1<<21 - 1)
	if count == 0 || lblk >= limit {
		return nil
	}
	pblk, err := f.fsbToLinear(fsb, count)
	if err != nil {
		return fmt.Errorf("extent at logical block %d: %w", lblk, err)
	}
	if lblk+count > limit {
		count = limit - lblk
	}
	if len(*runs) >= maxRuns {
		return corrupt("more than %d extents", maxRuns)
	}
	*runs = append(*runs, run{lblk: lblk, pblk: pblk, count: count, unwritten: unwritten})
	return nil
}

// bmbtWalk collects the extents of a fork in btree form.
type bmbtWalk struct {
	f      *FS
	ctx    context.Context
	limit  uint64
	owner  uint64
	runs   []run
	visits int
}

// root walks the btree root held in an inode fork: level, number of
// records, then keys and pointers sized for the whole fork.
func (w *bmbtWalk) root(fork []byte) error {
	if len(fork) < 4 {
		return corrupt("btree root in a %d-byte fork", len(fork))
	}
	level, n := int(be.Uint16(fork)), int(be.Uint16(fork[2:]))
	maxrecs := (len(fork) - 4) / 16
	if level == 0 || level > maxBtreeLvl || n == 0 || n > maxrecs {
		return corrupt("btree root of level %d with %d records (room for %d)", level, n, maxrecs)
	}
	ptrs := fork[4+8*maxrecs:]
	for i := 0; i < n; i++ {
		if err := w.node(be.Uint64(ptrs[8*i:]), level-1); err != nil {
			return err
		}
	}
	return nil
}

func (w *bmbtWalk) node(fsb uint64, level int) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	if w.visits++; w.visits > maxBtreeNodes {
		return corrupt("block map btree of more than %d blocks", maxBtreeNodes)
	}
	f := w.f
	b := make([]byte, f.blockSize)
	if err := f.readFSB(b, fsb); err != nil {
		return fmt.Errorf("block map btree: %w", err)
	}
	hdr := 24
	magic := uint32(bmapMagic)
	if f.v5 {
		hdr, magic = 72, bmap3Magic
	}
	if be.Uint32(b) != magic {
		return corrupt("block map btree block %#x has no magic number", fsb)
	}
	if f.v5 {
		f.verify(b, 64, fmt.Sprintf("inode %d block map btree block %#x", w.owner, fsb))
		if own := be.Uint64(b[56:]); own != w.owner {
			return corrupt("block map btree block %#x belongs to inode %d, not %d", fsb, own, w.owner)
		}
	}
	lvl, n := int(be.Uint16(b[4:])), int(be.Uint16(b[6:]))
	if lvl != level {
		return corrupt("block map btree block %#x at level %d, expected %d", fsb, lvl, level)
	}
	maxrecs := (len(b) - hdr) / 16
	if n > maxrecs {
		return corrupt("block map btree block %#x with %d records", fsb, n)
	}
	if level == 0 {
		for i := 0; i < n; i++ {
			if err := w.f.addExtent(&w.runs, b[hdr+16*i:], w.limit); err != nil {
				return err
			}
		}
		return nil
	}
	ptrs := b[hdr+8*maxrecs:]
	for i := 0; i < n; i++ {
		if err := w.node(be.Uint64(ptrs[8*i:]), level-1); err != nil {
			return err
		}
	}
	return nil
}

// File is the content of a regular file, a remote symlink target, or the
// logical space of a directory or attribute fork.
type File struct {
	f    *FS
	size int64
	runs []run
}

// Size implements fs.File.
func (fl *File) Size() int64 { return fl.size }

// ReadAt implements io.ReaderAt. Holes and unwritten extents read as
// zeros; contiguous runs are read with one call to the underlying reader.
func (fl *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("xfs: negative offset")
	}
	if off >= fl.size {
		return 0, io.EOF
	}
	want := len(p)
	if rem := fl.size - off; int64(want) > rem {
		want = int(rem)
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
		if r.unwritten {
			clear(p[done : done+int(n)])
		} else {
			phys := int64(r.pblk)*bs + (pos - int64(r.lblk)*bs)
			if err := readFull(fl.f.r, p[done:done+int(n)], phys); err != nil {
				return done, fmt.Errorf("xfs: read file data at %d: %w", pos, err)
			}
		}
		done += int(n)
		i++
	}
	if want < len(p) {
		return want, io.EOF
	}
	return want, nil
}

// DataExtents implements fs.SparseFile: the byte ranges that hold data
// (unwritten extents are holes).
func (fl *File) DataExtents() ([]extent.Range, error) {
	bs := fl.f.blockSize
	var out []extent.Range
	for _, r := range fl.runs {
		if r.unwritten {
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

// openFork maps a fork of size bytes for reading.
func (f *FS) openFork(ctx context.Context, in *inode, attr bool, size int64) (*File, error) {
	limit := (uint64(size) + uint64(f.blockSize) - 1) / uint64(f.blockSize)
	runs, err := f.forkMap(ctx, in, attr, limit)
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
		return nil, fmt.Errorf("xfs: inode %d: %w", ino, fs.ErrIsDir)
	default:
		return nil, fmt.Errorf("xfs: inode %d is a %s, not a regular file", ino, in.fileType())
	}
	if in.flags&diflagRealtime != 0 {
		return nil, fmt.Errorf("xfs: inode %d: data lives on the realtime device, which is not part of this disk", ino)
	}
	if in.format == fmtLocal {
		if in.size > int64(len(in.dfork)) {
			return nil, corrupt("inode %d: %d bytes of local data in a %d-byte fork", ino, in.size, len(in.dfork))
		}
		return &localFile{data: in.dfork[:in.size]}, nil
	}
	return f.openFork(ctx, in, false, in.size)
}

// localFile is a file whose content lives in its inode.
type localFile struct{ data []byte }

func (l *localFile) Size() int64 { return int64(len(l.data)) }

func (l *localFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("xfs: negative offset")
	}
	if off >= int64(len(l.data)) {
		return 0, io.EOF
	}
	n := copy(p, l.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Readlink implements fs.FileSystem.
func (f *FS) Readlink(ctx context.Context, ino fs.Ino) (string, error) {
	in, err := f.readInode(uint64(ino))
	if err != nil {
		return "", err
	}
	if in.fileType() != fs.TypeSymlink {
		return "", fmt.Errorf("xfs: inode %d is not a symlink", ino)
	}
	if in.size <= 0 || in.size > maxSymlink {
		return "", corrupt("symlink inode %d: target of %d bytes", ino, in.size)
	}
	switch in.format {
	case fmtLocal:
		if in.size > int64(len(in.dfork)) {
			return "", corrupt("symlink inode %d: %d bytes in a %d-byte fork", ino, in.size, len(in.dfork))
		}
		return string(in.dfork[:in.size]), nil
	case fmtExtents, fmtBtree:
	default:
		return "", corrupt("symlink inode %d: fork format %d", ino, in.format)
	}
	if !f.v5 {
		fl, err := f.openFork(ctx, in, false, in.size)
		if err != nil {
			return "", err
		}
		buf := make([]byte, in.size)
		if _, err := fl.ReadAt(buf, 0); err != nil {
			return "", err
		}
		return string(buf), nil
	}
	// v5: every extent starts with a header saying which bytes it holds.
	const hdr = 56
	maxBlocks := (maxSymlink + f.blockSize - hdr - 1) / (f.blockSize - hdr)
	fl, err := f.openFork(ctx, in, false, maxBlocks*f.blockSize)
	if err != nil {
		return "", err
	}
	out := make([]byte, 0, in.size)
	for i, r := range fl.runs {
		if r.unwritten || int64(r.count) > maxBlocks {
			return "", corrupt("symlink inode %d extent %d", ino, i)
		}
		b := make([]byte, int64(r.count)*f.blockSize)
		if err := readFull(f.r, b, int64(r.pblk)*f.blockSize); err != nil {
			return "", fmt.Errorf("xfs: symlink inode %d: %w", ino, err)
		}
		if be.Uint32(b) != 0x58534c4d { // "XSLM"
			return "", corrupt("symlink inode %d extent %d has no magic number", ino, i)
		}
		f.verify(b, 12, fmt.Sprintf("symlink inode %d extent %d", ino, i))
		off, n := int64(be.Uint32(b[4:])), int64(be.Uint32(b[8:]))
		if off != int64(len(out)) || n > int64(len(b))-hdr || off+n > in.size || be.Uint64(b[32:]) != in.ino {
			return "", corrupt("symlink inode %d extent %d holds bytes %d+%d", ino, i, off, n)
		}
		out = append(out, b[hdr:hdr+n]...)
		if int64(len(out)) == in.size {
			break
		}
	}
	if int64(len(out)) != in.size {
		return "", corrupt("symlink inode %d: %d of %d bytes found", ino, len(out), in.size)
	}
	return string(out), nil
}

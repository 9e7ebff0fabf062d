// Package fat reads FAT12, FAT16 and FAT32 filesystems, read-only, from an
// io.ReaderAt, with VFAT long file names.
//
// go-diskfs's FAT packages (v1.9.4) were tried first and fall short for a
// forensic reader: they allocate the FAT from an unchecked BPB field, refuse
// volumes whose two FAT copies differ (common after a crash), attach an
// orphaned long-name run to the wrong entry (no checksum check), expose only
// the modification time, have no stable file identity and read files only
// through a cursor. This package reads the same structures with those gaps
// closed.
//
// Invariants: the geometry from the boot sector is validated against the
// volume size before use; cluster chains are bounded by the cluster count
// (a loop ends in ErrCorrupt); FAT sectors are cached with a fixed bound.
// File identity (fs.Ino) is the byte offset of a file's short directory
// entry divided by 32; the root directory is 1.
package fat

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf16"

	"github.com/vmvault/vmvault/fs"
)

const (
	rootIno = 1

	attrReadOnly = 0x01
	attrVolume   = 0x08
	attrDir      = 0x10
	attrLFN      = 0x0f

	// fatCacheBlocks × fatBlock bounds the FAT cache (4 MiB).
	fatBlock       = 64 << 10
	fatCacheBlocks = 64
	// maxDirBytes bounds a directory: FAT allows 65536 entries.
	maxDirBytes = 65536 * 32
)

// FS is an open FAT filesystem.
type FS struct {
	r           io.ReaderAt
	kind        string
	bps         int64 // bytes per sector
	clusterSize int64
	fatStart    int64 // byte offset of the first FAT
	fatBytes    int64
	fats        int64 // FAT copies
	size        int64 // the partition
	rootStart   int64 // FAT12/16 fixed root directory
	rootBytes   int64
	dataStart   int64
	clusters    uint32 // data clusters, numbered 2..clusters+1
	rootCluster uint32 // FAT32
	label, uuid string
	warnings    []string

	mu    sync.Mutex
	cache map[int64][]byte
}

func le16(b []byte) uint16 { return binary.LittleEndian.Uint16(b) }
func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }

func corrupt(format string, args ...any) error {
	return fmt.Errorf("fat: %s: %w", fmt.Sprintf(format, args...), fs.ErrCorrupt)
}

type geometry struct {
	bps, spc, reserved, fats, rootEntries int64
	totalSectors, fatSectors              int64
	clusters                              int64
}

func parseBoot(b []byte) (geometry, error) {
	var g geometry
	if len(b) < 512 || b[510] != 0x55 || b[511] != 0xaa {
		return g, corrupt("no boot sector signature")
	}
	g.bps = int64(le16(b[0x0b:]))
	g.spc = int64(b[0x0d])
	g.reserved = int64(le16(b[0x0e:]))
	g.fats = int64(b[0x10])
	g.rootEntries = int64(le16(b[0x11:]))
	g.totalSectors = int64(le16(b[0x13:]))
	if g.totalSectors == 0 {
		g.totalSectors = int64(le32(b[0x20:]))
	}
	g.fatSectors = int64(le16(b[0x16:]))
	if g.fatSectors == 0 {
		g.fatSectors = int64(le32(b[0x24:]))
	}
	switch {
	case g.bps != 512 && g.bps != 1024 && g.bps != 2048 && g.bps != 4096:
		return g, corrupt("%d bytes per sector", g.bps)
	case g.spc == 0 || g.spc&(g.spc-1) != 0:
		return g, corrupt("%d sectors per cluster", g.spc)
	case g.reserved == 0 || g.fats == 0 || g.fats > 4 || g.fatSectors == 0:
		return g, corrupt("%d reserved sectors, %d FATs of %d sectors", g.reserved, g.fats, g.fatSectors)
	}
	rootSectors := (g.rootEntries*32 + g.bps - 1) / g.bps
	data := g.reserved + g.fats*g.fatSectors + rootSectors
	if g.totalSectors <= data {
		return g, corrupt("%d sectors leave no data area", g.totalSectors)
	}
	g.clusters = (g.totalSectors - data) / g.spc
	return g, nil
}

// Probe names the FAT variant of a boot sector ("fat12", "fat16",
// "fat32"), or returns "" when it is not a FAT boot sector.
func Probe(boot []byte) string {
	g, err := parseBoot(boot)
	if err != nil {
		return ""
	}
	if boot[0] != 0xeb && boot[0] != 0xe9 {
		return ""
	}
	return variant(g)
}

func variant(g geometry) string {
	switch {
	case g.clusters < 4085:
		return "fat12"
	case g.clusters < 65525:
		return "fat16"
	}
	return "fat32"
}

// Open reads the boot sector of the FAT volume occupying r[0:size].
func Open(r io.ReaderAt, size int64) (*FS, error) {
	boot := make([]byte, 512)
	if _, err := r.ReadAt(boot, 0); err != nil {
		return nil, fmt.Errorf("fat: read boot sector: %w", err)
	}
	g, err := parseBoot(boot)
	if err != nil {
		return nil, err
	}
	if g.totalSectors*g.bps > size {
		return nil, corrupt("boot sector claims %d bytes in a %d-byte volume", g.totalSectors*g.bps, size)
	}
	f := &FS{r: r, kind: variant(g), bps: g.bps, clusterSize: g.bps * g.spc, cache: map[int64][]byte{}}
	f.fatStart = g.reserved * g.bps
	f.fatBytes = g.fatSectors * g.bps
	f.fats, f.size = g.fats, size
	f.rootStart = f.fatStart + g.fats*f.fatBytes
	f.rootBytes = g.rootEntries * 32
	f.dataStart = f.rootStart + (f.rootBytes+g.bps-1)/g.bps*g.bps
	f.clusters = uint32(g.clusters)
	bits := map[string]int64{"fat12": 12, "fat16": 16, "fat32": 32}[f.kind]
	if (g.clusters+2)*bits/8 > f.fatBytes {
		return nil, corrupt("FAT of %d bytes cannot map %d clusters", f.fatBytes, g.clusters)
	}
	idOff, labelOff := 0x27, 0x2b
	if f.kind == "fat32" {
		idOff, labelOff = 0x43, 0x47
		f.rootCluster = le32(boot[0x2c:])
		if !f.valid(f.rootCluster) {
			return nil, corrupt("root directory cluster %d", f.rootCluster)
		}
	} else if f.rootBytes == 0 {
		return nil, corrupt("%s volume without root directory entries", f.kind)
	}
	if boot[idOff-1] == 0x29 { // extended boot signature
		f.uuid = fmt.Sprintf("%04X-%04X", le16(boot[idOff+2:]), le16(boot[idOff:]))
		f.label = strings.TrimRight(string(boot[labelOff:labelOff+11]), " ")
	}
	if f.label == "NO NAME" {
		f.label = ""
	}
	if l, err := f.volumeLabel(); err == nil && l != "" {
		f.label = l
	}
	return f, nil
}

func (f *FS) valid(c uint32) bool { return c >= 2 && c < f.clusters+2 }

// next returns the FAT entry for cluster c.
func (f *FS) next(c uint32) (uint32, error) {
	var off int64
	switch f.kind {
	case "fat12":
		off = int64(c) + int64(c)/2
	case "fat16":
		off = int64(c) * 2
	default:
		off = int64(c) * 4
	}
	var b [4]byte
	for i := int64(0); i < 4 && off+i < f.fatBytes; i++ {
		v, err := f.fatByte(off + i)
		if err != nil {
			return 0, err
		}
		b[i] = v
	}
	switch f.kind {
	case "fat12":
		v := uint32(le16(b[:]))
		if c&1 == 1 {
			v >>= 4
		}
		v &= 0xfff
		if v >= 0xff7 {
			v |= 0x0ffff000
		}
		return v, nil
	case "fat16":
		v := uint32(le16(b[:]))
		if v >= 0xfff7 {
			v |= 0x0fff0000
		}
		return v, nil
	}
	return le32(b[:]) & 0x0fffffff, nil
}

func (f *FS) fatByte(off int64) (byte, error) {
	blk := off / fatBlock
	f.mu.Lock()
	b, ok := f.cache[blk]
	f.mu.Unlock()
	if !ok {
		n := min(int64(fatBlock), f.fatBytes-blk*fatBlock)
		b = make([]byte, n)
		if _, err := f.r.ReadAt(b, f.fatStart+blk*fatBlock); err != nil && err != io.EOF {
			return 0, fmt.Errorf("fat: read FAT: %w", err)
		}
		f.mu.Lock()
		if len(f.cache) >= fatCacheBlocks {
			clear(f.cache)
		}
		f.cache[blk] = b
		f.mu.Unlock()
	}
	return b[off%fatBlock], nil
}

// chain returns the clusters of a file, at most max of them.
func (f *FS) chain(ctx context.Context, first uint32, max int64) ([]uint32, error) {
	var out []uint32
	c := first
	for int64(len(out)) < max {
		if !f.valid(c) {
			return nil, corrupt("cluster chain from %d reaches cluster %#x", first, c)
		}
		if len(out)&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		out = append(out, c)
		n, err := f.next(c)
		if err != nil {
			return nil, err
		}
		if n >= 0x0ffffff8 {
			break
		}
		if n == 0x0ffffff7 || n == 0 {
			return nil, corrupt("cluster chain from %d: cluster %d is marked %#x", first, c, n)
		}
		if int64(len(out)) > int64(f.clusters) {
			return nil, corrupt("cluster chain from %d loops", first)
		}
		c = n
	}
	return out, nil
}

func (f *FS) clusterOffset(c uint32) int64 { return f.dataStart + int64(c-2)*f.clusterSize }

// Type implements fs.FileSystem.
func (f *FS) Type() string { return f.kind }

// Label implements fs.FileSystem.
func (f *FS) Label() string { return f.label }

// UUID implements fs.FileSystem (the volume serial number, as blkid shows
// it).
func (f *FS) UUID() string { return f.uuid }

// Root implements fs.FileSystem.
func (f *FS) Root() fs.Ino { return rootIno }

// Warnings implements fs.FileSystem.
func (f *FS) Warnings() []string { return f.warnings }

// entry is a parsed short directory entry with its long name.
type entry struct {
	name    string
	ino     fs.Ino
	attr    byte
	cluster uint32
	size    uint32
	raw     [32]byte
}

func (f *FS) readEntry(ino fs.Ino) ([32]byte, error) {
	var b [32]byte
	off := int64(ino) * 32
	if ino <= rootIno || off < f.rootStart {
		return b, corrupt("no directory entry %d", ino)
	}
	if _, err := f.r.ReadAt(b[:], off); err != nil {
		return b, fmt.Errorf("fat: read directory entry %d: %w", ino, err)
	}
	if b[0] == 0 || b[0] == 0xe5 || b[11] == attrLFN {
		return b, fmt.Errorf("fat: directory entry %d: %w", ino, fs.ErrNotExist)
	}
	return b, nil
}

func firstCluster(b []byte) uint32 { return uint32(le16(b[26:])) | uint32(le16(b[20:]))<<16 }

// Stat implements fs.FileSystem.
func (f *FS) Stat(ctx context.Context, ino fs.Ino) (fs.Stat, error) {
	if ino == rootIno {
		return fs.Stat{Ino: rootIno, Type: fs.TypeDir, Mode: 0o755, Nlink: 1}, nil
	}
	b, err := f.readEntry(ino)
	if err != nil {
		return fs.Stat{}, err
	}
	st := fs.Stat{Ino: ino, Type: fs.TypeRegular, Mode: 0o644, Size: int64(le32(b[28:])), Nlink: 1}
	if b[11]&attrDir != 0 {
		st.Type, st.Mode, st.Size = fs.TypeDir, 0o755, 0
	}
	if b[11]&attrReadOnly != 0 {
		st.Mode &^= 0o222
	}
	st.Mtime = dosTime(le16(b[24:]), le16(b[22:]), 0)
	st.Crtime = dosTime(le16(b[16:]), le16(b[14:]), b[13])
	st.Atime = dosTime(le16(b[18:]), 0, 0)
	st.Ctime = st.Mtime
	return st, nil
}

// dosTime decodes a FAT date and time (local time, shown as UTC as the
// kernel does without a tz option); a zero date is the zero time.
func dosTime(d, t uint16, tenths byte) time.Time {
	if d == 0 {
		return time.Time{}
	}
	ns := int(tenths%200) * 10 * int(time.Millisecond)
	return time.Date(int(d>>9)+1980, time.Month((d>>5)&0xf), int(d&0x1f),
		int(t>>11), int((t>>5)&0x3f), int(t&0x1f)*2, ns, time.UTC)
}

// dirRegions returns the byte ranges holding a directory's entries.
func (f *FS) dirRegions(ctx context.Context, ino fs.Ino) ([][2]int64, error) {
	var first uint32
	if ino == rootIno {
		if f.kind != "fat32" {
			return [][2]int64{{f.rootStart, f.rootBytes}}, nil
		}
		first = f.rootCluster
	} else {
		b, err := f.readEntry(ino)
		if err != nil {
			return nil, err
		}
		if b[11]&attrDir == 0 {
			return nil, fmt.Errorf("fat: entry %d: %w", ino, fs.ErrNotDir)
		}
		first = firstCluster(b[:])
		if first == 0 { // ".." pointing at the root on FAT12/16
			return f.dirRegions(ctx, rootIno)
		}
	}
	cl, err := f.chain(ctx, first, maxDirBytes/f.clusterSize+1)
	if err != nil {
		return nil, err
	}
	out := make([][2]int64, len(cl))
	for i, c := range cl {
		out[i] = [2]int64{f.clusterOffset(c), f.clusterSize}
	}
	return out, nil
}

func (f *FS) entries(ctx context.Context, dir fs.Ino, all bool) ([]entry, error) {
	regions, err := f.dirRegions(ctx, dir)
	if err != nil {
		return nil, err
	}
	var (
		out   []entry
		lfn   []uint16
		lfnCk byte
		lfnSq int
	)
	buf := make([]byte, f.clusterSize)
	for _, reg := range regions {
		b := buf[:0]
		if reg[1] > int64(cap(buf)) {
			b = make([]byte, reg[1])
		} else {
			b = buf[:reg[1]]
		}
		if _, err := f.r.ReadAt(b, reg[0]); err != nil {
			return nil, fmt.Errorf("fat: read directory %d: %w", dir, err)
		}
		for i := 0; i+32 <= len(b); i += 32 {
			e := b[i : i+32]
			switch {
			case e[0] == 0:
				return out, nil
			case e[0] == 0xe5:
				lfn = nil
				continue
			case e[11] == attrLFN:
				seq := int(e[0] & 0x1f)
				if e[0]&0x40 != 0 {
					lfn, lfnCk, lfnSq = make([]uint16, 13*seq), e[13], seq
				} else if lfn == nil || seq != lfnSq-1 || e[13] != lfnCk {
					lfn = nil
					continue
				}
				if seq == 0 || lfn == nil {
					lfn = nil
					continue
				}
				lfnSq = seq
				p := lfn[13*(seq-1):]
				for k, o := range []int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30} {
					p[k] = le16(e[o:])
				}
				continue
			}
			long := lfn
			lfn = nil
			if e[11]&attrVolume != 0 && !all {
				continue
			}
			name := shortName(e)
			if name == "." || name == ".." {
				continue
			}
			if long != nil && lfnSq == 1 && checksum(e) == lfnCk {
				name = decodeLFN(long)
			}
			en := entry{name: name, ino: fs.Ino((reg[0] + int64(i)) / 32), attr: e[11], cluster: firstCluster(e), size: le32(e[28:])}
			copy(en.raw[:], e)
			out = append(out, en)
		}
	}
	return out, nil
}

func checksum(e []byte) byte {
	var s byte
	for _, c := range e[:11] {
		s = (s>>1 | s<<7) + c
	}
	return s
}

func decodeLFN(u []uint16) string {
	for i, c := range u {
		if c == 0 {
			u = u[:i]
			break
		}
	}
	for len(u) > 0 && u[len(u)-1] == 0xffff {
		u = u[:len(u)-1]
	}
	return string(utf16.Decode(u))
}

func shortName(e []byte) string {
	base := []byte(strings.TrimRight(string(e[0:8]), " "))
	ext := []byte(strings.TrimRight(string(e[8:11]), " "))
	if len(base) > 0 && base[0] == 0x05 {
		base[0] = 0xe5
	}
	if e[12]&0x08 != 0 {
		base = []byte(strings.ToLower(string(base)))
	}
	if e[12]&0x10 != 0 {
		ext = []byte(strings.ToLower(string(ext)))
	}
	s := latin1(base)
	if len(ext) > 0 {
		s += "." + latin1(ext)
	}
	return s
}

// latin1 maps bytes ≥ 0x80 one to one onto Unicode; FAT short names carry
// no code page, and this keeps every byte visible and distinct.
func latin1(b []byte) string {
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}

func (f *FS) volumeLabel() (string, error) {
	ents, err := f.entries(context.Background(), rootIno, true)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		if e.attr&attrVolume != 0 && e.attr != attrLFN {
			return strings.TrimRight(string(e.raw[:11]), " "), nil
		}
	}
	return "", nil
}

func entType(e entry) fs.Type {
	if e.attr&attrDir != 0 {
		return fs.TypeDir
	}
	return fs.TypeRegular
}

// ReadDir implements fs.FileSystem.
func (f *FS) ReadDir(ctx context.Context, ino fs.Ino) ([]fs.DirEntry, error) {
	ents, err := f.entries(ctx, ino, false)
	if err != nil {
		return nil, err
	}
	out := make([]fs.DirEntry, len(ents))
	for i, e := range ents {
		out[i] = fs.DirEntry{Name: e.name, Ino: e.ino, Type: entType(e)}
	}
	return out, nil
}

// Lookup implements fs.FileSystem. FAT names compare case-insensitively.
func (f *FS) Lookup(ctx context.Context, dir fs.Ino, name string) (fs.Ino, error) {
	ents, err := f.entries(ctx, dir, false)
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		if e.name == name {
			return e.ino, nil
		}
	}
	for _, e := range ents {
		if strings.EqualFold(e.name, name) || strings.EqualFold(shortName(e.raw[:]), name) {
			return e.ino, nil
		}
	}
	return 0, fmt.Errorf("fat: %q: %w", name, fs.ErrNotExist)
}

// Readlink implements fs.FileSystem; FAT has no symlinks.
func (f *FS) Readlink(ctx context.Context, ino fs.Ino) (string, error) {
	return "", fmt.Errorf("fat: entry %d is not a symlink", ino)
}

// ListXattr implements fs.FileSystem; FAT has no extended attributes.
func (f *FS) ListXattr(ctx context.Context, ino fs.Ino) ([]string, error) { return nil, nil }

// GetXattr implements fs.FileSystem.
func (f *FS) GetXattr(ctx context.Context, ino fs.Ino, name string) ([]byte, error) {
	return nil, fmt.Errorf("fat: %s: %w", name, fs.ErrNoAttr)
}

// Open implements fs.FileSystem.
func (f *FS) Open(ctx context.Context, ino fs.Ino) (fs.File, error) {
	if ino == rootIno {
		return nil, fmt.Errorf("fat: root: %w", fs.ErrIsDir)
	}
	b, err := f.readEntry(ino)
	if err != nil {
		return nil, err
	}
	if b[11]&attrDir != 0 {
		return nil, fmt.Errorf("fat: entry %d: %w", ino, fs.ErrIsDir)
	}
	size := int64(le32(b[28:]))
	fl := &File{f: f, size: size}
	if size == 0 {
		return fl, nil
	}
	fl.clusters, err = f.chain(ctx, firstCluster(b[:]), (size+f.clusterSize-1)/f.clusterSize)
	if err != nil {
		return nil, err
	}
	if int64(len(fl.clusters))*f.clusterSize < size {
		return nil, corrupt("entry %d: %d bytes in a chain of %d clusters", ino, size, len(fl.clusters))
	}
	return fl, nil
}

// File is a FAT file's content.
type File struct {
	f        *FS
	size     int64
	clusters []uint32
}

// Size implements fs.File.
func (fl *File) Size() int64 { return fl.size }

// ReadAt implements io.ReaderAt, reading runs of consecutive clusters with
// one call.
func (fl *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("fat: negative offset")
	}
	if off >= fl.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), fl.size-off)
	cs := fl.f.clusterSize
	done := int64(0)
	for done < want {
		pos := off + done
		ci := pos / cs
		run := int64(1)
		for ci+run < int64(len(fl.clusters)) && fl.clusters[ci+run] == fl.clusters[ci]+uint32(run) && (ci+run)*cs < off+want {
			run++
		}
		n := min(want-done, (ci+run)*cs-pos)
		phys := fl.f.clusterOffset(fl.clusters[ci]) + pos%cs
		if _, err := fl.f.r.ReadAt(p[done:done+n], phys); err != nil {
			return int(done), fmt.Errorf("fat: read file data at %d: %w", pos, err)
		}
		done += n
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return int(want), nil
}

var _ fs.FileSystem = (*FS)(nil)

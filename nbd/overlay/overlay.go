// Package overlay keeps the writes made to a read-only disk (a restore
// point's, served by 'vmvault serve --writable') in a copy-on-write
// overlay directory: a sparse data file as large as the disk, a bitmap of
// the blocks written, and meta.json naming the base. It also finds the
// overlays below an overlay root (List, ForRestorePoint,
// MatchRestorePoint) and reads an overlay as an io.ReaderAt (ReaderAt),
// so code that stores "restore point + overlay" needs neither the NBD
// server nor the command line.
//
// Invariants:
//   - The base is never written; a block reads from the data file exactly
//     when its bitmap bit is set, and bits are only ever set.
//   - Flush syncs the data file before the bitmap pages that mark new
//     blocks, so after a crash every persisted bit has its data; writes
//     after the last Flush may be lost (NBD semantics).
//   - One process at a time has an overlay directory open (an flock on
//     its lock file); an existing overlay only opens for the base it was
//     made for (same restore point, disk and size). Listing, InUse and
//     WrittenBytes read only persisted state and work while another
//     process has the overlay open.
//   - Overlays live at root/RESTOREPOINT-ID/DISK (Path); List walks
//     exactly that layout.
package overlay

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/repo/extent"
)

// BlockSize is the overlay's allocation granularity: a write of
// part of a block first copies the rest of that block from the base.
const BlockSize = 4096

// Version is the on-disk format version of an overlay directory.
const Version = 1

// Files of an overlay directory. The data file is sparse and as large as
// the disk; the bitmap file holds one bit per block (little-endian uint64
// words), set when the block's content lives in the data file; meta.json
// names the base. The lock file is flock'ed by whoever has it open.
const (
	metaFile   = "meta.json"
	dataFile   = "data"
	bitmapFile = "bitmap"
	lockFile   = "lock"
)

// Meta describes an overlay and the base it applies to.
type Meta struct {
	Version      int       `json:"version"`
	VM           string    `json:"vm"`
	RestorePoint string    `json:"restore_point"` // full id of the base
	Disk         string    `json:"disk"`
	Size         int64     `json:"size"`
	BlockSize    int64     `json:"block_size"`
	Created      time.Time `json:"created"`
}

// Base is what an overlay reads the blocks it has not written from (a
// restore point's disk). It is never written. An implementation must be
// safe for concurrent use; a Base that also has a method
// Prefetch(ctx, off, length int64) error gets Overlay.Prefetch passed on.
type Base interface {
	Size() int64
	// ReadAt fills p from off; len(p) bytes or an error.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// Extents describes [off, off+length) in order, without gaps.
	Extents(ctx context.Context, off, length int64) ([]extent.Extent, error)
}

// prefetcher is a Base that can warm its cache.
type prefetcher interface {
	Prefetch(ctx context.Context, off, length int64) error
}

// ErrNotFast is returned by WriteZeroes(fast=true) when zeroing the range
// would cost as much as writing it (the NBD server answers it as
// NBD_CMD_FLAG_FAST_ZERO asks).
var ErrNotFast = errors.New("zeroing this range is not faster than writing it")

// ErrBusy means another process has the overlay open.
var ErrBusy = errors.New("overlay is in use by another process")

// Overlay is a copy-on-write layer over a read-only Base: writes go
// to a sparse local file, reads take each block from the file if it was
// written and from the base otherwise. The base is never written.
//
// Durability: Flush syncs the data file before the bitmap pages that mark
// new blocks, and bits are only ever set, so after a crash every set bit
// has its data; writes after the last Flush may be lost (NBD semantics).
// Concurrent use is safe; a directory is opened by one process at a time.
type Overlay struct {
	dir  string
	meta Meta
	base Base
	data *os.File
	bmf  *os.File
	lock *os.File

	mu    sync.Mutex
	bits  []uint64
	dirty map[int64]struct{} // bitmap pages (4 KiB) changed since Flush

	flushMu sync.Mutex
	stripes [64]sync.Mutex // serialise read-modify-write of a block
}

const bitmapPage = 4096

// Open opens the overlay in dir for base, creating it if dir holds
// none. An existing overlay must describe the same base (meta's VM,
// restore point, disk and size).
func Open(dir string, meta Meta, base Base) (*Overlay, error) {
	meta.Version, meta.BlockSize, meta.Size = Version, BlockSize, base.Size()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("overlay %s: %w", dir, err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	o := &Overlay{dir: dir, base: base, lock: lock, dirty: map[int64]struct{}{}}
	ok := false
	defer func() {
		if !ok {
			o.closeFiles()
		}
	}()
	old, err := ReadMeta(dir)
	switch {
	case err == nil:
		if old.Version != Version || old.BlockSize != BlockSize {
			return nil, fmt.Errorf("overlay %s: format version %d with %d-byte blocks is not supported", dir, old.Version, old.BlockSize)
		}
		if old.RestorePoint != meta.RestorePoint || old.Disk != meta.Disk || old.Size != meta.Size {
			return nil, fmt.Errorf("overlay %s belongs to restore point %s disk %s (%d bytes), not %s disk %s (%d bytes)",
				dir, old.RestorePoint, old.Disk, old.Size, meta.RestorePoint, meta.Disk, meta.Size)
		}
		o.meta = *old
	case errors.Is(err, os.ErrNotExist):
		o.meta = meta
		o.meta.Created = time.Now().UTC()
	default:
		return nil, err
	}
	words := (blockCount(o.meta.Size) + 63) / 64
	if o.data, err = os.OpenFile(filepath.Join(dir, dataFile), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return nil, fmt.Errorf("overlay %s: %w", dir, err)
	}
	if o.bmf, err = os.OpenFile(filepath.Join(dir, bitmapFile), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return nil, fmt.Errorf("overlay %s: %w", dir, err)
	}
	if old == nil {
		// New overlay (or one whose creation crashed before meta.json):
		// start from an empty bitmap and a hole-only data file.
		for _, f := range []*os.File{o.data, o.bmf} {
			if err := f.Truncate(0); err != nil {
				return nil, fmt.Errorf("overlay %s: %w", dir, err)
			}
		}
	}
	if err := o.data.Truncate(o.meta.Size); err != nil {
		return nil, fmt.Errorf("overlay %s: size data file: %w", dir, err)
	}
	if err := o.bmf.Truncate(words * 8); err != nil {
		return nil, fmt.Errorf("overlay %s: size bitmap: %w", dir, err)
	}
	raw := make([]byte, words*8)
	if _, err := o.bmf.ReadAt(raw, 0); err != nil {
		return nil, fmt.Errorf("overlay %s: read bitmap: %w", dir, err)
	}
	o.bits = make([]uint64, words)
	for i := range o.bits {
		o.bits[i] = binary.LittleEndian.Uint64(raw[i*8:])
	}
	if old == nil {
		if err := syncFiles(o.data, o.bmf); err != nil {
			return nil, fmt.Errorf("overlay %s: %w", dir, err)
		}
		if err := writeFileAtomic(filepath.Join(dir, metaFile), o.meta); err != nil {
			return nil, err
		}
	}
	ok = true
	return o, nil
}

func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("overlay %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("overlay %s: %w", dir, ErrBusy)
		}
		return nil, fmt.Errorf("overlay %s: lock: %w", dir, err)
	}
	return f, nil
}

// InUse reports whether a process has the overlay in dir open.
func InUse(dir string) bool {
	f, err := lockDir(dir)
	if err != nil {
		return errors.Is(err, ErrBusy)
	}
	f.Close()
	return false
}

// ReadMeta reads dir's meta.json.
func ReadMeta(dir string) (*Meta, error) {
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil {
		return nil, err
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("overlay %s: %s: %w", dir, metaFile, err)
	}
	if m.Size < 0 || m.BlockSize <= 0 {
		return nil, fmt.Errorf("overlay %s: %s: invalid size or block size", dir, metaFile)
	}
	return &m, nil
}

func writeFileAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		var d *os.File
		if d, err = os.Open(filepath.Dir(path)); err == nil {
			err = d.Sync()
			d.Close()
		}
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func syncFiles(fs ...*os.File) error {
	for _, f := range fs {
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return fmt.Errorf("sync %s: %w", f.Name(), err)
		}
	}
	return nil
}

func blockCount(size int64) int64 { return (size + BlockSize - 1) / BlockSize }

// Meta returns the overlay's description.
func (o *Overlay) Meta() Meta { return o.meta }

// Dir returns the overlay's directory.
func (o *Overlay) Dir() string { return o.dir }

// Size is the disk size in bytes.
func (o *Overlay) Size() int64 { return o.meta.Size }

func (o *Overlay) isSet(b int64) bool { return o.bits[b/64]&(1<<(b%64)) != 0 }

// setBits marks blocks [first, last] as living in the data file.
func (o *Overlay) setBits(first, last int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for b := first; b <= last; b++ {
		w := b / 64
		if o.bits[w]&(1<<(b%64)) == 0 {
			o.bits[w] |= 1 << (b % 64)
			o.dirty[w*8/bitmapPage] = struct{}{}
		}
	}
}

// run is a maximal range of blocks with one allocation state.
type run struct {
	off, length int64
	set         bool
}

// runs splits [off, off+length) by allocation state.
func (o *Overlay) runs(off, length int64) []run {
	var out []run
	o.mu.Lock()
	defer o.mu.Unlock()
	end := off + length
	for pos := off; pos < end; {
		b := pos / BlockSize
		set := o.isSet(b)
		// Skip whole words of one state quickly.
		next := (b + 1) * BlockSize
		for next < end {
			nb := next / BlockSize
			if nb%64 == 0 && nb/64 < int64(len(o.bits)) {
				w := o.bits[nb/64]
				if (set && w == ^uint64(0)) || (!set && w == 0) {
					next += 64 * BlockSize
					continue
				}
			}
			if o.isSet(nb) != set {
				break
			}
			next += BlockSize
		}
		next = min(next, end)
		out = append(out, run{off: pos, length: next - pos, set: set})
		pos = next
	}
	return out
}

// ReadAt fills p from off: written blocks from the data file, the rest
// from the base.
func (o *Overlay) ReadAt(ctx context.Context, p []byte, off int64) error {
	for _, r := range o.runs(off, int64(len(p))) {
		q := p[r.off-off : r.off-off+r.length]
		if r.set {
			if _, err := o.data.ReadAt(q, r.off); err != nil {
				return fmt.Errorf("overlay %s: read at %d: %w", o.dir, r.off, err)
			}
		} else if err := o.base.ReadAt(ctx, q, r.off); err != nil {
			return err
		}
	}
	return nil
}

// Extents describes [off, off+length): written blocks are data, the rest
// is the base's extents.
func (o *Overlay) Extents(ctx context.Context, off, length int64) ([]extent.Extent, error) {
	var out []extent.Extent
	add := func(e extent.Extent) {
		if n := len(out); n > 0 && out[n-1].Zero == e.Zero && out[n-1].Offset+out[n-1].Length == e.Offset {
			out[n-1].Length += e.Length
			return
		}
		out = append(out, e)
	}
	for _, r := range o.runs(off, length) {
		if r.set {
			add(extent.Extent{Offset: r.off, Length: r.length})
			continue
		}
		es, err := o.base.Extents(ctx, r.off, r.length)
		if err != nil {
			return nil, err
		}
		for _, e := range es {
			add(e)
		}
	}
	return out, nil
}

// Prefetch warms the base's cache for [off, off+length) if the base can
// (the overlay's own blocks are local).
func (o *Overlay) Prefetch(ctx context.Context, off, length int64) error {
	if p, ok := o.base.(prefetcher); ok {
		return p.Prefetch(ctx, off, length)
	}
	return nil
}

// lockBlocks locks the stripes of blocks [first, last] in a fixed order.
func (o *Overlay) lockBlocks(first, last int64) func() {
	var idx []int
	if last-first+1 >= int64(len(o.stripes)) {
		for i := range o.stripes {
			idx = append(idx, i)
		}
	} else {
		seen := map[int]bool{}
		for b := first; b <= last; b++ {
			if i := int(b % int64(len(o.stripes))); !seen[i] {
				seen[i] = true
				idx = append(idx, i)
			}
		}
		sort.Ints(idx)
	}
	for _, i := range idx {
		o.stripes[i].Lock()
	}
	return func() {
		for _, i := range idx {
			o.stripes[i].Unlock()
		}
	}
}

// fillBlock copies block b from the base into the data file unless it is
// already there or fully overwritten by [off, end).
func (o *Overlay) fillBlock(ctx context.Context, b, off, end int64) error {
	bs := b * BlockSize
	be := min(bs+BlockSize, o.meta.Size)
	if off <= bs && end >= be {
		return nil
	}
	o.mu.Lock()
	set := o.isSet(b)
	o.mu.Unlock()
	if set {
		return nil
	}
	buf := make([]byte, be-bs)
	if err := o.base.ReadAt(ctx, buf, bs); err != nil {
		return err
	}
	if _, err := o.data.WriteAt(buf, bs); err != nil {
		return fmt.Errorf("overlay %s: write at %d: %w", o.dir, bs, err)
	}
	return nil
}

// WriteAt writes p at off (into the data file; partial blocks are first
// completed from the base).
func (o *Overlay) WriteAt(ctx context.Context, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	end := off + int64(len(p))
	first, last := off/BlockSize, (end-1)/BlockSize
	unlock := o.lockBlocks(first, last)
	defer unlock()
	if err := o.fillBlock(ctx, first, off, end); err != nil {
		return err
	}
	if last != first {
		if err := o.fillBlock(ctx, last, off, end); err != nil {
			return err
		}
	}
	if _, err := o.data.WriteAt(p, off); err != nil {
		return fmt.Errorf("overlay %s: write at %d: %w", o.dir, off, err)
	}
	o.setBits(first, last)
	return nil
}

// WriteZeroes makes [off, off+length) read as zeroes: whole blocks become
// holes in the data file; partial blocks are written. With fast set it
// fails with ErrNotFast when a partial block would first have to be
// copied from the base.
func (o *Overlay) WriteZeroes(ctx context.Context, off, length int64, fast bool) error {
	if length == 0 {
		return nil
	}
	end := off + length
	first, last := off/BlockSize, (end-1)/BlockSize
	unlock := o.lockBlocks(first, last)
	defer unlock()
	if fast {
		for _, b := range []int64{first, last} {
			bs := b * BlockSize
			whole := off <= bs && end >= min(bs+BlockSize, o.meta.Size)
			o.mu.Lock()
			set := o.isSet(b)
			o.mu.Unlock()
			if !whole && !set {
				return ErrNotFast
			}
		}
	}
	if err := o.fillBlock(ctx, first, off, end); err != nil {
		return err
	}
	if last != first {
		if err := o.fillBlock(ctx, last, off, end); err != nil {
			return err
		}
	}
	if err := o.zeroRange(off, end); err != nil {
		return err
	}
	o.setBits(first, last)
	return nil
}

// zeroRange zeroes [off, end) of the data file, punching whole pages.
func (o *Overlay) zeroRange(off, end int64) error {
	err := unix.Fallocate(int(o.data.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, end-off)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("overlay %s: punch [%d,+%d): %w", o.dir, off, end-off, err)
	}
	zero := make([]byte, min(end-off, 1<<20))
	for pos := off; pos < end; pos += int64(len(zero)) {
		n := min(int64(len(zero)), end-pos)
		if _, err := o.data.WriteAt(zero[:n], pos); err != nil {
			return fmt.Errorf("overlay %s: zero at %d: %w", o.dir, pos, err)
		}
	}
	return nil
}

// Trim discards [off, off+length): whole blocks inside the range read as
// zeroes afterwards; partial blocks at the edges are left alone (allowed:
// a trim may be rounded inwards).
func (o *Overlay) Trim(ctx context.Context, off, length int64) error {
	first := (off + BlockSize - 1) / BlockSize
	end := off + length
	last := end/BlockSize - 1
	if end == o.meta.Size {
		last = blockCount(o.meta.Size) - 1
	}
	if last < first {
		return nil
	}
	unlock := o.lockBlocks(first, last)
	defer unlock()
	if err := o.zeroRange(first*BlockSize, min((last+1)*BlockSize, o.meta.Size)); err != nil {
		return err
	}
	o.setBits(first, last)
	return nil
}

// Flush makes every completed write durable. The bitmap pages are captured before
// the data file is synced: every bit they hold was set after its block's
// data was written, so the data is durable before the bit is.
func (o *Overlay) Flush(context.Context) error {
	o.flushMu.Lock()
	defer o.flushMu.Unlock()
	o.mu.Lock()
	pages := make([]int64, 0, len(o.dirty))
	for p := range o.dirty {
		pages = append(pages, p)
	}
	clear(o.dirty)
	sort.Slice(pages, func(i, j int) bool { return pages[i] < pages[j] })
	bufs := make([][]byte, len(pages))
	for i, p := range pages {
		w0 := p * bitmapPage / 8
		w1 := min(w0+bitmapPage/8, int64(len(o.bits)))
		b := make([]byte, (w1-w0)*8)
		for w := w0; w < w1; w++ {
			binary.LittleEndian.PutUint64(b[(w-w0)*8:], o.bits[w])
		}
		bufs[i] = b
	}
	o.mu.Unlock()
	redirty := func() {
		o.mu.Lock()
		for _, p := range pages {
			o.dirty[p] = struct{}{}
		}
		o.mu.Unlock()
	}
	if err := syncFiles(o.data); err != nil {
		redirty()
		return err
	}
	for i, p := range pages {
		if _, err := o.bmf.WriteAt(bufs[i], p*bitmapPage); err != nil {
			redirty()
			return fmt.Errorf("overlay %s: write bitmap: %w", o.dir, err)
		}
	}
	if len(pages) > 0 {
		if err := syncFiles(o.bmf); err != nil {
			redirty()
			return err
		}
	}
	return nil
}

// Allocated returns the byte ranges written through the overlay (and so
// differing from the base), in order.
func (o *Overlay) Allocated() []extent.Extent {
	var out []extent.Extent
	for _, r := range o.runs(0, o.meta.Size) {
		if r.set {
			out = append(out, extent.Extent{Offset: r.off, Length: r.length})
		}
	}
	return out
}

// WrittenBytes counts the bytes the persisted bitmap in dir marks as
// written (as of the last flush), capped at the disk size. It works on an
// overlay another process has open.
func WrittenBytes(dir string, meta *Meta) (int64, error) {
	b, err := os.ReadFile(filepath.Join(dir, bitmapFile))
	if err != nil {
		return 0, err
	}
	n := int64(0)
	for i := 0; i+8 <= len(b); i += 8 {
		n += int64(bits.OnesCount64(binary.LittleEndian.Uint64(b[i:])))
	}
	return min(n*meta.BlockSize, meta.Size), nil
}

// Close flushes the overlay and releases it.
func (o *Overlay) Close() error {
	err := o.Flush(context.Background())
	if cerr := o.closeFiles(); err == nil {
		err = cerr
	}
	return err
}

func (o *Overlay) closeFiles() error {
	var err error
	for _, f := range []*os.File{o.data, o.bmf, o.lock} {
		if f != nil {
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	}
	return err
}

// Discard deletes the overlay in dir unless it is in use.
func Discard(dir string) error {
	lock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer lock.Close()
	for _, n := range []string{metaFile, dataFile, bitmapFile, metaFile + ".tmp"} {
		if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("discard overlay %s: %w", dir, err)
		}
	}
	os.Remove(filepath.Join(dir, lockFile))
	os.Remove(dir)
	return nil
}

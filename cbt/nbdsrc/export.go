// Package nbdsrc reads disks for captures from NBD exports: any NBD
// server (qemu-nbd or qemu-storage-daemon serving a qcow2, VMDK, VHDX or
// VDI file without converting it, nbdkit, another vmvault), and the
// point-in-time exports that cbt/qemu and cbt/libvirt set up in QEMU.
//
// An Export is one open export: its bytes (ReadAt, with read-ahead along
// the ranges the capture will read), its allocated areas from the
// base:allocation meta context, and the blocks a qemu:dirty-bitmap:NAME
// meta context marks as changed. Source is the cbt.Source of
// `vmvault-capture nbd` (lineage "nbd:VM").
//
// Invariants: the ranges handed to a capture cover exactly the blocks the
// server described with the relevant flag, checked against the export
// size; an export that does not offer a requested dirty bitmap is an
// error, never an empty change list (a missed change would be a silently
// wrong restore point); reads never return short without an error.
package nbdsrc

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/vmvault/vmvault/nbd/client"
	"github.com/vmvault/vmvault/nbd/proto"
	"github.com/vmvault/vmvault/repo/extent"
)

// Export is one open NBD export. ReadAt is safe for concurrent use.
type Export struct {
	uri    string
	c      *client.Client
	bitmap string // dirty bitmap name ("" none)

	ctx    context.Context // ends read-ahead on Close
	cancel context.CancelFunc
	read   atomic.Int64

	mu      sync.Mutex
	want    []extent.Range // what the capture will read, when known
	lastEnd int64
	ahead   map[int64]*fetch
	wg      sync.WaitGroup
}

// fetch is one read-ahead request.
type fetch struct {
	buf  []byte
	n    int
	err  error
	done chan struct{}
}

// readAheadWindow is how many requests ReadAt keeps in flight ahead of
// the reader.
const readAheadWindow = 8

// Open connects to an NBD URI (nbd://HOST[:PORT]/EXPORT,
// nbd+unix:///EXPORT?socket=PATH); export, when set, overrides the name
// in the URI. With bitmap set the export must offer the meta context
// qemu:dirty-bitmap:BITMAP.
func Open(ctx context.Context, uri, export, bitmap string) (*Export, error) {
	metas := []string{proto.MetaBaseAllocation}
	if bitmap != "" {
		metas = append(metas, proto.MetaQemuDirtyBitmap+bitmap)
	}
	c, err := client.Dial(ctx, uri, client.Options{Export: export, MetaContexts: metas})
	if err != nil {
		return nil, err
	}
	if bitmap != "" && !c.HasMetaContext(proto.MetaQemuDirtyBitmap+bitmap) {
		c.Close()
		return nil, fmt.Errorf("NBD export %s offers no dirty bitmap %q (qemu-nbd --bitmap %s, or an export with that bitmap)", uri, bitmap, bitmap)
	}
	e := &Export{uri: uri, c: c, bitmap: bitmap, ahead: map[int64]*fetch{}, lastEnd: -1}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	return e, nil
}

// URI is what the export was opened from.
func (e *Export) URI() string { return e.uri }

// Size is the export's size in bytes.
func (e *Export) Size() int64 { return e.c.Size() }

// Bitmap is the dirty bitmap the export was opened with ("" none).
func (e *Export) Bitmap() string { return e.bitmap }

// BytesRead counts the bytes read from the server (read-ahead included).
func (e *Export) BytesRead() int64 { return e.read.Load() }

// Close ends read-ahead and disconnects.
func (e *Export) Close() error {
	e.cancel()
	e.wg.Wait()
	return e.c.Close()
}

// DataRanges returns the ranges base:allocation does not mark as reading
// zeroes, or nil when the server does not offer base:allocation. They
// also steer read-ahead.
func (e *Export) DataRanges(ctx context.Context) ([]extent.Range, error) {
	if !e.c.HasMetaContext(proto.MetaBaseAllocation) {
		return nil, nil
	}
	rs, err := e.ranges(ctx, proto.MetaBaseAllocation, func(b client.Block) bool { return !b.Zero() })
	if err != nil {
		return nil, err
	}
	e.setWant(rs)
	return rs, nil
}

// DirtyRanges returns the ranges the export's dirty bitmap marks as
// changed; they also steer read-ahead.
func (e *Export) DirtyRanges(ctx context.Context) ([]extent.Range, error) {
	if e.bitmap == "" {
		return nil, fmt.Errorf("NBD export %s: no dirty bitmap was asked for", e.uri)
	}
	rs, err := e.ranges(ctx, proto.MetaQemuDirtyBitmap+e.bitmap, func(b client.Block) bool { return b.Flags&proto.StateDirty != 0 })
	if err != nil {
		return nil, err
	}
	e.setWant(rs)
	return rs, nil
}

func (e *Export) ranges(ctx context.Context, meta string, keep func(client.Block) bool) ([]extent.Range, error) {
	bs, err := e.c.Map(ctx, meta, 0, e.c.Size())
	if err != nil {
		return nil, fmt.Errorf("NBD export %s: %w", e.uri, err)
	}
	rs := []extent.Range{}
	for _, b := range bs {
		if !keep(b) {
			continue
		}
		if n := len(rs); n > 0 && rs[n-1].End() == b.Offset {
			rs[n-1].Length += b.Length
		} else {
			rs = append(rs, extent.Range{Offset: b.Offset, Length: b.Length})
		}
	}
	if err := extent.Check(rs, e.c.Size()); err != nil {
		return nil, fmt.Errorf("NBD export %s: %s: %w", e.uri, meta, err)
	}
	return rs, nil
}

func (e *Export) setWant(rs []extent.Range) {
	e.mu.Lock()
	e.want = rs
	e.mu.Unlock()
}

// ReadAt implements io.ReaderAt. When the ranges the capture reads are
// known (the last DataRanges or DirtyRanges answer), it keeps up to
// readAheadWindow requests of the same size in flight for the next blocks
// that touch them; otherwise only for blocks that continue a sequential
// run.
func (e *Export) ReadAt(p []byte, off int64) (int, error) {
	e.mu.Lock()
	f := e.ahead[off]
	if f != nil {
		delete(e.ahead, off)
	}
	e.mu.Unlock()
	var n int
	var err error
	if f != nil {
		<-f.done
		if len(f.buf) >= len(p) && f.err == nil && f.n >= len(p) {
			n = copy(p, f.buf)
		} else {
			f = nil
		}
	}
	if f == nil {
		n, err = e.c.ReadAtContext(e.ctx, p, off)
		e.read.Add(int64(n))
	}
	if err == nil || err == io.EOF {
		e.schedule(off, int64(len(p)))
	}
	return n, err
}

// schedule starts read-ahead after a read of [off, off+n).
func (e *Export) schedule(off, n int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	sequential := off == e.lastEnd
	e.lastEnd = off + n
	for o := range e.ahead { // behind the reader: never read
		if o < off {
			delete(e.ahead, o)
		}
	}
	if n <= 0 || e.ctx.Err() != nil || (e.want == nil && !sequential) {
		return
	}
	size := e.c.Size()
	i := sort.Search(len(e.want), func(i int) bool { return e.want[i].End() > off+n })
	for o := off + n; o < size && len(e.ahead) < readAheadWindow; o += n {
		if e.want != nil {
			for i < len(e.want) && e.want[i].End() <= o {
				i++
			}
			if i == len(e.want) {
				return
			}
			if e.want[i].Offset >= o+n { // jump to the block holding the next wanted range
				o += (e.want[i].Offset - o) / n * n
			}
		}
		if _, ok := e.ahead[o]; ok {
			continue
		}
		f := &fetch{buf: make([]byte, min(n, size-o)), done: make(chan struct{})}
		e.ahead[o] = f
		e.wg.Add(1)
		go func(o int64) {
			defer e.wg.Done()
			defer close(f.done)
			f.n, f.err = e.c.ReadAtContext(e.ctx, f.buf, o)
			e.read.Add(int64(f.n))
		}(o)
	}
}

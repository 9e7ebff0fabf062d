package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmvault/vmvault/nbd/proto"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/faulty"
	"github.com/vmvault/vmvault/repo/backend/mem"
	"github.com/vmvault/vmvault/repo/format"
	"github.com/vmvault/vmvault/repo/repotest"
)

const testChunk = 64 << 10

// testImage is 2 MiB + 12345 bytes: random data, with chunks 3, 4 and 10
// all zero and a partial last chunk.
func testImage() []byte {
	rng := rand.New(rand.NewPCG(7, 7))
	b := make([]byte, 2<<20+12345)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	for _, c := range []int{3, 4, 10} {
		clear(b[c*testChunk : (c+1)*testChunk])
	}
	return b
}

type fixture struct {
	img  []byte
	be   *faulty.Backend
	bad  int // the rule that damages one chunk (damage), 0 when none
	r    *repo.Repository
	rp   *repo.RestorePoint
	srv  *Server
	sock string
	cat  *RepoCatalog
}

func newFixture(t *testing.T, overlayDir string) *fixture {
	t.Helper()
	f := &fixture{img: testImage(), be: faulty.New(mem.New(), 1)}
	f.r = repotest.New(t, repotest.Options{Backend: f.be, ChunkSize: testChunk, CacheSize: 1 << 20, Loose: true})
	f.rp = repotest.Capture(t, f.r, "web01", repotest.Bytes("disk0", f.img))
	f.cat = &RepoCatalog{Repo: f.r, OverlayDir: overlayDir}
	f.srv = &Server{Catalog: f.cat}
	f.sock = serveUnix(t, f.srv)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := f.srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return f
}

// serveUnix starts srv on a unix socket in a temporary directory and
// returns the socket's path; stopping srv is up to the caller.
func serveUnix(t *testing.T, srv *Server) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	return sock
}

func (f *fixture) name() string { return ExportName(f.rp, "disk0") }

// damage makes every load of the chunk object named name come back with
// its last byte flipped; "" repairs it.
func (f *fixture) damage(name string) {
	if f.bad != 0 {
		f.be.RemoveRule(f.bad)
		f.bad = 0
	}
	if name != "" {
		f.bad = f.be.AddRule(faulty.Rule{Method: faulty.Load, Type: backend.ChunkFile, Prefix: name, Effect: faulty.FlipByte(-1)})
	}
}

func TestHandshakeOptions(t *testing.T) {
	f := newFixture(t, "")
	tc := dialTest(t, f.sock)

	r := tc.option(proto.OptList, nil)
	var names []string
	for _, x := range r[:len(r)-1] {
		n := binary.BigEndian.Uint32(x.data)
		names = append(names, string(x.data[4:4+n]))
	}
	want := []string{f.name(), "web01@latest/disk0"}
	if r[len(r)-1].typ != proto.RepAck || len(names) != 2 || names[0] != want[0] || names[1] != want[1] {
		t.Fatalf("LIST = %q (final %#x), want %q", names, r[len(r)-1].typ, want)
	}
	tests := []struct {
		name string
		opt  uint32
		data []byte
		want uint32
	}{
		{"list with data", proto.OptList, []byte{1}, proto.RepErrInvalid},
		{"info unknown export", proto.OptInfo, nameReq("web01/nope/disk0", 0, 0), proto.RepErrUnknown},
		{"info unknown disk", proto.OptInfo, nameReq("web01@latest/disk9", 0, 0), proto.RepErrUnknown},
		{"info truncated", proto.OptInfo, []byte{0, 0, 0, 9, 'a'}, proto.RepErrInvalid},
		{"info name too long", proto.OptInfo, []byte{0xff, 0xff, 0xff, 0xff}, proto.RepErrInvalid},
		{"meta context before structured", proto.OptSetMetaContext, metaReq(f.name(), proto.MetaBaseAllocation), proto.RepErrInvalid},
		{"starttls without config", proto.OptStartTLS, nil, proto.RepErrUnsup},
		{"extended headers", proto.OptExtendedHeaders, nil, proto.RepErrUnsup},
		{"unknown option", 77, nil, proto.RepErrUnsup},
		{"info by id prefix", proto.OptInfo, nameReq("web01/"+f.rp.ID.String()[:12]+"/disk0", 0, 0), proto.RepAck},
		{"info latest", proto.OptInfo, nameReq("web01@latest/disk0", 0, 0), proto.RepAck},
		{"default export (only one disk? no: two names)", proto.OptInfo, nameReq("", 0, 0), proto.RepErrUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tc.option(tt.opt, tt.data)
			if got := r[len(r)-1].typ; got != tt.want {
				t.Fatalf("final reply %#x (%s), want %#x", got, r[len(r)-1].data, tt.want)
			}
		})
	}
	// LIST_META_CONTEXT after structured replies lists base:allocation.
	tc.option(proto.OptStructuredReply, nil)
	r = tc.option(proto.OptListMetaContext, metaReq(f.name()))
	if len(r) != 2 || string(r[0].data[4:]) != proto.MetaBaseAllocation {
		t.Fatalf("LIST_META_CONTEXT: %+v", r)
	}
	// A too-long option is drained and refused; the session goes on.
	tc.option(proto.OptList, make([]byte, proto.MaxOptionLen+1))
	tc.goExport(f.name(), true)
	if tc.size != int64(len(f.img)) || tc.flags&proto.FlagReadOnly == 0 || tc.flags&proto.FlagSendTrim != 0 || tc.flags&proto.FlagCanMultiConn == 0 {
		t.Fatalf("size %d flags %#x", tc.size, tc.flags)
	}
}

func TestRequireTLS(t *testing.T) {
	f := newFixture(t, "")
	f.srv.RequireTLS = true
	tc := dialTest(t, f.sock)
	for _, opt := range []uint32{proto.OptList, proto.OptInfo, proto.OptGo, proto.OptStructuredReply} {
		if r := tc.option(opt, nameReq(f.name(), 0, 0)); r[0].typ != proto.RepErrTLSReqd {
			t.Fatalf("option %d without TLS: %#x", opt, r[0].typ)
		}
	}
}

// requestCase is one request and the NBD error it must get (0: success).
type requestCase struct {
	name   string
	typ    uint16
	flags  uint16
	off    uint64
	length uint32
	data   []byte
	want   uint32
}

func TestRequests(t *testing.T) {
	f := newFixture(t, "")
	for _, structured := range []bool{false, true} {
		tc := dialTest(t, f.sock)
		tc.goExport(f.name(), structured)
		size := uint64(len(f.img))
		refused := []requestCase{
			{"read past end", proto.CmdRead, 0, size - 10, 11, nil, proto.EINVAL},
			{"read offset overflow", proto.CmdRead, 0, ^uint64(0) - 5, 10, nil, proto.EINVAL},
			{"read too large", proto.CmdRead, 0, 0, MaxBlockSize + 1, nil, proto.EINVAL},
			{"read unknown flag", proto.CmdRead, 1 << 9, 0, 10, nil, proto.EINVAL},
			{"read FUA on read-only", proto.CmdRead, proto.CmdFlagFUA, 0, 10, nil, proto.EINVAL},
			{"write read-only", proto.CmdWrite, 0, 0, 100, make([]byte, 100), proto.EPERM},
			{"trim read-only", proto.CmdTrim, 0, 0, 100, nil, proto.EPERM},
			{"zeroes read-only", proto.CmdWriteZeroes, 0, 0, 100, nil, proto.EPERM},
			{"flush read-only", proto.CmdFlush, 0, 0, 0, nil, proto.EINVAL},
			{"cache past end", proto.CmdCache, 0, size, 1, nil, proto.EINVAL},
			{"unknown command", 42, 0, 0, 0, nil, proto.EINVAL},
		}
		if !structured {
			refused = append(refused, requestCase{"block status without context", proto.CmdBlockStatus, 0, 0, 100, nil, proto.EINVAL})
		}
		for _, tt := range refused {
			var got uint32
			if tt.typ == proto.CmdRead {
				_, got, _ = tc.readAt(int64(tt.off), int(tt.length), tt.flags)
			} else {
				got = tc.simple(tt.typ, tt.flags, tt.off, tt.length, tt.data)
			}
			if got != tt.want {
				t.Errorf("structured=%v %s: errno %d, want %d", structured, tt.name, got, tt.want)
			}
			// The connection stays usable after every refusal.
			if b, e, _ := tc.readAt(1000, 100, 0); e != 0 || !bytes.Equal(b, f.img[1000:1100]) {
				t.Fatalf("structured=%v after %s: read errno %d", structured, tt.name, e)
			}
		}
		// Misaligned, tail and zero-length reads return exactly the bytes.
		for _, rg := range [][2]int64{{1, 1}, {testChunk - 3, 7}, {3*testChunk - 100, 2*testChunk + 200}, {int64(size) - 12345, 12345}, {int64(size) - 1, 1}, {0, 0}} {
			b, e, _ := tc.readAt(rg[0], int(rg[1]), 0)
			if e != 0 || !bytes.Equal(b, f.img[rg[0]:rg[0]+rg[1]]) {
				t.Errorf("structured=%v read [%d,+%d): errno %d, data equal %v", structured, rg[0], rg[1], e, bytes.Equal(b, f.img[rg[0]:rg[0]+rg[1]]))
			}
		}
		if e := tc.simple(proto.CmdCache, 0, 0, uint32(size), nil); e != 0 {
			t.Errorf("cache: errno %d", e)
		}
		tc.send(proto.CmdDisc, 0, 0, 0, nil)
	}
}

func TestStructuredReadsAndBlockStatus(t *testing.T) {
	f := newFixture(t, "")
	tc := dialTest(t, f.sock)
	tc.goExport(f.name(), true)
	// Chunks 2..5: data, zero, zero, data.
	off, n := int64(2*testChunk+100), 3*testChunk
	b, e, chunks := tc.readAt(off, n, 0)
	if e != 0 || !bytes.Equal(b, f.img[off:off+int64(n)]) {
		t.Fatalf("read: errno %d", e)
	}
	var types []uint16
	for _, c := range chunks {
		types = append(types, c.typ)
	}
	if len(types) != 3 || types[0] != proto.ReplyTypeOffsetData || types[1] != proto.ReplyTypeOffsetHole || types[2] != proto.ReplyTypeOffsetData {
		t.Fatalf("chunk types %v, want data, hole, data", types)
	}
	if h := chunks[1].data; binary.BigEndian.Uint64(h) != 3*testChunk || binary.BigEndian.Uint32(h[8:]) != 2*testChunk {
		t.Fatalf("hole chunk %x", h)
	}
	// DF: exactly one data chunk with the zeroes inside.
	b, e, chunks = tc.readAt(off, n, proto.CmdFlagDF)
	if e != 0 || !bytes.Equal(b, f.img[off:off+int64(n)]) || len(chunks) != 1 || chunks[0].typ != proto.ReplyTypeOffsetData {
		t.Fatalf("DF read: errno %d, %d chunks", e, len(chunks))
	}

	status := func(off, n uint64, flags uint16) [][2]uint32 {
		cookie := tc.send(proto.CmdBlockStatus, flags, off, uint32(n), nil)
		c := tc.reply(0)
		if c.cookie != cookie || c.typ != proto.ReplyTypeBlockStatus || c.flags&proto.ReplyFlagDone == 0 {
			t.Fatalf("block status reply %+v", c)
		}
		if binary.BigEndian.Uint32(c.data) != baseAllocationID {
			t.Fatalf("context id %d", binary.BigEndian.Uint32(c.data))
		}
		var out [][2]uint32
		for p := c.data[4:]; len(p) >= 8; p = p[8:] {
			out = append(out, [2]uint32{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])})
		}
		return out
	}
	size := uint64(len(f.img))
	got := status(0, size, 0)
	want := [][2]uint32{{3 * testChunk, 0}, {2 * testChunk, 3}, {5 * testChunk, 0}, {testChunk, 3}, {uint32(size) - 11*testChunk, 0}}
	if len(got) != len(want) {
		t.Fatalf("block status %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("block status %v, want %v", got, want)
		}
	}
	if got := status(100, size-100, proto.CmdFlagReqOne); len(got) != 1 || got[0] != [2]uint32{3*testChunk - 100, 0} {
		t.Fatalf("REQ_ONE: %v", got)
	}
	if got := status(3*testChunk+5, 10, 0); len(got) != 1 || got[0] != [2]uint32{10, 3} {
		t.Fatalf("small range: %v", got)
	}
	if e := tc.simple(proto.CmdBlockStatus, 0, size, 1, nil); e != proto.EINVAL {
		t.Fatalf("block status past end: errno %d", e)
	}
}

// A damaged chunk fails the requests that touch it with EIO (naming the
// restore point and offset); the connection and other reads go on.
func TestCorruptChunkIsEIO(t *testing.T) {
	f := newFixture(t, "")
	idx := func() *format.Index {
		d, err := f.r.OpenDisk(context.Background(), f.rp, "disk0")
		if err != nil {
			t.Fatal(err)
		}
		return d.Index()
	}()
	f.damage(idx.IDs[6].String())
	for _, structured := range []bool{false, true} {
		tc := dialTest(t, f.sock)
		tc.goExport(f.name(), structured)
		_, e, chunks := tc.readAt(6*testChunk-10, 20, 0)
		if e != proto.EIO {
			t.Fatalf("structured=%v: read over the bad chunk: errno %d", structured, e)
		}
		if structured && !bytes.Contains(chunks[len(chunks)-1].data, []byte("offset 393216")) {
			t.Errorf("error message %q does not name the offset", chunks[len(chunks)-1].data[6:])
		}
		if b, e, _ := tc.readAt(7*testChunk, 100, 0); e != 0 || !bytes.Equal(b, f.img[7*testChunk:7*testChunk+100]) {
			t.Fatalf("read after the error: errno %d", e)
		}
		if e := tc.simple(proto.CmdCache, 0, 6*testChunk, 1, nil); e != proto.EIO {
			t.Fatalf("cache of the bad chunk: errno %d", e)
		}
	}
}

// A client vanishing mid-request (half a write payload, or before reading
// its replies) costs the server nothing; others are served.
func TestDisconnectMidRequest(t *testing.T) {
	f := newFixture(t, t.TempDir())
	tc := dialTest(t, f.sock)
	tc.goExport(f.name(), false)
	h := binary.BigEndian.AppendUint32(nil, proto.MagicRequest)
	h = binary.BigEndian.AppendUint16(h, 0)
	h = binary.BigEndian.AppendUint16(h, proto.CmdWrite)
	h = binary.BigEndian.AppendUint64(h, 1)
	h = binary.BigEndian.AppendUint64(h, 0)
	h = binary.BigEndian.AppendUint32(h, 1<<20)
	tc.write(append(h, make([]byte, 1000)...))
	tc.c.Close()

	tc2 := dialTest(t, f.sock)
	tc2.goExport(f.name(), true)
	for range 20 {
		tc2.send(proto.CmdRead, 0, 0, 1<<20, nil)
	}
	tc2.c.Close() // without reading the replies

	tc3 := dialTest(t, f.sock)
	tc3.goExport(f.name(), true)
	if b, e, _ := tc3.readAt(0, 4096, 0); e != 0 || !bytes.Equal(b, f.img[:4096]) {
		t.Fatalf("third client: errno %d", e)
	}
	// The half-written block never reached the overlay.
	if b, e, _ := tc3.readAt(0, 1000, 0); e != 0 || !bytes.Equal(b, f.img[:1000]) {
		t.Fatalf("half-sent write was applied")
	}
}

// Sixteen clients reading random ranges concurrently (run under -race).
func TestConcurrentClients(t *testing.T) {
	f := newFixture(t, "")
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tc := dialTest(t, f.sock)
			tc.goExport("web01@latest/disk0", i%2 == 0)
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			// Pipeline 8 requests, then collect their (out-of-order) replies.
			for round := 0; round < 10; round++ {
				want := map[uint64][2]int{}
				for range 8 {
					off := rng.IntN(len(f.img) - 1)
					n := 1 + rng.IntN(min(len(f.img)-off, 300_000))
					flags := uint16(0)
					if i%2 == 0 {
						flags = proto.CmdFlagDF
					}
					want[tc.send(proto.CmdRead, flags, uint64(off), uint32(n), nil)] = [2]int{off, n}
				}
				for len(want) > 0 {
					var c chunk
					if i%2 == 0 {
						c = tc.reply(0) // structured, DF: one data chunk + done
					} else {
						// Simple replies: the cookie tells the length.
						var m [16]byte
						tc.read(m[:])
						c = chunk{cookie: binary.BigEndian.Uint64(m[8:]), errno: binary.BigEndian.Uint32(m[4:])}
						c.data = make([]byte, want[c.cookie][1])
						tc.read(c.data)
						c.data = append(make([]byte, 8), c.data...)
					}
					w, ok := want[c.cookie]
					if !ok || c.errno != 0 {
						t.Errorf("client %d: unexpected reply cookie %d errno %d", i, c.cookie, c.errno)
						return
					}
					if !bytes.Equal(c.data[8:], f.img[w[0]:w[0]+w[1]]) {
						t.Errorf("client %d: wrong data for [%d,+%d)", i, w[0], w[1])
						return
					}
					delete(want, c.cookie)
				}
			}
		}()
	}
	wg.Wait()
}

// slowCatalog serves one device whose reads wait for a signal.
type slowCatalog struct {
	dev *slowDevice
}

type slowDevice struct {
	ReaderDevice
	started chan struct{}
	release chan struct{}
}

func (d *slowDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	close(d.started)
	<-d.release
	return d.ReaderDevice.ReadAt(ctx, p, off)
}

func (c slowCatalog) List(context.Context) ([]ExportInfo, error) {
	return []ExportInfo{{Name: "slow"}}, nil
}

func (c slowCatalog) Open(_ context.Context, name string) (*Export, error) {
	return &Export{Name: "slow", Device: c.dev, Close: func() error { return nil }}, nil
}

// Shutdown lets in-flight requests finish and reply.
func TestShutdownFinishesInflight(t *testing.T) {
	img := testImage()
	dev := &slowDevice{ReaderDevice: ReaderDevice{R: bytes.NewReader(img), N: int64(len(img))}, started: make(chan struct{}), release: make(chan struct{})}
	srv := &Server{Catalog: slowCatalog{dev}}
	sock := serveUnix(t, srv)
	tc := dialTest(t, sock)
	tc.goExport("", false)
	cookie := tc.send(proto.CmdRead, 0, 4096, 4096, nil)
	<-dev.started
	done := make(chan error)
	go func() { done <- srv.Shutdown(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	close(dev.release)
	c := tc.reply(4096)
	if c.cookie != cookie || c.errno != 0 || !bytes.Equal(c.data, img[4096:8192]) {
		t.Fatalf("in-flight read: cookie %d errno %d", c.cookie, c.errno)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Fatal("still accepting after shutdown")
	}
}

func TestWritableRequests(t *testing.T) {
	f := newFixture(t, t.TempDir())
	tc := dialTest(t, f.sock)
	tc.goExport(f.name(), true)
	want := proto.FlagSendFlush | proto.FlagSendFUA | proto.FlagSendTrim | proto.FlagSendWriteZeroes | proto.FlagSendFastZero | proto.FlagCanMultiConn
	if tc.flags&want != want || tc.flags&proto.FlagReadOnly != 0 {
		t.Fatalf("flags %#x", tc.flags)
	}
	size := uint64(len(f.img))
	model := bytes.Clone(f.img)
	p := bytes.Repeat([]byte{0xab}, 5000)
	steps := []struct {
		requestCase
		apply func() // the change to the model on success
	}{
		{requestCase{"write", proto.CmdWrite, 0, 1000, 5000, p, 0}, func() { copy(model[1000:], p) }},
		{requestCase{"write FUA", proto.CmdWrite, proto.CmdFlagFUA, size - 10, 10, p[:10], 0}, func() { copy(model[size-10:], p[:10]) }},
		{requestCase{"write past end", proto.CmdWrite, 0, size - 10, 11, p[:11], proto.ENOSPC}, nil},
		{requestCase{"fast zero of a partial unwritten block", proto.CmdWriteZeroes, proto.CmdFlagFastZero, 20000, 100, nil, proto.ENOTSUP}, nil},
		{requestCase{"fast zero of whole blocks", proto.CmdWriteZeroes, proto.CmdFlagFastZero | proto.CmdFlagNoHole, 8192, 8192, nil, 0}, func() { clear(model[8192:16384]) }},
		{requestCase{"zero partial", proto.CmdWriteZeroes, 0, 20000, 100, nil, 0}, func() { clear(model[20000:20100]) }},
		{requestCase{"trim", proto.CmdTrim, 0, 65536, 65536, nil, 0}, func() { clear(model[65536:131072]) }},
		{requestCase{"zero past end", proto.CmdWriteZeroes, 0, size, 1, nil, proto.ENOSPC}, nil},
		{requestCase{"flush", proto.CmdFlush, 0, 0, 0, nil, 0}, nil},
		{requestCase{"flush with offset", proto.CmdFlush, 0, 1, 0, nil, proto.EINVAL}, nil},
	}
	for _, s := range steps {
		if got := tc.simple(s.typ, s.flags, s.off, s.length, s.data); got != s.want {
			t.Fatalf("%s: errno %d, want %d", s.name, got, s.want)
		}
		if s.apply != nil {
			s.apply()
		}
		b, e, _ := tc.readAt(0, len(model), 0)
		if e != 0 || !bytes.Equal(b, model) {
			t.Fatalf("after %s: content differs (errno %d)", s.name, e)
		}
	}
	// A second connection sees the same overlay (multi-conn).
	tc2 := dialTest(t, f.sock)
	tc2.goExport("web01@latest/disk0", false)
	if b, e, _ := tc2.readAt(0, len(model), 0); e != 0 || !bytes.Equal(b, model) {
		t.Fatal("second connection does not see the writes")
	}
	// The restore point itself is unchanged.
	d, err := f.r.OpenDisk(context.Background(), f.rp, "disk0")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(f.img))
	if _, err := d.ReadAt(got, 0); err != nil || !bytes.Equal(got, f.img) {
		t.Fatalf("restore point changed: %v", err)
	}
}

// lendingDevice is a repository disk (size, zero-chunk extents, prefetch)
// whose ReadSlices lends copies of the image cut into odd-sized pieces and
// poisons them as soon as fn returns, as a cache would reuse them; it
// fails the test if the server falls back to ReadAt.
type lendingDevice struct {
	DiskDevice
	t     *testing.T
	img   []byte
	lends atomic.Int64
}

func (d *lendingDevice) ReadAt(context.Context, []byte, int64) error {
	d.t.Error("ReadAt used on a SliceReader")
	return errReadAtUsed
}

var errReadAtUsed = errors.New("ReadAt used")

func (d *lendingDevice) ReadSlices(_ context.Context, off, length int64, fn func([][]byte) error) error {
	d.lends.Add(1)
	var bufs [][]byte
	for p := off; p < off+length; {
		n := min(1000+p%777, off+length-p)
		bufs = append(bufs, bytes.Clone(d.img[p:p+n]))
		p += n
	}
	err := fn(bufs)
	for _, b := range bufs {
		for i := range b {
			b[i] = 0xEE
		}
	}
	return err
}

type lendingCatalog struct{ dev *lendingDevice }

func (c lendingCatalog) List(context.Context) ([]ExportInfo, error) {
	return []ExportInfo{{Name: "lend"}}, nil
}

func (c lendingCatalog) Open(context.Context, string) (*Export, error) {
	return &Export{Name: "lend", Device: c.dev, Close: func() error { return nil }}, nil
}

// Reads from a SliceReader are written from the lent slices before
// ReadSlices returns (the device poisons them right after), in simple and
// structured replies, across holes and piece boundaries, with many
// requests in flight.
func TestLentReads(t *testing.T) {
	f := newFixture(t, "")
	img := f.img
	disk, err := f.r.OpenDisk(context.Background(), f.rp, "disk0")
	if err != nil {
		t.Fatal(err)
	}
	dev := &lendingDevice{DiskDevice: DiskDevice{D: disk}, t: t, img: img}
	srv := &Server{Catalog: lendingCatalog{dev}}
	sock := serveUnix(t, srv)
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	cases := []struct {
		name   string
		off, n int64
		flags  uint16
		chunks []uint16 // structured reply chunk types
	}{
		{"inside a piece", 10, 100, 0, []uint16{proto.ReplyTypeOffsetData}},
		{"across pieces and a hole", 2*testChunk + 100, 3 * testChunk, 0, []uint16{proto.ReplyTypeOffsetData, proto.ReplyTypeOffsetHole, proto.ReplyTypeOffsetData}},
		{"hole only", 3 * testChunk, testChunk, 0, []uint16{proto.ReplyTypeOffsetHole}},
		{"DF keeps the zeroes inline", 2*testChunk + 100, 3 * testChunk, proto.CmdFlagDF, []uint16{proto.ReplyTypeOffsetData}},
		{"the short tail", int64(len(img)) - 5000, 5000, 0, []uint16{proto.ReplyTypeOffsetData}},
	}
	for _, structured := range []bool{false, true} {
		for _, c := range cases {
			if c.flags&proto.CmdFlagDF != 0 && !structured {
				continue // DF needs structured replies (EINVAL otherwise)
			}
			t.Run(fmt.Sprintf("structured=%v/%s", structured, c.name), func(t *testing.T) {
				tc := dialTest(t, sock)
				tc.goExport("lend", structured)
				// Many requests in flight, then their replies.
				const inflight = 16
				sent := map[uint64]bool{}
				for range inflight {
					sent[tc.send(proto.CmdRead, c.flags, uint64(c.off), uint32(c.n), nil)] = true
				}
				for range inflight {
					b, e, chunks := tc.readReply(c.off, int(c.n), func(cookie uint64) bool { return sent[cookie] })
					delete(sent, chunks[0].cookie)
					if e != 0 || !bytes.Equal(b, img[c.off:c.off+c.n]) {
						t.Fatalf("errno %d, content differs: %v", e, !bytes.Equal(b, img[c.off:c.off+c.n]))
					}
					if structured {
						var types []uint16
						for _, ch := range chunks {
							types = append(types, ch.typ)
						}
						if fmt.Sprint(types) != fmt.Sprint(c.chunks) {
							t.Fatalf("reply chunks %v, want %v", types, c.chunks)
						}
					}
				}
			})
		}
	}
	if dev.lends.Load() == 0 {
		t.Fatal("nothing was lent")
	}
}

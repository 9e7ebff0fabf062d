package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/vmvault/vmvault/nbd/proto"
)

type fuzzCatalog struct{ dev Device }

func (c fuzzCatalog) List(context.Context) ([]ExportInfo, error) {
	return []ExportInfo{{Name: "d", Description: "fuzz"}}, nil
}

func (c fuzzCatalog) Open(_ context.Context, name string) (*Export, error) {
	if name != "" && name != "d" {
		return nil, ErrUnknownExport
	}
	return &Export{Name: "d", Device: c.dev, Close: func() error { return nil }}, nil
}

// memDevice is a writable in-memory device: the fuzzer exercises the
// write commands' parsing without paying for an overlay's fsyncs.
type memDevice struct {
	ReaderDevice
	mu sync.Mutex
	b  []byte
}

func (m *memDevice) ReadAt(_ context.Context, p []byte, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(p, m.b[off:])
	return nil
}

func (m *memDevice) WriteAt(_ context.Context, p []byte, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.b[off:], p)
	return nil
}

func (m *memDevice) WriteZeroes(_ context.Context, off, n int64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.b[off : off+n])
	return nil
}

func (m *memDevice) Trim(ctx context.Context, off, n int64) error {
	return m.WriteZeroes(ctx, off, n, false)
}

func (m *memDevice) Flush(context.Context) error { return nil }

// fuzzSeed builds a client stream: flags, options, then requests.
func fuzzSeed(opts [][]byte, reqs ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, proto.ClientFlagFixedNewstyle|proto.ClientFlagNoZeroes)
	for _, o := range opts {
		b = append(b, o...)
	}
	for _, r := range reqs {
		b = append(b, r...)
	}
	return b
}

func fuzzOpt(opt uint32, data []byte) []byte {
	h := binary.BigEndian.AppendUint64(nil, proto.MagicOption)
	h = binary.BigEndian.AppendUint32(h, opt)
	h = binary.BigEndian.AppendUint32(h, uint32(len(data)))
	return append(h, data...)
}

func fuzzReq(typ, flags uint16, off uint64, n uint32, payload []byte) []byte {
	h := binary.BigEndian.AppendUint32(nil, proto.MagicRequest)
	h = binary.BigEndian.AppendUint16(h, flags)
	h = binary.BigEndian.AppendUint16(h, typ)
	h = binary.BigEndian.AppendUint64(h, 1)
	h = binary.BigEndian.AppendUint64(h, off)
	h = binary.BigEndian.AppendUint32(h, n)
	return append(h, payload...)
}

// FuzzServe feeds arbitrary client bytes to a server connection: the
// handshake and request parsers must never panic, hang or allocate what a
// length field asks for.
func FuzzServe(f *testing.F) {
	goStructured := [][]byte{fuzzOpt(proto.OptStructuredReply, nil), fuzzOpt(proto.OptSetMetaContext, metaReq("d", proto.MetaBaseAllocation)), fuzzOpt(proto.OptGo, nameReq("d", 0, 0))}
	f.Add(fuzzSeed(nil))
	f.Add(fuzzSeed([][]byte{fuzzOpt(proto.OptList, nil), fuzzOpt(proto.OptInfo, nameReq("d", 0, 2, 0, 1, 0, 2)), fuzzOpt(proto.OptAbort, nil)}))
	f.Add(fuzzSeed([][]byte{fuzzOpt(proto.OptExportName, []byte("d"))}, fuzzReq(proto.CmdRead, 0, 0, 4096, nil), fuzzReq(proto.CmdDisc, 0, 0, 0, nil)))
	f.Add(fuzzSeed(goStructured, fuzzReq(proto.CmdRead, 0, 100, 70000, nil), fuzzReq(proto.CmdBlockStatus, proto.CmdFlagReqOne, 0, 1<<20, nil)))
	f.Add(fuzzSeed(goStructured, fuzzReq(proto.CmdWrite, proto.CmdFlagFUA, 0, 16, make([]byte, 16)), fuzzReq(proto.CmdWriteZeroes, proto.CmdFlagFastZero, 0, 1<<20, nil),
		fuzzReq(proto.CmdTrim, 0, 5, 9000, nil), fuzzReq(proto.CmdFlush, 0, 0, 0, nil), fuzzReq(proto.CmdCache, 0, 0, 1, nil)))
	f.Add(fuzzSeed([][]byte{fuzzOpt(proto.OptListMetaContext, []byte{0, 0, 0, 1, 'd', 0xff, 0xff, 0xff, 0xff})}))
	f.Add(fuzzSeed([][]byte{fuzzOpt(proto.OptGo, nameReq("d", 0, 0))}, fuzzReq(proto.CmdWrite, 0, 0, 0xffffffff, nil)))
	f.Fuzz(func(t *testing.T, in []byte) {
		base := make([]byte, 1<<20)
		var dev Device = ReaderDevice{R: bytes.NewReader(base), N: int64(len(base))}
		if len(in) > 0 && in[len(in)-1]&1 == 1 {
			dev = &memDevice{ReaderDevice: ReaderDevice{N: int64(len(base))}, b: base}
		}
		srv := &Server{Catalog: fuzzCatalog{dev}}
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			srv.ServeConn(server)
			close(done)
		}()
		go func() {
			client.Write(in)
			client.Close()
		}()
		go func() {
			// Drain replies so the server never blocks on writing.
			buf := make([]byte, 64<<10)
			for {
				if _, err := client.Read(buf); err != nil {
					return
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("server did not finish the connection")
		}
	})
}

package nbd

// A minimal NBD client for the server's own tests: it speaks the raw
// protocol so tests can send what real clients never would.

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/vmvault/vmvault/nbd/proto"
)

type testClient struct {
	t          *testing.T
	c          net.Conn
	r          *bufio.Reader
	size       int64
	flags      uint16
	structured bool
	cookie     uint64
}

type optReply struct {
	typ  uint32
	data []byte
}

func dialTest(t *testing.T, addr string) *testClient {
	t.Helper()
	c, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	tc := &testClient{t: t, c: c, r: bufio.NewReader(c)}
	t.Cleanup(func() { c.Close() })
	var hello [18]byte
	tc.read(hello[:])
	if binary.BigEndian.Uint64(hello[0:]) != proto.MagicInit || binary.BigEndian.Uint64(hello[8:]) != proto.MagicOption {
		t.Fatalf("bad greeting %x", hello)
	}
	tc.write(binary.BigEndian.AppendUint32(nil, proto.ClientFlagFixedNewstyle|proto.ClientFlagNoZeroes))
	return tc
}

func (tc *testClient) read(b []byte) {
	tc.t.Helper()
	if _, err := io.ReadFull(tc.r, b); err != nil {
		tc.t.Fatalf("read: %v", err)
	}
}

func (tc *testClient) write(b []byte) {
	tc.t.Helper()
	if _, err := tc.c.Write(b); err != nil {
		tc.t.Fatalf("write: %v", err)
	}
}

// option sends an option and collects replies up to the final one.
func (tc *testClient) option(opt uint32, data []byte) []optReply {
	tc.t.Helper()
	h := binary.BigEndian.AppendUint64(nil, proto.MagicOption)
	h = binary.BigEndian.AppendUint32(h, opt)
	h = binary.BigEndian.AppendUint32(h, uint32(len(data)))
	tc.write(append(h, data...))
	var out []optReply
	for {
		var rh [20]byte
		tc.read(rh[:])
		if binary.BigEndian.Uint64(rh[0:]) != proto.MagicOptionReply || binary.BigEndian.Uint32(rh[8:]) != opt {
			tc.t.Fatalf("bad option reply header %x", rh)
		}
		r := optReply{typ: binary.BigEndian.Uint32(rh[12:]), data: make([]byte, binary.BigEndian.Uint32(rh[16:]))}
		tc.read(r.data)
		out = append(out, r)
		if r.typ == proto.RepAck || r.typ&(1<<31) != 0 {
			return out
		}
	}
}

func nameReq(name string, extra ...byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	return append(append(b, name...), extra...)
}

func metaReq(name string, queries ...string) []byte {
	b := nameReq(name)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// goExport negotiates structured replies (if asked), base:allocation and
// enters transmission with name.
func (tc *testClient) goExport(name string, structured bool) {
	tc.t.Helper()
	if structured {
		if r := tc.option(proto.OptStructuredReply, nil); r[0].typ != proto.RepAck {
			tc.t.Fatalf("structured reply refused: %+v", r)
		}
		r := tc.option(proto.OptSetMetaContext, metaReq(name, proto.MetaBaseAllocation))
		if len(r) != 2 || r[0].typ != proto.RepMetaContext {
			tc.t.Fatalf("set meta context: %+v", r)
		}
		tc.structured = true
	}
	r := tc.option(proto.OptGo, nameReq(name, 0, 1, 0, byte(proto.InfoBlockSize)))
	last := r[len(r)-1]
	if last.typ != proto.RepAck {
		tc.t.Fatalf("GO %q: reply %#x %s", name, last.typ, last.data)
	}
	for _, x := range r {
		if x.typ == proto.RepInfo && binary.BigEndian.Uint16(x.data) == proto.InfoExport {
			tc.size = int64(binary.BigEndian.Uint64(x.data[2:]))
			tc.flags = binary.BigEndian.Uint16(x.data[10:])
		}
	}
}

func (tc *testClient) send(typ, flags uint16, off uint64, length uint32, payload []byte) uint64 {
	tc.t.Helper()
	tc.cookie++
	h := binary.BigEndian.AppendUint32(nil, proto.MagicRequest)
	h = binary.BigEndian.AppendUint16(h, flags)
	h = binary.BigEndian.AppendUint16(h, typ)
	h = binary.BigEndian.AppendUint64(h, tc.cookie)
	h = binary.BigEndian.AppendUint64(h, off)
	h = binary.BigEndian.AppendUint32(h, length)
	tc.write(append(h, payload...))
	return tc.cookie
}

// chunk is one structured reply chunk (or a simple reply, typ 0xffff).
type chunk struct {
	cookie uint64
	flags  uint16
	typ    uint16
	errno  uint32
	data   []byte
}

const simpleReplyType = 0xffff

// reply reads one reply message; dataLen is the payload length of a
// successful simple read reply.
func (tc *testClient) reply(dataLen int) chunk {
	tc.t.Helper()
	var m [4]byte
	tc.read(m[:])
	switch binary.BigEndian.Uint32(m[:]) {
	case proto.MagicSimpleReply:
		var h [12]byte
		tc.read(h[:])
		ch := chunk{typ: simpleReplyType, errno: binary.BigEndian.Uint32(h[0:]), cookie: binary.BigEndian.Uint64(h[4:]), flags: proto.ReplyFlagDone}
		if ch.errno == 0 && dataLen > 0 {
			ch.data = make([]byte, dataLen)
			tc.read(ch.data)
		}
		return ch
	case proto.MagicStructuredReply:
		var h [16]byte
		tc.read(h[:])
		ch := chunk{flags: binary.BigEndian.Uint16(h[0:]), typ: binary.BigEndian.Uint16(h[2:]), cookie: binary.BigEndian.Uint64(h[4:])}
		ch.data = make([]byte, binary.BigEndian.Uint32(h[12:]))
		tc.read(ch.data)
		if ch.typ&(1<<15) != 0 {
			ch.errno = binary.BigEndian.Uint32(ch.data)
		}
		return ch
	}
	tc.t.Fatalf("bad reply magic %x", m)
	return chunk{}
}

// readAt performs one READ and assembles the result; errno is 0 on success.
func (tc *testClient) readAt(off int64, n int, flags uint16) ([]byte, uint32, []chunk) {
	tc.t.Helper()
	cookie := tc.send(proto.CmdRead, flags, uint64(off), uint32(n), nil)
	return tc.readReply(off, n, func(c uint64) bool { return c == cookie })
}

// readReply reads the reply to a read of [off, off+n) whose cookie ok
// accepts (all its structured chunks come together: the server writes a
// reply in one piece).
func (tc *testClient) readReply(off int64, n int, ok func(cookie uint64) bool) ([]byte, uint32, []chunk) {
	tc.t.Helper()
	out := make([]byte, n)
	var chunks []chunk
	for {
		ch := tc.reply(n)
		if !ok(ch.cookie) || (len(chunks) > 0 && ch.cookie != chunks[0].cookie) {
			tc.t.Fatalf("unexpected reply for cookie %d", ch.cookie)
		}
		chunks = append(chunks, ch)
		if ch.errno != 0 {
			if ch.flags&proto.ReplyFlagDone == 0 {
				continue
			}
			return nil, ch.errno, chunks
		}
		switch ch.typ {
		case simpleReplyType:
			return ch.data, 0, chunks
		case proto.ReplyTypeOffsetData:
			o := int64(binary.BigEndian.Uint64(ch.data))
			copy(out[o-off:], ch.data[8:])
		case proto.ReplyTypeOffsetHole:
			o := int64(binary.BigEndian.Uint64(ch.data))
			clear(out[o-off : o-off+int64(binary.BigEndian.Uint32(ch.data[8:]))])
		}
		if ch.flags&proto.ReplyFlagDone != 0 {
			return out, 0, chunks
		}
	}
}

// simple sends a command without reply data and returns its errno.
func (tc *testClient) simple(typ, flags uint16, off uint64, length uint32, payload []byte) uint32 {
	tc.t.Helper()
	cookie := tc.send(typ, flags, off, length, payload)
	ch := tc.reply(0)
	if ch.cookie != cookie {
		tc.t.Fatalf("reply for cookie %d, want %d", ch.cookie, cookie)
	}
	return ch.errno
}

func (tc *testClient) String() string { return fmt.Sprintf("client(size=%d)", tc.size) }

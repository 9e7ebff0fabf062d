// Package client is a read-only NBD client for one export (the wire format
// is nbd/proto's): fixed newstyle handshake with NBD_OPT_GO, structured
// replies and meta contexts when the server offers them, and concurrent
// requests on one connection. Capture sources use it to read a disk
// served by a data mover (nbdkit's vddk plugin, qemu-nbd,
// qemu-storage-daemon's NBD export of a dirty-bitmap backup); it does not
// import the server (package nbd).
//
// Block status answers stay at the protocol's level (offset, length, raw
// status flags) because what the flags mean depends on the meta context:
// holes and zeroes for base:allocation, changed blocks for
// qemu:dirty-bitmap:NAME.
//
// Invariants: every server reply is validated (magic, a handle we sent,
// chunk offsets inside the request, lengths bounded by the request) before
// it touches a caller's buffer; a protocol violation closes the connection
// and fails every outstanding request. A request, once sent, is waited
// for, so a caller's buffer is never written after its call returns.
package client

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/vmvault/vmvault/nbd/proto"
)

// Client is an open export. ReadAt, ReadAtContext and BlockStatus are safe
// for concurrent use.
type Client struct {
	conn       net.Conn
	size       int64
	flags      uint16
	structured bool
	meta       map[string]uint32 // negotiated meta contexts by name: their ids
	maxBlock   int64

	wmu     sync.Mutex // serializes requests on the wire
	mu      sync.Mutex
	next    uint64
	pending map[uint64]*call
	err     error // set once the connection failed
	done    chan struct{}
}

type call struct {
	cmd    uint16
	off    int64
	buf    []byte  // READ destination
	metaID uint32  // BLOCK_STATUS: the context asked for
	status []Block // BLOCK_STATUS result
	err    error
	done   chan struct{}
}

// Block is one descriptor of a BLOCK_STATUS answer: a run of the export
// and its status flags in one meta context. What Flags mean depends on the
// context: base:allocation sets proto.StateHole and proto.StateZero (see
// Hole and Zero); qemu:dirty-bitmap:NAME sets proto.StateDirty for
// changed blocks.
type Block struct {
	Offset, Length int64
	Flags          uint32
}

// Hole reports base:allocation's "not allocated" bit.
func (b Block) Hole() bool { return b.Flags&proto.StateHole != 0 }

// Zero reports base:allocation's "reads as zeroes" bit.
func (b Block) Zero() bool { return b.Flags&proto.StateZero != 0 }

// Options choose what Dial negotiates.
type Options struct {
	// Export names the export to open; "" takes the name from the URI's
	// path (a name that is awkward in a URI can be given here instead).
	Export string
	// MetaContexts are asked for with NBD_OPT_SET_META_CONTEXT, e.g.
	// proto.MetaBaseAllocation or proto.MetaQemuDirtyBitmap+"bitmap0".
	// nil asks for base:allocation alone; an empty list asks for none.
	// Contexts the server does not offer are not negotiated, which is no
	// error: HasMetaContext tells.
	MetaContexts []string
}

// defaultMeta is what a nil Options.MetaContexts asks for.
var defaultMeta = []string{proto.MetaBaseAllocation}

// Dial connects to an NBD URI (nbd://host[:port]/export or
// nbd+unix:///export?socket=PATH) and opens the export read-only.
func Dial(ctx context.Context, uri string, o Options) (*Client, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("NBD URI %q: %w", uri, err)
	}
	export := strings.TrimPrefix(u.Path, "/")
	if o.Export != "" {
		export = o.Export
	}
	var d net.Dialer
	var conn net.Conn
	switch u.Scheme {
	case "nbd":
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "10809")
		}
		conn, err = d.DialContext(ctx, "tcp", host)
	case "nbd+unix":
		sock := u.Query().Get("socket")
		if sock == "" {
			return nil, fmt.Errorf("NBD URI %q: nbd+unix needs ?socket=PATH", uri)
		}
		conn, err = d.DialContext(ctx, "unix", sock)
	default:
		return nil, fmt.Errorf("NBD URI %q: scheme must be nbd or nbd+unix (TLS is not supported by this client)", uri)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", uri, err)
	}
	metas := o.MetaContexts
	if metas == nil {
		metas = defaultMeta
	}
	c, err := newClient(conn, export, metas)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("NBD handshake with %s: %w", uri, err)
	}
	return c, nil
}

// newClient runs the handshake on conn, asking for the meta contexts
// metas, and starts the reply reader.
func newClient(conn net.Conn, export string, metas []string) (*Client, error) {
	c := &Client{conn: conn, pending: map[uint64]*call{}, done: make(chan struct{}), maxBlock: 32 << 20, meta: map[string]uint32{}}
	br := bufio.NewReader(conn)
	var hdr [proto.GreetingSize]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, err
	}
	sflags, err := proto.ParseGreeting(hdr[:])
	if err != nil {
		return nil, err
	}
	if sflags&proto.FlagFixedNewstyle == 0 {
		return nil, errors.New("server does not speak fixed newstyle")
	}
	cflags := proto.ClientFlagFixedNewstyle
	if sflags&proto.FlagNoZeroes != 0 {
		cflags |= proto.ClientFlagNoZeroes
	}
	if _, err := conn.Write(be.AppendUint32(nil, cflags)); err != nil {
		return nil, err
	}
	// structured replies, then the meta contexts, then GO
	if rep, _, err := c.option(br, proto.OptStructuredReply, nil); err == nil && rep == proto.RepAck {
		c.structured = true
	}
	if c.structured && len(metas) > 0 {
		q := proto.MetaRequest{Name: export, Queries: metas}.Append(nil)
		if err := c.sendOption(proto.OptSetMetaContext, q); err != nil {
			return nil, err
		}
		for {
			rep, data, err := c.readOptionReply(br, proto.OptSetMetaContext)
			if err != nil {
				return nil, err
			}
			if rep != proto.RepMetaContext {
				break
			}
			if id, name, err := proto.ParseMetaContext(data); err == nil && slices.Contains(metas, name) {
				c.meta[name] = id
			}
		}
	}
	q := proto.InfoRequest{Name: export, Items: []uint16{proto.InfoBlockSize}}.Append(nil)
	if err := c.sendOption(proto.OptGo, q); err != nil {
		return nil, err
	}
	gotExport := false
	for {
		rep, data, err := c.readOptionReply(br, proto.OptGo)
		if err != nil {
			return nil, err
		}
		switch {
		case rep == proto.RepInfo:
			typ, err := proto.InfoType(data)
			if err != nil {
				break
			}
			switch typ {
			case proto.InfoExport:
				if size, flags, err := proto.ParseInfoExport(data); err == nil {
					c.size, c.flags, gotExport = int64(size), flags, true
				}
			case proto.InfoBlockSize:
				if bs, err := proto.ParseInfoBlockSize(data); err == nil {
					if m := int64(bs.Max); m > 0 && m < c.maxBlock {
						c.maxBlock = m
					}
				}
			}
		case rep == proto.RepAck:
			if !gotExport || c.size < 0 {
				return nil, errors.New("server did not describe the export")
			}
			if br.Buffered() > 0 {
				return nil, errors.New("server sent data before transmission")
			}
			go c.readLoop()
			return c, nil
		case rep&proto.RepFlagError != 0:
			return nil, fmt.Errorf("export %q refused (error %#x): %s", export, rep, data)
		default:
			return nil, fmt.Errorf("unexpected reply %#x to NBD_OPT_GO", rep)
		}
	}
}

var be = binary.BigEndian

func (c *Client) sendOption(opt uint32, data []byte) error {
	_, err := c.conn.Write(proto.AppendOption(nil, opt, data))
	return err
}

func (c *Client) option(br *bufio.Reader, opt uint32, data []byte) (uint32, []byte, error) {
	if err := c.sendOption(opt, data); err != nil {
		return 0, nil, err
	}
	return c.readOptionReply(br, opt)
}

func (c *Client) readOptionReply(br *bufio.Reader, opt uint32) (uint32, []byte, error) {
	var h [proto.OptionReplyHeaderSize]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	r, err := proto.ParseOptionReplyHeader(h[:])
	if err != nil || r.Option != opt {
		return 0, nil, fmt.Errorf("bad option reply for option %d", opt)
	}
	if r.Length > proto.MaxOptionLen {
		return 0, nil, fmt.Errorf("option reply of %d bytes", r.Length)
	}
	data := make([]byte, r.Length)
	if _, err := io.ReadFull(br, data); err != nil {
		return 0, nil, err
	}
	return r.Type, data, nil
}

// Size is the export size in bytes.
func (c *Client) Size() int64 { return c.size }

// Structured reports whether the server agreed to structured replies
// (sparse reads, meta contexts, error messages).
func (c *Client) Structured() bool { return c.structured }

// HasMetaContext reports whether the meta context name was negotiated, so
// that BlockStatus can ask for it.
func (c *Client) HasMetaContext(name string) bool {
	_, ok := c.meta[name]
	return ok
}

// Close disconnects.
func (c *Client) Close() error {
	c.wmu.Lock()
	var req [proto.RequestSize]byte
	c.conn.Write(proto.Request{Type: proto.CmdDisc}.Append(req[:0]))
	c.wmu.Unlock()
	err := c.conn.Close()
	<-c.done
	return err
}

func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	for h, cl := range c.pending {
		cl.err = c.err
		close(cl.done)
		delete(c.pending, h)
	}
	c.mu.Unlock()
	c.conn.Close()
}

// do sends one request and waits for its reply.
func (c *Client) do(ctx context.Context, cmd, flags uint16, off int64, length uint32, cl *call) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.next++
	h := c.next
	cl.cmd, cl.off, cl.done = cmd, off, make(chan struct{})
	c.pending[h] = cl
	c.mu.Unlock()
	var req [proto.RequestSize]byte
	proto.Request{Flags: flags, Type: cmd, Cookie: h, Offset: uint64(off), Length: length}.Append(req[:0])
	c.wmu.Lock()
	_, err := c.conn.Write(req[:])
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("send NBD request: %w", err))
	}
	// Once sent, the reply is awaited even if ctx ends: it writes into the
	// caller's buffer, which must not be reused before then.
	<-cl.done
	return cl.err
}

// ReadAt implements io.ReaderAt, splitting reads at the server's maximum
// block size.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	return c.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt with a context.
func (c *Client) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("nbd: negative offset")
	}
	if off >= c.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), c.size-off)
	done := int64(0)
	for done < want {
		n := min(want-done, c.maxBlock)
		cl := &call{buf: p[done : done+n]}
		if err := c.do(ctx, proto.CmdRead, 0, off+done, uint32(n), cl); err != nil {
			return int(done), fmt.Errorf("nbd: read [%d,+%d): %w", off+done, n, err)
		}
		done += n
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return int(want), nil
}

// BlockStatus returns the status of [off, off+length) in the negotiated
// meta context meta (e.g. proto.MetaBaseAllocation), in order from off.
// The server may describe less than asked (callers loop) and its last
// block may reach past the range.
func (c *Client) BlockStatus(ctx context.Context, meta string, off int64, length uint32) ([]Block, error) {
	id, ok := c.meta[meta]
	if !ok {
		return nil, fmt.Errorf("nbd: meta context %q was not negotiated", meta)
	}
	cl := &call{metaID: id}
	if err := c.do(ctx, proto.CmdBlockStatus, 0, off, length, cl); err != nil {
		return nil, fmt.Errorf("nbd: block status (%s) [%d,+%d): %w", meta, off, length, err)
	}
	return cl.status, nil
}

// readLoop reads replies and completes calls until the connection ends.
func (c *Client) readLoop() {
	defer close(c.done)
	br := bufio.NewReaderSize(c.conn, 1<<20)
	for {
		var h [max(proto.SimpleReplySize, proto.StructuredReplySize)]byte
		if _, err := io.ReadFull(br, h[:4]); err != nil {
			c.fail(fmt.Errorf("NBD connection: %w", err))
			return
		}
		var err error
		switch be.Uint32(h[:]) {
		case proto.MagicSimpleReply:
			err = c.simpleReply(br, h[:proto.SimpleReplySize])
		case proto.MagicStructuredReply:
			err = c.structuredReply(br, h[:proto.StructuredReplySize])
		default:
			err = errors.New("bad reply magic")
		}
		if err != nil {
			c.fail(fmt.Errorf("NBD protocol: %w", err))
			return
		}
	}
}

// take finds the call a reply is for. It stays pending until complete, so
// that a connection failure while its payload is read still ends it.
func (c *Client) take(h uint64) (*call, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.pending[h]
	if !ok {
		return nil, fmt.Errorf("reply for unknown handle %d", h)
	}
	return cl, nil
}

// complete ends a call whose reply has been fully read.
func (c *Client) complete(h uint64, cl *call) {
	c.mu.Lock()
	delete(c.pending, h)
	c.mu.Unlock()
	close(cl.done)
}

// simpleReply reads the rest of a simple reply whose magic starts h.
func (c *Client) simpleReply(br *bufio.Reader, h []byte) error {
	if _, err := io.ReadFull(br, h[4:]); err != nil {
		return err
	}
	r, err := proto.ParseSimpleReply(h)
	if err != nil {
		return err
	}
	cl, err := c.take(r.Cookie)
	if err != nil {
		return err
	}
	if r.Error == 0 && cl.cmd == proto.CmdRead {
		if _, err := io.ReadFull(br, cl.buf); err != nil {
			return err
		}
	}
	if r.Error != 0 {
		cl.err = syscall.Errno(r.Error)
	}
	c.complete(r.Cookie, cl)
	return nil
}

// structuredReply reads the rest of a structured reply chunk whose magic
// starts h.
func (c *Client) structuredReply(br *bufio.Reader, h []byte) error {
	if _, err := io.ReadFull(br, h[4:]); err != nil {
		return err
	}
	r, err := proto.ParseStructuredReply(h)
	if err != nil {
		return err
	}
	n := r.Length
	cl, err := c.take(r.Cookie)
	if err != nil {
		return err
	}
	if int64(n) > c.maxBlock+1024 {
		return fmt.Errorf("reply chunk of %d bytes", n)
	}
	switch r.Type {
	case proto.ReplyTypeNone:
		if n != 0 {
			return errors.New("NBD_REPLY_TYPE_NONE with payload")
		}
	case proto.ReplyTypeOffsetData:
		if n < 8 || cl.cmd != proto.CmdRead {
			return errors.New("bad OFFSET_DATA chunk")
		}
		var o [8]byte
		if _, err := io.ReadFull(br, o[:]); err != nil {
			return err
		}
		at := int64(be.Uint64(o[:])) - cl.off
		if at < 0 || at+int64(n-8) > int64(len(cl.buf)) {
			return errors.New("OFFSET_DATA outside the request")
		}
		if _, err := io.ReadFull(br, cl.buf[at:at+int64(n-8)]); err != nil {
			return err
		}
	case proto.ReplyTypeOffsetHole:
		var o [12]byte
		if n != 12 || cl.cmd != proto.CmdRead {
			return errors.New("bad OFFSET_HOLE chunk")
		}
		if _, err := io.ReadFull(br, o[:]); err != nil {
			return err
		}
		at, ln := int64(be.Uint64(o[:]))-cl.off, int64(be.Uint32(o[8:]))
		if at < 0 || at+ln > int64(len(cl.buf)) {
			return errors.New("OFFSET_HOLE outside the request")
		}
		clear(cl.buf[at : at+ln])
	case proto.ReplyTypeBlockStatus:
		if cl.cmd != proto.CmdBlockStatus {
			return errors.New("BLOCK_STATUS chunk for another command")
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return err
		}
		st, err := proto.ParseBlockStatus(b)
		if err != nil {
			return err
		}
		// One chunk per negotiated context; keep the one asked for.
		if st.Context == cl.metaID {
			pos := cl.off
			for i := range st.Len() {
				d := st.Descriptor(i)
				cl.status = append(cl.status, Block{Offset: pos, Length: int64(d.Length), Flags: d.Flags})
				pos += int64(d.Length)
			}
		}
	default:
		if r.Type&proto.ReplyTypeFlagError == 0 {
			return fmt.Errorf("unknown reply chunk type %d", r.Type)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return err
		}
		code, msg, err := proto.ParseError(b)
		if err != nil {
			return err
		}
		cl.err = fmt.Errorf("server error %d (%w): %s", code, syscall.Errno(code), msg)
	}
	if r.Flags&proto.ReplyFlagDone != 0 {
		c.complete(r.Cookie, cl)
	}
	return nil
}

// maxStatusRequest bounds one BLOCK_STATUS request: lengths are 32-bit
// on the wire, and a multiple of 1 MiB keeps requests aligned.
const maxStatusRequest = 1 << 31

// Map returns the status of every byte of [off, off+length) in the
// negotiated meta context meta, in order, contiguous and clipped to the
// range, with neighbours of equal flags joined. It sends as many
// BLOCK_STATUS requests as the server needs (it may describe less than
// asked) and splits ranges longer than a 32-bit length.
func (c *Client) Map(ctx context.Context, meta string, off, length int64) ([]Block, error) {
	if off < 0 || length < 0 || off > c.size || length > c.size-off {
		return nil, fmt.Errorf("nbd: map (%s) [%d,+%d) outside the export of %d bytes", meta, off, length, c.size)
	}
	var out []Block
	end := off + length
	for pos := off; pos < end; {
		n := min(end-pos, maxStatusRequest)
		bs, err := c.BlockStatus(ctx, meta, pos, uint32(n))
		if err != nil {
			return nil, err
		}
		start := pos
		for _, b := range bs {
			if b.Offset != pos || b.Length <= 0 {
				return nil, fmt.Errorf("nbd: block status (%s) at %d: descriptor [%d,+%d) does not continue at %d", meta, start, b.Offset, b.Length, pos)
			}
			l := min(b.Length, end-pos)
			if k := len(out); k > 0 && out[k-1].Flags == b.Flags && out[k-1].Offset+out[k-1].Length == pos {
				out[k-1].Length += l
			} else {
				out = append(out, Block{Offset: pos, Length: l, Flags: b.Flags})
			}
			pos += l
			if pos >= end {
				break
			}
		}
		if pos == start {
			return nil, fmt.Errorf("nbd: block status (%s) at %d: the server described nothing", meta, start)
		}
	}
	return out, nil
}

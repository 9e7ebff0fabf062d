package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
)

// Client is a read-only NBD client for one export: fixed newstyle
// handshake with NBD_OPT_GO, structured replies and the base:allocation
// meta context when the server offers them, and concurrent requests on one
// connection (ReadAt is safe for concurrent use). Capture sources use it to
// read a disk served by a data mover (nbdkit's vddk plugin, qemu-nbd,
// qemu-storage-daemon's NBD export of a dirty-bitmap backup).
//
// Invariants: every server reply is validated (magic, a handle we sent,
// chunk offsets inside the request, lengths bounded by the request) before
// it touches a caller's buffer; a protocol violation closes the connection
// and fails every outstanding request.
type Client struct {
	conn       net.Conn
	size       int64
	flags      uint16
	structured bool
	metaID     uint32 // base:allocation context id (servers may use 0)
	hasMeta    bool
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
	status []Block // BLOCK_STATUS result
	err    error
	done   chan struct{}
}

// Block is one extent of a BLOCK_STATUS answer.
type Block struct {
	Offset, Length int64
	Hole, Zero     bool
}

// Dial connects to an NBD URI (nbd://host[:port]/export or
// nbd+unix:///export?socket=PATH) and opens the export read-only.
func Dial(ctx context.Context, uri string) (*Client, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("NBD URI %q: %w", uri, err)
	}
	export := strings.TrimPrefix(u.Path, "/")
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
	c, err := newClient(conn, export)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("NBD handshake with %s: %w", uri, err)
	}
	return c, nil
}

// newClient runs the handshake on conn and starts the reply reader.
func newClient(conn net.Conn, export string) (*Client, error) {
	c := &Client{conn: conn, pending: map[uint64]*call{}, done: make(chan struct{}), maxBlock: 32 << 20}
	br := bufio.NewReader(conn)
	be := binary.BigEndian
	var hdr [18]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, err
	}
	if be.Uint64(hdr[0:]) != magicInit || be.Uint64(hdr[8:]) != magicOpt {
		return nil, errors.New("not an NBD newstyle server")
	}
	sflags := be.Uint16(hdr[16:])
	if sflags&flagFixedNewstyle == 0 {
		return nil, errors.New("server does not speak fixed newstyle")
	}
	cflags := clientFixed
	if sflags&flagNoZeroes != 0 {
		cflags |= clientNoZeroes
	}
	if err := binary.Write(conn, be, cflags); err != nil {
		return nil, err
	}
	// structured replies, then base:allocation, then GO
	if rep, _, err := c.option(br, optStructured, nil); err == nil && rep == repAck {
		c.structured = true
	}
	if c.structured {
		q := make([]byte, 4+len(export)+4+4+len(baseAllocation))
		be.PutUint32(q, uint32(len(export)))
		copy(q[4:], export)
		p := q[4+len(export):]
		be.PutUint32(p, 1)
		be.PutUint32(p[4:], uint32(len(baseAllocation)))
		copy(p[8:], baseAllocation)
		if err := c.sendOption(optSetMetaCtx, q); err != nil {
			return nil, err
		}
		for {
			rep, data, err := c.readOptionReply(br, optSetMetaCtx)
			if err != nil {
				return nil, err
			}
			if rep == repMetaContext && len(data) >= 4 && string(data[4:]) == baseAllocation {
				c.metaID, c.hasMeta = be.Uint32(data), true
			}
			if rep != repMetaContext {
				break
			}
		}
	}
	q := make([]byte, 4+len(export)+2+2)
	be.PutUint32(q, uint32(len(export)))
	copy(q[4:], export)
	be.PutUint16(q[4+len(export):], 1)
	be.PutUint16(q[6+len(export):], infoBlockSize)
	if err := c.sendOption(optGo, q); err != nil {
		return nil, err
	}
	gotExport := false
	for {
		rep, data, err := c.readOptionReply(br, optGo)
		if err != nil {
			return nil, err
		}
		switch {
		case rep == repInfo && len(data) >= 12 && be.Uint16(data) == infoExport:
			c.size, c.flags, gotExport = int64(be.Uint64(data[2:])), be.Uint16(data[10:]), true
		case rep == repInfo && len(data) >= 14 && be.Uint16(data) == infoBlockSize:
			if m := int64(be.Uint32(data[10:])); m > 0 && m < c.maxBlock {
				c.maxBlock = m
			}
		case rep == repInfo:
		case rep == repAck:
			if !gotExport || c.size < 0 {
				return nil, errors.New("server did not describe the export")
			}
			if br.Buffered() > 0 {
				return nil, errors.New("server sent data before transmission")
			}
			go c.readLoop()
			return c, nil
		case rep&(1<<31) != 0:
			return nil, fmt.Errorf("export %q refused (error %#x): %s", export, rep, data)
		default:
			return nil, fmt.Errorf("unexpected reply %#x to NBD_OPT_GO", rep)
		}
	}
}

func (c *Client) sendOption(opt uint32, data []byte) error {
	b := make([]byte, 16+len(data))
	binary.BigEndian.PutUint64(b, magicOpt)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	copy(b[16:], data)
	_, err := c.conn.Write(b)
	return err
}

func (c *Client) option(br *bufio.Reader, opt uint32, data []byte) (uint32, []byte, error) {
	if err := c.sendOption(opt, data); err != nil {
		return 0, nil, err
	}
	return c.readOptionReply(br, opt)
}

func (c *Client) readOptionReply(br *bufio.Reader, opt uint32) (uint32, []byte, error) {
	var h [20]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	be := binary.BigEndian
	if be.Uint64(h[0:]) != magicOptReply || be.Uint32(h[8:]) != opt {
		return 0, nil, fmt.Errorf("bad option reply for option %d", opt)
	}
	n := be.Uint32(h[16:])
	if n > maxOptionLen {
		return 0, nil, fmt.Errorf("option reply of %d bytes", n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(br, data); err != nil {
		return 0, nil, err
	}
	return be.Uint32(h[12:]), data, nil
}

// Size is the export size in bytes.
func (c *Client) Size() int64 { return c.size }

// CanBlockStatus reports whether BlockStatus works on this export.
func (c *Client) CanBlockStatus() bool { return c.hasMeta }

// Close disconnects.
func (c *Client) Close() error {
	c.wmu.Lock()
	var req [28]byte
	binary.BigEndian.PutUint32(req[0:], magicRequest)
	binary.BigEndian.PutUint16(req[6:], cmdDisc)
	c.conn.Write(req[:])
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
	var req [28]byte
	be := binary.BigEndian
	be.PutUint32(req[0:], magicRequest)
	be.PutUint16(req[4:], flags)
	be.PutUint16(req[6:], cmd)
	be.PutUint64(req[8:], h)
	be.PutUint64(req[16:], uint64(off))
	be.PutUint32(req[24:], length)
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
		if err := c.do(ctx, cmdRead, 0, off+done, uint32(n), cl); err != nil {
			return int(done), fmt.Errorf("nbd: read [%d,+%d): %w", off+done, n, err)
		}
		done += n
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return int(want), nil
}

// BlockStatus returns the allocation status of [off, off+length) (the
// server may describe less than asked; callers loop).
func (c *Client) BlockStatus(ctx context.Context, off int64, length uint32) ([]Block, error) {
	if !c.hasMeta {
		return nil, errors.New("nbd: server does not offer base:allocation")
	}
	cl := &call{}
	if err := c.do(ctx, cmdBlockStatus, 0, off, length, cl); err != nil {
		return nil, fmt.Errorf("nbd: block status [%d,+%d): %w", off, length, err)
	}
	return cl.status, nil
}

// readLoop reads replies and completes calls until the connection ends.
func (c *Client) readLoop() {
	defer close(c.done)
	br := bufio.NewReaderSize(c.conn, 1<<20)
	be := binary.BigEndian
	for {
		var m [4]byte
		if _, err := io.ReadFull(br, m[:]); err != nil {
			c.fail(fmt.Errorf("NBD connection: %w", err))
			return
		}
		var err error
		switch be.Uint32(m[:]) {
		case magicSimpleReply:
			err = c.simpleReply(br)
		case magicStructReply:
			err = c.structuredReply(br)
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

func (c *Client) simpleReply(br *bufio.Reader) error {
	var h [12]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return err
	}
	code := binary.BigEndian.Uint32(h[0:])
	handle := binary.BigEndian.Uint64(h[4:])
	cl, err := c.take(handle)
	if err != nil {
		return err
	}
	if code == 0 && cl.cmd == cmdRead {
		if _, err := io.ReadFull(br, cl.buf); err != nil {
			return err
		}
	}
	if code != 0 {
		cl.err = syscall.Errno(code)
	}
	c.complete(handle, cl)
	return nil
}

func (c *Client) structuredReply(br *bufio.Reader) error {
	var h [16]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return err
	}
	be := binary.BigEndian
	flags, typ, handle, n := be.Uint16(h[0:]), be.Uint16(h[2:]), be.Uint64(h[4:]), be.Uint32(h[12:])
	last := flags&replyFlagDone != 0
	cl, err := c.take(handle)
	if err != nil {
		return err
	}
	if int64(n) > c.maxBlock+1024 {
		return fmt.Errorf("reply chunk of %d bytes", n)
	}
	switch typ {
	case replyNone:
		if n != 0 {
			return errors.New("NBD_REPLY_TYPE_NONE with payload")
		}
	case replyOffsetData:
		if n < 8 || cl.cmd != cmdRead {
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
	case replyOffsetHole:
		var o [12]byte
		if n != 12 || cl.cmd != cmdRead {
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
	case replyBlockStatus:
		if n < 4 || (n-4)%8 != 0 || cl.cmd != cmdBlockStatus {
			return errors.New("bad BLOCK_STATUS chunk")
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return err
		}
		if c.hasMeta && be.Uint32(b) == c.metaID {
			pos := cl.off
			for i := 4; i < len(b); i += 8 {
				ln, st := int64(be.Uint32(b[i:])), be.Uint32(b[i+4:])
				cl.status = append(cl.status, Block{Offset: pos, Length: ln, Hole: st&stateHole != 0, Zero: st&stateZero != 0})
				pos += ln
			}
		}
	default:
		if typ&(1<<15) == 0 {
			return fmt.Errorf("unknown reply chunk type %d", typ)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return err
		}
		if len(b) < 6 {
			return errors.New("short error chunk")
		}
		code := be.Uint32(b)
		msgLen := int(be.Uint16(b[4:]))
		msg := ""
		if 6+msgLen <= len(b) {
			msg = string(b[6 : 6+msgLen])
		}
		cl.err = fmt.Errorf("server error %d (%w): %s", code, syscall.Errno(code), msg)
	}
	if last {
		c.complete(handle, cl)
	}
	return nil
}

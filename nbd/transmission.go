package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/vmvault/vmvault/repo/extent"
)

// writeTimeout bounds one reply write, so a client that stops reading
// holds its buffers (at most MaxBlockSize bytes) no longer than this.
const writeTimeout = 30 * time.Second

// acquire reserves n payload bytes: first from the connection's own share
// (MaxBlockSize, so one client cannot take the whole budget), then from
// the server's.
func (c *conn) acquire(n int64) error {
	if err := c.budget.Acquire(c.ctx, n); err != nil {
		return err
	}
	if err := c.s.budget.Acquire(c.ctx, n); err != nil {
		c.budget.Release(n)
		return err
	}
	return nil
}

func (c *conn) release(n int64) {
	c.s.budget.Release(n)
	c.budget.Release(n)
}

// request is one parsed transmission request.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32
}

// parseRequest decodes a 28-byte request header.
func parseRequest(h []byte) (request, error) {
	if len(h) != requestSize {
		return request{}, fmt.Errorf("request header of %d bytes", len(h))
	}
	if m := binary.BigEndian.Uint32(h[0:]); m != magicRequest {
		return request{}, fmt.Errorf("bad request magic %#x", m)
	}
	return request{
		flags:  binary.BigEndian.Uint16(h[4:]),
		typ:    binary.BigEndian.Uint16(h[6:]),
		cookie: binary.BigEndian.Uint64(h[8:]),
		off:    binary.BigEndian.Uint64(h[16:]),
		length: binary.BigEndian.Uint32(h[24:]),
	}, nil
}

var cmdNames = map[uint16]string{
	cmdRead: "read", cmdWrite: "write", cmdDisc: "disc", cmdFlush: "flush", cmdTrim: "trim",
	cmdCache: "cache", cmdWriteZeroes: "write-zeroes", cmdBlockStatus: "block-status",
}

func (r request) String() string {
	name, ok := cmdNames[r.typ]
	if !ok {
		name = fmt.Sprintf("command %d", r.typ)
	}
	return fmt.Sprintf("%s [%d,+%d)", name, r.off, r.length)
}

// validate checks a request against the export and the negotiation; it
// returns 0 or the NBD error to answer with.
func (c *conn) validate(r request) (uint32, string) {
	size := uint64(c.exp.Device.Size())
	writable := c.writable()
	allowed := uint16(0)
	if writable {
		allowed |= cmdFlagFUA
	}
	inRange := r.off <= size && uint64(r.length) <= size-r.off
	switch r.typ {
	case cmdRead:
		if c.structured {
			allowed |= cmdFlagDF
		}
		if r.length > MaxBlockSize {
			return errInval, fmt.Sprintf("read of %d bytes exceeds the maximum block size %d", r.length, MaxBlockSize)
		}
		if !inRange {
			return errInval, "read beyond the end of the export"
		}
	case cmdWrite, cmdTrim, cmdWriteZeroes:
		if r.typ == cmdWriteZeroes {
			allowed |= cmdFlagNoHole | cmdFlagFastZero
		}
		if r.typ == cmdWrite && r.length > MaxBlockSize {
			return errInval, fmt.Sprintf("write of %d bytes exceeds the maximum block size %d", r.length, MaxBlockSize)
		}
		if !writable {
			return errPerm, "export is read-only"
		}
		if !inRange {
			return errNoSpc, "write beyond the end of the export"
		}
	case cmdFlush:
		if !writable {
			return errInval, "flush is not supported on a read-only export"
		}
		if r.off != 0 || r.length != 0 {
			return errInval, "flush with nonzero offset or length"
		}
	case cmdCache:
		if !inRange {
			return errInval, "cache beyond the end of the export"
		}
	case cmdBlockStatus:
		allowed |= cmdFlagReqOne
		if c.metaExport == nil {
			return errInval, "no metadata context was negotiated"
		}
		if r.length == 0 || !inRange {
			return errInval, "block status of an empty range or beyond the end of the export"
		}
	case cmdDisc:
		return 0, ""
	default:
		return errInval, fmt.Sprintf("unknown command %d", r.typ)
	}
	if r.flags&^allowed != 0 {
		return errInval, fmt.Sprintf("flags %#x not valid for this command", r.flags&^allowed)
	}
	return 0, ""
}

// transmit serves requests until DISC, EOF, a broken stream or shutdown.
func (c *conn) transmit() error {
	defer func() {
		c.inflight.Wait()
		c.wmu.Lock()
		if c.werr == nil {
			c.bw.Flush()
		}
		c.wmu.Unlock()
	}()
	var h [requestSize]byte
	for {
		if c.stopping.Load() {
			return errStopped
		}
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return err
		}
		r, err := parseRequest(h[:])
		if err != nil {
			return err // no way to find the next request
		}
		if r.typ == cmdDisc {
			return nil
		}
		c.st.requests.Add(1)
		code, msg := c.validate(r)
		var payload []byte
		if r.typ == cmdWrite {
			if code != 0 {
				// Stay in step with the stream without holding the data.
				if _, err := io.CopyN(io.Discard, c.br, int64(r.length)); err != nil {
					return err
				}
			} else {
				if err := c.acquire(int64(r.length)); err != nil {
					return err
				}
				payload = payloads.Get(int(r.length))
				if _, err := io.ReadFull(c.br, payload); err != nil {
					c.release(int64(r.length))
					payloads.Put(payload)
					return err
				}
			}
		}
		if code != 0 {
			c.st.failed.Add(1)
			c.log.Warn("request refused", "request", r.String(), "err", msg)
			if err := c.replyError(r, code, msg); err != nil {
				return err
			}
			continue
		}
		if r.typ == cmdRead {
			if err := c.acquire(int64(r.length)); err != nil {
				return err
			}
		}
		c.sem <- struct{}{}
		c.inflight.Add(1)
		go func() {
			defer func() {
				<-c.sem
				c.inflight.Done()
			}()
			c.handle(r, payload)
		}()
	}
}

// handle runs one validated request and replies.
func (c *conn) handle(r request, payload []byte) {
	ctx := c.ctx
	dev := c.exp.Device
	off, n := int64(r.off), int64(r.length)
	var err error
	switch r.typ {
	case cmdRead:
		c.handleRead(r)
		return
	case cmdWrite:
		err = dev.(WritableDevice).WriteAt(ctx, payload, off)
		c.release(n)
		payloads.Put(payload)
		if err == nil {
			c.st.bytesWrote.Add(n)
		}
	case cmdTrim:
		err = dev.(WritableDevice).Trim(ctx, off, n)
		c.st.bytesTrim.Add(n)
	case cmdWriteZeroes:
		err = dev.(WritableDevice).WriteZeroes(ctx, off, n, r.flags&cmdFlagFastZero != 0)
		if err == nil {
			c.st.bytesZeroed.Add(n)
		}
	case cmdFlush:
		err = dev.(WritableDevice).Flush(ctx)
	case cmdCache:
		err = dev.Prefetch(ctx, off, n)
	case cmdBlockStatus:
		c.handleBlockStatus(r)
		return
	}
	if err == nil && r.flags&cmdFlagFUA != 0 && r.typ != cmdFlush {
		err = dev.(WritableDevice).Flush(ctx)
	}
	if err != nil {
		c.fail(r, err)
		return
	}
	c.send(func() error { return c.writeSimple(r.cookie, 0) })
}

// errno maps a device error to an NBD error value.
func errno(err error) uint32 {
	switch {
	case errors.Is(err, ErrNotFast):
		return errNotSup
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return errNoSpc
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		return errPerm
	case errors.Is(err, context.Canceled):
		return errShutdown
	}
	return errIO
}

// fail answers r with the error err maps to, and logs it.
func (c *conn) fail(r request, err error) {
	code := errno(err)
	c.st.failed.Add(1)
	if code != errNotSup {
		c.log.Warn("request failed", "request", r.String(), "err", err)
	}
	c.replyError(r, code, err.Error())
}

// replyError writes an error reply: a structured error chunk (with the
// message) where structured replies are in use for the command, else a
// simple reply.
func (c *conn) replyError(r request, code uint32, msg string) error {
	if c.structured && (r.typ == cmdRead || r.typ == cmdBlockStatus) {
		if len(msg) > maxErrorMessage {
			msg = msg[:maxErrorMessage]
		}
		return c.send(func() error {
			p := binary.BigEndian.AppendUint32(nil, code)
			p = binary.BigEndian.AppendUint16(p, uint16(len(msg)))
			p = append(p, msg...)
			return c.writeChunk(r.cookie, replyFlagDone, replyError, p)
		})
	}
	return c.send(func() error { return c.writeSimple(r.cookie, code) })
}

// send runs one reply's writes under the write lock. The buffer is flushed
// unless another reply is already waiting for the lock (it flushes later),
// so replies batch under load and go out at once when idle.
func (c *conn) send(write func() error) error {
	c.waiting.Add(1)
	c.wmu.Lock()
	c.waiting.Add(-1)
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	c.raw.SetWriteDeadline(time.Now().Add(writeTimeout))
	err := write()
	if err == nil && c.waiting.Load() == 0 {
		err = c.bw.Flush()
	}
	if err != nil {
		c.werr = err
		c.raw.Close() // the reader notices and ends the connection
	}
	return err
}

// writeSimple writes a simple reply followed by the pieces of data.
func (c *conn) writeSimple(cookie uint64, code uint32, data ...[]byte) error {
	var h [simpleHdrLen]byte
	binary.BigEndian.PutUint32(h[0:], magicSimpleReply)
	binary.BigEndian.PutUint32(h[4:], code)
	binary.BigEndian.PutUint64(h[8:], cookie)
	_, err := c.bw.Write(h[:])
	for _, d := range data {
		if err != nil {
			break
		}
		_, err = c.bw.Write(d)
	}
	return err
}

// writeChunk writes one structured reply chunk whose payload is p then
// the pieces of data.
func (c *conn) writeChunk(cookie uint64, flags, typ uint16, p []byte, data ...[]byte) error {
	n := len(p)
	for _, d := range data {
		n += len(d)
	}
	var h [structHdrLen]byte
	binary.BigEndian.PutUint32(h[0:], magicStructReply)
	binary.BigEndian.PutUint16(h[4:], flags)
	binary.BigEndian.PutUint16(h[6:], typ)
	binary.BigEndian.PutUint64(h[8:], cookie)
	binary.BigEndian.PutUint32(h[16:], uint32(n))
	c.bw.Write(h[:])
	_, err := c.bw.Write(p)
	for _, d := range data {
		if err != nil {
			break
		}
		_, err = c.bw.Write(d)
	}
	return err
}

// lent walks the slices a SliceReader lends, in order.
type lent [][]byte

// take returns the next n bytes as views into the lent slices.
func (l *lent) take(n int64) [][]byte {
	var out [][]byte
	for n > 0 && len(*l) > 0 {
		b := (*l)[0]
		if int64(len(b)) > n {
			out = append(out, b[:n])
			(*l)[0] = b[n:]
			break
		}
		out = append(out, b)
		n -= int64(len(b))
		*l = (*l)[1:]
	}
	return out
}

// readLent answers a read from bytes the device lends: no payload buffer,
// no copy. Extents (structured replies without DF) come from the index,
// so holes are sent as holes and their lent zeroes skipped.
func (c *conn) readLent(r request, sr SliceReader) {
	off, n := int64(r.off), int64(r.length)
	exts := []extent.Extent{{Offset: off, Length: n}}
	if c.structured && r.flags&cmdFlagDF == 0 {
		var err error
		if exts, err = c.exp.Device.Extents(c.ctx, off, n); err != nil {
			c.fail(r, err)
			return
		}
	}
	called := false
	err := sr.ReadSlices(c.ctx, off, n, func(bufs [][]byte) error {
		called = true
		c.st.bytesRead.Add(n)
		src := lent(bufs)
		return c.send(func() error {
			return c.writeRead(r.cookie, exts, func(e extent.Extent) [][]byte { return src.take(e.Length) })
		})
	})
	if err != nil && !called {
		c.fail(r, err)
		return
	}
	// An error after the slices were lent is the connection's (send
	// recorded it and closed the socket).
	c.readAhead(off, n)
}

func (c *conn) handleRead(r request) {
	defer c.release(int64(r.length))
	ctx := c.ctx
	dev := c.exp.Device
	off, n := int64(r.off), int64(r.length)
	if n == 0 {
		if c.structured {
			c.send(func() error { return c.writeChunk(r.cookie, replyFlagDone, replyNone, nil) })
		} else {
			c.send(func() error { return c.writeSimple(r.cookie, 0) })
		}
		return
	}
	if sr, ok := dev.(SliceReader); ok {
		c.readLent(r, sr)
		return
	}
	buf := payloads.Get(int(n))
	defer payloads.Put(buf)
	var exts []extent.Extent
	var err error
	if c.structured && r.flags&cmdFlagDF == 0 {
		exts, err = dev.Extents(ctx, off, n)
		if err == nil {
			for _, e := range exts {
				if !e.Zero {
					if err = dev.ReadAt(ctx, buf[e.Offset-off:e.Offset-off+e.Length], e.Offset); err != nil {
						break
					}
				}
			}
		}
	} else {
		err = dev.ReadAt(ctx, buf, off)
	}
	if err != nil {
		c.fail(r, err)
		return
	}
	c.st.bytesRead.Add(n)
	c.readAhead(off, n)
	if exts == nil {
		exts = []extent.Extent{{Offset: off, Length: n}}
	}
	c.send(func() error {
		return c.writeRead(r.cookie, exts, func(e extent.Extent) [][]byte { return [][]byte{buf[e.Offset-off : e.Offset-off+e.Length]} })
	})
}

// writeRead writes the reply to a successful read of exts (in order, no
// gaps): one simple reply with all the data, or one structured chunk per
// extent, holes as holes. data returns an extent's bytes; it is called
// once per extent, in order, holes included.
func (c *conn) writeRead(cookie uint64, exts []extent.Extent, data func(extent.Extent) [][]byte) error {
	if !c.structured {
		var all [][]byte
		for _, e := range exts {
			all = append(all, data(e)...)
		}
		return c.writeSimple(cookie, 0, all...)
	}
	for i, e := range exts {
		flags := uint16(0)
		if i == len(exts)-1 {
			flags = replyFlagDone
		}
		d := data(e)
		p := binary.BigEndian.AppendUint64(make([]byte, 0, 12), uint64(e.Offset))
		if e.Zero {
			p = binary.BigEndian.AppendUint32(p, uint32(e.Length))
			if err := c.writeChunk(cookie, flags, replyOffsetHole, p); err != nil {
				return err
			}
			continue
		}
		if err := c.writeChunk(cookie, flags, replyOffsetData, p, d...); err != nil {
			return err
		}
	}
	return nil
}

func (c *conn) handleBlockStatus(r request) {
	off, n := int64(r.off), int64(r.length)
	exts, err := c.exp.Device.Extents(c.ctx, off, n)
	if err != nil {
		c.fail(r, err)
		return
	}
	limit := maxBlockStatusExtent
	if r.flags&cmdFlagReqOne != 0 {
		limit = 1
	}
	p := binary.BigEndian.AppendUint32(make([]byte, 0, 4+8*min(len(exts), limit)), baseAllocationID)
	for i, e := range exts {
		if i == limit {
			break
		}
		var st uint32
		if e.Zero {
			st = stateHole | stateZero
		}
		p = binary.BigEndian.AppendUint32(p, uint32(e.Length)) // ≤ request length, a uint32
		p = binary.BigEndian.AppendUint32(p, st)
	}
	c.send(func() error { return c.writeChunk(r.cookie, replyFlagDone, replyBlockStatus, p) })
}

// readAhead prefetches beyond a sequential reader. Reads of one stream may
// complete out of order, so "sequential" allows a little slack.
func (c *conn) readAhead(off, n int64) {
	win := c.s.ReadAhead
	if win <= 0 {
		return
	}
	const slack = 4 << 20
	c.raMu.Lock()
	defer c.raMu.Unlock()
	if off >= c.raLast-slack && off <= c.raLast+slack {
		c.raSeq++
	} else {
		c.raSeq = 0
		c.raIssued = 0
	}
	c.raLast = max(c.raLast, off+n)
	if c.raSeq < 2 || c.raBusy {
		return
	}
	size := c.exp.Device.Size()
	start := max(c.raLast, c.raIssued)
	end := min(size, c.raLast+win)
	if end-start < win/4 {
		return
	}
	c.raIssued = end
	c.raBusy = true
	c.inflight.Add(1) // the caller is in flight, so the count is not zero
	go func() {
		defer c.inflight.Done()
		c.exp.Device.Prefetch(c.ctx, start, end-start) // errors surface on the real read
		c.raMu.Lock()
		c.raBusy = false
		c.raMu.Unlock()
	}()
}

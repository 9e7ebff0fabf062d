package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/vmvault/vmvault/nbd/proto"
	"github.com/vmvault/vmvault/repo/extent"
)

// maxBlockStatusExtent bounds the descriptors of one BLOCK_STATUS reply.
const maxBlockStatusExtent = 1 << 14

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

var cmdNames = map[uint16]string{
	proto.CmdRead: "read", proto.CmdWrite: "write", proto.CmdDisc: "disc", proto.CmdFlush: "flush", proto.CmdTrim: "trim",
	proto.CmdCache: "cache", proto.CmdWriteZeroes: "write-zeroes", proto.CmdBlockStatus: "block-status",
}

// reqString names a request for the log.
func reqString(r proto.Request) string {
	name, ok := cmdNames[r.Type]
	if !ok {
		name = fmt.Sprintf("command %d", r.Type)
	}
	return fmt.Sprintf("%s [%d,+%d)", name, r.Offset, r.Length)
}

// validate checks a request against the export and the negotiation; it
// returns 0 or the NBD error to answer with.
func (c *conn) validate(r proto.Request) (uint32, string) {
	size := uint64(c.exp.Device.Size())
	writable := c.writable()
	allowed := uint16(0)
	if writable {
		allowed |= proto.CmdFlagFUA
	}
	inRange := r.Offset <= size && uint64(r.Length) <= size-r.Offset
	switch r.Type {
	case proto.CmdRead:
		if c.structured {
			allowed |= proto.CmdFlagDF
		}
		if r.Length > MaxBlockSize {
			return proto.EINVAL, fmt.Sprintf("read of %d bytes exceeds the maximum block size %d", r.Length, MaxBlockSize)
		}
		if !inRange {
			return proto.EINVAL, "read beyond the end of the export"
		}
	case proto.CmdWrite, proto.CmdTrim, proto.CmdWriteZeroes:
		if r.Type == proto.CmdWriteZeroes {
			allowed |= proto.CmdFlagNoHole | proto.CmdFlagFastZero
		}
		if r.Type == proto.CmdWrite && r.Length > MaxBlockSize {
			return proto.EINVAL, fmt.Sprintf("write of %d bytes exceeds the maximum block size %d", r.Length, MaxBlockSize)
		}
		if !writable {
			return proto.EPERM, "export is read-only"
		}
		if !inRange {
			return proto.ENOSPC, "write beyond the end of the export"
		}
	case proto.CmdFlush:
		if !writable {
			return proto.EINVAL, "flush is not supported on a read-only export"
		}
		if r.Offset != 0 || r.Length != 0 {
			return proto.EINVAL, "flush with nonzero offset or length"
		}
	case proto.CmdCache:
		if !inRange {
			return proto.EINVAL, "cache beyond the end of the export"
		}
	case proto.CmdBlockStatus:
		allowed |= proto.CmdFlagReqOne
		if c.metaExport == nil {
			return proto.EINVAL, "no metadata context was negotiated"
		}
		if r.Length == 0 || !inRange {
			return proto.EINVAL, "block status of an empty range or beyond the end of the export"
		}
	case proto.CmdDisc:
		return 0, ""
	default:
		return proto.EINVAL, fmt.Sprintf("unknown command %d", r.Type)
	}
	if r.Flags&^allowed != 0 {
		return proto.EINVAL, fmt.Sprintf("flags %#x not valid for this command", r.Flags&^allowed)
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
	var h [proto.RequestSize]byte
	for {
		if c.stopping.Load() {
			return errStopped
		}
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return err
		}
		r, err := proto.ParseRequest(h[:])
		if err != nil {
			return err // no way to find the next request
		}
		if r.Type == proto.CmdDisc {
			return nil
		}
		c.st.requests.Add(1)
		code, msg := c.validate(r)
		if code != 0 {
			c.st.failed.Add(1)
			c.log.Warn("request refused", "request", reqString(r), "err", msg)
			// A refused write is answered before its payload is read.
			if err := c.replyError(r, code, msg); err != nil {
				return err
			}
			if r.Type == proto.CmdWrite {
				if r.Length > MaxBlockSize {
					// The client broke the advertised maximum (a MUST
					// NOT of the protocol): hard disconnect rather than
					// read a payload of up to 4 GiB.
					return fmt.Errorf("write of %d bytes exceeds the maximum block size %d: disconnecting without reading its payload", r.Length, MaxBlockSize)
				}
				// Stay in step with the stream without holding the data.
				if _, err := io.CopyN(io.Discard, c.br, int64(r.Length)); err != nil {
					return err
				}
			}
			continue
		}
		var payload []byte
		if r.Type == proto.CmdWrite {
			if err := c.acquire(int64(r.Length)); err != nil {
				return err
			}
			payload = payloads.Get(int(r.Length))
			if _, err := io.ReadFull(c.br, payload); err != nil {
				c.release(int64(r.Length))
				payloads.Put(payload)
				return err
			}
		}
		if r.Type == proto.CmdRead {
			if err := c.acquire(int64(r.Length)); err != nil {
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
func (c *conn) handle(r proto.Request, payload []byte) {
	ctx := c.ctx
	dev := c.exp.Device
	off, n := int64(r.Offset), int64(r.Length)
	var err error
	switch r.Type {
	case proto.CmdRead:
		c.handleRead(r)
		return
	case proto.CmdWrite:
		err = dev.(WritableDevice).WriteAt(ctx, payload, off)
		c.release(n)
		payloads.Put(payload)
		if err == nil {
			c.st.bytesWrote.Add(n)
		}
	case proto.CmdTrim:
		err = dev.(WritableDevice).Trim(ctx, off, n)
		c.st.bytesTrim.Add(n)
	case proto.CmdWriteZeroes:
		err = dev.(WritableDevice).WriteZeroes(ctx, off, n, r.Flags&proto.CmdFlagFastZero != 0)
		if err == nil {
			c.st.bytesZeroed.Add(n)
		}
	case proto.CmdFlush:
		err = dev.(WritableDevice).Flush(ctx)
	case proto.CmdCache:
		err = dev.Prefetch(ctx, off, n)
	case proto.CmdBlockStatus:
		c.handleBlockStatus(r)
		return
	}
	if err == nil && r.Flags&proto.CmdFlagFUA != 0 && r.Type != proto.CmdFlush {
		err = dev.(WritableDevice).Flush(ctx)
	}
	if err != nil {
		c.fail(r, err)
		return
	}
	c.send(func() error { return c.writeSimple(r.Cookie, 0) })
}

// errno maps a device error to an NBD error value.
func errno(err error) uint32 {
	switch {
	case errors.Is(err, ErrNotFast):
		return proto.ENOTSUP
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return proto.ENOSPC
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		return proto.EPERM
	case errors.Is(err, context.Canceled):
		return proto.ESHUTDOWN
	}
	return proto.EIO
}

// fail answers r with the error err maps to, and logs it.
func (c *conn) fail(r proto.Request, err error) {
	code := errno(err)
	c.st.failed.Add(1)
	if code != proto.ENOTSUP {
		c.log.Warn("request failed", "request", reqString(r), "err", err)
	}
	c.replyError(r, code, err.Error())
}

// replyError writes an error reply: a structured error chunk (with the
// message) where structured replies are in use for the command, else a
// simple reply.
func (c *conn) replyError(r proto.Request, code uint32, msg string) error {
	if c.structured && (r.Type == proto.CmdRead || r.Type == proto.CmdBlockStatus) {
		return c.send(func() error {
			return c.writeChunk(r.Cookie, proto.ReplyFlagDone, proto.ReplyTypeError, proto.AppendError(nil, code, msg))
		})
	}
	return c.send(func() error { return c.writeSimple(r.Cookie, code) })
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
	var h [proto.SimpleReplySize]byte
	_, err := c.bw.Write(proto.SimpleReply{Error: code, Cookie: cookie}.Append(h[:0]))
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
	var h [proto.StructuredReplySize]byte
	c.bw.Write(proto.StructuredReply{Flags: flags, Type: typ, Cookie: cookie, Length: uint32(n)}.Append(h[:0]))
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
func (c *conn) readLent(r proto.Request, sr SliceReader) {
	off, n := int64(r.Offset), int64(r.Length)
	exts := []extent.Extent{{Offset: off, Length: n}}
	if c.structured && r.Flags&proto.CmdFlagDF == 0 {
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
			return c.writeRead(r.Cookie, exts, func(e extent.Extent) [][]byte { return src.take(e.Length) })
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

func (c *conn) handleRead(r proto.Request) {
	defer c.release(int64(r.Length))
	ctx := c.ctx
	dev := c.exp.Device
	off, n := int64(r.Offset), int64(r.Length)
	if n == 0 {
		if c.structured {
			c.send(func() error { return c.writeChunk(r.Cookie, proto.ReplyFlagDone, proto.ReplyTypeNone, nil) })
		} else {
			c.send(func() error { return c.writeSimple(r.Cookie, 0) })
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
	if c.structured && r.Flags&proto.CmdFlagDF == 0 {
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
		return c.writeRead(r.Cookie, exts, func(e extent.Extent) [][]byte { return [][]byte{buf[e.Offset-off : e.Offset-off+e.Length]} })
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
			flags = proto.ReplyFlagDone
		}
		d := data(e)
		p := binary.BigEndian.AppendUint64(make([]byte, 0, 12), uint64(e.Offset))
		if e.Zero {
			p = binary.BigEndian.AppendUint32(p, uint32(e.Length))
			if err := c.writeChunk(cookie, flags, proto.ReplyTypeOffsetHole, p); err != nil {
				return err
			}
			continue
		}
		if err := c.writeChunk(cookie, flags, proto.ReplyTypeOffsetData, p, d...); err != nil {
			return err
		}
	}
	return nil
}

func (c *conn) handleBlockStatus(r proto.Request) {
	off, n := int64(r.Offset), int64(r.Length)
	exts, err := c.exp.Device.Extents(c.ctx, off, n)
	if err != nil {
		c.fail(r, err)
		return
	}
	limit := maxBlockStatusExtent
	if r.Flags&proto.CmdFlagReqOne != 0 {
		limit = 1
	}
	ds := make([]proto.Descriptor, min(len(exts), limit))
	for i := range ds {
		ds[i].Length = uint32(exts[i].Length) // ≤ request length, a uint32
		if exts[i].Zero {
			ds[i].Flags = proto.StateHole | proto.StateZero
		}
	}
	p := proto.AppendBlockStatus(make([]byte, 0, 4+8*len(ds)), baseAllocationID, ds)
	c.send(func() error { return c.writeChunk(r.Cookie, proto.ReplyFlagDone, proto.ReplyTypeBlockStatus, p) })
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

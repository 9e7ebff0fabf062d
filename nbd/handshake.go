package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// handshakeTimeout bounds the whole option haggling of one connection.
const handshakeTimeout = 60 * time.Second

// errAbort ends a handshake without an error worth logging.
var errAbort = errors.New("client aborted the handshake")

// optReader walks an option's payload with bounds checks.
type optReader struct {
	b   []byte
	bad bool
}

func (r *optReader) u16() uint16 {
	if len(r.b) < 2 {
		r.bad = true
		return 0
	}
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *optReader) u32() uint32 {
	if len(r.b) < 4 {
		r.bad = true
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *optReader) str() string {
	n := r.u32()
	if r.bad || n > maxStringLen || uint64(n) > uint64(len(r.b)) {
		r.bad = true
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// infoRequest is a parsed NBD_OPT_INFO / NBD_OPT_GO payload.
type infoRequest struct {
	name  string
	items []uint16
}

func parseInfoRequest(data []byte) (infoRequest, bool) {
	r := optReader{b: data}
	var q infoRequest
	q.name = r.str()
	n := r.u16()
	if r.bad || len(r.b) != 2*int(n) {
		return q, false
	}
	for range n {
		q.items = append(q.items, r.u16())
	}
	return q, !r.bad
}

// metaRequest is a parsed NBD_OPT_LIST/SET_META_CONTEXT payload.
type metaRequest struct {
	name    string
	queries []string
}

func parseMetaRequest(data []byte) (metaRequest, bool) {
	r := optReader{b: data}
	var q metaRequest
	q.name = r.str()
	n := r.u32()
	if r.bad || uint64(n) > uint64(len(r.b))/4 {
		return q, false
	}
	for range n {
		q.queries = append(q.queries, r.str())
	}
	return q, !r.bad && len(r.b) == 0
}

func (c *conn) writeOptReply(opt, typ uint32, data []byte) error {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], magicOptReply)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	c.bw.Write(h[:])
	c.bw.Write(data)
	return c.bw.Flush()
}

func (c *conn) optError(opt, typ uint32, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > maxErrorMessage {
		msg = msg[:maxErrorMessage]
	}
	return c.writeOptReply(opt, typ, []byte(msg))
}

// handshake runs the fixed newstyle negotiation. On success with an export
// chosen, c.exp is set and transmission may begin; a nil c.exp with a nil
// error means the client ended the session (ABORT, or gone).
func (c *conn) handshake() error {
	c.raw.SetDeadline(time.Now().Add(handshakeTimeout))
	defer func() {
		if !c.stopping.Load() {
			c.raw.SetDeadline(time.Time{})
		}
	}()
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicInit)
	binary.BigEndian.PutUint64(hello[8:], magicOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	c.bw.Write(hello[:])
	if err := c.bw.Flush(); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return fmt.Errorf("read client flags: %w", err)
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^(clientFixed|clientNoZeroes) != 0 {
		return fmt.Errorf("client sent unknown flags %#x", clientFlags)
	}
	noZeroes := clientFlags&clientNoZeroes != 0

	for {
		var h [16]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read option: %w", err)
		}
		if binary.BigEndian.Uint64(h[0:]) != magicOpt {
			return errors.New("bad option magic")
		}
		opt := binary.BigEndian.Uint32(h[8:])
		n := binary.BigEndian.Uint32(h[12:])
		if n > maxOptionLen {
			if opt == optExportName {
				return fmt.Errorf("export name of %d bytes", n)
			}
			if _, err := io.CopyN(io.Discard, c.br, int64(n)); err != nil {
				return err
			}
			if err := c.optError(opt, repErrTooBig, "option of %d bytes is too long", n); err != nil {
				return err
			}
			continue
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return fmt.Errorf("read option %d: %w", opt, err)
		}
		if c.s.RequireTLS && !c.tls && opt != optStartTLS && opt != optAbort {
			if opt == optExportName {
				return errors.New("client chose an export without TLS, which this server requires")
			}
			if err := c.optError(opt, repErrTLSReqd, "this server requires TLS (STARTTLS)"); err != nil {
				return err
			}
			continue
		}
		if c.stopping.Load() && opt != optAbort {
			if opt == optExportName {
				return errStopped
			}
			if err := c.optError(opt, repErrShutdown, "server is shutting down"); err != nil {
				return err
			}
			continue
		}
		done, err := c.option(opt, data, noZeroes)
		if err != nil || done {
			if errors.Is(err, errAbort) {
				return nil
			}
			return err
		}
	}
}

// option handles one option; done means the handshake is over.
func (c *conn) option(opt uint32, data []byte, noZeroes bool) (done bool, err error) {
	ctx := c.ctx
	switch opt {
	case optExportName:
		exp, err := c.s.Catalog.Open(ctx, string(data))
		if err != nil {
			return true, fmt.Errorf("export %q: %w", data, err)
		}
		c.setExport(exp, string(data))
		var b [10 + 124]byte
		binary.BigEndian.PutUint64(b[0:], uint64(exp.Device.Size()))
		binary.BigEndian.PutUint16(b[8:], c.flags)
		out := b[:]
		if noZeroes {
			out = b[:10]
		}
		c.bw.Write(out)
		return true, c.bw.Flush()

	case optAbort:
		c.writeOptReply(opt, repAck, nil)
		return true, errAbort

	case optList:
		if len(data) != 0 {
			return false, c.optError(opt, repErrInvalid, "LIST takes no data")
		}
		list, err := c.s.Catalog.List(ctx)
		if err != nil {
			c.log.Error("list exports", "err", err)
			return false, c.optError(opt, repErrPolicy, "cannot list exports: %v", err)
		}
		for _, e := range list {
			b := make([]byte, 4, 4+len(e.Name)+len(e.Description))
			binary.BigEndian.PutUint32(b, uint32(len(e.Name)))
			b = append(append(b, e.Name...), e.Description...)
			if err := c.writeOptReply(opt, repServer, b); err != nil {
				return false, err
			}
		}
		return false, c.writeOptReply(opt, repAck, nil)

	case optStartTLS:
		switch {
		case c.s.TLSConfig == nil:
			return false, c.optError(opt, repErrUnsup, "TLS is not configured on this server")
		case c.tls:
			return false, c.optError(opt, repErrInvalid, "TLS is already active")
		case len(data) != 0:
			return false, c.optError(opt, repErrInvalid, "STARTTLS takes no data")
		}
		if err := c.writeOptReply(opt, repAck, nil); err != nil {
			return false, err
		}
		if c.br.Buffered() != 0 {
			return true, errors.New("client sent data before the TLS handshake")
		}
		tc := tls.Server(c.nc, c.s.TLSConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			return true, fmt.Errorf("TLS handshake: %w", err)
		}
		c.nc = tc
		c.br = bufio.NewReaderSize(tc, 64<<10)
		c.bw = bufio.NewWriterSize(tc, 64<<10)
		c.tls = true
		c.structured = false // negotiation state does not survive STARTTLS
		c.metaExport = nil
		return false, nil

	case optInfo, optGo:
		q, ok := parseInfoRequest(data)
		if !ok {
			return false, c.optError(opt, repErrInvalid, "malformed INFO/GO request")
		}
		exp, err := c.s.Catalog.Open(ctx, q.name)
		if err != nil {
			if errorsIsUnknown(err) {
				return false, c.optError(opt, repErrUnknown, "%v", err)
			}
			c.log.Error("open export", "export", q.name, "err", err)
			return false, c.optError(opt, repErrPolicy, "cannot open export %q: %v", q.name, err)
		}
		flags := c.transmissionFlags(exp)
		if err := c.sendInfo(opt, exp, q, flags); err != nil {
			exp.Close()
			return false, err
		}
		if err := c.writeOptReply(opt, repAck, nil); err != nil {
			exp.Close()
			return false, err
		}
		if opt == optInfo {
			return false, exp.Close()
		}
		c.setExport(exp, q.name)
		return true, nil

	case optStructured:
		if len(data) != 0 {
			return false, c.optError(opt, repErrInvalid, "STRUCTURED_REPLY takes no data")
		}
		c.structured = true
		return false, c.writeOptReply(opt, repAck, nil)

	case optListMetaCtx, optSetMetaCtx:
		if !c.structured {
			return false, c.optError(opt, repErrInvalid, "negotiate structured replies first")
		}
		q, ok := parseMetaRequest(data)
		if !ok {
			if opt == optSetMetaCtx {
				c.metaExport = nil
			}
			return false, c.optError(opt, repErrInvalid, "malformed meta context request")
		}
		exp, err := c.s.Catalog.Open(ctx, q.name)
		if err != nil {
			if opt == optSetMetaCtx {
				c.metaExport = nil
			}
			if errorsIsUnknown(err) {
				return false, c.optError(opt, repErrUnknown, "%v", err)
			}
			return false, c.optError(opt, repErrPolicy, "cannot open export %q: %v", q.name, err)
		}
		exp.Close()
		match := false
		for _, s := range q.queries {
			if s == baseAllocation || (opt == optListMetaCtx && s == "base:") {
				match = true
			}
		}
		if opt == optListMetaCtx && len(q.queries) == 0 {
			match = true
		}
		if opt == optSetMetaCtx {
			c.metaExport = nil
			if match {
				name := q.name
				c.metaExport = &name
			}
		}
		if match {
			b := binary.BigEndian.AppendUint32(nil, baseAllocationID)
			if opt == optListMetaCtx {
				b = binary.BigEndian.AppendUint32(nil, 0)
			}
			if err := c.writeOptReply(opt, repMetaContext, append(b, baseAllocation...)); err != nil {
				return false, err
			}
		}
		return false, c.writeOptReply(opt, repAck, nil)

	default:
		return false, c.optError(opt, repErrUnsup, "option %d is not supported", opt)
	}
}

func errorsIsUnknown(err error) bool { return errors.Is(err, ErrUnknownExport) }

// setExport enters transmission with exp, chosen under name.
func (c *conn) setExport(exp *Export, name string) {
	c.exp = exp
	c.flags = c.transmissionFlags(exp)
	if c.metaExport != nil && *c.metaExport != name {
		c.metaExport = nil // selected for another export: not active
	}
	c.log = c.log.With("export", exp.Name)
}

func (c *conn) writable() bool {
	_, ok := c.exp.Device.(WritableDevice)
	return ok
}

// transmissionFlags says exactly what exp supports on this connection.
func (c *conn) transmissionFlags(exp *Export) uint16 {
	f := tfHasFlags | tfSendCache
	if _, ok := exp.Device.(WritableDevice); ok {
		f |= tfSendFlush | tfSendFUA | tfSendTrim | tfWriteZeroes | tfFastZero
	} else {
		f |= tfReadOnly
	}
	if exp.MultiConn {
		f |= tfCanMultiConn
	}
	if c.structured {
		f |= tfSendDF
	}
	return f
}

func (c *conn) sendInfo(opt uint32, exp *Export, q infoRequest, flags uint16) error {
	b := binary.BigEndian.AppendUint16(nil, infoExport)
	b = binary.BigEndian.AppendUint64(b, uint64(exp.Device.Size()))
	b = binary.BigEndian.AppendUint16(b, flags)
	if err := c.writeOptReply(opt, repInfo, b); err != nil {
		return err
	}
	// Block sizes are sent whether asked or not (allowed; they are the
	// defaults' superset: any client honouring them is served).
	b = binary.BigEndian.AppendUint16(nil, infoBlockSize)
	b = binary.BigEndian.AppendUint32(b, MinBlockSize)
	b = binary.BigEndian.AppendUint32(b, PreferredBlockSize)
	b = binary.BigEndian.AppendUint32(b, MaxBlockSize)
	if err := c.writeOptReply(opt, repInfo, b); err != nil {
		return err
	}
	for _, it := range q.items {
		switch it {
		case infoName:
			b = binary.BigEndian.AppendUint16(nil, infoName)
			if err := c.writeOptReply(opt, repInfo, append(b, exp.Name...)); err != nil {
				return err
			}
		case infoDescription:
			b = binary.BigEndian.AppendUint16(nil, infoDescription)
			if err := c.writeOptReply(opt, repInfo, append(b, exp.Description...)); err != nil {
				return err
			}
		}
	}
	return nil
}

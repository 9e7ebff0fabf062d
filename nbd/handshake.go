package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/vmvault/vmvault/nbd/proto"
)

// handshakeTimeout bounds the whole option haggling of one connection.
const handshakeTimeout = 60 * time.Second

// baseAllocationID is the id this server gives the base:allocation meta
// context, the only one it offers.
const baseAllocationID = uint32(1)

// errAbort ends a handshake without an error worth logging.
var errAbort = errors.New("client aborted the handshake")

func (c *conn) writeOptReply(opt, typ uint32, data []byte) error {
	var h [proto.OptionReplyHeaderSize]byte
	c.bw.Write(proto.OptionReplyHeader{Option: opt, Type: typ, Length: uint32(len(data))}.Append(h[:0]))
	c.bw.Write(data)
	return c.bw.Flush()
}

func (c *conn) optError(opt, typ uint32, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > proto.MaxString {
		msg = msg[:proto.MaxString]
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
	var hello [proto.GreetingSize]byte
	c.bw.Write(proto.AppendGreeting(hello[:0], proto.FlagFixedNewstyle|proto.FlagNoZeroes))
	if err := c.bw.Flush(); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return fmt.Errorf("read client flags: %w", err)
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^(proto.ClientFlagFixedNewstyle|proto.ClientFlagNoZeroes) != 0 {
		return fmt.Errorf("client sent unknown flags %#x", clientFlags)
	}
	noZeroes := clientFlags&proto.ClientFlagNoZeroes != 0

	for {
		var h [proto.OptionHeaderSize]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read option: %w", err)
		}
		oh, err := proto.ParseOptionHeader(h[:])
		if err != nil {
			return err
		}
		opt, n := oh.Option, oh.Length
		if n > proto.MaxOptionLen {
			if opt == proto.OptExportName {
				return fmt.Errorf("export name of %d bytes", n)
			}
			if _, err := io.CopyN(io.Discard, c.br, int64(n)); err != nil {
				return err
			}
			if err := c.optError(opt, proto.RepErrTooBig, "option of %d bytes is too long", n); err != nil {
				return err
			}
			continue
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return fmt.Errorf("read option %d: %w", opt, err)
		}
		if c.s.RequireTLS && !c.tls && opt != proto.OptStartTLS && opt != proto.OptAbort {
			if opt == proto.OptExportName {
				return errors.New("client chose an export without TLS, which this server requires")
			}
			if err := c.optError(opt, proto.RepErrTLSReqd, "this server requires TLS (STARTTLS)"); err != nil {
				return err
			}
			continue
		}
		if c.stopping.Load() && opt != proto.OptAbort {
			if opt == proto.OptExportName {
				return errStopped
			}
			if err := c.optError(opt, proto.RepErrShutdown, "server is shutting down"); err != nil {
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
	case proto.OptExportName:
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

	case proto.OptAbort:
		c.writeOptReply(opt, proto.RepAck, nil)
		return true, errAbort

	case proto.OptList:
		if len(data) != 0 {
			return false, c.optError(opt, proto.RepErrInvalid, "LIST takes no data")
		}
		list, err := c.s.Catalog.List(ctx)
		if err != nil {
			c.log.Error("list exports", "err", err)
			return false, c.optError(opt, proto.RepErrPolicy, "cannot list exports: %v", err)
		}
		for _, e := range list {
			b := make([]byte, 4, 4+len(e.Name)+len(e.Description))
			binary.BigEndian.PutUint32(b, uint32(len(e.Name)))
			b = append(append(b, e.Name...), e.Description...)
			if err := c.writeOptReply(opt, proto.RepServer, b); err != nil {
				return false, err
			}
		}
		return false, c.writeOptReply(opt, proto.RepAck, nil)

	case proto.OptStartTLS:
		switch {
		case c.s.TLSConfig == nil:
			return false, c.optError(opt, proto.RepErrUnsup, "TLS is not configured on this server")
		case c.tls:
			return false, c.optError(opt, proto.RepErrInvalid, "TLS is already active")
		case len(data) != 0:
			return false, c.optError(opt, proto.RepErrInvalid, "STARTTLS takes no data")
		}
		if err := c.writeOptReply(opt, proto.RepAck, nil); err != nil {
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

	case proto.OptInfo, proto.OptGo:
		q, err := proto.ParseInfoRequest(data)
		if err != nil {
			return false, c.optError(opt, proto.RepErrInvalid, "malformed INFO/GO request")
		}
		exp, err := c.s.Catalog.Open(ctx, q.Name)
		if err != nil {
			if errorsIsUnknown(err) {
				return false, c.optError(opt, proto.RepErrUnknown, "%v", err)
			}
			c.log.Error("open export", "export", q.Name, "err", err)
			return false, c.optError(opt, proto.RepErrPolicy, "cannot open export %q: %v", q.Name, err)
		}
		flags := c.transmissionFlags(exp)
		if err := c.sendInfo(opt, exp, q, flags); err != nil {
			exp.Close()
			return false, err
		}
		if err := c.writeOptReply(opt, proto.RepAck, nil); err != nil {
			exp.Close()
			return false, err
		}
		if opt == proto.OptInfo {
			return false, exp.Close()
		}
		c.setExport(exp, q.Name)
		return true, nil

	case proto.OptStructuredReply:
		if len(data) != 0 {
			return false, c.optError(opt, proto.RepErrInvalid, "STRUCTURED_REPLY takes no data")
		}
		c.structured = true
		return false, c.writeOptReply(opt, proto.RepAck, nil)

	case proto.OptListMetaContext, proto.OptSetMetaContext:
		if !c.structured {
			return false, c.optError(opt, proto.RepErrInvalid, "negotiate structured replies first")
		}
		q, err := proto.ParseMetaRequest(data)
		if err != nil {
			if opt == proto.OptSetMetaContext {
				c.metaExport = nil
			}
			return false, c.optError(opt, proto.RepErrInvalid, "malformed meta context request")
		}
		exp, err := c.s.Catalog.Open(ctx, q.Name)
		if err != nil {
			if opt == proto.OptSetMetaContext {
				c.metaExport = nil
			}
			if errorsIsUnknown(err) {
				return false, c.optError(opt, proto.RepErrUnknown, "%v", err)
			}
			return false, c.optError(opt, proto.RepErrPolicy, "cannot open export %q: %v", q.Name, err)
		}
		exp.Close()
		match := false
		for _, s := range q.Queries {
			if s == proto.MetaBaseAllocation || (opt == proto.OptListMetaContext && s == "base:") {
				match = true
			}
		}
		if opt == proto.OptListMetaContext && len(q.Queries) == 0 {
			match = true
		}
		if opt == proto.OptSetMetaContext {
			c.metaExport = nil
			if match {
				name := q.Name
				c.metaExport = &name
			}
		}
		if match {
			id := baseAllocationID
			if opt == proto.OptListMetaContext {
				id = 0 // LIST gives no ids
			}
			if err := c.writeOptReply(opt, proto.RepMetaContext, proto.AppendMetaContext(nil, id, proto.MetaBaseAllocation)); err != nil {
				return false, err
			}
		}
		return false, c.writeOptReply(opt, proto.RepAck, nil)

	default:
		return false, c.optError(opt, proto.RepErrUnsup, "option %d is not supported", opt)
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
	f := proto.FlagHasFlags | proto.FlagSendCache
	if _, ok := exp.Device.(WritableDevice); ok {
		f |= proto.FlagSendFlush | proto.FlagSendFUA | proto.FlagSendTrim | proto.FlagSendWriteZeroes | proto.FlagSendFastZero
	} else {
		f |= proto.FlagReadOnly
	}
	if exp.MultiConn {
		f |= proto.FlagCanMultiConn
	}
	if c.structured {
		f |= proto.FlagSendDF
	}
	return f
}

func (c *conn) sendInfo(opt uint32, exp *Export, q proto.InfoRequest, flags uint16) error {
	b := proto.AppendInfoExport(nil, uint64(exp.Device.Size()), flags)
	if err := c.writeOptReply(opt, proto.RepInfo, b); err != nil {
		return err
	}
	// Block sizes are sent whether asked or not (allowed; they are the
	// defaults' superset: any client honouring them is served).
	b = proto.BlockSizes{Min: MinBlockSize, Preferred: PreferredBlockSize, Max: MaxBlockSize}.Append(nil)
	if err := c.writeOptReply(opt, proto.RepInfo, b); err != nil {
		return err
	}
	for _, it := range q.Items {
		switch it {
		case proto.InfoName:
			b = binary.BigEndian.AppendUint16(nil, proto.InfoName)
			if err := c.writeOptReply(opt, proto.RepInfo, append(b, exp.Name...)); err != nil {
				return err
			}
		case proto.InfoDescription:
			b = binary.BigEndian.AppendUint16(nil, proto.InfoDescription)
			if err := c.writeOptReply(opt, proto.RepInfo, append(b, exp.Description...)); err != nil {
				return err
			}
		}
	}
	return nil
}

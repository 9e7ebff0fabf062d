// Package proto is the wire format of the Network Block Device protocol
// (NetworkBlockDevice/nbd doc/proto.md) as vmvault's server (package nbd)
// and client (nbd/client) speak it: the magics; the handshake, option,
// reply, info, transmission-flag, command, command-flag and error numbers;
// the meta context names and status bits; and encoders and decoders of
// the fixed headers and the option and reply payloads both sides exchange.
// It plays the part of nbdkit's nbd-protocol.h; go-nbd's protocol package
// supplies the values it defines.
//
// Invariants:
//   - Every wire value either side uses is defined here and nowhere else.
//   - Integers are big-endian on the wire.
//   - Decoders take the bytes already read and never read past them; a
//     count or length found in the input is checked against the bytes
//     that hold it before anything is allocated by it. Malformed input
//     is an error, never a panic.
//   - Encoders append to a caller's slice (so headers can be built on the
//     stack) and write exactly what the matching decoder accepts.
package proto

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Magics.
const (
	MagicInit            = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	MagicOption          = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	MagicOptionReply     = protocol.NEGOTIATION_MAGIC_REPLY
	MagicRequest         = protocol.TRANSMISSION_MAGIC_REQUEST
	MagicSimpleReply     = protocol.TRANSMISSION_MAGIC_REPLY
	MagicStructuredReply = uint32(0x668e33ef)
)

// Handshake flags (sent by the server in the greeting) and client flags
// (the client's answer).
const (
	FlagFixedNewstyle       = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	FlagNoZeroes            = uint16(1 << 1)
	ClientFlagFixedNewstyle = uint32(1 << 0)
	ClientFlagNoZeroes      = uint32(1 << 1)
)

// Options.
const (
	OptExportName      = uint32(1)
	OptAbort           = protocol.NEGOTIATION_ID_OPTION_ABORT
	OptList            = protocol.NEGOTIATION_ID_OPTION_LIST
	OptStartTLS        = uint32(5)
	OptInfo            = protocol.NEGOTIATION_ID_OPTION_INFO
	OptGo              = protocol.NEGOTIATION_ID_OPTION_GO
	OptStructuredReply = uint32(8)
	OptListMetaContext = uint32(9)
	OptSetMetaContext  = uint32(10)
	OptExtendedHeaders = uint32(11)
)

// Option reply types. Error replies have RepFlagError set.
const (
	RepAck         = protocol.NEGOTIATION_TYPE_REPLY_ACK
	RepServer      = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	RepInfo        = protocol.NEGOTIATION_TYPE_REPLY_INFO
	RepMetaContext = uint32(4)
	RepFlagError   = uint32(1 << 31)
	RepErrUnsup    = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	RepErrPolicy   = RepFlagError | 2
	RepErrInvalid  = RepFlagError | 3
	RepErrTLSReqd  = RepFlagError | 5
	RepErrUnknown  = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	RepErrShutdown = RepFlagError | 7
	RepErrTooBig   = RepFlagError | 9
)

// Info types (NBD_OPT_INFO and NBD_OPT_GO).
const (
	InfoExport      = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	InfoName        = protocol.NEGOTIATION_TYPE_INFO_NAME
	InfoDescription = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	InfoBlockSize   = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE
)

// Transmission flags (what an export supports).
const (
	FlagHasFlags        = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	FlagReadOnly        = uint16(1 << 1)
	FlagSendFlush       = uint16(1 << 2)
	FlagSendFUA         = uint16(1 << 3)
	FlagSendTrim        = uint16(1 << 5)
	FlagSendWriteZeroes = uint16(1 << 6)
	FlagSendDF          = uint16(1 << 7)
	FlagCanMultiConn    = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
	FlagSendCache       = uint16(1 << 10)
	FlagSendFastZero    = uint16(1 << 11)
)

// Commands.
const (
	CmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	CmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	CmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	CmdFlush       = uint16(3)
	CmdTrim        = uint16(4)
	CmdCache       = uint16(5)
	CmdWriteZeroes = uint16(6)
	CmdBlockStatus = uint16(7)
)

// Command flags.
const (
	CmdFlagFUA      = uint16(1 << 0)
	CmdFlagNoHole   = uint16(1 << 1)
	CmdFlagDF       = uint16(1 << 2)
	CmdFlagReqOne   = uint16(1 << 3)
	CmdFlagFastZero = uint16(1 << 4)
)

// Structured reply flags and chunk types. Error chunks have
// ReplyTypeFlagError set.
const (
	ReplyFlagDone        = uint16(1 << 0)
	ReplyTypeNone        = uint16(0)
	ReplyTypeOffsetData  = uint16(1)
	ReplyTypeOffsetHole  = uint16(2)
	ReplyTypeBlockStatus = uint16(5)
	ReplyTypeFlagError   = uint16(1 << 15)
	ReplyTypeError       = ReplyTypeFlagError | 1
	ReplyTypeErrorOffset = ReplyTypeFlagError | 2
)

// Meta contexts and the status bits of their block descriptors. What a
// descriptor's flags mean depends on its context: base:allocation sets
// StateHole and StateZero; qemu:dirty-bitmap:NAME (qemu-nbd -B NAME,
// qemu-storage-daemon's NBD export with a bitmap) sets StateDirty.
const (
	MetaBaseAllocation  = "base:allocation"
	MetaQemuDirtyBitmap = "qemu:dirty-bitmap:" // followed by the bitmap's name
	StateHole           = uint32(1 << 0)       // base:allocation: not allocated
	StateZero           = uint32(1 << 1)       // base:allocation: reads as zeroes
	StateDirty          = uint32(1 << 0)       // qemu:dirty-bitmap: changed
)

// Error values: errno numbers as the protocol fixes them (Linux's).
const (
	EPERM     = protocol.TRANSMISSION_ERROR_EPERM
	EIO       = uint32(5)
	ENOMEM    = uint32(12)
	EINVAL    = protocol.TRANSMISSION_ERROR_EINVAL
	ENOSPC    = uint32(28)
	EOVERFLOW = uint32(75)
	ENOTSUP   = uint32(95)
	ESHUTDOWN = uint32(108)
)

// Sizes and limits.
const (
	GreetingSize          = 18 // NBDMAGIC, IHAVEOPT, handshake flags
	OptionHeaderSize      = 16
	OptionReplyHeaderSize = 20
	RequestSize           = 28
	SimpleReplySize       = 16
	StructuredReplySize   = 20
	// MaxString is the longest string (export name, description, meta
	// context query, error message) the protocol allows.
	MaxString = 4096
	// MaxOptionLen bounds the payload of an option or option reply that
	// vmvault's server and client accept (a limit of theirs, not the
	// protocol's; real option payloads are a few strings long).
	MaxOptionLen = 64 << 10
)

var be = binary.BigEndian

// AppendGreeting appends the server's first message.
func AppendGreeting(b []byte, flags uint16) []byte {
	b = be.AppendUint64(b, MagicInit)
	b = be.AppendUint64(b, MagicOption)
	return be.AppendUint16(b, flags)
}

// ParseGreeting decodes the server's first message (GreetingSize bytes)
// and returns its handshake flags.
func ParseGreeting(h []byte) (uint16, error) {
	if len(h) != GreetingSize {
		return 0, fmt.Errorf("greeting of %d bytes", len(h))
	}
	if be.Uint64(h) != MagicInit || be.Uint64(h[8:]) != MagicOption {
		return 0, errors.New("not an NBD newstyle server")
	}
	return be.Uint16(h[16:]), nil
}

// OptionHeader starts every option the client sends; Length payload bytes
// follow it.
type OptionHeader struct {
	Option, Length uint32
}

// Append appends the header.
func (h OptionHeader) Append(b []byte) []byte {
	b = be.AppendUint64(b, MagicOption)
	b = be.AppendUint32(b, h.Option)
	return be.AppendUint32(b, h.Length)
}

// ParseOptionHeader decodes an option header (OptionHeaderSize bytes).
func ParseOptionHeader(h []byte) (OptionHeader, error) {
	if len(h) != OptionHeaderSize {
		return OptionHeader{}, fmt.Errorf("option header of %d bytes", len(h))
	}
	if m := be.Uint64(h); m != MagicOption {
		return OptionHeader{}, fmt.Errorf("bad option magic %#x", m)
	}
	return OptionHeader{Option: be.Uint32(h[8:]), Length: be.Uint32(h[12:])}, nil
}

// AppendOption appends a whole option: header and payload.
func AppendOption(b []byte, opt uint32, data []byte) []byte {
	b = OptionHeader{Option: opt, Length: uint32(len(data))}.Append(b)
	return append(b, data...)
}

// OptionReplyHeader starts every option reply; Length payload bytes
// follow it.
type OptionReplyHeader struct {
	Option, Type, Length uint32
}

// Append appends the header.
func (h OptionReplyHeader) Append(b []byte) []byte {
	b = be.AppendUint64(b, MagicOptionReply)
	b = be.AppendUint32(b, h.Option)
	b = be.AppendUint32(b, h.Type)
	return be.AppendUint32(b, h.Length)
}

// ParseOptionReplyHeader decodes an option reply header
// (OptionReplyHeaderSize bytes).
func ParseOptionReplyHeader(h []byte) (OptionReplyHeader, error) {
	if len(h) != OptionReplyHeaderSize {
		return OptionReplyHeader{}, fmt.Errorf("option reply header of %d bytes", len(h))
	}
	if m := be.Uint64(h); m != MagicOptionReply {
		return OptionReplyHeader{}, fmt.Errorf("bad option reply magic %#x", m)
	}
	return OptionReplyHeader{Option: be.Uint32(h[8:]), Type: be.Uint32(h[12:]), Length: be.Uint32(h[16:])}, nil
}

// reader walks a payload with bounds checks; after the first failure
// every read returns zero and bad stays set.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) u16() uint16 {
	if r.bad || len(r.b) < 2 {
		r.bad = true
		return 0
	}
	v := be.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *reader) u32() uint32 {
	if r.bad || len(r.b) < 4 {
		r.bad = true
		return 0
	}
	v := be.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

// str reads a 32-bit length and that many bytes (at most MaxString).
func (r *reader) str() string {
	n := r.u32()
	if r.bad || n > MaxString || uint64(n) > uint64(len(r.b)) {
		r.bad = true
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func appendString(b []byte, s string) []byte {
	return append(be.AppendUint32(b, uint32(len(s))), s...)
}

// InfoRequest is the payload of NBD_OPT_INFO and NBD_OPT_GO: an export
// name and the info types the client asks for.
type InfoRequest struct {
	Name  string
	Items []uint16
}

// Append appends the payload.
func (q InfoRequest) Append(b []byte) []byte {
	b = appendString(b, q.Name)
	b = be.AppendUint16(b, uint16(len(q.Items)))
	for _, it := range q.Items {
		b = be.AppendUint16(b, it)
	}
	return b
}

// ParseInfoRequest decodes an NBD_OPT_INFO/GO payload; it must be
// exactly one request long.
func ParseInfoRequest(data []byte) (InfoRequest, error) {
	r := reader{b: data}
	var q InfoRequest
	q.Name = r.str()
	n := r.u16()
	if r.bad || len(r.b) != 2*int(n) {
		return InfoRequest{}, errors.New("malformed INFO/GO request")
	}
	for range n {
		q.Items = append(q.Items, r.u16())
	}
	return q, nil
}

// MetaRequest is the payload of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT: an export name and meta context queries.
type MetaRequest struct {
	Name    string
	Queries []string
}

// Append appends the payload.
func (q MetaRequest) Append(b []byte) []byte {
	b = appendString(b, q.Name)
	b = be.AppendUint32(b, uint32(len(q.Queries)))
	for _, s := range q.Queries {
		b = appendString(b, s)
	}
	return b
}

// ParseMetaRequest decodes a LIST/SET_META_CONTEXT payload; it must be
// exactly one request long.
func ParseMetaRequest(data []byte) (MetaRequest, error) {
	r := reader{b: data}
	var q MetaRequest
	q.Name = r.str()
	n := r.u32()
	if r.bad || uint64(n) > uint64(len(r.b))/4 {
		return MetaRequest{}, errors.New("malformed meta context request")
	}
	for range n {
		q.Queries = append(q.Queries, r.str())
	}
	if r.bad || len(r.b) != 0 {
		return MetaRequest{}, errors.New("malformed meta context request")
	}
	return q, nil
}

// AppendMetaContext appends an NBD_REP_META_CONTEXT payload: the id the
// server gives the context, and its name.
func AppendMetaContext(b []byte, id uint32, name string) []byte {
	return append(be.AppendUint32(b, id), name...)
}

// ParseMetaContext decodes an NBD_REP_META_CONTEXT payload.
func ParseMetaContext(data []byte) (id uint32, name string, err error) {
	if len(data) < 4 {
		return 0, "", fmt.Errorf("meta context reply of %d bytes", len(data))
	}
	return be.Uint32(data), string(data[4:]), nil
}

// InfoType returns the type of an NBD_REP_INFO payload.
func InfoType(data []byte) (uint16, error) {
	if len(data) < 2 {
		return 0, fmt.Errorf("info reply of %d bytes", len(data))
	}
	return be.Uint16(data), nil
}

// AppendInfoExport appends an NBD_INFO_EXPORT payload (type included).
func AppendInfoExport(b []byte, size uint64, flags uint16) []byte {
	b = be.AppendUint16(b, InfoExport)
	b = be.AppendUint64(b, size)
	return be.AppendUint16(b, flags)
}

// ParseInfoExport decodes an NBD_INFO_EXPORT payload (at least 12 bytes;
// the type is not checked, see InfoType).
func ParseInfoExport(data []byte) (size uint64, flags uint16, err error) {
	if len(data) < 12 {
		return 0, 0, fmt.Errorf("export info of %d bytes", len(data))
	}
	return be.Uint64(data[2:]), be.Uint16(data[10:]), nil
}

// BlockSizes are an export's block size constraints (NBD_INFO_BLOCK_SIZE).
type BlockSizes struct {
	Min, Preferred, Max uint32
}

// Append appends an NBD_INFO_BLOCK_SIZE payload (type included).
func (s BlockSizes) Append(b []byte) []byte {
	b = be.AppendUint16(b, InfoBlockSize)
	b = be.AppendUint32(b, s.Min)
	b = be.AppendUint32(b, s.Preferred)
	return be.AppendUint32(b, s.Max)
}

// ParseInfoBlockSize decodes an NBD_INFO_BLOCK_SIZE payload (at least 14
// bytes; the type is not checked, see InfoType).
func ParseInfoBlockSize(data []byte) (BlockSizes, error) {
	if len(data) < 14 {
		return BlockSizes{}, fmt.Errorf("block size info of %d bytes", len(data))
	}
	return BlockSizes{Min: be.Uint32(data[2:]), Preferred: be.Uint32(data[6:]), Max: be.Uint32(data[10:])}, nil
}

// Request is a transmission request header; a write's Length payload
// bytes follow it.
type Request struct {
	Flags, Type    uint16
	Cookie, Offset uint64
	Length         uint32
}

// Append appends the header.
func (r Request) Append(b []byte) []byte {
	b = be.AppendUint32(b, MagicRequest)
	b = be.AppendUint16(b, r.Flags)
	b = be.AppendUint16(b, r.Type)
	b = be.AppendUint64(b, r.Cookie)
	b = be.AppendUint64(b, r.Offset)
	return be.AppendUint32(b, r.Length)
}

// ParseRequest decodes a request header (RequestSize bytes).
func ParseRequest(h []byte) (Request, error) {
	if len(h) != RequestSize {
		return Request{}, fmt.Errorf("request header of %d bytes", len(h))
	}
	if m := be.Uint32(h); m != MagicRequest {
		return Request{}, fmt.Errorf("bad request magic %#x", m)
	}
	return Request{
		Flags: be.Uint16(h[4:]), Type: be.Uint16(h[6:]),
		Cookie: be.Uint64(h[8:]), Offset: be.Uint64(h[16:]), Length: be.Uint32(h[24:]),
	}, nil
}

// SimpleReply is a simple reply header; a successful read's data follows
// it.
type SimpleReply struct {
	Error  uint32
	Cookie uint64
}

// Append appends the header.
func (r SimpleReply) Append(b []byte) []byte {
	b = be.AppendUint32(b, MagicSimpleReply)
	b = be.AppendUint32(b, r.Error)
	return be.AppendUint64(b, r.Cookie)
}

// ParseSimpleReply decodes a simple reply header (SimpleReplySize bytes).
func ParseSimpleReply(h []byte) (SimpleReply, error) {
	if len(h) != SimpleReplySize {
		return SimpleReply{}, fmt.Errorf("simple reply header of %d bytes", len(h))
	}
	if m := be.Uint32(h); m != MagicSimpleReply {
		return SimpleReply{}, fmt.Errorf("bad simple reply magic %#x", m)
	}
	return SimpleReply{Error: be.Uint32(h[4:]), Cookie: be.Uint64(h[8:])}, nil
}

// StructuredReply is a structured reply chunk header; Length payload
// bytes follow it.
type StructuredReply struct {
	Flags, Type uint16
	Cookie      uint64
	Length      uint32
}

// Append appends the header.
func (r StructuredReply) Append(b []byte) []byte {
	b = be.AppendUint32(b, MagicStructuredReply)
	b = be.AppendUint16(b, r.Flags)
	b = be.AppendUint16(b, r.Type)
	b = be.AppendUint64(b, r.Cookie)
	return be.AppendUint32(b, r.Length)
}

// ParseStructuredReply decodes a structured reply chunk header
// (StructuredReplySize bytes).
func ParseStructuredReply(h []byte) (StructuredReply, error) {
	if len(h) != StructuredReplySize {
		return StructuredReply{}, fmt.Errorf("structured reply header of %d bytes", len(h))
	}
	if m := be.Uint32(h); m != MagicStructuredReply {
		return StructuredReply{}, fmt.Errorf("bad structured reply magic %#x", m)
	}
	return StructuredReply{Flags: be.Uint16(h[4:]), Type: be.Uint16(h[6:]), Cookie: be.Uint64(h[8:]), Length: be.Uint32(h[16:])}, nil
}

// AppendError appends the payload of an error chunk
// (ReplyTypeError): the error value and a message, cut to MaxString
// bytes.
func AppendError(b []byte, code uint32, msg string) []byte {
	if len(msg) > MaxString {
		msg = msg[:MaxString]
	}
	b = be.AppendUint32(b, code)
	b = be.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// ParseError decodes the payload of an error chunk (any type with
// ReplyTypeFlagError set): the error value and the message, which is ""
// when its length runs past the payload.
func ParseError(data []byte) (code uint32, msg string, err error) {
	if len(data) < 6 {
		return 0, "", errors.New("short error chunk")
	}
	code = be.Uint32(data)
	if n := int(be.Uint16(data[4:])); 6+n <= len(data) {
		msg = string(data[6 : 6+n])
	}
	return code, msg, nil
}

// Descriptor is one block descriptor of a BLOCK_STATUS chunk: Length
// bytes with status Flags (their meaning depends on the meta context).
type Descriptor struct {
	Length, Flags uint32
}

// AppendBlockStatus appends the payload of a BLOCK_STATUS chunk for the
// meta context id.
func AppendBlockStatus(b []byte, id uint32, ds []Descriptor) []byte {
	b = be.AppendUint32(b, id)
	for _, d := range ds {
		b = be.AppendUint32(b, d.Length)
		b = be.AppendUint32(b, d.Flags)
	}
	return b
}

// BlockStatus is a decoded BLOCK_STATUS chunk payload: its meta context
// id and its descriptors, read in place.
type BlockStatus struct {
	Context uint32
	raw     []byte
}

// ParseBlockStatus decodes a BLOCK_STATUS chunk payload: a context id and
// whole descriptors.
func ParseBlockStatus(data []byte) (BlockStatus, error) {
	if len(data) < 4 || (len(data)-4)%8 != 0 {
		return BlockStatus{}, fmt.Errorf("block status chunk of %d bytes", len(data))
	}
	return BlockStatus{Context: be.Uint32(data), raw: data[4:]}, nil
}

// Len is the number of descriptors.
func (s BlockStatus) Len() int { return len(s.raw) / 8 }

// Descriptor returns descriptor i (0 <= i < Len).
func (s BlockStatus) Descriptor(i int) Descriptor {
	return Descriptor{Length: be.Uint32(s.raw[8*i:]), Flags: be.Uint32(s.raw[8*i+4:])}
}

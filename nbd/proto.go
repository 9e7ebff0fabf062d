package nbd

import (
	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
// go-nbd's protocol package provides the magics and the handful of option,
// reply and info values its own server uses; the rest of the protocol
// (structured replies, meta contexts, STARTTLS, TRIM, WRITE_ZEROES, CACHE,
// BLOCK_STATUS, the error values) is defined here.
const (
	magicInit        = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	magicOpt         = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	magicOptReply    = protocol.NEGOTIATION_MAGIC_REPLY
	magicRequest     = protocol.TRANSMISSION_MAGIC_REQUEST
	magicSimpleReply = protocol.TRANSMISSION_MAGIC_REPLY
	magicStructReply = uint32(0x668e33ef)

	// Handshake flags (server) and client flags.
	flagFixedNewstyle = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	flagNoZeroes      = uint16(1 << 1)
	clientFixed       = uint32(1 << 0)
	clientNoZeroes    = uint32(1 << 1)

	// Options.
	optExportName     = uint32(1)
	optAbort          = protocol.NEGOTIATION_ID_OPTION_ABORT
	optList           = protocol.NEGOTIATION_ID_OPTION_LIST
	optStartTLS       = uint32(5)
	optInfo           = protocol.NEGOTIATION_ID_OPTION_INFO
	optGo             = protocol.NEGOTIATION_ID_OPTION_GO
	optStructured     = uint32(8)
	optListMetaCtx    = uint32(9)
	optSetMetaCtx     = uint32(10)
	optExtendedHeader = uint32(11)

	// Option replies.
	repAck          = protocol.NEGOTIATION_TYPE_REPLY_ACK
	repServer       = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	repInfo         = protocol.NEGOTIATION_TYPE_REPLY_INFO
	repMetaContext  = uint32(4)
	repErrUnsup     = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrPolicy    = uint32(1<<31 | 2)
	repErrInvalid   = uint32(1<<31 | 3)
	repErrTLSReqd   = uint32(1<<31 | 5)
	repErrUnknown   = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	repErrShutdown  = uint32(1<<31 | 7)
	repErrTooBig    = uint32(1<<31 | 9)
	infoExport      = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	infoName        = protocol.NEGOTIATION_TYPE_INFO_NAME
	infoDescription = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	infoBlockSize   = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE

	// Transmission flags.
	tfHasFlags     = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	tfReadOnly     = uint16(1 << 1)
	tfSendFlush    = uint16(1 << 2)
	tfSendFUA      = uint16(1 << 3)
	tfSendTrim     = uint16(1 << 5)
	tfWriteZeroes  = uint16(1 << 6)
	tfSendDF       = uint16(1 << 7)
	tfCanMultiConn = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
	tfSendCache    = uint16(1 << 10)
	tfFastZero     = uint16(1 << 11)

	// Commands.
	cmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	cmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	cmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	cmdFlush       = uint16(3)
	cmdTrim        = uint16(4)
	cmdCache       = uint16(5)
	cmdWriteZeroes = uint16(6)
	cmdBlockStatus = uint16(7)

	// Command flags.
	cmdFlagFUA      = uint16(1 << 0)
	cmdFlagNoHole   = uint16(1 << 1)
	cmdFlagDF       = uint16(1 << 2)
	cmdFlagReqOne   = uint16(1 << 3)
	cmdFlagFastZero = uint16(1 << 4)

	// Structured reply flags and types.
	replyFlagDone        = uint16(1 << 0)
	replyNone            = uint16(0)
	replyOffsetData      = uint16(1)
	replyOffsetHole      = uint16(2)
	replyBlockStatus     = uint16(5)
	replyError           = uint16(1<<15 | 1)
	replyErrorOffset     = uint16(1<<15 | 2)
	maxErrorMessage      = 4096
	baseAllocation       = "base:allocation"
	baseAllocationID     = uint32(1)
	stateHole            = uint32(1 << 0)
	stateZero            = uint32(1 << 1)
	maxStringLen         = 4096 // names and queries, per the protocol's string limit
	maxOptionLen         = 64 << 10
	maxBlockStatusExtent = 1 << 14 // descriptors per BLOCK_STATUS reply

	// Error values (errno numbers as the protocol fixes them).
	errPerm      = protocol.TRANSMISSION_ERROR_EPERM
	errIO        = uint32(5)
	errNoMem     = uint32(12)
	errInval     = protocol.TRANSMISSION_ERROR_EINVAL
	errNoSpc     = uint32(28)
	errOverflow  = uint32(75)
	errNotSup    = uint32(95)
	errShutdown  = uint32(108)
	requestSize  = 28
	simpleHdrLen = 16
	structHdrLen = 20
)

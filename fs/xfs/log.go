package xfs

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// The internal log is a circular sequence of 512-byte basic blocks (BBs).
// Every BB written in pass (cycle) C carries C in its first word — a log
// record header carries its magic number there and the cycle in the next
// word, and keeps the words it displaced from its data BBs. Pass C writes
// from BB 0 upwards, so a log whose writes completed reads C up to the
// head and C-1 from there to the end (C-1 is 0 where mkfs left the log
// unwritten). Each record header names the log's tail: the oldest record
// whose changes may not be in place yet; mounting replays the records
// from the tail to the head.
const (
	bbSize         = 512
	logMagic       = 0xFEEDBABE // xlog_rec_header.h_magicno
	logHeaderCycle = 32 << 10   // XLOG_HEADER_CYCLE_SIZE: bytes one header BB covers
	logScanBytes   = 1 << 20
	maxRecordBytes = 256 << 10 // the largest record (in-core log buffer) XFS writes
	recHeaderSize  = 328       // sizeof(xlog_rec_header), the part its CRC covers
	extHeaderSize  = 256       // sizeof(xlog_rec_ext_header)
	sbGeometryEnd  = 100       // superblock bytes holding dblocks, logstart, agcount, logblocks
	maxLogBytes    = 2 << 30   // the largest internal log XFS makes

	// xlog_op_header.oh_flags
	opStart    = 0x01
	opCommit   = 0x02
	opContinue = 0x04
	opWasCont  = 0x08
	opUnmount  = 0x20

	transMagic = 0x5452414e // "TRAN": xfs_trans_header.th_magic
	itemBuf    = 0x123c     // XFS_LI_BUF: xfs_buf_log_format.blf_type
)

// logRecord is a record header's place in the log.
type logRecord struct {
	bb    int64
	cycle uint32
}

// LogClean reports (nil) whether replaying the internal log would change
// nothing the free-space btrees say: its writes completed (every BB before
// the head carries the newest cycle, every BB after it the one before)
// and either its last record is an unmount record (the filesystem was
// unmounted) or the records from its tail to its head log nothing but the
// superblock (the log is covered, as the kernel leaves a frozen or idle
// filesystem). Anything else — a log on another device, a torn or
// unreadable log, any other logged change — is an error saying why.
func (f *FS) LogClean(ctx context.Context) error {
	if f.logStart == 0 {
		return fmt.Errorf("xfs: the log is on another device and cannot be checked")
	}
	logBytes := int64(f.logBlocks) * f.blockSize
	if f.logBlocks == 0 || logBytes > maxLogBytes || logBytes%bbSize != 0 {
		return corrupt("log of %d blocks", f.logBlocks)
	}
	lin, err := f.fsbToLinear(f.logStart, f.logBlocks)
	if err != nil {
		return fmt.Errorf("xfs: log: %w", err)
	}
	l := &xlog{f: f, base: int64(lin) * f.blockSize, n: logBytes / bbSize, head: -1}
	if err := l.scan(ctx); err != nil {
		return err
	}
	last := -1
	for i, r := range l.records {
		if r.bb < l.head {
			last = i
		}
	}
	if last < 0 {
		return fmt.Errorf("xfs: no log record before the log's head (BB %d)", l.head)
	}
	lastRec, err := l.record(l.records[last])
	if err != nil {
		return err
	}
	if lastRec.unmount {
		return nil
	}
	// Not unmounted: clean enough if what a replay would write is the
	// superblock alone.
	tail := logRecord{bb: int64(lastRec.tail & 0xffffffff), cycle: uint32(lastRec.tail >> 32)}
	first := -1
	for i, r := range l.records {
		if r == tail {
			first = i
		}
	}
	switch {
	case first < 0:
		return fmt.Errorf("xfs: the log's tail (%d/%d) is not a record: the log needs replaying", tail.cycle, tail.bb)
	case tail.cycle == l.cycle && tail.bb > l.records[last].bb,
		tail.cycle == l.cycle-1 && tail.bb < l.head,
		tail.cycle != l.cycle && tail.cycle != l.cycle-1:
		return fmt.Errorf("xfs: the log's tail (%d/%d) lies outside its written part: the log needs replaying", tail.cycle, tail.bb)
	}
	// Records from the tail to the head in log order: the older pass's
	// after the head first, when the tail is there.
	var replay []logRecord
	if tail.cycle != l.cycle {
		replay = append(replay, l.records[first:]...)
		first = 0
	}
	replay = append(replay, l.records[first:last+1]...)
	for _, r := range replay {
		rec, err := l.record(r)
		if err != nil {
			return err
		}
		if !rec.unmount && !rec.superblockOnly {
			return fmt.Errorf("xfs: the log record at BB %d (pass %d) holds changes besides the superblock: the log needs replaying", r.bb, r.cycle)
		}
	}
	return nil
}

// xlog reads one internal log.
type xlog struct {
	f       *FS
	base    int64 // byte offset of BB 0
	n       int64 // BBs
	cycle   uint32
	head    int64
	records []logRecord // every record header, in log order
}

// scan reads every BB's cycle, finds the head and lists the record headers.
func (l *xlog) scan(ctx context.Context) error {
	buf := make([]byte, min(logScanBytes, l.n*bbSize))
	for off := int64(0); off < l.n*bbSize; off += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:min(int64(len(buf)), l.n*bbSize-off)]
		if err := readFull(l.f.r, b, l.base+off); err != nil {
			return fmt.Errorf("xfs: read log at BB %d: %w", off/bbSize, err)
		}
		for i := 0; i < len(b); i += bbSize {
			bb := off/bbSize + int64(i/bbSize)
			c, hdr := be.Uint32(b[i:]), false
			if c == logMagic {
				c, hdr = be.Uint32(b[i+4:]), true
			}
			switch {
			case bb == 0:
				if c == 0 {
					return fmt.Errorf("xfs: the log has never been written (BB 0 has cycle 0)")
				}
				l.cycle = c
			case l.head < 0 && c == l.cycle:
			case l.head < 0 && c == l.cycle-1:
				l.head = bb
			case l.head >= 0 && c == l.cycle-1:
			default:
				return fmt.Errorf("xfs: the log's writes did not complete (BB %d has cycle %d in pass %d): it needs replaying", bb, c, l.cycle)
			}
			if hdr {
				l.records = append(l.records, logRecord{bb: bb, cycle: c})
			}
		}
	}
	if l.head < 0 {
		l.head = l.n
	}
	return nil
}

// recordInfo is what LogClean needs to know of one record.
type recordInfo struct {
	tail           uint64 // h_tail_lsn
	unmount        bool   // an unmount record: one operation, the unmount flag
	superblockOnly bool   // every transaction in it logs only the superblock
}

// record reads and checks the record whose header is at r: its LSN must be
// its place, it must end before the next pass's data or the log's end (a
// record wrapping around the end is refused), and on v5 filesystems its
// CRC must match when it has one (the kernel replays from an earlier
// record when the last one's does not).
func (l *xlog) record(r logRecord) (recordInfo, error) {
	h := make([]byte, bbSize)
	if err := readFull(l.f.r, h, l.base+r.bb*bbSize); err != nil {
		return recordInfo{}, fmt.Errorf("xfs: read log record at BB %d: %w", r.bb, err)
	}
	version, length := be.Uint32(h[8:]), int64(be.Uint32(h[12:]))
	lsn, ops := be.Uint64(h[16:]), be.Uint32(h[40:])
	info := recordInfo{tail: be.Uint64(h[24:])}
	if version != 1 && version != 2 {
		return info, corrupt("log record at BB %d has version %d", r.bb, version)
	}
	if want := uint64(r.cycle)<<32 | uint64(r.bb); lsn != want {
		return info, fmt.Errorf("xfs: the log record at BB %d says it is %d/%d: the log needs replaying", r.bb, lsn>>32, lsn&0xffffffff)
	}
	hblks := int64(1)
	if version == 2 {
		if size := int64(be.Uint32(h[320:])); size > logHeaderCycle {
			hblks = (size + logHeaderCycle - 1) / logHeaderCycle
		}
	}
	end := r.bb + hblks + (length+bbSize-1)/bbSize
	limit := l.n
	if r.cycle == l.cycle {
		limit = l.head
	}
	if end > limit {
		return info, fmt.Errorf("xfs: the log record at BB %d (%d bytes) runs past BB %d: the log needs replaying", r.bb, length, limit)
	}
	if length > maxRecordBytes {
		return info, nil // neither an unmount record nor one logging the superblock alone
	}
	// The extended headers (v2 records over 32 KiB) and the data, as on disk.
	raw := make([]byte, (hblks-1)*bbSize+(length+bbSize-1)/bbSize*bbSize)
	if err := readFull(l.f.r, raw, l.base+(r.bb+1)*bbSize); err != nil {
		return info, fmt.Errorf("xfs: read log record at BB %d: %w", r.bb+1, err)
	}
	ext, data := raw[:(hblks-1)*bbSize], raw[(hblks-1)*bbSize:][:length]
	// mkfs.xfs writes its unmount record with no CRC (zero).
	if l.f.v5 && binary.LittleEndian.Uint32(h[32:]) != 0 && !recordCRC(h, ext, data) {
		return info, fmt.Errorf("xfs: the log record at BB %d fails its checksum: the log needs replaying", r.bb)
	}
	// Put back the first word of each data BB, which the cycle displaced,
	// for the BBs the header keeps them for; operations past those are not
	// parsed (a record logging the superblock alone is far shorter).
	parsed := append([]byte(nil), data[:min(length, logHeaderCycle)]...)
	for i := 0; i < len(parsed); i += bbSize {
		copy(parsed[i:min(i+4, len(parsed))], h[44+i/bbSize*4:])
	}
	if ops == 1 && len(parsed) >= 12 && parsed[9]&opUnmount != 0 {
		info.unmount = true
		return info, nil
	}
	info.superblockOnly = l.superblockOnly(parsed, ops)
	return info, nil
}

// recordCRC checks a v5 record's CRC-32C (h_crc, little-endian at 32):
// over the header structure with h_crc as zero, the extended headers' and
// the data as written.
func recordCRC(h, ext, data []byte) bool {
	var zero [4]byte
	c := crc32.Update(0, castagnoli, h[:32])
	c = crc32.Update(c, castagnoli, zero[:])
	c = crc32.Update(c, castagnoli, h[36:recHeaderSize])
	for i := 0; i+extHeaderSize <= len(ext); i += bbSize {
		c = crc32.Update(c, castagnoli, ext[i:i+extHeaderSize])
	}
	c = crc32.Update(c, castagnoli, data)
	return c == binary.LittleEndian.Uint32(h[32:])
}

// superblockOnly reports whether the operations of one record are whole
// transactions whose items are all buffer items of the superblock, each
// logging it from its start with the geometry this FS read (as the
// kernel's log covering writes them: a growfs logs a superblock with more
// blocks, and a replay of that changes what is allocated).
func (l *xlog) superblockOnly(data []byte, ops uint32) bool {
	sbBBs := uint16(l.f.sectSize / bbSize)
	regions := 0   // data regions still to come for the current buffer item
	first := false // the next region is the superblock's first bytes
	var tid uint32
	inTrans, sawTrans := false, false
	for i := uint32(0); i < ops; i++ {
		if len(data) < 12 {
			return false
		}
		opTid, n, flags := be.Uint32(data), be.Uint32(data[4:]), data[9]
		if n > uint32(len(data)-12) {
			return false
		}
		p := data[12 : 12+n]
		data = data[12+n:]
		if inTrans && opTid != tid {
			return false
		}
		switch {
		case flags&(opContinue|opWasCont|opUnmount) != 0:
			return false
		case flags&opStart != 0:
			if inTrans || n != 0 {
				return false
			}
			inTrans, sawTrans, tid = true, false, opTid
		case flags&opCommit != 0:
			if !inTrans || !sawTrans || regions != 0 || n != 0 {
				return false
			}
			inTrans = false
		case !inTrans:
			return false
		case !sawTrans:
			// Transaction headers and item formats are in the host's byte
			// order; the magic tells which.
			if n < 16 || (binary.LittleEndian.Uint32(p) != transMagic && be.Uint32(p) != transMagic) {
				return false
			}
			sawTrans = true
		case regions > 0:
			if first && (n < sbGeometryEnd || be.Uint64(p[8:]) != l.f.dblocks || uint64(be.Uint32(p[88:])) != l.f.agCount ||
				be.Uint64(p[48:]) != l.f.logStart || uint64(be.Uint32(p[96:])) != l.f.logBlocks) {
				return false
			}
			regions--
			first = false
		default:
			if n < 24 {
				return false
			}
			bo := binary.ByteOrder(binary.LittleEndian)
			if binary.LittleEndian.Uint16(p) != itemBuf {
				bo = binary.BigEndian
			}
			if bo.Uint16(p) != itemBuf {
				return false
			}
			size, length, blkno := bo.Uint16(p[2:]), bo.Uint16(p[6:]), int64(bo.Uint64(p[8:]))
			mapSize, map0 := bo.Uint32(p[16:]), bo.Uint32(p[20:])
			// The first region must be the superblock's first 128 bytes
			// (bit 0 of the dirty map) onwards.
			if blkno != 0 || length != sbBBs || size < 2 || mapSize < 1 || map0&1 == 0 {
				return false
			}
			regions, first = int(size)-1, true
		}
	}
	return !inTrans // what follows the operations pads the record to its BBs
}

package xfs

import (
	"context"
	"fmt"
)

// The internal log is a circular sequence of 512-byte basic blocks (BBs).
// Every BB written in pass (cycle) C carries C in its first word — a log
// record header carries its magic number there and the cycle in the next
// word. Pass C writes from BB 0 upwards, so a log whose writes completed
// reads C up to the head and C-1 from there to the end (C-1 is 0 where
// mkfs left the log unwritten). The last record before the head is an
// unmount record when the filesystem was unmounted or frozen and nothing
// has been logged since.
const (
	bbSize         = 512
	logMagic       = 0xFEEDBABE // xlog_rec_header.h_magicno
	logHeaderCycle = 32 << 10   // XLOG_HEADER_CYCLE_SIZE: bytes one header BB covers
	logUnmount     = 0x20       // XLOG_UNMOUNT_TRANS in xlog_op_header.oh_flags
	logScanBytes   = 1 << 20
	maxLogBytes    = 2 << 30 // the largest internal log XFS makes
)

// LogClean reports (nil) whether the internal log needs no replaying: its
// writes completed (every BB before the head carries the newest cycle,
// every BB after it the one before) and its last record is an unmount
// record with nothing after it. Anything else — a log on another device,
// a torn or unreadable log, a last record that is not an unmount record —
// is an error saying why, and the on-disk metadata (the free-space btrees
// among it) may be older than what the log holds.
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
	base := int64(lin) * f.blockSize
	n := logBytes / bbSize

	// One pass over the log records each BB's cycle and remembers the last
	// record header seen before the cycle drops.
	var (
		head    = int64(-1)
		cycle   uint32 // the newest pass: BB 0's
		lastHdr = int64(-1)
		buf     = make([]byte, min(logScanBytes, logBytes))
	)
	for off := int64(0); off < logBytes; off += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:min(int64(len(buf)), logBytes-off)]
		if err := readFull(f.r, b, base+off); err != nil {
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
				cycle = c
			case head < 0 && c == cycle:
			case head < 0 && c == cycle-1:
				head = bb
			case head >= 0 && c == cycle-1:
			default:
				return fmt.Errorf("xfs: the log's writes did not complete (BB %d has cycle %d in pass %d): it needs replaying", bb, c, cycle)
			}
			if hdr && head < 0 {
				lastHdr = bb
			}
		}
	}
	if head < 0 {
		head = n
	}
	if lastHdr < 0 {
		return fmt.Errorf("xfs: no log record before the log's head (BB %d)", head)
	}
	return f.checkUnmountRecord(base, lastHdr, head, cycle)
}

// checkUnmountRecord checks that the record whose header is at BB hdr is
// an unmount record of the given cycle that ends at or before head.
func (f *FS) checkUnmountRecord(base, hdr, head int64, cycle uint32) error {
	h := make([]byte, bbSize)
	if err := readFull(f.r, h, base+hdr*bbSize); err != nil {
		return fmt.Errorf("xfs: read log record at BB %d: %w", hdr, err)
	}
	version, length := be.Uint32(h[8:]), int64(be.Uint32(h[12:]))
	lsn, ops := be.Uint64(h[16:]), be.Uint32(h[40:])
	if version != 1 && version != 2 {
		return corrupt("log record at BB %d has version %d", hdr, version)
	}
	if want := uint64(cycle)<<32 | uint64(hdr); lsn != want {
		return fmt.Errorf("xfs: the log record at BB %d says it is %d/%d: it needs replaying", hdr, lsn>>32, lsn&0xffffffff)
	}
	hblks := int64(1)
	if version == 2 {
		if size := int64(be.Uint32(h[320:])); size > logHeaderCycle {
			hblks = (size + logHeaderCycle - 1) / logHeaderCycle
		}
	}
	if hdr+hblks+(length+bbSize-1)/bbSize > head {
		return fmt.Errorf("xfs: the last log record (BB %d, %d bytes) runs past the log's head (BB %d): it needs replaying", hdr, length, head)
	}
	if ops != 1 || length < 12 {
		return fmt.Errorf("xfs: the last log record (BB %d) is not an unmount record (%d operations): the log needs replaying", hdr, ops)
	}
	op := make([]byte, bbSize)
	if err := readFull(f.r, op, base+(hdr+hblks)*bbSize); err != nil {
		return fmt.Errorf("xfs: read log record at BB %d: %w", hdr+hblks, err)
	}
	if op[9]&logUnmount == 0 {
		return fmt.Errorf("xfs: the last log record (BB %d) is not an unmount record (flags %#x): the log needs replaying", hdr, op[9])
	}
	return nil
}

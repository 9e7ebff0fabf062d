package xfs

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
)

// testLogBBs is the size of the synthetic logs in BBs.
const testLogBBs = 64

// logFS is an FS whose internal log is b (padded or cut to testLogBBs BBs),
// starting at block 1 of 4 KiB blocks.
func logFS(b []byte) *FS {
	img := make([]byte, 4096+testLogBBs*bbSize)
	copy(img[4096:], b)
	return &FS{
		r: bytes.NewReader(img), blockSize: 4096, sectSize: 512,
		agBlocks: 1 << 10, agBlkLog: 10, agCount: 1, dblocks: uint64(len(img) / 4096),
		logStart: 1, logBlocks: testLogBBs * bbSize / 4096,
		dirCache: nil,
	}
}

// logOp is one operation of a synthetic record.
type logOp struct {
	flags   byte
	payload []byte
}

// putRecord writes a record at BB bb of pass cycle with the given tail and
// operations, stamping the cycle into its data BBs as the kernel does.
func putRecord(log []byte, bb int, cycle uint32, tail uint64, ops []logOp) int {
	var data []byte
	for _, op := range ops {
		h := make([]byte, 12)
		binary.BigEndian.PutUint32(h, 0x1234)
		binary.BigEndian.PutUint32(h[4:], uint32(len(op.payload)))
		h[8], h[9] = 0x69, op.flags
		data = append(append(data, h...), op.payload...)
	}
	n := (len(data) + bbSize - 1) / bbSize
	data = append(data, make([]byte, n*bbSize-len(data))...)
	h := log[bb*bbSize : (bb+1)*bbSize]
	binary.BigEndian.PutUint32(h, logMagic)
	binary.BigEndian.PutUint32(h[4:], cycle)
	binary.BigEndian.PutUint32(h[8:], 2)
	binary.BigEndian.PutUint32(h[12:], uint32(len(data)))
	binary.BigEndian.PutUint64(h[16:], uint64(cycle)<<32|uint64(bb))
	binary.BigEndian.PutUint64(h[24:], tail)
	binary.BigEndian.PutUint32(h[40:], uint32(len(ops)))
	binary.BigEndian.PutUint32(h[320:], 32<<10)
	for i := 0; i < n; i++ {
		copy(h[44+4*i:], data[i*bbSize:i*bbSize+4])
		binary.BigEndian.PutUint32(data[i*bbSize:], cycle)
	}
	copy(log[(bb+1)*bbSize:], data)
	return bb + 1 + n
}

func unmountOps() []logOp { return []logOp{{flags: opUnmount, payload: make([]byte, 8)}} }

// superblockOps is a transaction logging 384 bytes of the block at blkno
// (the superblock at 0, as log covering writes it), holding logFS's
// geometry with grow blocks added.
func superblockOps(blkno uint64, grow uint64) []logOp {
	th := make([]byte, 16)
	binary.LittleEndian.PutUint32(th, transMagic)
	bf := make([]byte, 24)
	binary.LittleEndian.PutUint16(bf, itemBuf)
	binary.LittleEndian.PutUint16(bf[2:], 2)
	binary.LittleEndian.PutUint16(bf[6:], 1)
	binary.LittleEndian.PutUint64(bf[8:], blkno)
	binary.LittleEndian.PutUint32(bf[16:], 1)
	binary.LittleEndian.PutUint32(bf[20:], 0x7)
	f := logFS(nil)
	sb := make([]byte, 384)
	binary.BigEndian.PutUint32(sb, sbMagic)
	binary.BigEndian.PutUint64(sb[8:], f.dblocks+grow)
	binary.BigEndian.PutUint64(sb[48:], f.logStart)
	binary.BigEndian.PutUint32(sb[88:], uint32(f.agCount))
	binary.BigEndian.PutUint32(sb[96:], uint32(f.logBlocks))
	return []logOp{{flags: opStart}, {payload: th}, {payload: bf}, {payload: sb}, {flags: opCommit}}
}

// stamp fills BBs [from, to) with cycle, as written data would leave them.
func stamp(log []byte, from, to int, cycle uint32) {
	for bb := from; bb < to; bb++ {
		binary.BigEndian.PutUint32(log[bb*bbSize:], cycle)
	}
}

func logSeeds() [][]byte {
	clean := make([]byte, testLogBBs*bbSize)
	putRecord(clean, 0, 1, 1<<32, unmountOps())

	covered := make([]byte, testLogBBs*bbSize)
	next := putRecord(covered, 0, 1, 1<<32, unmountOps())
	next = putRecord(covered, next, 1, 1<<32|uint64(next), superblockOps(0, 0))
	putRecord(covered, next, 1, 1<<32|2, superblockOps(0, 0))

	// Pass 2 wrote BBs 0-5; the tail is a pass-1 record at BB 40.
	wrapped := make([]byte, testLogBBs*bbSize)
	stamp(wrapped, 0, testLogBBs, 1)
	putRecord(wrapped, 40, 1, 1<<32|40, superblockOps(0, 0))
	next = putRecord(wrapped, 0, 2, 1<<32|40, superblockOps(0, 0))
	putRecord(wrapped, next, 2, 1<<32|40, superblockOps(0, 0))

	otherBuffer := make([]byte, testLogBBs*bbSize)
	next = putRecord(otherBuffer, 0, 1, 1<<32, unmountOps())
	putRecord(otherBuffer, next, 1, 1<<32|uint64(next), superblockOps(8, 0))

	// A growfs logs a superblock with more blocks than the one on disk.
	grown := make([]byte, testLogBBs*bbSize)
	next = putRecord(grown, 0, 1, 1<<32, unmountOps())
	putRecord(grown, next, 1, 1<<32|uint64(next), superblockOps(0, 100))
	return [][]byte{clean, covered, wrapped, otherBuffer, grown}
}

// TestLogSynthetic: the synthetic logs of the fuzz seeds get the verdicts
// the kernel's rules give them.
func TestLogSynthetic(t *testing.T) {
	seeds := logSeeds()
	for i, want := range []bool{true, true, true, false, false} {
		err := logFS(seeds[i]).LogClean(context.Background())
		if (err == nil) != want {
			t.Errorf("seed %d: LogClean = %v, want clean=%v", i, err, want)
		}
	}
}

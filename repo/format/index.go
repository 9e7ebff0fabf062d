package format

import (
	"encoding/binary"
	"fmt"

	"github.com/zeebo/blake3"
)

// Fixed index, all integers little-endian:
//
//	0  [8]byte  magic "vmvIDX\r\n"
//	8  uint16   version (IndexVersion)
//	10 uint8    hash (1 = BLAKE3-256)
//	11 uint8    reserved, zero
//	12 uint32   chunk size
//	16 uint64   disk size in bytes
//	24 uint64   chunk count = ceil(disk size / chunk size)
//	32 [32]byte BLAKE3 over bytes 0–31 of the header and the concatenated IDs
//	64 count × [32]byte chunk IDs (ZeroID for all-zero chunks)
//
// Chunk i covers [i*chunkSize, min((i+1)*chunkSize, diskSize)): the last one
// may be short.
const IndexHeaderSize = 64

var indexMagic = [8]byte{'v', 'm', 'v', 'I', 'D', 'X', '\r', '\n'}

const indexHashBLAKE3 = 1

// MaxDiskSize bounds disk sizes (1 PiB) so offsets never overflow.
const MaxDiskSize = 1 << 50

// Index is a disk's chunk list.
type Index struct {
	DiskSize  int64
	ChunkSize int64
	IDs       []ID
}

// NewIndex returns an index of all-zero chunks for a disk.
func NewIndex(diskSize, chunkSize int64) (*Index, error) {
	if err := ValidChunkSize(chunkSize); err != nil {
		return nil, err
	}
	if diskSize < 0 || diskSize > MaxDiskSize {
		return nil, fmt.Errorf("disk size %d: out of range", diskSize)
	}
	return &Index{DiskSize: diskSize, ChunkSize: chunkSize, IDs: make([]ID, ChunkCount(diskSize, chunkSize))}, nil
}

// ChunkLen returns the length of chunk i.
func (x *Index) ChunkLen(i int) int64 {
	start := int64(i) * x.ChunkSize
	return min(x.ChunkSize, x.DiskSize-start)
}

// Checksum returns the hash over the header fields and all IDs.
func (x *Index) Checksum() ID {
	h := blake3.New()
	hdr := x.header()
	_, _ = h.Write(hdr[:32])
	for i := range x.IDs {
		_, _ = h.Write(x.IDs[i][:])
	}
	var sum ID
	copy(sum[:], h.Sum(nil))
	return sum
}

func (x *Index) header() [IndexHeaderSize]byte {
	var buf [IndexHeaderSize]byte
	copy(buf[0:8], indexMagic[:])
	binary.LittleEndian.PutUint16(buf[8:], IndexVersion)
	buf[10] = indexHashBLAKE3
	binary.LittleEndian.PutUint32(buf[12:], uint32(x.ChunkSize))
	binary.LittleEndian.PutUint64(buf[16:], uint64(x.DiskSize))
	binary.LittleEndian.PutUint64(buf[24:], uint64(len(x.IDs)))
	return buf
}

// Marshal encodes the index.
func (x *Index) Marshal() []byte {
	buf := make([]byte, IndexHeaderSize+32*len(x.IDs))
	hdr := x.header()
	copy(buf, hdr[:])
	sum := x.Checksum()
	copy(buf[32:64], sum[:])
	for i := range x.IDs {
		copy(buf[IndexHeaderSize+32*i:], x.IDs[i][:])
	}
	return buf
}

// ParseIndexHeader checks an index header and returns disk size, chunk size
// and count; the rest of the file must be exactly count IDs.
func ParseIndexHeader(b []byte) (diskSize, chunkSize, count int64, err error) {
	if len(b) < IndexHeaderSize {
		return 0, 0, 0, fmt.Errorf("index: %d bytes, shorter than its header: %w", len(b), ErrCorrupt)
	}
	if [8]byte(b[0:8]) != indexMagic {
		return 0, 0, 0, fmt.Errorf("index: bad magic: %w", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != IndexVersion {
		return 0, 0, 0, fmt.Errorf("index version %d: %w", v, ErrUnsupportedVersion)
	}
	if b[10] != indexHashBLAKE3 || b[11] != 0 {
		return 0, 0, 0, fmt.Errorf("index: unknown hash %d: %w", b[10], ErrUnsupportedVersion)
	}
	chunkSize = int64(binary.LittleEndian.Uint32(b[12:]))
	if err := ValidChunkSize(chunkSize); err != nil {
		return 0, 0, 0, fmt.Errorf("index: %v: %w", err, ErrCorrupt)
	}
	ds := binary.LittleEndian.Uint64(b[16:])
	if ds > MaxDiskSize {
		return 0, 0, 0, fmt.Errorf("index: disk size %d out of range: %w", ds, ErrCorrupt)
	}
	diskSize = int64(ds)
	n := binary.LittleEndian.Uint64(b[24:])
	if n != uint64(ChunkCount(diskSize, chunkSize)) {
		return 0, 0, 0, fmt.Errorf("index: %d chunks for %d bytes in %d-byte chunks: %w", n, diskSize, chunkSize, ErrCorrupt)
	}
	return diskSize, chunkSize, int64(n), nil
}

// ParseIndex decodes and checks an index.
func ParseIndex(b []byte) (*Index, error) {
	diskSize, chunkSize, n, err := ParseIndexHeader(b)
	if err != nil {
		return nil, err
	}
	if int64(len(b)-IndexHeaderSize) != 32*n {
		return nil, fmt.Errorf("index: %d bytes for %d chunk ids: %w", len(b), n, ErrCorrupt)
	}
	x := &Index{DiskSize: diskSize, ChunkSize: chunkSize, IDs: make([]ID, n)}
	for i := range x.IDs {
		copy(x.IDs[i][:], b[IndexHeaderSize+32*i:])
	}
	if x.Checksum() != ID(b[32:64]) {
		return nil, fmt.Errorf("index: checksum over header and chunk ids does not match: %w", ErrCorrupt)
	}
	return x, nil
}

package format

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"slices"
)

// Packs hold many chunk frames in one object, so object stores see one
// PUT per pack instead of one per chunk. A pack is its frames back to
// back, then a trailer that makes it self-describing (an index can be
// rebuilt from packs alone), all integers little-endian:
//
//	frames
//	n × { [32]byte chunk id, uint32 offset, uint32 length }
//	uint32 n
//	[4]byte "VVPK"
//	uint8   PackVersion
//	[3]byte reserved, zero
//	uint32  CRC-32C of the entries and n
//
// A pack is named by the hash of all its bytes.
const (
	PackVersion        = 1
	packTrailerFixed   = 16
	packEntrySize      = 40
	packMagic          = "VVPK"
	maxPackEntries     = 1 << 20
	MaxPackSize        = 1 << 32 // offsets are 32-bit
	packIndexMagic     = "VVPI"
	PackIndexVersion   = 1
	packIndexEntrySize = 44
	packIndexTombSize  = 36
	maxPackIndexItems  = 1 << 26
)

// PackEntry is where one chunk frame sits in a pack.
type PackEntry struct {
	ID     ID
	Offset uint32
	Length uint32
}

// PackTrailer encodes the trailer of a pack whose frames are entries.
func PackTrailer(entries []PackEntry) []byte {
	b := make([]byte, 0, packEntrySize*len(entries)+packTrailerFixed)
	for _, e := range entries {
		b = append(b, e.ID[:]...)
		b = binary.LittleEndian.AppendUint32(b, e.Offset)
		b = binary.LittleEndian.AppendUint32(b, e.Length)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entries)))
	crc := crc32.Checksum(b, castagnoli)
	b = append(b, packMagic...)
	b = append(b, PackVersion, 0, 0, 0)
	return binary.LittleEndian.AppendUint32(b, crc)
}

// SealedPackTrailer frames an encrypted trailer: the sealed bytes, then
// uint32 their length and "VVPE" (an encrypted repository's packs).
func SealedPackTrailer(sealed []byte) []byte {
	out := append([]byte(nil), sealed...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(sealed)))
	return append(out, "VVPE"...)
}

// PackTrailerSize returns the length of the whole trailer given its last
// 16 bytes, so a reader can fetch it with one more ranged read.
func PackTrailerSize(tail []byte, packSize int64) (int64, error) {
	if len(tail) != packTrailerFixed {
		return 0, fmt.Errorf("pack trailer: %d bytes: %w", len(tail), ErrCorrupt)
	}
	if string(tail[4:8]) != packMagic {
		return 0, fmt.Errorf("pack trailer: bad magic: %w", ErrCorrupt)
	}
	if tail[8] != PackVersion {
		return 0, fmt.Errorf("pack version %d: %w", tail[8], ErrUnsupportedVersion)
	}
	if tail[9]|tail[10]|tail[11] != 0 {
		return 0, fmt.Errorf("pack trailer: reserved bytes set: %w", ErrCorrupt)
	}
	n := int64(binary.LittleEndian.Uint32(tail[0:4]))
	size := n*packEntrySize + packTrailerFixed
	if n > maxPackEntries || size > packSize {
		return 0, fmt.Errorf("pack trailer: %d entries in %d bytes: %w", n, packSize, ErrCorrupt)
	}
	return size, nil
}

// ParsePackTrailer decodes a trailer (as PackTrailerSize sized it) of a
// pack of packSize bytes and checks every entry lies in the frames area.
func ParsePackTrailer(b []byte, packSize int64) ([]PackEntry, error) {
	if len(b) < packTrailerFixed {
		return nil, fmt.Errorf("pack trailer: %d bytes: %w", len(b), ErrCorrupt)
	}
	size, err := PackTrailerSize(b[len(b)-packTrailerFixed:], packSize)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) != size {
		return nil, fmt.Errorf("pack trailer: %d bytes, its count says %d: %w", len(b), size, ErrCorrupt)
	}
	body := b[:len(b)-12]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return nil, fmt.Errorf("pack trailer: checksum mismatch: %w", ErrCorrupt)
	}
	n := (len(b) - packTrailerFixed) / packEntrySize
	frames := packSize - size
	out := make([]PackEntry, n)
	for i := range out {
		e := b[i*packEntrySize:]
		copy(out[i].ID[:], e[:32])
		out[i].Offset = binary.LittleEndian.Uint32(e[32:])
		out[i].Length = binary.LittleEndian.Uint32(e[36:])
		if int64(out[i].Offset)+int64(out[i].Length) > frames || out[i].Length < ChunkHeaderSize {
			return nil, fmt.Errorf("pack trailer: entry %d [%d,+%d) outside the %d bytes of frames: %w", i, out[i].Offset, out[i].Length, frames, ErrCorrupt)
		}
	}
	return out, nil
}

// PackIndex says where chunks sit in packs: what one capture (or one gc)
// wrote, or a merge of many. Later indexes override earlier ones only by
// removing (Dead, GonePacks); a chunk stored in two packs may be read
// from either.
//
//	[4]byte "VVPI", uint8 PackIndexVersion, [3]byte reserved
//	uint32 packs, packs × [32]byte pack name
//	uint32 entries, entries × { [32]byte chunk, uint32 pack, uint32 offset, uint32 length }, sorted by chunk
//	uint32 dead, dead × { [32]byte chunk, uint32 pack }: frames no longer valid in that pack
//	uint32 gone, gone × uint32 pack: packs removed altogether
//	uint32 CRC-32C of everything before it
//
// A pack index is named by the hash of its bytes.
type PackIndex struct {
	Packs     []ID
	Entries   []PackIndexEntry
	Dead      []PackIndexDead
	GonePacks []uint32
}

// PackIndexEntry is one chunk's location.
type PackIndexEntry struct {
	ID     ID
	Pack   uint32 // into PackIndex.Packs
	Offset uint32
	Length uint32
}

// PackIndexDead marks a chunk's frame in a pack as no longer valid.
type PackIndexDead struct {
	ID   ID
	Pack uint32
}

// Marshal encodes the index, its entries sorted by chunk id.
func (x *PackIndex) Marshal() []byte {
	slices.SortFunc(x.Entries, func(a, b PackIndexEntry) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	b := make([]byte, 0, 8+4+32*len(x.Packs)+4+packIndexEntrySize*len(x.Entries)+4+packIndexTombSize*len(x.Dead)+4+4*len(x.GonePacks)+4)
	b = append(b, packIndexMagic...)
	b = append(b, PackIndexVersion, 0, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(x.Packs)))
	for _, p := range x.Packs {
		b = append(b, p[:]...)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(x.Entries)))
	for _, e := range x.Entries {
		b = append(b, e.ID[:]...)
		b = binary.LittleEndian.AppendUint32(b, e.Pack)
		b = binary.LittleEndian.AppendUint32(b, e.Offset)
		b = binary.LittleEndian.AppendUint32(b, e.Length)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(x.Dead)))
	for _, d := range x.Dead {
		b = append(b, d.ID[:]...)
		b = binary.LittleEndian.AppendUint32(b, d.Pack)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(x.GonePacks)))
	for _, g := range x.GonePacks {
		b = binary.LittleEndian.AppendUint32(b, g)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// ParsePackIndex decodes and checks a pack index.
func ParsePackIndex(b []byte) (*PackIndex, error) {
	if len(b) < 8+4*4+4 {
		return nil, fmt.Errorf("pack index: %d bytes: %w", len(b), ErrCorrupt)
	}
	if string(b[:4]) != packIndexMagic {
		return nil, fmt.Errorf("pack index: bad magic: %w", ErrCorrupt)
	}
	if b[4] != PackIndexVersion {
		return nil, fmt.Errorf("pack index version %d: %w", b[4], ErrUnsupportedVersion)
	}
	if b[5]|b[6]|b[7] != 0 {
		return nil, fmt.Errorf("pack index: reserved bytes set: %w", ErrCorrupt)
	}
	if crc32.Checksum(b[:len(b)-4], castagnoli) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return nil, fmt.Errorf("pack index: checksum mismatch: %w", ErrCorrupt)
	}
	r := &reader{b: b[8 : len(b)-4]}
	x := &PackIndex{}
	np := r.count(32)
	x.Packs = make([]ID, np)
	for i := range x.Packs {
		copy(x.Packs[i][:], r.take(32))
	}
	ne := r.count(packIndexEntrySize)
	x.Entries = make([]PackIndexEntry, ne)
	for i := range x.Entries {
		e := &x.Entries[i]
		copy(e.ID[:], r.take(32))
		e.Pack, e.Offset, e.Length = r.u32(), r.u32(), r.u32()
		if int(e.Pack) >= np {
			return nil, fmt.Errorf("pack index: entry %d names pack %d of %d: %w", i, e.Pack, np, ErrCorrupt)
		}
		if i > 0 && bytes.Compare(x.Entries[i-1].ID[:], e.ID[:]) > 0 {
			return nil, fmt.Errorf("pack index: entries not sorted: %w", ErrCorrupt)
		}
	}
	nd := r.count(packIndexTombSize)
	x.Dead = make([]PackIndexDead, nd)
	for i := range x.Dead {
		copy(x.Dead[i].ID[:], r.take(32))
		if x.Dead[i].Pack = r.u32(); int(x.Dead[i].Pack) >= np {
			return nil, fmt.Errorf("pack index: dead entry %d names pack %d of %d: %w", i, x.Dead[i].Pack, np, ErrCorrupt)
		}
	}
	ng := r.count(4)
	x.GonePacks = make([]uint32, ng)
	for i := range x.GonePacks {
		if x.GonePacks[i] = r.u32(); int(x.GonePacks[i]) >= np {
			return nil, fmt.Errorf("pack index: gone pack %d of %d: %w", x.GonePacks[i], np, ErrCorrupt)
		}
	}
	if r.err != nil {
		return nil, fmt.Errorf("pack index: %v: %w", r.err, ErrCorrupt)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("pack index: %d bytes after the last section: %w", len(r.b), ErrCorrupt)
	}
	return x, nil
}

// reader takes fields from a byte slice; the first short read sets err
// and every later call returns zeros.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil || n > len(r.b) {
		if r.err == nil {
			r.err = fmt.Errorf("truncated")
		}
		r.b = nil
		return make([]byte, n)
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u32() uint32 { return binary.LittleEndian.Uint32(r.take(4)) }

// count reads an item count and checks the items of size each fit in
// what is left, so no allocation is driven by an unchecked count.
func (r *reader) count(size int) int {
	n := int(r.u32())
	if r.err == nil && (n > maxPackIndexItems || n*size > len(r.b)) {
		r.err = fmt.Errorf("%d items of %d bytes in %d bytes", n, size, len(r.b))
		r.b = nil
		return 0
	}
	return n
}

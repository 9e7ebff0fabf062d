package repo

import (
	"crypto/rand"
	"encoding/binary"
	"math"

	"github.com/vmvault/vmvault/repo/format"
)

// bloom is the live set of gc's mark phase: a Bloom filter over chunk ids.
// A false positive keeps a dead chunk until a later gc (whose filter has
// another seed); there are no false negatives, so a live chunk is never
// taken for dead. It is blocked: every probe of an id falls into one
// 512-bit block (one cache line), so marking costs one cache miss per
// index entry however large the filter. At 11 bits per chunk it keeps
// about 1% of dead chunks: 52 MiB for 40 million chunks, where a set of
// the ids would take 1.3 GB.
type bloom struct {
	blocks [][8]uint64 // 512 bits each
	k      int         // probes per id
	seed   [2]uint64
}

// bloomBitsPerID sizes the filter; bloomProbes is the number of bits set
// per id (optimal for a blocked filter of this density).
const (
	bloomBitsPerID = 11
	bloomProbes    = 7
)

// newBloom sizes a filter for n ids.
func newBloom(n int) *bloom {
	n = max(n, 1024)
	nblocks := int(math.Ceil(float64(n) * bloomBitsPerID / 512))
	b := &bloom{blocks: make([][8]uint64, nblocks), k: bloomProbes}
	var s [16]byte
	_, _ = rand.Read(s[:])
	b.seed = [2]uint64{binary.LittleEndian.Uint64(s[:8]), binary.LittleEndian.Uint64(s[8:]) | 1}
	return b
}

// locate derives an id's block and bit positions from its bits: ids are
// uniform hashes already, so words of it mixed with the filter's seed
// serve as hash values.
func (b *bloom) locate(id format.ID) (blk *[8]uint64, h uint64, step uint64) {
	h1 := binary.LittleEndian.Uint64(id[0:8]) ^ b.seed[0]
	h2 := (binary.LittleEndian.Uint64(id[8:16]) ^ b.seed[1]) | 1
	return &b.blocks[h1%uint64(len(b.blocks))], h2, h2>>9 | 1
}

func (b *bloom) add(id format.ID) {
	blk, h, step := b.locate(id)
	for i := 0; i < b.k; i++ {
		pos := h % 512
		blk[pos/64] |= 1 << (pos % 64)
		h += step
	}
}

// has reports whether id may be in the set (never false for an added id).
func (b *bloom) has(id format.ID) bool {
	blk, h, step := b.locate(id)
	for i := 0; i < b.k; i++ {
		pos := h % 512
		if blk[pos/64]&(1<<(pos%64)) == 0 {
			return false
		}
		h += step
	}
	return true
}

// bytes is the filter's memory.
func (b *bloom) bytes() int { return len(b.blocks) * 64 }

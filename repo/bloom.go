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
// taken for dead. At 1% false positives it costs 9.6 bits per chunk: 48
// MB for 40 million chunks, where a set of the ids would take 1.3 GB.
type bloom struct {
	bits []uint64
	m    uint64 // number of bits
	k    int    // probes per id
	seed [2]uint64
}

// newBloom sizes a filter for n ids at false-positive rate p.
func newBloom(n int, p float64) *bloom {
	n = max(n, 1024)
	m := uint64(math.Ceil(-float64(n) * math.Log(p) / (math.Ln2 * math.Ln2)))
	m = (m + 63) &^ 63
	k := max(1, int(math.Round(float64(m)/float64(n)*math.Ln2)))
	b := &bloom{bits: make([]uint64, m/64), m: m, k: k}
	var s [16]byte
	_, _ = rand.Read(s[:])
	b.seed = [2]uint64{binary.LittleEndian.Uint64(s[:8]), binary.LittleEndian.Uint64(s[8:]) | 1}
	return b
}

// probes derives the filter's positions from the id's bits: ids are
// uniform hashes already, so two 64-bit words of it (mixed with the
// filter's seed) give the double-hashing pair.
func (b *bloom) probes(id format.ID, fn func(pos uint64) bool) bool {
	h1 := binary.LittleEndian.Uint64(id[0:8]) ^ b.seed[0]
	h2 := (binary.LittleEndian.Uint64(id[8:16]) ^ b.seed[1]) | 1
	for i := 0; i < b.k; i++ {
		if !fn((h1 + uint64(i)*h2) % b.m) {
			return false
		}
	}
	return true
}

func (b *bloom) add(id format.ID) {
	b.probes(id, func(pos uint64) bool {
		b.bits[pos/64] |= 1 << (pos % 64)
		return true
	})
}

// has reports whether id may be in the set (never false for an added id).
func (b *bloom) has(id format.ID) bool {
	return b.probes(id, func(pos uint64) bool { return b.bits[pos/64]&(1<<(pos%64)) != 0 })
}

// bytes is the filter's memory.
func (b *bloom) bytes() int { return len(b.bits) * 8 }

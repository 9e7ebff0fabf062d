package format

import (
	"bytes"
	"testing"
)

// The fuzz targets check that no input makes a parser panic or return a
// value that fails its own validation; seeds live in testdata/fuzz.

func FuzzParseIndex(f *testing.F) {
	x, _ := NewIndex(3*MinChunkSize+5, MinChunkSize)
	x.IDs[1] = Hash([]byte("a"))
	f.Add(x.Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		idx, err := ParseIndex(b)
		if err != nil {
			return
		}
		if !bytes.Equal(idx.Marshal(), b) {
			t.Fatal("accepted index does not re-encode to the same bytes")
		}
	})
}

func FuzzDecodeChunk(f *testing.F) {
	fr, _ := EncodeChunk(nil, bytes.Repeat([]byte("xyz"), 1000), CompressionZstdFastest)
	f.Add(fr)
	fr, _ = EncodeChunk(nil, []byte("raw"), CompressionNone)
	f.Add(fr)
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := DecodeChunk(nil, b)
		if err == nil && len(out) > MaxChunkSize {
			t.Fatalf("decoded %d bytes", len(out))
		}
	})
}

func FuzzParseManifest(f *testing.F) {
	b, _ := validManifest().Marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("parsed manifest fails validation: %v", err)
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"version":1,"id":"abababababababababababababababab","chunk_size":262144,"hash":"blake3","compression":"zstd-fastest","created":"2026-11-23T10:00:00Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err == nil {
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func FuzzParseLock(f *testing.F) {
	f.Add([]byte(`{"exclusive":true,"operation":"gc","hostname":"h","pid":12,"started":"2026-11-23T10:00:00Z","refreshed":"2026-11-23T10:00:00Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) { _, _ = ParseLock(b) })
}

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
	fr, _ = EncodeChunk(nil, bytes.Repeat([]byte("s2s2"), 1000), CompressionS2)
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

func FuzzParsePackIndex(f *testing.F) {
	x := &PackIndex{Packs: []ID{Hash([]byte("p0")), Hash([]byte("p1"))},
		Entries:   []PackIndexEntry{{ID: Hash([]byte("a")), Pack: 1, Offset: 16, Length: 100}, {ID: Hash([]byte("b")), Pack: 0, Offset: 0, Length: 20}},
		Dead:      []PackIndexDead{{ID: Hash([]byte("c")), Pack: 0}},
		GonePacks: []uint32{1}}
	f.Add(x.Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := ParsePackIndex(b)
		if err != nil {
			return
		}
		if !bytes.Equal(x.Marshal(), b) {
			t.Fatal("accepted pack index does not re-encode to the same bytes")
		}
	})
}

func FuzzParsePackTrailer(f *testing.F) {
	frames := make([]byte, 200)
	tr := PackTrailer([]PackEntry{{ID: Hash([]byte("a")), Offset: 0, Length: 100}, {ID: Hash([]byte("b")), Offset: 100, Length: 100}})
	f.Add(append(frames, tr...))
	f.Fuzz(func(t *testing.T, pack []byte) {
		if len(pack) < packTrailerFixed {
			return
		}
		size, err := PackTrailerSize(pack[len(pack)-packTrailerFixed:], int64(len(pack)))
		if err != nil {
			return
		}
		entries, err := ParsePackTrailer(pack[int64(len(pack))-size:], int64(len(pack)))
		if err != nil {
			return
		}
		for _, e := range entries {
			if int(e.Offset)+int(e.Length) > len(pack)-int(size) {
				t.Fatalf("entry %+v outside the frames", e)
			}
		}
		if !bytes.Equal(PackTrailer(entries), pack[int64(len(pack))-size:]) {
			t.Fatal("accepted trailer does not re-encode to the same bytes")
		}
	})
}

func TestPackRoundTrip(t *testing.T) {
	var frames []byte
	var entries []PackEntry
	for i := range 5 {
		fr, _ := EncodeChunk(nil, bytes.Repeat([]byte{byte(i)}, 1000+i), CompressionNone)
		entries = append(entries, PackEntry{ID: Hash([]byte{byte(i)}), Offset: uint32(len(frames)), Length: uint32(len(fr))})
		frames = append(frames, fr...)
	}
	pack := append(frames, PackTrailer(entries)...)
	size, err := PackTrailerSize(pack[len(pack)-16:], int64(len(pack)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParsePackTrailer(pack[int64(len(pack))-size:], int64(len(pack)))
	if err != nil || len(got) != 5 || got[3] != entries[3] {
		t.Fatalf("trailer: %v %+v", err, got)
	}
	pack[len(frames)+3] ^= 1
	if _, err := ParsePackTrailer(pack[int64(len(pack))-size:], int64(len(pack))); err == nil {
		t.Fatal("a damaged trailer was accepted")
	}
	x := &PackIndex{Packs: []ID{Hash(pack)}, Entries: []PackIndexEntry{{ID: entries[1].ID, Offset: entries[1].Offset, Length: entries[1].Length}}}
	y, err := ParsePackIndex(x.Marshal())
	if err != nil || len(y.Entries) != 1 || y.Entries[0] != x.Entries[0] {
		t.Fatalf("pack index: %v %+v", err, y)
	}
}

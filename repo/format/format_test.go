package format

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"strings"
	"testing"
	"time"
)

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func TestChunkRoundTrip(t *testing.T) {
	text := bytes.Repeat([]byte("all work and no play makes jack a dull boy\n"), 6000)
	// Saves about 1/10 with s2: enough for s2 (1/32), not for auto (1/8).
	tenth := append(randomBytes(230<<10), bytes.Repeat([]byte{'a'}, 26<<10)...)
	cases := []struct {
		name, compression string
		raw               []byte
		wantPayload       byte
	}{
		{"empty", CompressionZstdFastest, nil, PayloadRaw},
		{"text fastest", CompressionZstdFastest, text, PayloadZstd},
		{"text default", CompressionZstdDefault, text, PayloadZstd},
		{"text better", CompressionZstdBetter, text, PayloadZstdDense},
		{"text best", CompressionZstdBest, text, PayloadZstdDense},
		{"text s2", CompressionS2, text, PayloadS2},
		{"text s2-better", CompressionS2Better, text, PayloadS2},
		{"text auto", CompressionAuto, text, PayloadS2},
		{"text none", CompressionNone, text, PayloadRaw},
		{"random stays raw", CompressionZstdFastest, randomBytes(MinChunkSize), PayloadRaw},
		{"random stays raw with s2", CompressionS2, randomBytes(MinChunkSize), PayloadRaw},
		{"random stays raw with zstd-best", CompressionZstdBest, randomBytes(MinChunkSize), PayloadRaw},
		{"a tenth saved pays for s2", CompressionS2, tenth, PayloadS2},
		{"a tenth saved does not pay for auto", CompressionAuto, tenth, PayloadRaw},
		{"max size", CompressionZstdFastest, bytes.Repeat([]byte{7}, MaxChunkSize), PayloadZstd},
		{"max size s2", CompressionS2, bytes.Repeat([]byte{7}, MaxChunkSize), PayloadS2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			frame, err := EncodeChunk(nil, c.raw, c.compression)
			if err != nil {
				t.Fatal(err)
			}
			if p, err := FramePayload(frame); err != nil || p != c.wantPayload {
				t.Errorf("payload type %d (%v), want %d (frame %d bytes for %d)", p, err, c.wantPayload, len(frame), len(c.raw))
			}
			got, err := DecodeChunkID(nil, frame, Hash(c.raw))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, c.raw) {
				t.Fatal("round trip changed the content")
			}
			if _, err := DecodeChunkID(nil, frame, Hash(append([]byte{1}, c.raw...))); !errors.Is(err, ErrCorrupt) {
				t.Errorf("wrong id accepted: %v", err)
			}
			// Appending after a prefix leaves the prefix alone.
			pre := []byte("prefix")
			framed, err := EncodeChunk(bytes.Clone(pre), c.raw, c.compression)
			if err != nil || !bytes.Equal(framed[:len(pre)], pre) || !bytes.Equal(framed[len(pre):], frame) {
				t.Errorf("encode after a prefix: %v", err)
			}
		})
	}
}

func TestCompressionNames(t *testing.T) {
	for _, name := range CompressionNames() {
		if err := ValidCompression(name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, bad := range []string{"", "zstd", "lz4", "S2"} {
		if err := ValidCompression(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
		if _, err := EncodeChunk(nil, []byte("x"), bad); err == nil {
			t.Errorf("EncodeChunk with %q accepted", bad)
		}
	}
}

// TestDecodeInto checks where DecodeChunk puts the content: in place
// whenever dst can hold it (with or without the decoder's slack, and
// after a prefix), in a new buffer only when it cannot, and never past
// rawLen+DecodeSlack of the caller's buffer.
func TestDecodeInto(t *testing.T) {
	for _, codec := range []string{CompressionZstdFastest, CompressionS2} {
		t.Run(codec, func(t *testing.T) { testDecodeInto(t, codec) })
	}
}

func testDecodeInto(t *testing.T, codec string) {
	raw := bytes.Repeat([]byte("0123456789abcdef fedcba9876543210\n"), 16000)[:512<<10] // four zstd blocks
	frame, err := EncodeChunk(nil, raw, codec)
	if want, _ := CompressionPayload(codec); err != nil || frame[5] != want {
		t.Fatalf("encode: %v (type %d)", err, frame[5])
	}
	cases := []struct {
		name        string
		prefix, cap int
		inPlace     bool
	}{
		{"with slack", 0, len(raw) + DecodeSlack, true},
		{"more than enough", 0, 2 * len(raw), true},
		{"exact fit", 0, len(raw), true},
		{"after a prefix", 10, 10 + len(raw), true},
		{"one byte short", 0, len(raw) - 1, false},
		{"nil", 0, 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var dst []byte
			if c.cap > 0 {
				dst = make([]byte, c.prefix, c.cap)
				copy(dst, "prefix....")
				// A canary past rawLen+DecodeSlack must survive.
				if tail := dst[:c.cap]; c.cap > c.prefix+len(raw)+DecodeSlack {
					tail[c.prefix+len(raw)+DecodeSlack] = 0xEE
				}
			}
			out, err := DecodeChunk(dst, frame)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out[c.prefix:], raw) || string(out[:c.prefix]) != "prefix...."[:c.prefix] {
				t.Fatal("wrong content")
			}
			if inPlace := dst != nil && &out[:1][0] == &dst[:1][0]; inPlace != c.inPlace {
				t.Fatalf("decoded in place = %v, want %v", inPlace, c.inPlace)
			}
			if c.cap > c.prefix+len(raw)+DecodeSlack && dst[:c.cap][c.prefix+len(raw)+DecodeSlack] != 0xEE {
				t.Fatal("decoder wrote past rawLen+DecodeSlack")
			}
		})
	}
}

func TestChunkDamage(t *testing.T) {
	raw := bytes.Repeat([]byte("abcdefgh"), 20000)
	for _, codec := range []string{CompressionZstdFastest, CompressionS2, CompressionZstdBest} {
		frame, _ := EncodeChunk(nil, raw, codec)
		for _, pos := range []int{0, 4, 5, 6, 8, 12, ChunkHeaderSize, len(frame) / 2, len(frame) - 1} {
			bad := append([]byte(nil), frame...)
			bad[pos] ^= 0x40
			if _, err := DecodeChunkID(nil, bad, Hash(raw)); err == nil {
				t.Errorf("%s: flipped byte at %d not detected", codec, pos)
			}
		}
		if _, err := DecodeChunk(nil, frame[:len(frame)-1]); err == nil {
			t.Errorf("%s: truncated frame accepted", codec)
		}
	}
}

// TestHostileS2 feeds s2 payloads whose block length disagrees with the
// frame header (with a valid checksum, as a crafted frame has): they fail
// as corrupt without the decoder sizing anything by the block's claim.
func TestHostileS2(t *testing.T) {
	raw := bytes.Repeat([]byte("hostile "), 4096)
	good, _ := EncodeChunk(nil, raw, CompressionS2)
	reframe := func(payload []byte, rawLen uint32) []byte {
		f := append(bytes.Clone(good[:ChunkHeaderSize]), payload...)
		binary.LittleEndian.PutUint32(f[8:], rawLen)
		binary.LittleEndian.PutUint32(f[12:], crc32.Checksum(payload, castagnoli))
		return f
	}
	cases := []struct {
		name  string
		frame []byte
	}{
		{"block claims 4 GiB", reframe(append([]byte{0xff, 0xff, 0xff, 0xff, 0x0f}, good[ChunkHeaderSize+3:]...), uint32(len(raw)))},
		{"header claims less", reframe(good[ChunkHeaderSize:], uint32(len(raw)-1))},
		{"header claims more", reframe(good[ChunkHeaderSize:], uint32(len(raw)+1))},
		{"bad varint", reframe([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 10)},
		{"truncated block", reframe(good[ChunkHeaderSize:len(good)-3], uint32(len(raw)))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if out, err := DecodeChunk(nil, c.frame); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %d bytes, err %v; want ErrCorrupt", len(out), err)
			}
		})
	}
}

func TestIndexRoundTripAndDamage(t *testing.T) {
	for _, size := range []int64{0, 1, MinChunkSize - 1, MinChunkSize, 10*MinChunkSize + 123} {
		x, err := NewIndex(size, MinChunkSize)
		if err != nil {
			t.Fatal(err)
		}
		for i := range x.IDs {
			if i%3 != 0 {
				x.IDs[i] = Hash([]byte{byte(i)})
			}
		}
		b := x.Marshal()
		y, err := ParseIndex(b)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if y.DiskSize != size || len(y.IDs) != len(x.IDs) || y.Checksum() != x.Checksum() {
			t.Fatalf("size %d: round trip differs", size)
		}
		if len(x.IDs) > 0 && x.ChunkLen(len(x.IDs)-1) != size-int64(len(x.IDs)-1)*MinChunkSize {
			t.Errorf("size %d: last chunk length %d", size, x.ChunkLen(len(x.IDs)-1))
		}
		for _, pos := range []int{0, 8, 10, 12, 16, 24, 40, len(b) - 1} {
			if pos >= len(b) {
				continue
			}
			bad := append([]byte(nil), b...)
			bad[pos] ^= 1
			if _, err := ParseIndex(bad); err == nil {
				t.Errorf("size %d: flipped byte at %d not detected", size, pos)
			}
		}
		if _, err := ParseIndex(b[:len(b)-1]); err == nil {
			t.Errorf("size %d: truncated index accepted", size)
		}
	}
}

func validManifest() *Manifest {
	return &Manifest{
		Version: ManifestVersion, VM: "web01", Time: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC),
		Tags:  []string{"daily"},
		Disks: []ManifestDisk{{Name: "disk0", Size: 1 << 30, ChunkSize: DefaultChunkSize, Index: Hash(nil).String()}},
	}
}

func TestManifestValidation(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Manifest)
		ok     bool
	}{
		{"valid", func(*Manifest) {}, true},
		{"newer version", func(m *Manifest) { m.Version = 99 }, false},
		{"slash in vm", func(m *Manifest) { m.VM = "a/b" }, false},
		{"at in vm", func(m *Manifest) { m.VM = "a@b" }, false},
		{"dotdot vm", func(m *Manifest) { m.VM = ".." }, false},
		{"unicode vm", func(m *Manifest) { m.VM = "サーバー 1" }, true},
		{"no disks", func(m *Manifest) { m.Disks = nil }, false},
		{"dup disks", func(m *Manifest) { m.Disks = append(m.Disks, m.Disks[0]) }, false},
		{"bad index", func(m *Manifest) { m.Disks[0].Index = "xyz" }, false},
		{"bad chunk size", func(m *Manifest) { m.Disks[0].ChunkSize = 1000 }, false},
		{"negative size", func(m *Manifest) { m.Disks[0].Size = -1 }, false},
		{"no time", func(m *Manifest) { m.Time = time.Time{} }, false},
		{"control char tag", func(m *Manifest) { m.Tags = []string{"a\nb"} }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := validManifest()
			c.mutate(m)
			b, err := m.Marshal()
			if (err == nil) != c.ok {
				t.Fatalf("Marshal err = %v, want ok=%v", err, c.ok)
			}
			if c.ok {
				m2, err := ParseManifest(b)
				if err != nil || m2.VM != m.VM || m2.Disks[0] != m.Disks[0] {
					t.Fatalf("round trip: %v", err)
				}
			}
		})
	}
	if _, err := ParseManifest([]byte(`{"version":7}`)); !errors.Is(err, ErrUnsupportedVersion) {
		t.Errorf("future manifest: %v", err)
	}
	if _, err := ParseManifest([]byte(`{"version":1,"vm":`)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("truncated manifest: %v", err)
	}
}

func TestConfig(t *testing.T) {
	for _, c := range []*Config{
		{Version: 2, ID: strings.Repeat("ab", 16), ChunkSize: DefaultChunkSize, Hash: HashBLAKE3, Compression: CompressionZstdFastest, Created: time.Now(), PackSize: DefaultPackSize},
		{Version: ConfigVersion, ID: strings.Repeat("ab", 16), ChunkSize: DefaultChunkSize, Hash: HashBLAKE3, Compression: CompressionZstdFastest, Created: time.Now(), PackSize: DefaultPackSize, Encryption: EncryptionV1},
		{Version: 1, ID: strings.Repeat("ab", 16), ChunkSize: DefaultChunkSize, Hash: HashBLAKE3, Compression: CompressionZstdFastest, Created: time.Now()},
	} {
		b, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseConfig(b); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range []string{`{`, `{"version":2}`, `{"version":1,"id":"x"}`, `null`, ``,
		`{"version":3,"id":"abababababababababababababababab","chunk_size":262144,"hash":"blake3","compression":"zstd-fastest","pack_size":33554432}`,
		`{"version":2,"id":"abababababababababababababababab","chunk_size":262144,"hash":"blake3","compression":"zstd-fastest"}`,
		`{"version":1,"id":"abababababababababababababababab","chunk_size":262144,"hash":"blake3","compression":"zstd-fastest","pack_size":33554432}`,
		`{"version":2,"id":"abababababababababababababababab","chunk_size":262144,"hash":"blake3","compression":"zstd-fastest","pack_size":1000}`} {
		if _, err := ParseConfig([]byte(bad)); err == nil {
			t.Errorf("config %q accepted", bad)
		}
	}
}

func TestIsZero(t *testing.T) {
	for _, n := range []int{0, 1, 63, 64, 65, 4096} {
		b := make([]byte, n)
		if !IsZero(b) {
			t.Errorf("zero buffer of %d bytes not zero", n)
		}
		for i := 0; i < n; i += max(1, n/7) {
			b[i] = 1
			if IsZero(b) {
				t.Errorf("buffer of %d with byte %d set reported zero", n, i)
			}
			b[i] = 0
		}
	}
}

func BenchmarkIsZero(b *testing.B) {
	buf := make([]byte, DefaultChunkSize)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if !IsZero(buf) {
			b.Fatal("not zero")
		}
	}
}

// BenchmarkDecodeChunk decodes a compressible 256 KiB chunk into a buffer
// of exactly the chunk's size and into one with DecodeSlack to spare.
func BenchmarkDecodeChunk(b *testing.B) {
	// Words drawn from a small vocabulary by a fixed PRNG: short matches
	// and literals, compressing about 3:1 like text and binaries do.
	words := strings.Fields("the a disk chunk restore point vmvault block read write zero index manifest of to and is in 0x1f 42 /usr/lib libc.so.6 ELF main func return")
	var raw []byte
	for x := uint32(1); len(raw) < 256<<10; {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		raw = append(raw, words[x%uint32(len(words))]...)
		raw = append(raw, " \n\t"[x>>30&1])
	}
	raw = raw[:256<<10]
	frame, err := EncodeChunk(nil, raw, CompressionZstdFastest)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name  string
		slack int
	}{{"exact", 0}, {"slack", DecodeSlack}} {
		b.Run(bc.name, func(b *testing.B) {
			dst := make([]byte, 0, len(raw)+bc.slack)
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if _, err := DecodeChunk(dst, frame); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestManifestSkipped: the skip record round-trips, and a manifest that
// skipped nothing has no trace of it (its bytes, and so its id, are what
// they were before the field existed).
func TestManifestSkipped(t *testing.T) {
	plain := validManifest()
	b, err := plain.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("skipped")) {
		t.Errorf("a manifest without skipping mentions it:\n%s", b)
	}
	m := validManifest()
	m.Disks[0].Stats.Skipped = &SkipStats{FreeSpace: true, Bytes: 3 << 20, Scope: "disk", Volumes: []SkipVolume{
		{Partition: "p1", Filesystem: "ext4", Offset: 1 << 20, Size: 1 << 29, Bytes: 3 << 20, Ranges: 7, What: "free space"},
		{Partition: "p2", Offset: 1<<29 + 1<<20, Size: 1 << 20, ReadInFull: "no filesystem recognised"},
	}}
	b, err = m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Disks[0].Stats.Skipped, m.Disks[0].Stats.Skipped) {
		t.Errorf("round trip: %+v, want %+v", got.Disks[0].Stats.Skipped, m.Disks[0].Stats.Skipped)
	}
}

func TestSkipStatsLines(t *testing.T) {
	s := &SkipStats{FreeSpace: true, Swap: true, Bytes: 3 << 30, Scope: "disk", Volumes: []SkipVolume{
		{Partition: "p1", Filesystem: "ext4", Offset: 1 << 20, Size: 10 << 30, Bytes: 2 << 30, Ranges: 12, What: "free space"},
		{Partition: "p2", Offset: 10<<30 + 1<<20, Size: 1 << 30, ReadInFull: "no filesystem recognised"},
	}}
	want := []string{
		"3.0 GiB (free space and swap) in the whole disk, reading as zeros",
		"p1 (ext4, 10.0 GiB at 1.0 MiB): free space, 2.0 GiB in 12 ranges",
		"p2 (unknown, 1.0 GiB at 10.0 GiB): read in full: no filesystem recognised",
	}
	if got := s.Lines(); !reflect.DeepEqual(got, want) {
		t.Errorf("Lines =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

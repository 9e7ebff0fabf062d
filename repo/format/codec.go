package format

import (
	"fmt"
	"runtime"
	"slices"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Codecs. A codec is a compression setting with a name (the config's
// default, a capture's --compression, compact's --codec); a chunk frame
// records only its payload type, which is all a reader needs to decode it:
//
//	codec          payload type        encode / decode cost
//	none           0 raw               none
//	s2, s2-better  2 s2                cheapest compression
//	zstd-fastest,  1 zstd              about 3× s2's encode CPU, 2× its decode
//	zstd-default
//	zstd-better,   3 zstd, dense       decoded like 1; many times the encode
//	zstd-best        (decoded as 1)    CPU of zstd-fastest (compaction)
//	auto           2 s2, or 0 raw      s2 where it saves at least 1/8
//
// Zstd's dense levels get their own type so compaction can tell frames it
// already made dense (repo/compact.go) from zstd-fastest ones; levels
// sharing a type are not told apart. Every codec stores a chunk raw when
// compressing it does not pay (minSaving): raw frames are the cheapest to
// read.
//
// Payload types keep the high bit clear: 0x80|type is reserved for
// encrypted payloads.
const (
	PayloadRaw       = 0
	PayloadZstd      = 1
	PayloadS2        = 2
	PayloadZstdDense = 3
)

// Compression (codec) names.
const (
	CompressionNone        = "none"
	CompressionS2          = "s2"
	CompressionS2Better    = "s2-better"
	CompressionZstdFastest = "zstd-fastest"
	CompressionZstdDefault = "zstd-default"
	CompressionZstdBetter  = "zstd-better"
	CompressionZstdBest    = "zstd-best"
	CompressionAuto        = "auto"
)

// codec is one compression setting.
type codec struct {
	name    string
	payload byte
	// minSaving: a compressed payload is kept only when it is smaller than
	// the raw chunk by at least len/minSaving bytes.
	minSaving int
	// encode appends the compressed form of raw to dst.
	encode func(dst, raw []byte) []byte
}

var codecs = []*codec{
	{name: CompressionNone, payload: PayloadRaw},
	{name: CompressionS2, payload: PayloadS2, minSaving: 32, encode: s2Encode(s2.Encode)},
	{name: CompressionS2Better, payload: PayloadS2, minSaving: 32, encode: s2Encode(s2.EncodeBetter)},
	{name: CompressionZstdFastest, payload: PayloadZstd, minSaving: 32, encode: zstdEncode(zstd.SpeedFastest)},
	{name: CompressionZstdDefault, payload: PayloadZstd, minSaving: 32, encode: zstdEncode(zstd.SpeedDefault)},
	{name: CompressionZstdBetter, payload: PayloadZstdDense, minSaving: 32, encode: zstdEncode(zstd.SpeedBetterCompression)},
	{name: CompressionZstdBest, payload: PayloadZstdDense, minSaving: 32, encode: zstdEncode(zstd.SpeedBestCompression)},
	{name: CompressionAuto, payload: PayloadS2, minSaving: 8, encode: s2Encode(s2.Encode)},
}

func lookupCodec(name string) (*codec, error) {
	for _, c := range codecs {
		if c.name == name {
			return c, nil
		}
	}
	return nil, fmt.Errorf("unknown compression %q (one of %v)", name, CompressionNames())
}

// CompressionNames lists the codec names, cheapest first.
func CompressionNames() []string {
	out := make([]string, len(codecs))
	for i, c := range codecs {
		out[i] = c.name
	}
	return out
}

// ValidCompression checks a compression name.
func ValidCompression(name string) error {
	_, err := lookupCodec(name)
	return err
}

// CompressionPayload returns the payload type a codec writes for chunks
// that compress (PayloadRaw for none).
func CompressionPayload(name string) (byte, error) {
	c, err := lookupCodec(name)
	if err != nil {
		return 0, err
	}
	return c.payload, nil
}

// FramePayload returns a frame's payload type after checking its header
// (not its checksum).
func FramePayload(frame []byte) (byte, error) {
	if len(frame) < ChunkHeaderSize || [4]byte(frame[0:4]) != chunkMagic || frame[4] != ChunkVersion {
		return 0, fmt.Errorf("chunk frame: bad header: %w", ErrCorrupt)
	}
	return frame[5], nil
}

// s2Encode appends an s2 block to dst, which it grows to the block's
// worst case first so the encoder writes in place.
func s2Encode(enc func(dst, src []byte) []byte) func(dst, raw []byte) []byte {
	return func(dst, raw []byte) []byte {
		n := s2.MaxEncodedLen(len(raw))
		dst = slices.Grow(dst, n)
		out := enc(dst[len(dst):len(dst)+n], raw)
		return dst[:len(dst)+len(out)]
	}
}

// zstdEncode appends a zstd frame of the given level to dst. Encoders
// are made on first use and shared (each runs up to GOMAXPROCS encodes at
// once).
func zstdEncode(level zstd.EncoderLevel) func(dst, raw []byte) []byte {
	var once sync.Once
	var enc *zstd.Encoder
	return func(dst, raw []byte) []byte {
		once.Do(func() {
			e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderCRC(false),
				zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithWindowSize(1<<20))
			if err != nil {
				panic(fmt.Sprintf("zstd encoder with constant options: %v", err)) // cannot happen
			}
			enc = e
		})
		return enc.EncodeAll(raw, dst)
	}
}

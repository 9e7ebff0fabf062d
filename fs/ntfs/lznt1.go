package ntfs

import (
	"encoding/binary"
	"fmt"

	"github.com/vmvault/vmvault/fs"
)

// lznt1Block is the size every LZNT1 chunk decompresses to (the last one
// of a compression unit may stop short).
const lznt1Block = 4096

// lznt1 decompresses one NTFS compression unit into out (len(out) is the
// unit size) and returns how many bytes it produced; the caller zeroes the
// rest. The input is a sequence of chunks, each a 16-bit header (bits 0–11:
// chunk length − 3, bit 15: compressed) and its data; a zero header or the
// end of the input ends the unit. A stored chunk is copied; a compressed
// one is groups of a flag byte and eight tokens, each a literal byte (flag
// bit 0) or a 16-bit back reference (flag bit 1) whose split between
// distance and length depends on the position within the 4 KiB block. A
// compressed chunk that produces less than 4 KiB is followed by zeros up
// to the block's end. Anything that would read or write out of bounds is an
// error wrapping fs.ErrCorrupt.
func lznt1(out, in []byte) (int, error) {
	le := binary.LittleEndian
	o := 0
	for i := 0; i+2 <= len(in) && o < len(out); {
		h := le.Uint16(in[i:])
		if h == 0 {
			break
		}
		end := i + 2 + int(h&0x0fff) + 1
		if end > len(in) {
			return o, fmt.Errorf("ntfs: compressed chunk at %d runs %d bytes past the unit: %w", i, end-len(in), fs.ErrCorrupt)
		}
		blockEnd := min(o+lznt1Block, len(out))
		src := in[i+2 : end]
		i = end
		if h&0x8000 == 0 {
			if len(src) > blockEnd-o {
				return o, fmt.Errorf("ntfs: stored chunk of %d bytes overflows the unit: %w", len(src), fs.ErrCorrupt)
			}
			o += copy(out[o:], src)
			continue
		}
		start := o
		for s := 0; s < len(src); {
			flags := src[s]
			s++
			for bit := 0; bit < 8 && s < len(src); bit, flags = bit+1, flags>>1 {
				if flags&1 == 0 {
					if o >= blockEnd {
						return o, fmt.Errorf("ntfs: compressed chunk overflows its 4 KiB block: %w", fs.ErrCorrupt)
					}
					out[o] = src[s]
					o++
					s++
					continue
				}
				if s+2 > len(src) {
					return o, fmt.Errorf("ntfs: truncated back reference: %w", fs.ErrCorrupt)
				}
				tok := int(le.Uint16(src[s:]))
				s += 2
				pos := o - start
				if pos == 0 {
					return o, fmt.Errorf("ntfs: back reference at the start of a block: %w", fs.ErrCorrupt)
				}
				// distance bits grow from 4 to 12 as the position grows
				lenBits := 12
				for p := pos - 1; p >= 0x10; p >>= 1 {
					lenBits--
				}
				dist := tok>>lenBits + 1
				n := tok&(1<<lenBits-1) + 3
				if dist > pos || o+n > blockEnd {
					return o, fmt.Errorf("ntfs: back reference (distance %d, length %d) out of its block: %w", dist, n, fs.ErrCorrupt)
				}
				for k := 0; k < n; k++ { // overlapping copies repeat bytes
					out[o] = out[o-dist]
					o++
				}
			}
		}
		clear(out[o:blockEnd])
		o = blockEnd
	}
	return o, nil
}

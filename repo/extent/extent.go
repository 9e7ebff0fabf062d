// Package extent is the byte-range vocabulary every layer shares: the
// changed and allocated ranges of a disk that capture sources hand to the
// repository writer, the zero and data runs of a restore point's disk that
// the NBD server reports, and the data ranges of a file inside a guest
// filesystem. It imports nothing, so any package may use it.
//
// Invariant: functions here never return overlapping or unsorted output
// when they promise normalized ranges, and never panic on hostile input
// (negative or overflowing ranges are dropped or reported by Check).
package extent

import (
	"fmt"
	"sort"
)

// Range is the byte range [Offset, Offset+Length).
type Range struct {
	Offset, Length int64
}

// End returns Offset+Length.
func (r Range) End() int64 { return r.Offset + r.Length }

// Extent is a range that either reads as all zeros (Zero) or may hold data.
type Extent struct {
	Offset, Length int64
	Zero           bool
}

// Normalize sorts ranges and merges overlapping or adjacent ones, dropping
// empty and negative ones. The input is not modified.
func Normalize(rs []Range) []Range {
	out := make([]Range, 0, len(rs))
	for _, r := range rs {
		if r.Length > 0 && r.Offset >= 0 {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	merged := out[:0]
	for _, r := range out {
		if n := len(merged); n > 0 && r.Offset <= merged[n-1].End() {
			merged[n-1].Length = max(merged[n-1].Length, r.End()-merged[n-1].Offset)
			continue
		}
		merged = append(merged, r)
	}
	return merged
}

// Sum returns the total length of rs (overlaps counted twice).
func Sum(rs []Range) int64 {
	var n int64
	for _, r := range rs {
		n += r.Length
	}
	return n
}

// Check reports the first range that does not lie within [0, size).
func Check(rs []Range, size int64) error {
	for _, r := range rs {
		if r.Offset < 0 || r.Length < 0 || r.Offset > size-r.Length {
			return fmt.Errorf("range [%d,+%d) lies outside the %d-byte disk", r.Offset, r.Length, size)
		}
	}
	return nil
}

// Intersect returns the parts of a that lie within b; both must be
// normalized. The result is normalized.
func Intersect(a, b []Range) []Range {
	var out []Range
	for i, j := 0, 0; i < len(a) && j < len(b); {
		lo, hi := max(a[i].Offset, b[j].Offset), min(a[i].End(), b[j].End())
		if lo < hi {
			out = append(out, Range{Offset: lo, Length: hi - lo})
		}
		if a[i].End() < b[j].End() {
			i++
		} else {
			j++
		}
	}
	return out
}

// Subtract returns the parts of a that lie outside b; both must be
// normalized. The result is normalized.
func Subtract(a, b []Range) []Range {
	var out []Range
	j := 0
	for _, r := range a {
		lo, end := r.Offset, r.End()
		for j < len(b) && b[j].End() <= lo {
			j++
		}
		for k := j; k < len(b) && b[k].Offset < end; k++ {
			if b[k].Offset > lo {
				out = append(out, Range{Offset: lo, Length: b[k].Offset - lo})
			}
			lo = max(lo, b[k].End())
		}
		if lo < end {
			out = append(out, Range{Offset: lo, Length: end - lo})
		}
	}
	return out
}

// Builder collects ranges added in ascending order of offset into a
// normalized list of at most Max ranges (0: no limit). When more would be
// needed it closes the gaps below a growing threshold (merging their
// neighbours), so the list always covers at least everything added; the
// memory a hostile input (an allocation bitmap of alternating bits) can
// make it hold stays bounded.
type Builder struct {
	Max int
	gap int64 // gaps shorter than this are closed
	out []Range
}

// Add adds [off, off+n); off must not be below an earlier range's start.
func (b *Builder) Add(off, n int64) {
	if n <= 0 || off < 0 {
		return
	}
	if k := len(b.out); k > 0 && off <= b.out[k-1].End()+b.gap {
		b.out[k-1].Length = max(b.out[k-1].End(), off+n) - b.out[k-1].Offset
		return
	}
	b.out = append(b.out, Range{Offset: off, Length: n})
	if b.Max > 0 && len(b.out) > b.Max {
		for len(b.out) > b.Max/2 {
			b.gap = max(2*b.gap, 4096)
			merged := b.out[:1]
			for _, r := range b.out[1:] {
				if last := &merged[len(merged)-1]; r.Offset <= last.End()+b.gap {
					last.Length = max(last.End(), r.End()) - last.Offset
					continue
				}
				merged = append(merged, r)
			}
			b.out = merged
		}
	}
}

// Ranges returns the ranges added so far, normalized.
func (b *Builder) Ranges() []Range { return Normalize(b.out) }

// AddBits adds the runs of set bits among the first n bits of bitmap (bit
// i is bit i%8 of byte i/8): bit i stands for [base+i*unit, +unit). It is
// how allocation bitmaps become ranges.
func (b *Builder) AddBits(bitmap []byte, n, base, unit int64) {
	n = min(n, int64(len(bitmap))*8)
	run := int64(-1)
	for i := int64(0); i < n; i++ {
		if i%8 == 0 && i+8 <= n && (bitmap[i/8] == 0 || bitmap[i/8] == 0xff) {
			full := bitmap[i/8] == 0xff
			if full && run < 0 {
				run = i
			} else if !full && run >= 0 {
				b.Add(base+run*unit, (i-run)*unit)
				run = -1
			}
			i += 7
			continue
		}
		set := bitmap[i/8]&(1<<(i%8)) != 0
		if set && run < 0 {
			run = i
		} else if !set && run >= 0 {
			b.Add(base+run*unit, (i-run)*unit)
			run = -1
		}
	}
	if run >= 0 {
		b.Add(base+run*unit, (n-run)*unit)
	}
}

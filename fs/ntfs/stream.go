package ntfs

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/repo/extent"
)

// maxUnit bounds a compression unit (16 clusters of at most 4 KiB in
// every volume Windows or ntfs-3g compress; larger is refused).
const maxUnit = 1 << 20

// stream is the content of one attribute (a $DATA stream, a directory's
// index allocation or bitmap): resident bytes, or clusters of the volume
// mapped by the runs of all the attribute's extents, decompressed unit by
// unit when the attribute is compressed. Bytes past the initialized size
// read as zeros. Safe for concurrent use; it does not touch go-ntfs.
type stream struct {
	vol      io.ReaderAt
	volSize  int64
	cs       int64 // cluster size
	size     int64
	initSize int64
	resident []byte
	runs     []run // sorted by VCN, not overlapping; gaps are holes
	unit     int64 // compression unit in bytes; 0 when not compressed
	cu       int64 // compression unit in clusters

	mu       sync.Mutex
	cacheIdx int64 // unit held in cache, -1 for none
	cache    []byte
}

// openStream builds the stream of the attribute of type typ and name name
// from all its extents in rec.
func (f *FS) openStream(rec *record, typ uint32, name string) (*stream, error) {
	exts := rec.find(typ, name)
	if len(exts) == 0 {
		return nil, fmt.Errorf("ntfs: record %d has no attribute %#x %q: %w", rec.num, typ, name, fs.ErrNotExist)
	}
	s := &stream{vol: f.r, volSize: f.size, cs: f.clusterSize, cacheIdx: -1}
	if exts[0].resident {
		s.resident = exts[0].content
		s.size = int64(len(s.resident))
		s.initSize = s.size
		return s, nil
	}
	sort.Slice(exts, func(i, j int) bool { return exts[i].lowVCN < exts[j].lowVCN })
	first := exts[0]
	if first.lowVCN != 0 {
		return nil, fmt.Errorf("ntfs: record %d attribute %#x %q has no extent at VCN 0: %w", rec.num, typ, name, fs.ErrCorrupt)
	}
	s.size, s.initSize = first.dataSize, min(first.initSize, first.dataSize)
	next := int64(0)
	for _, a := range exts {
		if a.resident {
			return nil, fmt.Errorf("ntfs: record %d attribute %#x %q mixes resident and non-resident extents: %w", rec.num, typ, name, fs.ErrCorrupt)
		}
		if a.lowVCN < next {
			return nil, fmt.Errorf("ntfs: record %d attribute %#x %q: extents overlap at VCN %d: %w", rec.num, typ, name, a.lowVCN, fs.ErrCorrupt)
		}
		if len(s.runs)+len(a.runs) > maxRuns {
			return nil, fmt.Errorf("ntfs: record %d attribute %#x %q has more than %d runs: %w", rec.num, typ, name, maxRuns, fs.ErrCorrupt)
		}
		s.runs = append(s.runs, a.runs...)
		if n := len(a.runs); n > 0 {
			next = a.runs[n-1].vcn + a.runs[n-1].length
		}
	}
	if first.flags&attrFlagCompressed != 0 && first.cuShift > 0 {
		s.cu = 1 << first.cuShift
		s.unit = s.cu * s.cs
		if s.unit > maxUnit {
			return nil, fmt.Errorf("ntfs: record %d: compression unit of %d bytes: %w", rec.num, s.unit, fs.ErrCorrupt)
		}
	}
	return s, nil
}

// Size is the stream's size in bytes.
func (s *stream) Size() int64 { return s.size }

// ReadAt implements io.ReaderAt.
func (s *stream) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("ntfs: negative offset")
	}
	if off >= s.size {
		return 0, io.EOF
	}
	want := int(min(int64(len(p)), s.size-off))
	if s.resident != nil || s.runs == nil && s.unit == 0 {
		n := 0
		if off < int64(len(s.resident)) {
			n = copy(p[:want], s.resident[off:])
		}
		clear(p[n:want])
	} else {
		for n := 0; n < want; {
			pos := off + int64(n)
			if pos >= s.initSize {
				clear(p[n:want])
				break
			}
			lim := n + int(min(int64(want-n), s.initSize-pos))
			var k int
			var err error
			if s.unit > 0 {
				k, err = s.readCompressed(p[n:lim], pos)
			} else {
				k, err = s.readPlain(p[n:lim], pos)
			}
			if err != nil {
				return n, err
			}
			n += k
		}
	}
	if want < len(p) {
		return want, io.EOF
	}
	return want, nil
}

// runAt returns the index of the run holding cluster vcn, or of the first
// run after it (len(s.runs) when none), and whether it holds vcn.
func (s *stream) runAt(vcn int64) (int, bool) {
	i := sort.Search(len(s.runs), func(i int) bool { return s.runs[i].vcn+s.runs[i].length > vcn })
	return i, i < len(s.runs) && s.runs[i].vcn <= vcn
}

// readVolume reads p at a byte offset of the volume, which must hold it.
func (s *stream) readVolume(p []byte, off int64) error {
	if off < 0 || off > s.volSize-int64(len(p)) {
		return fmt.Errorf("ntfs: data at volume offset %d+%d lies past the %d-byte volume: %w", off, len(p), s.volSize, fs.ErrCorrupt)
	}
	n, err := s.vol.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("ntfs: read volume at %d: %w", off, err)
}

// readPlain reads from an uncompressed stream: up to the end of the run
// (or hole) pos lies in.
func (s *stream) readPlain(p []byte, pos int64) (int, error) {
	vcn := pos / s.cs
	i, in := s.runAt(vcn)
	if !in { // a gap between extents, or past the last run: a hole
		end := int64(len(p))
		if i < len(s.runs) {
			end = min(end, s.runs[i].vcn*s.cs-pos)
		}
		clear(p[:end])
		return int(end), nil
	}
	r := s.runs[i]
	n := min(int64(len(p)), (r.vcn+r.length)*s.cs-pos)
	if r.sparse {
		clear(p[:n])
		return int(n), nil
	}
	if err := s.readVolume(p[:n], r.lcn*s.cs+pos-r.vcn*s.cs); err != nil {
		return 0, err
	}
	return int(n), nil
}

// readCompressed reads from a compressed stream up to the end of the
// compression unit pos lies in.
func (s *stream) readCompressed(p []byte, pos int64) (int, error) {
	u := pos / s.unit
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cacheIdx != u {
		if s.cache == nil {
			s.cache = make([]byte, s.unit)
		}
		s.cacheIdx = -1
		if err := s.decodeUnit(s.cache, u); err != nil {
			return 0, err
		}
		s.cacheIdx = u
	}
	return copy(p, s.cache[pos-u*s.unit:]), nil
}

// decodeUnit fills out (one unit) with the content of compression unit u.
// A unit whose clusters are all allocated is stored as is; one with none
// is a hole; otherwise its allocated clusters, in VCN order, hold the
// LZNT1-compressed data.
func (s *stream) decodeUnit(out []byte, u int64) error {
	type seg struct{ lcn, n int64 }
	var segs []seg
	alloc := int64(0)
	first, last := u*s.cu, (u+1)*s.cu
	i, _ := s.runAt(first)
	for ; i < len(s.runs) && s.runs[i].vcn < last; i++ {
		r := s.runs[i]
		lo, hi := max(r.vcn, first), min(r.vcn+r.length, last)
		if r.sparse || hi <= lo {
			continue
		}
		segs = append(segs, seg{r.lcn + lo - r.vcn, hi - lo})
		alloc += hi - lo
	}
	if alloc == 0 {
		clear(out)
		return nil
	}
	var in []byte
	if alloc == s.cu {
		in = out
	} else {
		in = make([]byte, alloc*s.cs)
	}
	o := int64(0)
	for _, g := range segs {
		if err := s.readVolume(in[o:o+g.n*s.cs], g.lcn*s.cs); err != nil {
			return err
		}
		o += g.n * s.cs
	}
	if alloc == s.cu {
		return nil
	}
	n, err := lznt1(out, in)
	if err != nil {
		return fmt.Errorf("compression unit %d: %w", u, err)
	}
	clear(out[n:])
	return nil
}

// dataExtents lists the byte ranges of the stream that may hold data
// (allocated clusters below the initialized size), normalized.
func (s *stream) dataExtents() []extent.Range {
	if s.resident != nil || len(s.runs) == 0 {
		if s.resident != nil && s.size > 0 {
			return []extent.Range{{Offset: 0, Length: s.size}}
		}
		return nil
	}
	var out []extent.Range
	add := func(off, n int64) {
		n = min(n, s.initSize-off)
		if n <= 0 {
			return
		}
		if k := len(out); k > 0 && out[k-1].End() >= off {
			out[k-1].Length = max(out[k-1].End(), off+n) - out[k-1].Offset
			return
		}
		out = append(out, extent.Range{Offset: off, Length: n})
	}
	for _, r := range s.runs {
		if r.sparse {
			continue
		}
		off, n := r.vcn*s.cs, r.length*s.cs
		if s.unit > 0 { // a unit with any cluster holds data throughout
			end := (off + n + s.unit - 1) / s.unit * s.unit
			off = off / s.unit * s.unit
			n = end - off
		}
		add(off, n)
	}
	return out
}

// physical lists the volume byte ranges holding the stream's clusters.
func (s *stream) physical() []extent.Range { return s.physicalFrom(0) }

// physicalFrom lists the volume byte ranges holding the stream's clusters
// from the cluster that holds byte off on.
func (s *stream) physicalFrom(off int64) []extent.Range {
	first := (off + s.cs - 1) / s.cs
	var out []extent.Range
	for _, r := range s.runs {
		lo := max(r.vcn, first)
		if r.sparse || lo >= r.vcn+r.length {
			continue
		}
		out = append(out, extent.Range{Offset: (r.lcn + lo - r.vcn) * s.cs, Length: (r.vcn + r.length - lo) * s.cs})
	}
	return extent.Normalize(out)
}

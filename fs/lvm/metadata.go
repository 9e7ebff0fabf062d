package lvm

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

const (
	maxDepth = 32
	// maxExtents bounds extent counts and positions (2^40 extents of the
	// smallest size, 512 bytes, is 512 TiB: any real LV fits).
	maxExtents = 1 << 40
	maxLVSize  = 1 << 62
)

// VG is a volume group as one metadata text describes it.
type VG struct {
	Name       string
	ID         string
	Seqno      uint64
	ExtentSize int64 // bytes
	PVs        []VGPV
	LVs        []LV
}

// VGPV is one physical volume of a VG.
type VGPV struct {
	Name    string // metadata name ("pv0")
	UUID    string // without dashes, as in the PV label
	Device  string // the device path when the metadata was written (a hint)
	PEStart int64  // bytes from the PV's start to its first extent
	PECount int64
}

// LV is one logical volume.
type LV struct {
	Name    string
	Visible bool
	Size    int64 // bytes
	// Segments map the LV's bytes in order, without gaps, when the LV can
	// be mapped (Unsupported is empty).
	Segments []Segment
	// Unsupported says why the LV's bytes cannot be mapped ("" when
	// they can): a segment type other than linear or striped.
	Unsupported string
}

// Segment is a run of an LV's bytes on one or more PVs. With several
// stripes, StripeSize-byte chunks go round the stripes in turn.
type Segment struct {
	Start, Length int64 // bytes within the LV
	Type          string
	StripeSize    int64 // bytes; 0 with one stripe
	Stripes       []Area
}

// Area is where one stripe of a segment starts.
type Area struct {
	PV     string // PV UUID without dashes
	Offset int64  // bytes from the PV's start
}

// ParseVG parses a metadata text (the VG section and the header keys).
func ParseVG(text string) (*VG, error) {
	root, err := parseConfig(text)
	if err != nil {
		return nil, err
	}
	if len(root.subs) != 1 {
		return nil, corrupt("metadata holds %d volume groups", len(root.subs))
	}
	s := root.subs[0]
	vg := &VG{Name: s.name, ID: s.str("id")}
	seq, ok := s.num("seqno")
	if !ok || seq < 0 {
		return nil, corrupt("VG %s: no seqno", vg.Name)
	}
	vg.Seqno = uint64(seq)
	es, ok := s.num("extent_size")
	if !ok || es <= 0 || es > 1<<32 {
		return nil, corrupt("VG %s: extent size %d sectors", vg.Name, es)
	}
	vg.ExtentSize = es * sector
	pvs := s.sub("physical_volumes")
	if pvs == nil {
		return nil, corrupt("VG %s has no physical_volumes", vg.Name)
	}
	byName := map[string]VGPV{}
	for _, p := range pvs.subs {
		start, ok1 := p.num("pe_start")
		count, ok2 := p.num("pe_count")
		if !ok1 || !ok2 || start < 0 || start > maxLVSize/sector || count < 0 || count > maxExtents {
			return nil, corrupt("VG %s PV %s: pe_start %d, pe_count %d", vg.Name, p.name, start, count)
		}
		pv := VGPV{Name: p.name, UUID: strings.ReplaceAll(p.str("id"), "-", ""), Device: p.str("device"),
			PEStart: start * sector, PECount: count}
		byName[p.name] = pv
		vg.PVs = append(vg.PVs, pv)
	}
	lvs := s.sub("logical_volumes")
	if lvs == nil {
		return vg, nil
	}
	cowOf := map[string]string{} // cow store LV → origin
	for _, l := range lvs.subs {
		lv, err := parseLV(vg, l, byName)
		if err != nil {
			return nil, err
		}
		for _, seg := range l.subs {
			if seg.str("type") == "snapshot" {
				cowOf[seg.str("cow_store")] = seg.str("origin")
			}
		}
		vg.LVs = append(vg.LVs, lv)
	}
	for i := range vg.LVs {
		if origin, ok := cowOf[vg.LVs[i].Name]; ok {
			vg.LVs[i].Unsupported = fmt.Sprintf("snapshot of %s (its copy-on-write store; reading LVM snapshots is not supported, read %s instead)", origin, origin)
		}
	}
	return vg, nil
}

func parseLV(vg *VG, l *section, pvs map[string]VGPV) (LV, error) {
	lv := LV{Name: l.name}
	for _, st := range l.strs("status") {
		if st == "VISIBLE" {
			lv.Visible = true
		}
	}
	type rawSeg struct {
		start, count int64
		s            *section
	}
	var segs []rawSeg
	for _, s := range l.subs {
		if !strings.HasPrefix(s.name, "segment") {
			continue
		}
		start, ok1 := s.num("start_extent")
		count, ok2 := s.num("extent_count")
		if !ok1 || !ok2 || start < 0 || start > maxExtents || count <= 0 || count > maxExtents {
			return lv, corrupt("LV %s/%s %s: extents %d+%d", vg.Name, lv.Name, s.name, start, count)
		}
		segs = append(segs, rawSeg{start, count, s})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].start < segs[j].start })
	next := int64(0)
	for _, rs := range segs {
		if rs.start != next {
			return lv, corrupt("LV %s/%s: segment at extent %d, expected %d", vg.Name, lv.Name, rs.start, next)
		}
		next += rs.count
		if next > maxLVSize/vg.ExtentSize {
			return lv, corrupt("LV %s/%s larger than %d bytes", vg.Name, lv.Name, int64(maxLVSize))
		}
		typ := rs.s.str("type")
		seg := Segment{Start: rs.start * vg.ExtentSize, Length: rs.count * vg.ExtentSize, Type: typ}
		switch typ {
		case "striped", "linear":
			if err := parseStripes(vg, lv.Name, rs.s, rs.count, &seg, pvs); err != nil {
				return lv, err
			}
		case "thin":
			if lv.Unsupported == "" {
				lv.Unsupported = fmt.Sprintf("thin volume in pool %s: thin provisioning is not supported", rs.s.str("thin_pool"))
			}
		default:
			if lv.Unsupported == "" {
				lv.Unsupported = fmt.Sprintf("segment type %q is not supported (only linear and striped)", typ)
			}
		}
		lv.Segments = append(lv.Segments, seg)
	}
	lv.Size = next * vg.ExtentSize
	if lv.Unsupported != "" {
		lv.Segments = nil
	}
	return lv, nil
}

func parseStripes(vg *VG, lvName string, s *section, count int64, seg *Segment, pvs map[string]VGPV) error {
	n, ok := s.num("stripe_count")
	list := s.list("stripes")
	if !ok || n < 1 || n > 128 || int64(len(list)) != 2*n || count%n != 0 {
		return corrupt("LV %s/%s %s: %d stripes listed as %d values for %d extents", vg.Name, lvName, s.name, n, len(list), count)
	}
	if n > 1 {
		size, ok := s.num("stripe_size")
		if !ok || size <= 0 || size > vg.ExtentSize/sector || size&(size-1) != 0 {
			return corrupt("LV %s/%s %s: stripe size %d sectors", vg.Name, lvName, s.name, size)
		}
		seg.StripeSize = size * sector
	}
	per := count / n
	for i := int64(0); i < n; i++ {
		name, start := list[2*i], list[2*i+1]
		pv, ok := pvs[name.s]
		if name.isNum || !ok {
			return corrupt("LV %s/%s %s: stripe %d on unknown PV %q", vg.Name, lvName, s.name, i, name.s)
		}
		if !start.isNum || start.n < 0 || start.n > pv.PECount || per > pv.PECount-start.n {
			return corrupt("LV %s/%s %s: stripe %d at extent %d+%d of PV %s (%d extents)", vg.Name, lvName, s.name, i, start.n, per, name.s, pv.PECount)
		}
		seg.Stripes = append(seg.Stripes, Area{PV: pv.UUID, Offset: pv.PEStart + start.n*vg.ExtentSize})
	}
	return nil
}

// ---- the metadata text: sections, key = value, arrays, comments ----

type value struct {
	s     string
	n     int64
	isNum bool
	list  []value
}

type section struct {
	name string
	keys map[string]value
	subs []*section
}

func (s *section) str(k string) string { return s.keys[k].s }

func (s *section) num(k string) (int64, bool) {
	v, ok := s.keys[k]
	return v.n, ok && v.isNum
}

func (s *section) list(k string) []value { return s.keys[k].list }

func (s *section) strs(k string) []string {
	var out []string
	for _, v := range s.keys[k].list {
		out = append(out, v.s)
	}
	return out
}

func (s *section) sub(name string) *section {
	for _, c := range s.subs {
		if c.name == name {
			return c
		}
	}
	return nil
}

type parser struct {
	t   string
	pos int
}

func parseConfig(text string) (*section, error) {
	p := &parser{t: text}
	root := &section{keys: map[string]value{}}
	if err := p.body(root, 0); err != nil {
		return nil, err
	}
	if p.pos < len(p.t) {
		return nil, p.errorf("unexpected %q", p.t[p.pos])
	}
	return root, nil
}

func (p *parser) errorf(format string, args ...any) error {
	line := 1 + strings.Count(p.t[:min(p.pos, len(p.t))], "\n")
	return corrupt("metadata line %d: %s", line, fmt.Sprintf(format, args...))
}

func (p *parser) skip() {
	for p.pos < len(p.t) {
		switch c := p.t[p.pos]; {
		case c == '#':
			for p.pos < len(p.t) && p.t[p.pos] != '\n' {
				p.pos++
			}
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			p.pos++
		default:
			return
		}
	}
}

func isIdent(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_.+-/:@", c) >= 0
}

func (p *parser) ident() string {
	start := p.pos
	for p.pos < len(p.t) && isIdent(p.t[p.pos]) {
		p.pos++
	}
	return p.t[start:p.pos]
}

// body parses items until '}' (depth > 0) or the end of the text.
func (p *parser) body(s *section, depth int) error {
	if depth > maxDepth {
		return p.errorf("sections nested more than %d deep", maxDepth)
	}
	for {
		p.skip()
		if p.pos >= len(p.t) {
			if depth > 0 {
				return p.errorf("section %s not closed", s.name)
			}
			return nil
		}
		if p.t[p.pos] == '}' {
			if depth == 0 {
				return p.errorf("unmatched '}'")
			}
			p.pos++
			return nil
		}
		name := p.ident()
		if name == "" {
			return p.errorf("expected a name, found %q", p.t[p.pos])
		}
		p.skip()
		if p.pos >= len(p.t) {
			return p.errorf("%s: unexpected end", name)
		}
		switch p.t[p.pos] {
		case '{':
			p.pos++
			c := &section{name: name, keys: map[string]value{}}
			if err := p.body(c, depth+1); err != nil {
				return err
			}
			s.subs = append(s.subs, c)
		case '=':
			p.pos++
			v, err := p.value(true)
			if err != nil {
				return err
			}
			s.keys[name] = v
		default:
			return p.errorf("%s: expected '=' or '{', found %q", name, p.t[p.pos])
		}
	}
}

func (p *parser) value(allowList bool) (value, error) {
	p.skip()
	if p.pos >= len(p.t) {
		return value{}, p.errorf("missing value")
	}
	switch c := p.t[p.pos]; {
	case c == '"':
		return p.str()
	case c == '[' && allowList:
		p.pos++
		var v value
		for {
			p.skip()
			if p.pos < len(p.t) && p.t[p.pos] == ']' {
				p.pos++
				return v, nil
			}
			if len(v.list) > 0 {
				if p.pos >= len(p.t) || p.t[p.pos] != ',' {
					return value{}, p.errorf("expected ',' or ']' in a list")
				}
				p.pos++
			}
			e, err := p.value(false)
			if err != nil {
				return value{}, err
			}
			v.list = append(v.list, e)
		}
	case c == '-' || c >= '0' && c <= '9':
		start := p.pos
		p.pos++
		for p.pos < len(p.t) && (p.t[p.pos] >= '0' && p.t[p.pos] <= '9' || p.t[p.pos] == '.') {
			p.pos++
		}
		lit := p.t[start:p.pos]
		n, err := strconv.ParseInt(lit, 10, 64)
		if err != nil {
			if _, ferr := strconv.ParseFloat(lit, 64); ferr == nil {
				return value{s: lit}, nil // floats are kept as text (none is used here)
			}
			return value{}, p.errorf("number %q", lit)
		}
		return value{n: n, isNum: true, s: lit}, nil
	}
	return value{}, p.errorf("unexpected %q", p.t[p.pos])
}

func (p *parser) str() (value, error) {
	p.pos++ // opening quote
	var b strings.Builder
	for p.pos < len(p.t) {
		c := p.t[p.pos]
		p.pos++
		switch c {
		case '"':
			return value{s: b.String()}, nil
		case '\\':
			if p.pos >= len(p.t) {
				return value{}, p.errorf("string ends in a backslash")
			}
			b.WriteByte(p.t[p.pos])
			p.pos++
		default:
			b.WriteByte(c)
		}
	}
	return value{}, p.errorf("string not closed")
}

package pack

import (
	"bytes"
	"slices"
	"time"

	"github.com/vmvault/vmvault/repo/format"
)

// view is where chunks are, as of the pack indexes merged so far: a sorted
// array of entries (several per chunk when it is stored in several packs,
// newest last), the packs they name, and which packs are gone.
type view struct {
	entries []entry
	packs   []packInfo
	packNo  map[format.ID]uint32
}

type entry struct {
	id     format.ID
	pack   uint32
	offset uint32
	length uint32
}

type packInfo struct {
	name  format.ID
	mtime time.Time // when a pack index first named it
	gone  bool
}

// location is one place a chunk's frame can be read from.
type location struct {
	pack           format.ID
	offset, length uint32
	mtime          time.Time
}

func newView() *view { return &view{packNo: map[format.ID]uint32{}} }

func (v *view) packRef(name format.ID, mtime time.Time) uint32 {
	if n, ok := v.packNo[name]; ok {
		return n
	}
	n := uint32(len(v.packs))
	v.packNo[name] = n
	v.packs = append(v.packs, packInfo{name: name, mtime: mtime})
	return n
}

// merge adds a pack index written (or first seen) at mtime: its removals
// apply to what is in the view, its entries go after existing ones of the
// same chunk (newest last).
func (v *view) merge(x *format.PackIndex, mtime time.Time) {
	refs := make([]uint32, len(x.Packs))
	for i, p := range x.Packs {
		refs[i] = v.packRef(p, mtime)
	}
	for _, g := range x.GonePacks {
		v.packs[refs[g]].gone = true
	}
	if len(x.Dead) > 0 {
		dead := map[entryKey]bool{}
		for _, d := range x.Dead {
			dead[entryKey{d.ID, refs[d.Pack]}] = true
		}
		v.entries = slices.DeleteFunc(v.entries, func(e entry) bool { return dead[entryKey{e.id, e.pack}] })
	}
	add := make([]entry, 0, len(x.Entries))
	for _, e := range x.Entries {
		if !v.packs[refs[e.Pack]].gone {
			add = append(add, entry{id: e.ID, pack: refs[e.Pack], offset: e.Offset, length: e.Length})
		}
	}
	v.entries = mergeSorted(v.entries, add)
	if len(x.GonePacks) > 0 {
		v.entries = slices.DeleteFunc(v.entries, func(e entry) bool { return v.packs[e.pack].gone })
	}
}

type entryKey struct {
	id   format.ID
	pack uint32
}

// mergeSorted merges b (sorted by id, as pack indexes are) into a, which
// is sorted with equal ids in age order; b's entries go after a's equals.
func mergeSorted(a, b []entry) []entry {
	if len(b) == 0 {
		return a
	}
	if !slices.IsSortedFunc(b, cmpEntry) {
		slices.SortStableFunc(b, cmpEntry)
	}
	out := make([]entry, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		if cmpEntry(b[j], a[i]) < 0 {
			out = append(out, b[j])
			j++
		} else {
			out = append(out, a[i])
			i++
		}
	}
	out = append(out, a[i:]...)
	out = append(out, b[j:]...)
	// The same entry twice (a merged pack index repeats what the indexes it
	// replaced said): keep the first.
	return slices.CompactFunc(out, func(x, y entry) bool { return x == y })
}

func cmpEntry(x, y entry) int { return bytes.Compare(x.id[:], y.id[:]) }

// span returns the index range of id's entries.
func (v *view) span(id format.ID) (int, int) {
	lo, _ := slices.BinarySearchFunc(v.entries, id, func(e entry, id format.ID) int { return bytes.Compare(e.id[:], id[:]) })
	hi := lo
	for hi < len(v.entries) && v.entries[hi].id == id {
		hi++
	}
	return lo, hi
}

// find returns id's locations in packs not gone, newest first.
func (v *view) find(id format.ID) []location {
	lo, hi := v.span(id)
	var out []location
	for i := hi - 1; i >= lo; i-- {
		e := v.entries[i]
		p := v.packs[e.pack]
		if !p.gone {
			out = append(out, location{pack: p.name, offset: e.offset, length: e.length, mtime: p.mtime})
		}
	}
	return out
}

// remove drops id's entries and returns where they were.
func (v *view) remove(id format.ID) []location {
	lo, hi := v.span(id)
	var out []location
	for i := lo; i < hi; i++ {
		e := v.entries[i]
		out = append(out, location{pack: v.packs[e.pack].name, offset: e.offset, length: e.length, mtime: v.packs[e.pack].mtime})
	}
	v.entries = slices.Delete(v.entries, lo, hi)
	return out
}

// item is one listed chunk.
type item struct {
	id     format.ID
	length uint32
	mtime  time.Time
}

// live lists every chunk once (its newest location), in id order.
func (v *view) live() []item {
	out := make([]item, 0, len(v.entries))
	for i, e := range v.entries {
		if i+1 < len(v.entries) && v.entries[i+1].id == e.id {
			continue
		}
		out = append(out, item{id: e.id, length: e.length, mtime: v.packs[e.pack].mtime})
	}
	return out
}

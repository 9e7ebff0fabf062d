package image

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/lvm"
	"github.com/vmvault/vmvault/repo/extent"
)

// volMap maps the bytes of an LVM logical volume to bytes of the disk:
// segments in volume order, without gaps.
type volMap struct {
	segs []volSeg
}

// volSeg is one segment: length bytes from start in the volume, on one
// stripe or, in chunk-byte pieces, round several stripes; disk[i] is where
// stripe i's first byte lies on the disk.
type volSeg struct {
	start, length int64
	chunk         int64 // 0 for one stripe
	disk          []int64
}

// locate returns where the volume byte at off lies on the disk and how
// many bytes from there are contiguous on the disk (within the segment).
func (m *volMap) locate(off int64) (disk, n int64, ok bool) {
	i := sort.Search(len(m.segs), func(i int) bool { return m.segs[i].start+m.segs[i].length > off })
	if i == len(m.segs) || off < m.segs[i].start {
		return 0, 0, false
	}
	s := &m.segs[i]
	rel := off - s.start
	if len(s.disk) == 1 {
		return s.disk[0] + rel, s.length - rel, true
	}
	n = int64(len(s.disk))
	c := rel / s.chunk
	within := rel % s.chunk
	return s.disk[c%n] + (c/n)*s.chunk + within, s.chunk - within, true
}

// ranges appends the disk ranges holding volume bytes [off, off+length):
// whole rows of a striped segment become one range per stripe.
func (m *volMap) ranges(off, length int64, out []extent.Range) []extent.Range {
	end := off + length
	for _, s := range m.segs {
		a, b := max(off, s.start), min(end, s.start+s.length)
		if a >= b {
			continue
		}
		ra, rb := a-s.start, b-s.start
		if len(s.disk) == 1 {
			out = append(out, extent.Range{Offset: s.disk[0] + ra, Length: rb - ra})
			continue
		}
		n := int64(len(s.disk))
		row := s.chunk * n
		// the partial row at each end chunk by chunk, whole rows per stripe
		firstRow, lastRow := (ra+row-1)/row, rb/row
		piece := func(x, y int64) {
			for x < y {
				c := x / s.chunk
				step := min(y-x, s.chunk-x%s.chunk)
				out = append(out, extent.Range{Offset: s.disk[c%n] + (c/n)*s.chunk + x%s.chunk, Length: step})
				x += step
			}
		}
		if firstRow >= lastRow {
			piece(ra, rb)
			continue
		}
		piece(ra, firstRow*row)
		for i := int64(0); i < n; i++ {
			out = append(out, extent.Range{Offset: s.disk[i] + firstRow*s.chunk, Length: (lastRow - firstRow) * s.chunk})
		}
		piece(lastRow*row, rb)
	}
	return out
}

// DiskRanges returns the byte ranges of the disk that hold bytes r of the
// volume (r is clipped to the volume), normalized. For a partition that is
// r moved by the partition's start; for an LVM logical volume the ranges
// its segments and stripes map r to. A filesystem's allocated ranges
// (fs.AllocationMapper) go through this to become disk ranges.
func (p Partition) DiskRanges(r extent.Range) []extent.Range {
	off, end := max(r.Offset, 0), min(r.End(), p.Size)
	if r.Length <= 0 || off >= end {
		return nil
	}
	if p.vmap == nil {
		if p.Error != "" {
			return nil
		}
		return []extent.Range{{Offset: p.Start + off, Length: end - off}}
	}
	return extent.Normalize(p.vmap.ranges(off, end-off, nil))
}

// volReader reads an LVM logical volume through its map.
type volReader struct {
	r    io.ReaderAt
	m    *volMap
	size int64
}

func (v *volReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= v.size {
		return 0, io.EOF
	}
	want := len(p)
	if rem := v.size - off; int64(want) > rem {
		want = int(rem)
	}
	done := 0
	for done < want {
		disk, n, ok := v.m.locate(off + int64(done))
		if !ok {
			return done, fmt.Errorf("volume byte %d is not mapped", off+int64(done))
		}
		n = min(n, int64(want-done))
		m, err := v.r.ReadAt(p[done:done+int(n)], disk)
		done += m
		if m < int(n) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return done, err
		}
	}
	if want < len(p) {
		return want, io.EOF
	}
	return want, nil
}

type errReader struct{ err error }

func (e errReader) ReadAt([]byte, int64) (int, error) { return 0, e.err }

// DMName is the device-mapper name of an LV: VG and LV joined by '-', with
// every '-' inside either name doubled (vg-0/root → vg--0-root).
func DMName(vg, lv string) string {
	return strings.ReplaceAll(vg, "-", "--") + "-" + strings.ReplaceAll(lv, "-", "--")
}

// pvOnDisk is an LVM physical volume found in a partition of the disk.
type pvOnDisk struct {
	part Partition
	pv   *lvm.PV
}

// readLVM reads the PVs among the disk's partitions, picks the newest
// metadata of each VG and appends every visible LV as a volume. LVs that
// cannot be mapped (on a PV of another disk, an unsupported segment type)
// are appended with Error set.
func (d *Disk) readLVM() {
	var pvs []pvOnDisk
	for i := range d.Partitions {
		p := &d.Partitions[i]
		if p.Filesystem != "LVM2_member" {
			continue
		}
		pv, err := lvm.ReadPV(d.Reader(*p), p.Size)
		if err != nil {
			d.opened[p.Name] = openResult{err: fmt.Errorf("LVM physical volume: %w", err)}
			continue
		}
		p.UUID = dashedUUID(pv.UUID)
		pvs = append(pvs, pvOnDisk{*p, pv})
	}
	if len(pvs) == 0 {
		return
	}
	newest := map[string]*lvm.VG{}
	var order []string
	var bad []string
	for _, p := range pvs {
		for _, text := range p.pv.Texts {
			vg, err := lvm.ParseVG(text)
			if err != nil {
				bad = append(bad, fmt.Sprintf("%s: %v", p.part.Name, err))
				continue
			}
			key := vg.ID + "/" + vg.Name
			if old, ok := newest[key]; !ok || vg.Seqno > old.Seqno {
				if !ok {
					order = append(order, key)
				}
				newest[key] = vg
			}
		}
	}
	byUUID := map[string]Partition{}
	for _, p := range pvs {
		byUUID[p.pv.UUID] = p.part
	}
	pvVG := map[string][]string{} // partition → VG names, for its OpenFS message
	var lvNames []string
	for _, key := range order {
		vg := newest[key]
		for _, pv := range vg.PVs {
			if part, ok := byUUID[pv.UUID]; ok {
				pvVG[part.Name] = append(pvVG[part.Name], vg.Name)
			}
		}
		for _, lv := range vg.LVs {
			if !lv.Visible {
				continue
			}
			v := d.lvVolume(vg, lv, byUUID)
			lvNames = append(lvNames, v.Name)
			d.Partitions = append(d.Partitions, v)
		}
	}
	for _, p := range pvs {
		if _, ok := d.opened[p.part.Name]; ok {
			continue
		}
		msg := "LVM physical volume"
		if vgs := pvVG[p.part.Name]; len(vgs) > 0 {
			msg += " of volume group " + strings.Join(vgs, ", ") + ": its logical volumes are listed as volumes of this disk"
			if len(lvNames) > 0 {
				msg += " (" + strings.Join(lvNames, ", ") + ")"
			}
		} else if len(bad) > 0 {
			msg += ": metadata not readable: " + strings.Join(bad, "; ")
		}
		d.opened[p.part.Name] = openResult{err: errors.New(msg)}
	}
}

// lvVolume builds the volume of one LV and opens its filesystem.
func (d *Disk) lvVolume(vg *lvm.VG, lv lvm.LV, pvs map[string]Partition) Partition {
	v := Partition{
		Name: DMName(vg.Name, lv.Name), Table: "lvm", Size: lv.Size,
		TypeName: "LVM2 logical volume", VG: vg.Name, LV: lv.Name,
	}
	var types []string
	for _, s := range lv.Segments {
		t := s.Type
		if len(s.Stripes) > 1 {
			t = fmt.Sprintf("striped×%d", len(s.Stripes))
		} else if t == "striped" {
			t = "linear"
		}
		if len(types) == 0 || types[len(types)-1] != t {
			types = append(types, t)
		}
	}
	v.Type = strings.Join(types, "+")
	fail := func(err error) Partition {
		v.Error = err.Error()
		v.vmap = nil
		d.opened[v.Name] = openResult{err: err}
		return v
	}
	if lv.Unsupported != "" {
		v.Type = "unsupported"
		return fail(errors.New(lv.Unsupported))
	}
	m := &volMap{}
	for _, s := range lv.Segments {
		vs := volSeg{start: s.Start, length: s.Length, chunk: s.StripeSize}
		per := s.Length / int64(len(s.Stripes))
		for _, a := range s.Stripes {
			part, ok := pvs[a.PV]
			if !ok {
				dev := ""
				for _, pv := range vg.PVs {
					if pv.UUID == a.PV && pv.Device != "" {
						dev = " (last seen as " + pv.Device + ")"
					}
				}
				return fail(fmt.Errorf("logical volume %s/%s spans another disk: its physical volume %s%s is not on this disk", vg.Name, lv.Name, dashedUUID(a.PV), dev))
			}
			if a.Offset < 0 || a.Offset > part.Size || per > part.Size-a.Offset {
				return fail(fmt.Errorf("logical volume %s/%s: segment at %d lies outside physical volume %s (%d bytes): %w", vg.Name, lv.Name, a.Offset, part.Name, part.Size, fs.ErrCorrupt))
			}
			vs.disk = append(vs.disk, part.Start+a.Offset)
		}
		m.segs = append(m.segs, vs)
	}
	v.vmap = m
	if len(m.segs) > 0 {
		v.Start = m.segs[0].disk[0]
	}
	r := d.Reader(v)
	v.Filesystem = Probe(r, v.Size)
	fsys, err := openFS(r, v.Size, v.Filesystem)
	if err == nil {
		v.Label, v.UUID = fsys.Label(), fsys.UUID()
	}
	d.opened[v.Name] = openResult{fsys, err}
	return v
}

// dashedUUID writes a 32-character LVM UUID as LVM prints it (6-4-4-4-4-4-6).
func dashedUUID(u string) string {
	if len(u) != 32 {
		return u
	}
	return u[0:6] + "-" + u[6:10] + "-" + u[10:14] + "-" + u[14:18] + "-" + u[18:22] + "-" + u[22:26] + "-" + u[26:32]
}

// Package image opens a whole disk image — a restore point's disk or a plain
// image file, as an io.ReaderAt — finds its volumes (partitions, and the
// logical volumes of LVM2 physical volumes on it) and the filesystem in
// each, and hands out fs.FileSystem values for them.
//
// Partitions are read through go-diskfs (GPT; MBR primary entries); the
// extended-partition chain of an MBR disk, which go-diskfs does not follow,
// is walked here by reading each EBR with go-diskfs's MBR parser. Partitions
// are named as Linux numbers them: primaries p1–p4 by slot, logical
// partitions from p5, GPT entries by their index; a filesystem or PV that
// fills a disk without a partition table is p0.
//
// LVM2 (fs/lvm): every partition (or whole disk) holding a PV label is
// read; each volume group's newest metadata (by seqno) maps its visible
// logical volumes, which are appended to Disk.Partitions after the
// partitions, named as device-mapper names them (VG-LV, '-' inside a name
// doubled: DMName), with Table "lvm". Linear and striped LVs, in any number
// of segments in any order on the disk's PVs, are read; an LV with a
// segment on a PV that is not on this disk ("spans another disk"), and
// thin, RAID, mirror, cache, snapshot and other LVs are listed with Error
// set and no filesystem. The PV's own partition shows Filesystem
// "LVM2_member" and OpenFS says which volumes it holds.
//
// The volume API, for callers that map filesystem bytes to disk bytes
// (skipping free space at capture): every Partition — a table entry, the
// whole disk (p0) or an LV — is a volume of Size bytes;
//
//	r := d.Reader(p)             // io.ReaderAt of the volume's bytes
//	fsys, err := d.OpenFS(p)     // its filesystem (fs.AllocationMapper when it knows its free space)
//	disk := p.DiskRanges(rng)    // disk byte ranges holding volume bytes rng, normalized
//
// DiskRanges of a partition is rng shifted by p.Start; of an LV, the pieces
// of its segments and stripes (whole stripe rows become one range per
// stripe, so the result stays small for large ranges). A volume with Error
// set has no bytes: DiskRanges returns nil and Reader fails.
//
// Detected and reported without failing the disk: Linux swap ("swap"),
// LUKS ("crypto_LUKS", shown as encrypted, never opened), LVM PVs, and
// unknown or unreadable filesystems: their OpenFS error says why.
//
// Invariants: every table field is range-checked against the disk size
// before it is used, table walks are bounded (128 logical partitions, no
// EBR visited twice), GPT headers are checked before go-diskfs sizes an
// allocation from them, and every LV segment is checked to lie inside its
// PV's partition before it is mapped. A bad entry costs only itself: it is
// left out of Partitions and recorded in TableErrors (a broken EBR chain
// costs the logical partitions from the break on); only a table that
// cannot be read at all fails Open.
package image

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/ext"
	"github.com/vmvault/vmvault/fs/fat"
	"github.com/vmvault/vmvault/fs/lvm"
	"github.com/vmvault/vmvault/fs/ntfs"
	"github.com/vmvault/vmvault/fs/xfs"
)

const (
	sector = 512
	// maxLogical bounds the EBR chain.
	maxLogical = 128
	// maxGPTArray bounds the partition entry array go-diskfs reads.
	maxGPTArray = 1 << 20
)

// Partition is a volume of a disk: one entry of its partition table, the
// whole disk, or an LVM logical volume.
type Partition struct {
	Name     string `json:"name"` // p0, p1, …
	Index    int    `json:"index"`
	Table    string `json:"table"` // "gpt", "mbr" or "none"
	Start    int64  `json:"start"` // bytes
	Size     int64  `json:"size"`  // bytes
	Type     string `json:"type"`  // GPT type GUID or MBR id ("0x83")
	TypeName string `json:"type_name,omitempty"`
	// GPT partition name and unique GUID.
	PartLabel string `json:"part_label,omitempty"`
	PartUUID  string `json:"part_uuid,omitempty"`
	Bootable  bool   `json:"bootable,omitempty"`
	Logical   bool   `json:"logical,omitempty"`
	Extended  bool   `json:"extended,omitempty"`
	// Filesystem found by probing the partition ("ext4", "ntfs", "fat32",
	// "xfs", "swap", "LVM2_member", … or "" when unknown).
	Filesystem string `json:"filesystem,omitempty"`
	Label      string `json:"label,omitempty"`
	UUID       string `json:"uuid,omitempty"`
	// VG and LV name an LVM logical volume (Table "lvm"); Start is then
	// where its first byte lies on the disk.
	VG string `json:"vg,omitempty"`
	LV string `json:"lv,omitempty"`
	// Error says why the volume's bytes cannot be read (an LV on another
	// disk, an unsupported LV type).
	Error string `json:"error,omitempty"`

	vmap *volMap // LVs: where the volume's bytes lie on the disk
}

// TableError is an entry of the partition table that cannot be used.
// Name is the partition it would have been (p3), for a broken EBR chain
// the first logical partition that could not be reached.
type TableError struct {
	Name string
	Err  error
}

func (e TableError) Error() string { return "partition " + e.Name + ": " + e.Err.Error() }

func (e TableError) Unwrap() error { return e.Err }

// MarshalJSON writes {"name": …, "error": …}.
func (e TableError) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Name  string `json:"name"`
		Error string `json:"error"`
	}{e.Name, e.Err.Error()})
}

// Disk is an opened disk image.
type Disk struct {
	r          io.ReaderAt
	size       int64
	Table      string // "gpt", "mbr" or "none"
	ID         string // GPT disk GUID or MBR disk signature
	Partitions []Partition
	// TableErrors are the table's unusable entries, in table order; the
	// good ones are in Partitions.
	TableErrors []TableError

	// opened holds the outcome of opening each partition's filesystem
	// during Open (for its label), so OpenFS does not parse it again.
	// Written only by Open.
	opened map[string]openResult
}

type openResult struct {
	fsys fs.FileSystem
	err  error
}

// Open reads the partition table of a disk of the given size.
func Open(r io.ReaderAt, size int64) (*Disk, error) {
	d := &Disk{r: r, size: size, opened: map[string]openResult{}}
	if size < sector {
		return nil, fmt.Errorf("disk image of %d bytes is too small", size)
	}
	if isGPT(r, size) {
		if err := d.readGPT(); err != nil {
			return nil, err
		}
	} else if kind := Probe(r, size); kind != "" {
		d.Table = "none"
		d.Partitions = []Partition{{Name: "p0", Table: "none", Size: size}}
	} else if hasMBR(r) {
		if err := d.readMBR(); err != nil {
			return nil, err
		}
	} else {
		d.Table = "none"
		d.Partitions = []Partition{{Name: "p0", Table: "none", Size: size}}
	}
	for i := range d.Partitions {
		p := &d.Partitions[i]
		if p.Extended {
			continue
		}
		sr := d.Reader(*p)
		p.Filesystem = Probe(sr, p.Size)
		if p.Filesystem == "LVM2_member" {
			continue // readLVM says what it holds
		}
		fsys, err := openFS(sr, p.Size, p.Filesystem)
		if err == nil {
			p.Label, p.UUID = fsys.Label(), fsys.UUID()
		}
		d.opened[p.Name] = openResult{fsys, err}
	}
	d.readLVM()
	return d, nil
}

// Size is the disk size in bytes.
func (d *Disk) Size() int64 { return d.size }

// Partition returns the partition with the given name (p0, p1, …).
func (d *Disk) Partition(name string) (Partition, error) {
	for _, p := range d.Partitions {
		if p.Name == name {
			return p, nil
		}
	}
	for _, e := range d.TableErrors {
		if e.Name == name {
			return Partition{}, e
		}
	}
	var names []string
	for _, p := range d.Partitions {
		names = append(names, p.Name)
	}
	return Partition{}, fmt.Errorf("no partition %q on this disk (it has %s): %w", name, strings.Join(names, ", "), fs.ErrNotExist)
}

// Reader returns the bytes of a volume (Size bytes from offset 0).
func (d *Disk) Reader(p Partition) io.ReaderAt {
	switch {
	case p.vmap != nil:
		return &volReader{r: d.r, m: p.vmap, size: p.Size}
	case p.Error != "":
		return errReader{errors.New(p.Error)}
	}
	return io.NewSectionReader(d.r, p.Start, p.Size)
}

// OpenFS returns the filesystem in one of d.Partitions (opened once, by
// Open; the value is shared and safe for concurrent use).
func (d *Disk) OpenFS(p Partition) (fs.FileSystem, error) {
	if p.Extended {
		return nil, fmt.Errorf("%s is an extended partition (a container for logical partitions p5 and up)", p.Name)
	}
	res, ok := d.opened[p.Name]
	if !ok {
		res.fsys, res.err = openFS(d.Reader(p), p.Size, p.Filesystem)
	}
	if res.err != nil {
		return nil, fmt.Errorf("open filesystem on %s: %w", p.Name, res.err)
	}
	return res.fsys, nil
}

// OpenFS opens the filesystem occupying r[0:size].
func OpenFS(r io.ReaderAt, size int64) (fs.FileSystem, error) {
	return openFS(r, size, Probe(r, size))
}

func openFS(r io.ReaderAt, size int64, kind string) (fs.FileSystem, error) {
	switch {
	case strings.HasPrefix(kind, "ext"):
		return ext.Open(r, size)
	case kind == "ntfs":
		return ntfs.Open(r, size)
	case strings.HasPrefix(kind, "fat"):
		return fat.Open(r, size)
	case kind == "xfs":
		return xfs.Open(r, size)
	case kind == "":
		return nil, errors.New("no filesystem recognised")
	case kind == "swap":
		return nil, errors.New("Linux swap space: it holds no files")
	case kind == "crypto_LUKS":
		return nil, errors.New("LUKS-encrypted volume: vmvault does not open encrypted volumes")
	case kind == "LVM2_member":
		return nil, errors.New("LVM physical volume: its logical volumes are volumes of the disk it is on")
	}
	return nil, fmt.Errorf("%s filesystems are detected but cannot be read yet", kind)
}

// Probe names the filesystem or volume format at the start of r, or "".
func Probe(r io.ReaderAt, size int64) string {
	head := make([]byte, 4096)
	n, _ := r.ReadAt(head, 0)
	head = head[:n]
	at := func(off int, s string) bool {
		return off+len(s) <= len(head) && string(head[off:off+len(s)]) == s
	}
	switch {
	case ext.Probe(r):
		if fsys, err := ext.Open(r, size); err == nil {
			return fsys.Type()
		}
		return "ext"
	case at(3, "NTFS    "):
		return "ntfs"
	case at(0, "XFSB"):
		return "xfs"
	case lvm.Probe(r):
		return "LVM2_member"
	case at(0, "LUKS\xba\xbe"):
		return "crypto_LUKS"
	case at(4086, "SWAPSPACE2") || at(4086, "SWAP-SPACE"):
		return "swap"
	case at(3, "EXFAT   "):
		return "exfat"
	}
	if k := fat.Probe(head); k != "" {
		return k
	}
	var b [8]byte
	if _, err := r.ReadAt(b[:], 0x10040); err == nil && string(b[:]) == "_BHRfS_M" {
		return "btrfs"
	}
	return ""
}

func hasMBR(r io.ReaderAt) bool {
	var sig [2]byte
	_, err := r.ReadAt(sig[:], 510)
	return err == nil && sig == [2]byte{0x55, 0xaa}
}

func isGPT(r io.ReaderAt, size int64) bool {
	var h [8]byte
	_, err := r.ReadAt(h[:], sector)
	if err == nil && string(h[:]) == "EFI PART" {
		return true
	}
	_, err = r.ReadAt(h[:], size/sector*sector-sector)
	return err == nil && string(h[:]) == "EFI PART" && hasMBR(r)
}

// checkGPTHeader refuses a header whose entry array go-diskfs would
// allocate without bound.
func checkGPTHeader(r io.ReaderAt, off int64) error {
	h := make([]byte, 92)
	if _, err := r.ReadAt(h, off); err != nil {
		return nil // unreadable headers are go-diskfs's to report
	}
	if !bytes.Equal(h[:8], []byte("EFI PART")) {
		return nil
	}
	count := int64(binary.LittleEndian.Uint32(h[0x50:]))
	esize := int64(binary.LittleEndian.Uint32(h[0x54:]))
	if esize < 128 || esize > 4096 || count*esize > maxGPTArray {
		return fmt.Errorf("GPT header at %d claims %d entries of %d bytes: %w", off, count, esize, fs.ErrCorrupt)
	}
	return nil
}

func (d *Disk) readGPT() error {
	for _, off := range []int64{sector, d.size/sector*sector - sector} {
		if err := checkGPTHeader(d.r, off); err != nil {
			return err
		}
	}
	t, err := gpt.Read(&file{r: d.r, size: d.size}, sector, sector)
	if err != nil {
		return fmt.Errorf("read GPT: %w", err)
	}
	d.Table, d.ID = "gpt", strings.ToLower(t.GUID)
	for _, p := range t.Partitions {
		if p.Type == gpt.Unused || p.Index < 1 {
			continue
		}
		start := int64(p.Start) * sector
		size := (int64(p.End) - int64(p.Start) + 1) * sector
		if p.End < p.Start || start >= d.size || size > d.size-start {
			d.TableErrors = append(d.TableErrors, TableError{fmt.Sprintf("p%d", p.Index),
				fmt.Errorf("GPT entry %d (sectors %d–%d) lies outside the %d-byte disk: %w", p.Index, p.Start, p.End, d.size, fs.ErrCorrupt)})
			continue
		}
		typ := strings.ToLower(string(p.Type))
		d.Partitions = append(d.Partitions, Partition{
			Name: fmt.Sprintf("p%d", p.Index), Index: p.Index, Table: "gpt",
			Start: start, Size: size, Type: typ, TypeName: gptTypeNames[typ],
			PartLabel: p.Name, PartUUID: strings.ToLower(p.GUID),
		})
	}
	return nil
}

func isExtended(t mbr.Type) bool { return t == 0x05 || t == 0x0f || t == 0x85 }

func (d *Disk) readMBR() error {
	t, err := mbr.Read(&file{r: d.r, size: d.size}, sector, sector)
	if err != nil {
		return fmt.Errorf("read MBR: %w", err)
	}
	d.Table = "mbr"
	var sig [4]byte
	if _, err := d.r.ReadAt(sig[:], 440); err == nil {
		d.ID = fmt.Sprintf("%08x", binary.LittleEndian.Uint32(sig[:]))
	}
	var extended *Partition
	for i, p := range t.Partitions {
		if p.Type == mbr.Empty || p.Size == 0 {
			continue
		}
		part, err := d.mbrPartition(i+1, p, 0)
		if err != nil {
			d.TableErrors = append(d.TableErrors, TableError{fmt.Sprintf("p%d", i+1), err})
			continue
		}
		if isExtended(p.Type) {
			part.Extended = true
			if extended == nil {
				extended = &part
			}
		}
		d.Partitions = append(d.Partitions, part)
	}
	if extended != nil {
		d.readLogical(*extended)
	}
	return nil
}

func (d *Disk) mbrPartition(index int, p *mbr.Partition, base int64) (Partition, error) {
	start := base + int64(p.Start)*sector
	size := int64(p.Size) * sector
	if start >= d.size || size > d.size-start {
		return Partition{}, fmt.Errorf("MBR partition %d (sector %d, %d sectors) lies outside the %d-byte disk: %w", index, start/sector, p.Size, d.size, fs.ErrCorrupt)
	}
	typ := fmt.Sprintf("0x%02x", byte(p.Type))
	return Partition{
		Name: fmt.Sprintf("p%d", index), Index: index, Table: "mbr",
		Start: start, Size: size, Type: typ, TypeName: mbrTypeNames[byte(p.Type)], Bootable: p.Bootable,
	}, nil
}

// readLogical follows the EBR chain of an extended partition. Each EBR's
// first entry is a logical partition relative to the EBR; its second points
// to the next EBR relative to the extended partition's start. A bad entry
// is recorded in TableErrors and the chain goes on; a broken chain is
// recorded under the first logical partition it cannot reach.
func (d *Disk) readLogical(ext Partition) {
	seen := map[int64]bool{}
	ebr := ext.Start
	for n := 0; ; n++ {
		name := fmt.Sprintf("p%d", 5+n)
		broken := func(format string, args ...any) {
			d.TableErrors = append(d.TableErrors, TableError{name, fmt.Errorf(format, args...)})
		}
		if n >= maxLogical {
			broken("more than %d logical partitions: %w", maxLogical, fs.ErrCorrupt)
			return
		}
		if seen[ebr] {
			broken("extended partition chain loops at sector %d: %w", ebr/sector, fs.ErrCorrupt)
			return
		}
		seen[ebr] = true
		if ebr < ext.Start || ebr >= ext.Start+ext.Size {
			broken("EBR at sector %d outside the extended partition: %w", ebr/sector, fs.ErrCorrupt)
			return
		}
		sub := io.NewSectionReader(d.r, ebr, sector)
		if !hasMBR(sub) {
			broken("EBR at sector %d has no signature: %w", ebr/sector, fs.ErrCorrupt)
			return
		}
		t, err := mbr.Read(&file{r: sub, size: sector}, sector, sector)
		if err != nil {
			broken("read EBR at sector %d: %w", ebr/sector, err)
			return
		}
		var next *mbr.Partition
		if len(t.Partitions) > 1 && isExtended(t.Partitions[1].Type) && t.Partitions[1].Size > 0 {
			next = t.Partitions[1]
		}
		if len(t.Partitions) > 0 && t.Partitions[0].Type != mbr.Empty && t.Partitions[0].Size > 0 {
			part, err := d.mbrPartition(5+n, t.Partitions[0], ebr)
			switch {
			case err != nil:
				d.TableErrors = append(d.TableErrors, TableError{name, err})
			case part.Start < ext.Start || part.Start+part.Size > ext.Start+ext.Size:
				broken("logical partition %s (sector %d, %d bytes) lies outside its extended partition: %w", name, part.Start/sector, part.Size, fs.ErrCorrupt)
			default:
				part.Logical = true
				d.Partitions = append(d.Partitions, part)
			}
		}
		if next == nil {
			return
		}
		ebr = ext.Start + int64(next.Start)*sector
	}
}

var mbrTypeNames = map[byte]string{
	0x01: "FAT12", 0x04: "FAT16 <32M", 0x05: "Extended", 0x06: "FAT16", 0x07: "HPFS/NTFS/exFAT",
	0x0b: "W95 FAT32", 0x0c: "W95 FAT32 (LBA)", 0x0e: "W95 FAT16 (LBA)", 0x0f: "W95 Ext'd (LBA)",
	0x11: "Hidden FAT12", 0x27: "Hidden NTFS WinRE", 0x82: "Linux swap", 0x83: "Linux", 0x85: "Linux extended",
	0x8e: "Linux LVM", 0xa5: "FreeBSD", 0xee: "GPT", 0xef: "EFI (FAT-12/16/32)", 0xfd: "Linux raid autodetect",
}

var gptTypeNames = map[string]string{
	"c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI System",
	"21686148-6449-6e6f-744e-656564454649": "BIOS boot",
	"0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
	"4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
	"0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
	"e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
	"a19d880f-05fc-4d3b-a006-743f0f84911e": "Linux RAID",
	"933ac7e1-2eb4-4f13-b844-0e14e2aef915": "Linux home",
	"ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
	"e3c9e316-0b5c-4db8-817d-f92df00215ae": "Microsoft reserved",
	"de94bba4-06d1-4d40-a16a-bfd50179d6ac": "Windows recovery environment",
}

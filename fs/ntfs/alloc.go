package ntfs

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/repo/extent"
)

const (
	recLogFile = 2
	recVolume  = 3
	recBitmap  = 6
	// firstUserRecord: records 0–15 are the metadata files ($MFT …
	// $Extend); 16–23 are reserved.
	firstUserRecord = 16

	attrVolumeInfo = 0x70
	volumeDirty    = 0x0001
	raClean        = 0x0002 // RESTART_VOLUME_IS_CLEAN
	noClient       = 0xffff // LOGFILE_NO_CLIENT

	// maxAllocRanges bounds the allocated-range list (see extent.Builder).
	maxAllocRanges = 1 << 20
	// swapHeader is the start of a page, swap or hibernation file that is
	// kept when its content is skipped (its header).
	swapHeader = 4096
)

// Allocated implements fs.AllocationMapper from $Bitmap, one bit per
// cluster. The clusters of every attribute of the metadata files (records
// 0–15: $MFT and its bitmap, $MFTMirr, $LogFile, $Volume, $AttrDef, the
// root index, $Bitmap, $Boot, $Secure, $UpCase, $Extend) and the end of
// the partition past the last cluster (the backup boot sector) are
// included whatever the bitmap says.
//
// It refuses (an error, so the caller reads everything) a volume that is
// not cleanly unmounted — marked dirty, a $LogFile with an active client
// and no clean flag, an interrupted chkdsk — or hibernated (hiberfil.sys
// holds an image, e.g. after a Windows Fast Startup shutdown): the log or
// the hibernated system may allocate clusters $Bitmap still calls free.
func (f *FS) Allocated(ctx context.Context) (out []extent.Range, err error) {
	defer guard("allocation map", &err)
	if err := f.checkClean(ctx); err != nil {
		return nil, err
	}
	rec, err := f.load(recBitmap)
	if err != nil {
		return nil, fmt.Errorf("ntfs: $Bitmap: %w", err)
	}
	bm, err := f.openStream(rec, attrData, "")
	if err != nil {
		return nil, fmt.Errorf("ntfs: $Bitmap: %w", err)
	}
	clusters := f.clusters()
	if bm.size < (clusters+7)/8 {
		return nil, fmt.Errorf("ntfs: $Bitmap of %d bytes for %d clusters: %w", bm.size, clusters, fs.ErrCorrupt)
	}
	b := extent.Builder{Max: maxAllocRanges}
	buf := make([]byte, 1<<20)
	for off := int64(0); off*8 < clusters; off += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := min(int64(len(buf)), (clusters+7)/8-off)
		if _, err := bm.ReadAt(buf[:n], off); err != nil {
			return nil, fmt.Errorf("ntfs: read $Bitmap at %d: %w", off, err)
		}
		b.AddBits(buf[:n], min(n*8, clusters-off*8), off*8*f.clusterSize, f.clusterSize)
	}
	b.Add(clusters*f.clusterSize, f.size-clusters*f.clusterSize)
	out = b.Ranges()
	for n := uint64(0); n < firstUserRecord; n++ {
		rec, err := f.load(n)
		if err != nil {
			continue // an unused reserved record
		}
		for _, s := range f.nonResident(rec) {
			out = append(out, s.physical()...)
		}
	}
	return extent.Normalize(out), nil
}

// clusters is the number of clusters of the volume (the boot sector's
// sector count; the last sector, the backup boot sector, lies past them).
func (f *FS) clusters() int64 {
	var b [8]byte
	if _, err := f.r.ReadAt(b[:], 0x28); err != nil {
		return 0
	}
	sectors := int64(binary.LittleEndian.Uint64(b[:]) & (1<<48 - 1))
	bps := f.bytesPerSector
	return min(sectors*bps, f.size) / f.clusterSize
}

// nonResident returns a stream for each non-resident attribute of rec.
func (f *FS) nonResident(rec *record) []*stream {
	type key struct {
		typ  uint32
		name string
	}
	seen := map[key]bool{}
	var out []*stream
	for _, a := range rec.attrs {
		k := key{a.typ, a.name}
		if a.resident || seen[k] {
			continue
		}
		seen[k] = true
		if s, err := f.openStream(rec, a.typ, a.name); err == nil {
			out = append(out, s)
		}
	}
	return out
}

// checkClean returns an error when the volume was not cleanly unmounted or
// is hibernated.
func (f *FS) checkClean(ctx context.Context) error {
	vol, err := f.load(recVolume)
	if err != nil {
		return fmt.Errorf("ntfs: $Volume: %w", err)
	}
	if vi := vol.first(attrVolumeInfo, ""); vi != nil && vi.resident && len(vi.content) >= 12 {
		if binary.LittleEndian.Uint16(vi.content[10:])&volumeDirty != 0 {
			return fmt.Errorf("ntfs: the volume is marked dirty (not cleanly unmounted; chkdsk pending)")
		}
	}
	lf, err := f.load(recLogFile)
	if err != nil {
		return fmt.Errorf("ntfs: $LogFile: %w", err)
	}
	log, err := f.openStream(lf, attrData, "")
	if err != nil {
		return fmt.Errorf("ntfs: $LogFile: %w", err)
	}
	// two restart pages, the second one system page size after the first
	sys := int64(4096)
	for i, off := 0, int64(0); i < 2; i, off = i+1, sys {
		b := make([]byte, sys)
		if n, _ := log.ReadAt(b, off); n < len(b) {
			break
		}
		switch string(b[:4]) {
		case "CHKD":
			return fmt.Errorf("ntfs: $LogFile says chkdsk was interrupted")
		case "RSTR":
		default:
			continue // emptied (ntfs-3g fills it with 0xff) or not written yet
		}
		if ps := int64(binary.LittleEndian.Uint32(b[0x10:])); i == 0 && ps != sys {
			if ps < 512 || ps > 64<<10 || ps&(ps-1) != 0 {
				return fmt.Errorf("ntfs: $LogFile restart page of %d bytes: %w", ps, fs.ErrCorrupt)
			}
			sys = ps
			b = make([]byte, sys)
			if n, _ := log.ReadAt(b, 0); n < len(b) {
				return fmt.Errorf("ntfs: $LogFile restart page: %w", fs.ErrCorrupt)
			}
		}
		if err := fixup(b); err != nil {
			return fmt.Errorf("ntfs: $LogFile restart page %d: %w", i, err)
		}
		ra := int(binary.LittleEndian.Uint16(b[0x18:]))
		if ra+16 > len(b) {
			return fmt.Errorf("ntfs: $LogFile restart area at %d: %w", ra, fs.ErrCorrupt)
		}
		inUse, flags := binary.LittleEndian.Uint16(b[ra+0xc:]), binary.LittleEndian.Uint16(b[ra+0xe:])
		if inUse != noClient && flags&raClean == 0 {
			return fmt.Errorf("ntfs: $LogFile holds changes not yet written (Windows did not shut down cleanly)")
		}
	}
	hibernated, err := f.hibernated(ctx)
	if err != nil {
		return err
	}
	if hibernated {
		return fmt.Errorf("ntfs: Windows is hibernated (hiberfil.sys holds an image, e.g. after a Fast Startup shutdown)")
	}
	return nil
}

// rootFile returns the record of a file in the root directory, by
// case-insensitive name, or nil.
func (f *FS) rootFile(ctx context.Context, name string) (*record, error) {
	ents, err := f.readDir(ctx, rootRecord, false)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if strings.EqualFold(e.Name, name) && !f.IsStream(e.Ino) {
			return f.load(uint64(e.Ino))
		}
	}
	return nil, nil
}

// hibernated reports whether hiberfil.sys starts with a hibernation
// image's signature (hibr, wake, rstr, link; any case).
func (f *FS) hibernated(ctx context.Context) (bool, error) {
	rec, err := f.rootFile(ctx, "hiberfil.sys")
	if err != nil || rec == nil || rec.base(attrData, "") == nil {
		return false, err
	}
	s, err := f.openStream(rec, attrData, "")
	if err != nil {
		return false, err
	}
	var sig [4]byte
	if n, _ := s.ReadAt(sig[:], 0); n < 4 {
		return false, nil
	}
	switch strings.ToLower(string(sig[:])) {
	case "hibr", "wake", "rstr", "link":
		return true, nil
	}
	return false, nil
}

// SwapFiles returns the volume byte ranges holding the contents of
// pagefile.sys, swapfile.sys and hiberfil.sys in the root directory, less
// the first 4 KiB of each (their headers stay). Windows rewrites them at
// every boot; a restored volume boots with them zeroed. It refuses what
// Allocated refuses: on a hibernated volume the page file holds the
// hibernated session's paged-out memory, and on an unclean one the file
// records may not be current.
func (f *FS) SwapFiles(ctx context.Context) (out []extent.Range, err error) {
	defer guard("swap files", &err)
	if err := f.checkClean(ctx); err != nil {
		return nil, err
	}
	for _, name := range []string{"pagefile.sys", "swapfile.sys", "hiberfil.sys"} {
		rec, err := f.rootFile(ctx, name)
		if err != nil {
			return nil, err
		}
		if rec == nil || rec.base(attrData, "") == nil {
			continue
		}
		s, err := f.openStream(rec, attrData, "")
		if err != nil {
			return nil, fmt.Errorf("ntfs: %s: %w", name, err)
		}
		out = append(out, s.physicalFrom(swapHeader)...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	return extent.Normalize(out), nil
}

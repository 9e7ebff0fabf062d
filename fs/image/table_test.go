package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"slices"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/fstest"
)

// setGPTEntryEnd sets the last LBA of entry i (0-based) in both GPT entry
// arrays of b and fixes the checksums, as a tool writing a bad table would.
func setGPTEntryEnd(t *testing.T, b []byte, i int, end uint64) {
	t.Helper()
	for _, hdr := range []int{sector, len(b)/sector*sector - sector} {
		h := b[hdr:]
		if string(h[:8]) != "EFI PART" {
			t.Fatalf("no GPT header at %d", hdr)
		}
		arr := int(binary.LittleEndian.Uint64(h[0x48:])) * sector
		count, esize := int(binary.LittleEndian.Uint32(h[0x50:])), int(binary.LittleEndian.Uint32(h[0x54:]))
		binary.LittleEndian.PutUint64(b[arr+i*esize+40:], end)
		binary.LittleEndian.PutUint32(h[0x58:], crc32.ChecksumIEEE(b[arr:arr+count*esize]))
		hsize := int(binary.LittleEndian.Uint32(h[0x0c:]))
		binary.LittleEndian.PutUint32(h[0x10:], 0)
		binary.LittleEndian.PutUint32(h[0x10:], crc32.ChecksumIEEE(h[:hsize]))
	}
}

// TestBadTableEntries: one bad entry of an MBR (primary or logical) or GPT
// costs only that entry (or, for a broken EBR chain, the logical
// partitions past the break); the others are listed and the bad one is
// reported under its name.
func TestBadTableEntries(t *testing.T) {
	cases := []struct {
		name    string
		seed    string
		damage  func(t *testing.T, b []byte)
		want    []string // partitions listed
		bad     string   // the entry reported
		errLike string
	}{
		{"MBR primary outside the disk", "mbr.img", func(t *testing.T, b []byte) {
			binary.LittleEndian.PutUint32(b[446+12:], 1<<30) // p1: 2^30 sectors
		}, []string{"p2", "p5", "p6"}, "p1", "MBR partition 1 (sector 1, 1073741824 sectors) lies outside the 65536-byte disk"},
		{"logical partition outside the extended one", "mbr.img", func(t *testing.T, b []byte) {
			binary.LittleEndian.PutUint32(b[15360+446+12:], 95) // the first EBR (sector 30), entry 0: p5
		}, []string{"p1", "p2", "p6"}, "p5", "logical partition p5 (sector 32, 48640 bytes) lies outside its extended partition"},
		{"EBR chain broken", "mbr.img", func(t *testing.T, b []byte) {
			b[25600-512+510] = 0 // p6's EBR signature
		}, []string{"p1", "p2", "p5"}, "p6", "EBR at sector 49 has no signature"},
		{"GPT entry outside the disk", "gpt.img", func(t *testing.T, b []byte) {
			setGPTEntryEnd(t, b, 0, 1<<40)
		}, []string{"p2"}, "p1", "GPT entry 1 (sectors 40–1099511627776) lies outside the 65536-byte disk"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := fstest.Seed(t, c.seed)
			c.damage(t, b)
			d, err := Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatalf("one bad entry made the whole disk unreadable: %v", err)
			}
			var got []string
			for _, p := range d.Partitions {
				got = append(got, p.Name)
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("partitions %v, want %v", got, c.want)
			}
			if len(d.TableErrors) != 1 || d.TableErrors[0].Name != c.bad || !strings.Contains(d.TableErrors[0].Err.Error(), c.errLike) {
				t.Fatalf("table errors %v, want %s: %s", d.TableErrors, c.bad, c.errLike)
			}
			_, err = d.Partition(c.bad)
			if !errors.Is(err, fs.ErrCorrupt) || !strings.Contains(err.Error(), "partition "+c.bad+": ") {
				t.Errorf("Partition(%s) = %v, want the table error", c.bad, err)
			}
		})
	}
}

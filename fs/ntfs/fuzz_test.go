package ntfs

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/vmvault/vmvault/fs/fstest"
)

// FuzzMFTRecord replaces one MFT record of a small NTFS volume (the root
// directory, $MFT itself or a user file with an alternate data stream) with
// fuzz input and exercises every reader method. go-ntfs panics on some
// malformed records; those must come back as errors.
func FuzzMFTRecord(f *testing.F) {
	img := fstest.Seed(f, "ntfs.img")
	cluster := int64(binary.LittleEndian.Uint16(img[0x0b:])) * int64(img[0x0d])
	mft := int64(binary.LittleEndian.Uint64(img[0x30:])) * cluster
	const recSize = 1024
	for _, rec := range []int64{0, 5, 64, 65} {
		off := mft + rec*recSize
		f.Add(uint8(rec), img[off:off+recSize])
	}
	f.Fuzz(func(t *testing.T, rec uint8, record []byte) {
		b := bytes.Clone(img)
		off := mft + int64(rec%80)*recSize
		copy(b[off:off+recSize], record)
		fsys, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		fstest.Exercise(fsys)
	})
}

// FuzzLZNT1 decompresses arbitrary compression units: never a panic, never
// a write past the unit, and a stored chunk comes back as it went in.
func FuzzLZNT1(f *testing.F) {
	stored := append([]byte{0xff, 0x3f}, bytes.Repeat([]byte("abcd"), 1024)...)
	f.Add(stored)
	f.Add([]byte{0x05, 0xb0, 0x00, 'a', 'b', 'c', 'd', 'e'})
	f.Add([]byte{0x03, 0xb0, 0x02, 'a', 0x00, 0x00})
	f.Fuzz(func(t *testing.T, in []byte) {
		out := make([]byte, 16<<10)
		n, err := lznt1(out, in)
		if n < 0 || n > len(out) {
			t.Fatalf("produced %d bytes into %d", n, len(out))
		}
		if err == nil && len(in) == len(stored) && bytes.Equal(in, stored) && !bytes.Equal(out[:4096], stored[2:]) {
			t.Fatal("stored chunk changed")
		}
	})
}

// FuzzIndexBlock parses arbitrary index blocks (fixups, node header,
// entries): errors, never a panic.
func FuzzIndexBlock(f *testing.F) {
	b := make([]byte, 4096)
	copy(b, "INDX")
	binary.LittleEndian.PutUint16(b[4:], 0x28)
	binary.LittleEndian.PutUint16(b[6:], 9)
	binary.LittleEndian.PutUint32(b[0x18:], 0x28)
	binary.LittleEndian.PutUint32(b[0x1c:], 0x28+0x10)
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var out []indexEntry
		_ = parseIndexBlock(b, &out)
	})
}

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

package image

import (
	"errors"
	"io"
	iofs "io/fs"
	"time"
)

// file adapts an io.ReaderAt of known size to the backend.File interface
// go-diskfs's table readers take. It is read-only and has its own cursor.
type file struct {
	r    io.ReaderAt
	size int64
	pos  int64
}

func (f *file) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.size {
		return 0, io.EOF
	}
	if rem := f.size - off; int64(len(p)) > rem {
		n, err := f.r.ReadAt(p[:rem], off)
		if err == nil {
			err = io.EOF
		}
		return n, err
	}
	return f.r.ReadAt(p, off)
}

func (f *file) Read(p []byte) (int, error) {
	n, err := f.ReadAt(p, f.pos)
	f.pos += int64(n)
	return n, err
}

func (f *file) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += f.pos
	case io.SeekEnd:
		off += f.size
	default:
		return 0, errors.New("seek: bad whence")
	}
	if off < 0 {
		return 0, errors.New("seek: negative position")
	}
	f.pos = off
	return off, nil
}

func (f *file) Close() error { return nil }

func (f *file) Stat() (iofs.FileInfo, error) { return fileInfo{size: f.size}, nil }

type fileInfo struct{ size int64 }

func (fi fileInfo) Name() string        { return "disk" }
func (fi fileInfo) Size() int64         { return fi.size }
func (fi fileInfo) Mode() iofs.FileMode { return 0o444 }
func (fi fileInfo) ModTime() time.Time  { return time.Time{} }
func (fi fileInfo) IsDir() bool         { return false }
func (fi fileInfo) Sys() any            { return nil }

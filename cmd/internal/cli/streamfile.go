package cli

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// StreamFile is an io.WriterAt for writing a large file once (a restore):
// every write starts its writeback at once, and once more than window bytes
// are in flight the oldest written range is waited for and dropped from the
// page cache. Dirty memory stays bounded, the kernel keeps reusing the same
// hot pages (on VMs whose fresh pages are expensive this is several times
// faster than plain buffered writes), and by the end nearly everything is
// already on disk, so the final fsync is cheap. Safe for concurrent use.
type StreamFile struct {
	f      *os.File
	window int64

	mu       sync.Mutex
	queue    []span
	inFlight int64
}

type span struct{ off, n int64 }

// NewStreamFile wraps f; window is the number of bytes left in flight.
func NewStreamFile(f *os.File, window int64) *StreamFile {
	return &StreamFile{f: f, window: window}
}

// WriteAt implements io.WriterAt.
func (s *StreamFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := s.f.WriteAt(p, off)
	if err != nil || n == 0 {
		return n, err
	}
	fd := int(s.f.Fd())
	// Errors from the hints are ignored: they only change performance, and
	// the final Sync reports any write-back failure.
	_ = unix.SyncFileRange(fd, off, int64(n), unix.SYNC_FILE_RANGE_WRITE)
	s.mu.Lock()
	s.queue = append(s.queue, span{off, int64(n)})
	s.inFlight += int64(n)
	var done []span
	for s.inFlight > s.window && len(s.queue) > 0 {
		done = append(done, s.queue[0])
		s.inFlight -= s.queue[0].n
		s.queue = s.queue[1:]
	}
	s.mu.Unlock()
	for _, d := range done {
		_ = unix.SyncFileRange(fd, d.off, d.n, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
		_ = unix.Fadvise(fd, d.off, d.n, unix.FADV_DONTNEED)
	}
	return n, nil
}

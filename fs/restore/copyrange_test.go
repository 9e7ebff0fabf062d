package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// slowReader serves data with a random delay per read, so blocks complete
// out of order, and fails reads that touch failAt.
type slowReader struct {
	data   []byte
	failAt int64 // -1: never
	short  bool  // the data ends early (a truncated source)
}

func (r *slowReader) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
	if r.failAt >= 0 && off <= r.failAt && r.failAt < off+int64(len(p)) {
		return 0, fmt.Errorf("damaged chunk at %d", r.failAt)
	}
	data := r.data
	if r.short {
		data = data[:len(data)-10]
	}
	if off >= int64(len(data)) {
		return 0, io.EOF
	}
	n := copy(p, data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// failWriter fails once it has taken limit bytes.
type failWriter struct {
	bytes.Buffer
	limit int
}

func (w *failWriter) Write(p []byte) (int, error) {
	if w.Len()+len(p) > w.limit {
		return 0, errors.New("disk full")
	}
	return w.Buffer.Write(p)
}

func TestCopyRange(t *testing.T) {
	data := make([]byte, 9*readBlock+123)
	for i := range data {
		data[i] = byte(i*31 + i>>20)
	}
	cases := []struct {
		name    string
		off, n  int64
		failAt  int64
		short   bool
		limit   int // writer limit, 0: none
		wantErr string
		// wantLen is how many bytes must be written before the error: every
		// byte in front of the first unreadable one
		wantLen int64
	}{
		{name: "empty", off: 5, n: 0, failAt: -1},
		{name: "one byte", off: 7, n: 1, failAt: -1},
		{name: "one block", off: 0, n: readBlock, failAt: -1},
		{name: "block less one", off: 1, n: readBlock - 1, failAt: -1},
		{name: "all, more blocks than workers", off: 0, n: int64(len(data)), failAt: -1},
		{name: "unaligned middle", off: readBlock/2 + 3, n: 6*readBlock + 11, failAt: -1},
		{name: "read error", off: 0, n: int64(len(data)), failAt: 7*readBlock + 5, wantErr: "read at offset 7340037: damaged chunk at 7340037", wantLen: 7*readBlock + 5},
		{name: "read error in the first block", off: 0, n: int64(len(data)), failAt: 12 << 10, wantErr: "read at offset 12288: damaged chunk at 12288", wantLen: 12 << 10},
		{name: "read error at the first byte", off: 100, n: 5000, failAt: 100, wantErr: "read at offset 100: damaged chunk", wantLen: 0},
		{name: "read error at a block's last byte", off: 3, n: 3 * readBlock, failAt: 2*readBlock + 2, wantErr: "read at offset 2097154", wantLen: 2*readBlock - 1},
		{name: "short read", off: 0, n: int64(len(data)), failAt: -1, short: true, wantErr: fmt.Sprintf("short read at %d: 113 of 123 bytes", len(data)-10), wantLen: int64(len(data)) - 10},
		{name: "write error", off: 0, n: int64(len(data)), failAt: -1, limit: 3 * readBlock, wantErr: "disk full", wantLen: 3 * readBlock},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := &failWriter{limit: c.limit}
			if c.limit == 0 {
				w.limit = len(data)
			}
			var done atomic.Int64
			err := CopyRange(context.Background(), w, &slowReader{data: data, failAt: c.failAt, short: c.short}, c.off, c.n, &done)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want %q", err, c.wantErr)
				}
				// what was written is an in-order prefix
				if !bytes.Equal(w.Bytes(), data[c.off:c.off+int64(w.Len())]) || done.Load() != int64(w.Len()) {
					t.Errorf("%d bytes written (%d counted) before the error are not the range's start", w.Len(), done.Load())
				}
				if int64(w.Len()) != c.wantLen {
					t.Errorf("%d bytes written before the error, want %d", w.Len(), c.wantLen)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(w.Bytes(), data[c.off:c.off+c.n]) {
				t.Errorf("copied %d bytes differ from the range's %d", w.Len(), c.n)
			}
			if done.Load() != c.n {
				t.Errorf("done counted %d, want %d", done.Load(), c.n)
			}
		})
	}
}

func TestCopyRangeCancel(t *testing.T) {
	data := make([]byte, 20*readBlock)
	ctx, cancel := context.WithCancel(context.Background())
	w := &cancelWriter{cancel: cancel, after: 2}
	err := CopyRange(ctx, w, &slowReader{data: data, failAt: -1}, 0, int64(len(data)), nil)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	// at most the blocks already read ahead are written after the cancel
	if w.writes > 2+readWorkers+1 {
		t.Errorf("%d of 20 blocks written after cancelling at the 2nd", w.writes)
	}
}

type cancelWriter struct {
	cancel func()
	after  int
	writes int
}

func (w *cancelWriter) Write(p []byte) (int, error) {
	w.writes++
	if w.writes == w.after {
		w.cancel()
	}
	return len(p), nil
}

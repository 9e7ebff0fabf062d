// Package bufpool recycles byte buffers in power-of-two size classes.
//
// Unlike sync.Pool, a Pool keeps its buffers across garbage collections.
// That matters on the read path: a server whose heap sits near its memory
// limit (the chunk cache fills it by design) collects garbage every few
// milliseconds, and a sync.Pool emptied by every collection turns each
// chunk load into a fresh allocation, which triggers the next collection.
//
// Invariants: a class holds at most limit/classSize buffers, so a Pool
// never retains more than limit bytes per class (buffers larger than the
// limit are never kept); Get(n) returns a buffer of length n and capacity
// ≥ n + Slack; a buffer handed to Put must not be used by the caller
// afterwards.
package bufpool

import (
	"math/bits"
	"sync"
)

const classes = 31 // 1 B .. 1 GiB

// Slack is the spare capacity every buffer has past its size class.
// Decoders that may write a few bytes past their output in wide stores
// (zstd's fast copy loops need 16) run their fast paths into a buffer of a
// power-of-two chunk size plus Slack, where an exact fit would send the
// last block through the slower bounds-exact copies.
const Slack = 64

// Pool is a bounded free list per size class. The zero value is not
// usable; call New. A Pool is safe for concurrent use.
type Pool struct {
	limit int64
	class [classes]struct {
		mu   sync.Mutex
		bufs [][]byte
	}
}

// New returns a pool that keeps up to limit bytes of buffers per class.
func New(limit int64) *Pool { return &Pool{limit: limit} }

// classUp is the smallest class whose buffers hold n bytes.
func classUp(n int) int { return bits.Len(uint(n - 1)) }

// Get returns a buffer of length n (its content is undefined).
func (p *Pool) Get(n int) []byte {
	if n <= 0 {
		return nil
	}
	c := classUp(n)
	if c >= classes {
		return make([]byte, n)
	}
	cl := &p.class[c]
	cl.mu.Lock()
	if k := len(cl.bufs); k > 0 {
		b := cl.bufs[k-1]
		cl.bufs[k-1] = nil
		cl.bufs = cl.bufs[:k-1]
		cl.mu.Unlock()
		return b[:n]
	}
	cl.mu.Unlock()
	return make([]byte, n, 1<<c+Slack)
}

// Put gives b back for reuse; it is dropped when its class is full.
func (p *Pool) Put(b []byte) {
	if cap(b) <= Slack {
		return // too small to serve any class with its slack
	}
	c := bits.Len(uint(cap(b)-Slack)) - 1 // the largest class b can serve with Slack to spare
	if c >= classes {
		return
	}
	cl := &p.class[c]
	cl.mu.Lock()
	if int64(len(cl.bufs)+1)<<c <= p.limit {
		cl.bufs = append(cl.bufs, b[:0])
	}
	cl.mu.Unlock()
}

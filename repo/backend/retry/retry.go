// Package retry wraps a backend.Backend so that a call failing with a
// transient error is made again, after exponentially growing, jittered
// pauses, within a budget per call (attempts and elapsed time).
//
// Invariants:
//   - Only calls that are safe to repeat are repeated; each method's doc
//     comment says why it is. Errors for which backend.IsPermanent holds
//     (missing objects, short reads, invalid handles, read-only backends,
//     context errors, errors marked with backend.Permanent) are returned
//     at once.
//   - A cancelled context stops the retrying at once: pauses end with the
//     context, and no pause is begun that would end after the context's
//     deadline or the call's time budget.
//   - Each retry is logged once (warning: operation, handle, attempt,
//     pause, error; never data). When the budget is spent, the last error
//     is returned wrapped with the number of attempts.
//   - Everything else (Location, Properties, Close, Prefetch) is the inner
//     backend's.
package retry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
)

// Defaults for zero Options fields.
const (
	DefaultMaxAttempts  = 10
	DefaultMaxElapsed   = 2 * time.Minute
	DefaultInitialDelay = 200 * time.Millisecond
	DefaultMaxDelay     = 15 * time.Second
)

// Options set the budget of every call.
type Options struct {
	// MaxAttempts bounds the attempts per call, the first included.
	MaxAttempts int
	// MaxElapsed bounds the time from a call's first attempt to the start
	// of its last.
	MaxElapsed time.Duration
	// InitialDelay is the pause before the second attempt; each further
	// pause doubles, up to MaxDelay. A pause of d is drawn uniformly from
	// [d/2, d] so that many callers that failed together do not retry
	// together.
	InitialDelay time.Duration
	MaxDelay     time.Duration
	// Logger receives one warning per retry; nil means slog.Default().
	Logger *slog.Logger
}

// Backend retries the calls of another backend. Create it with New.
type Backend struct {
	be   backend.Backend
	opts Options

	// Seams for tests: the clock, the pause and the jitter draw.
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error
	draw  func(n int64) int64 // uniform in [0, n)
}

var (
	_ backend.Backend         = (*Backend)(nil)
	_ backend.Flusher         = (*Backend)(nil)
	_ backend.TempCleaner     = (*Backend)(nil)
	_ backend.Prefetcher      = (*Backend)(nil)
	_ backend.BufferLoader    = (*Backend)(nil)
	_ backend.RangeLoader     = (*Backend)(nil)
	_ backend.RangePrefetcher = (*Backend)(nil)
)

// New returns be wrapped; zero fields of opts take the defaults.
func New(be backend.Backend, opts Options) *Backend {
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = DefaultMaxAttempts
	}
	if opts.MaxElapsed <= 0 {
		opts.MaxElapsed = DefaultMaxElapsed
	}
	if opts.InitialDelay <= 0 {
		opts.InitialDelay = DefaultInitialDelay
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = DefaultMaxDelay
	}
	opts.MaxDelay = max(opts.MaxDelay, opts.InitialDelay)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Backend{be: be, opts: opts, now: time.Now, sleep: sleepCtx, draw: rand.Int64N}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Inner returns the wrapped backend.
func (b *Backend) Inner() backend.Backend { return b.be }

// pause returns the jittered pause after the given (1-based) attempt.
func (b *Backend) pause(attempt int) time.Duration {
	d := b.opts.InitialDelay
	for i := 1; i < attempt && d < b.opts.MaxDelay; i++ {
		d *= 2
	}
	d = min(d, b.opts.MaxDelay)
	half := d / 2
	return half + time.Duration(b.draw(int64(d-half)+1))
}

// final marks an error that must not be retried although it is not
// permanent (List after its callback ran); do unwraps it.
type final struct{ error }

// do runs fn until it succeeds, fails for good or the budget is spent.
// op and what name the call in logs and errors.
func (b *Backend) do(ctx context.Context, op, what string, fn func() error) error {
	start := b.now()
	for attempt := 1; ; attempt++ {
		err := fn()
		var f final
		switch {
		case err == nil:
			return nil
		case errors.As(err, &f):
			return f.error
		case backend.IsPermanent(err):
			return err
		case ctx.Err() != nil:
			// The call failed some other way while the context ended.
			return fmt.Errorf("%s %s: %w (after: %w)", op, what, ctx.Err(), err)
		case attempt >= b.opts.MaxAttempts:
			return fmt.Errorf("%s %s: gave up after %d attempts: %w", op, what, attempt, err)
		}
		d := b.pause(attempt)
		next := b.now().Add(d)
		if next.Sub(start) > b.opts.MaxElapsed {
			return fmt.Errorf("%s %s: gave up after %d attempts in %v: %w", op, what, attempt, b.now().Sub(start).Round(time.Millisecond), err)
		}
		if dl, ok := ctx.Deadline(); ok && next.After(dl) {
			return fmt.Errorf("%s %s: gave up after %d attempts (the next would start after the deadline): %w", op, what, attempt, err)
		}
		b.opts.Logger.Warn("backend call failed, retrying", "op", op, "handle", what, "attempt", attempt, "pause", d, "err", err)
		if serr := b.sleep(ctx, d); serr != nil {
			return fmt.Errorf("%s %s: %w (after %d attempts, the last: %w)", op, what, serr, attempt, err)
		}
	}
}

// Save implements backend.Backend. Repeating it is safe: Save is atomic,
// so a failed attempt left either nothing or the whole object under h,
// and every attempt stores the same bytes, which for the immutable,
// content-addressed objects (chunks, indexes, manifests, the config) is
// exactly the object the caller meant, and for a lock is its owner's.
func (b *Backend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	return b.do(ctx, "save", h.String(), func() error { return b.be.Save(ctx, h, data) })
}

// Load implements backend.Backend. Loads change nothing.
func (b *Backend) Load(ctx context.Context, h backend.Handle, off, length int64) ([]byte, error) {
	var data []byte
	err := b.do(ctx, "load", h.String(), func() (err error) {
		data, err = b.be.Load(ctx, h, off, length)
		return err
	})
	if err != nil {
		return nil, err
	}
	return data, nil
}

// LoadInto implements backend.BufferLoader with the inner backend's
// LoadInto, or its Load when it has none. Loads change nothing; every
// attempt may reuse buf.
func (b *Backend) LoadInto(ctx context.Context, h backend.Handle, buf []byte) ([]byte, error) {
	bl, ok := b.be.(backend.BufferLoader)
	if !ok {
		return b.Load(ctx, h, 0, -1)
	}
	var data []byte
	err := b.do(ctx, "load", h.String(), func() (err error) {
		data, err = bl.LoadInto(ctx, h, buf)
		return err
	})
	if err != nil {
		return nil, err
	}
	return data, nil
}

// LoadRangeInto implements backend.RangeLoader with the inner backend's
// LoadRangeInto, or its Load when it has none. Loads change nothing.
func (b *Backend) LoadRangeInto(ctx context.Context, h backend.Handle, off, length int64, buf []byte) ([]byte, error) {
	rl, ok := b.be.(backend.RangeLoader)
	if !ok {
		return b.Load(ctx, h, off, length)
	}
	var data []byte
	err := b.do(ctx, "load", h.String(), func() (err error) {
		data, err = rl.LoadRangeInto(ctx, h, off, length, buf)
		return err
	})
	if err != nil {
		return nil, err
	}
	return data, nil
}

// PrefetchRange implements backend.RangePrefetcher: passed on when the
// inner backend takes range hints.
func (b *Backend) PrefetchRange(h backend.Handle, off, length int64) {
	if p, ok := b.be.(backend.RangePrefetcher); ok {
		p.PrefetchRange(h, off, length)
	}
}

// Stat implements backend.Backend. Stat changes nothing.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	var fi backend.FileInfo
	err := b.do(ctx, "stat", h.String(), func() (err error) {
		fi, err = b.be.Stat(ctx, h)
		return err
	})
	return fi, err
}

// List implements backend.Backend. A listing is repeated only while it
// has not called fn: one that failed part-way would call fn a second time
// for the objects it already delivered (the contract says once each), and
// remembering them would cost memory per object, so its error is
// returned. An error of fn is returned as it is.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	called := false
	return b.do(ctx, "list", t.String(), func() error {
		err := b.be.List(ctx, t, func(fi backend.FileInfo) error {
			called = true
			return fn(fi)
		})
		if err != nil && called {
			return final{err}
		}
		return err
	})
}

// Remove implements backend.Backend. Repeating it is safe: removing a
// missing object is not an error, so an attempt after one that removed
// the object but failed to say so succeeds.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	return b.do(ctx, "remove", h.String(), func() error { return b.be.Remove(ctx, h) })
}

// Flush implements backend.Flusher (nothing to do when the inner backend
// is no Flusher). Repeating it is safe: it only makes durable what is
// already stored, and a failed Flush keeps what it could not flush for
// the next.
func (b *Backend) Flush(ctx context.Context) error {
	f, ok := b.be.(backend.Flusher)
	if !ok {
		return nil
	}
	return b.do(ctx, "flush", "chunks", func() error { return f.Flush(ctx) })
}

// RemoveTemp implements backend.TempCleaner (no temporary files when the
// inner backend is no TempCleaner). Repeating it is safe: it deletes what
// is older than a fixed cutoff, and files already deleted are not there
// to delete again; the count adds up every attempt's.
func (b *Backend) RemoveTemp(ctx context.Context, olderThan time.Time) (int, error) {
	tc, ok := b.be.(backend.TempCleaner)
	if !ok {
		return 0, nil
	}
	total := 0
	err := b.do(ctx, "remove temporary files", "below "+b.be.Location(), func() error {
		n, err := tc.RemoveTemp(ctx, olderThan)
		total += n
		return err
	})
	return total, err
}

// Prefetch implements backend.Prefetcher: a hint, passed on when the
// inner backend takes hints, never retried (it reports nothing).
func (b *Backend) Prefetch(h backend.Handle) {
	if p, ok := b.be.(backend.Prefetcher); ok {
		p.Prefetch(h)
	}
}

// Location implements backend.Backend: the inner backend's.
func (b *Backend) Location() string { return b.be.Location() }

// Properties implements backend.Backend: the inner backend's.
func (b *Backend) Properties() backend.Properties { return b.be.Properties() }

// Close implements backend.Backend.
func (b *Backend) Close() error { return b.be.Close() }

// Count implements backend.Counter through the inner backend when it
// counts, else by listing.
func (b *Backend) Count(ctx context.Context, t backend.FileType) (int, error) {
	if c, ok := b.be.(backend.Counter); ok {
		return c.Count(ctx, t)
	}
	n := 0
	err := b.be.List(ctx, t, func(backend.FileInfo) error { n++; return nil })
	return n, err
}

package retry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/backendtest"
	"github.com/vmvault/vmvault/repo/backend/faulty"
	"github.com/vmvault/vmvault/repo/backend/local"
	"github.com/vmvault/vmvault/repo/backend/mem"
)

var errFlaky = errors.New("connection reset")

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestConformance: over a backend that fails a third of all calls with a
// transient error, the retrying backend still meets the whole contract.
func TestConformance(t *testing.T) {
	seed := uint64(0)
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		seed++
		fb := faulty.New(mem.New(), seed)
		fb.AddRule(faulty.Rule{Probability: 0.33, Effect: faulty.Fail(errFlaky)})
		return New(fb, Options{MaxAttempts: 30, InitialDelay: time.Microsecond, MaxDelay: time.Millisecond, Logger: quiet()})
	})
}

// fakeClock makes pauses instant and records them.
type fakeClock struct {
	mu     sync.Mutex
	t      time.Time
	pauses []time.Duration
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *fakeClock) sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pauses = append(c.pauses, d)
	c.t = c.t.Add(d)
	return ctx.Err()
}

func newFake(be backend.Backend, opts Options) (*Backend, *fakeClock) {
	if opts.Logger == nil {
		opts.Logger = quiet()
	}
	b := New(be, opts)
	c := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	b.now, b.sleep = c.now, c.sleep
	return b, c
}

func newLocal(t *testing.T) backend.Backend {
	t.Helper()
	be, err := local.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return be
}

func chunk(name string) backend.Handle { return backend.Handle{Type: backend.ChunkFile, Name: name} }

// TestRetries: how many attempts each kind of failure gets, per method.
func TestRetries(t *testing.T) {
	ctx := context.Background()
	h := chunk("abcd")
	calls := map[faulty.Method]func(*Backend) error{
		faulty.Save: func(b *Backend) error { return b.Save(ctx, h, []byte("data")) },
		faulty.Load: func(b *Backend) error { _, err := b.Load(ctx, h, 0, -1); return err },
		faulty.Stat: func(b *Backend) error { _, err := b.Stat(ctx, h); return err },
		faulty.List: func(b *Backend) error {
			return b.List(ctx, backend.ChunkFile, func(backend.FileInfo) error { return nil })
		},
		faulty.Remove:     func(b *Backend) error { return b.Remove(ctx, h) },
		faulty.Flush:      func(b *Backend) error { return b.Flush(ctx) },
		faulty.RemoveTemp: func(b *Backend) error { _, err := b.RemoveTemp(ctx, time.Now()); return err },
	}
	tests := []struct {
		name     string
		rule     faulty.Rule // for the method under test
		attempts int         // calls the inner backend gets
		wantErr  error       // nil: success
		wantMsg  string
	}{
		{"success", faulty.Rule{Nth: 99, Effect: faulty.Fail(errFlaky)}, 1, nil, ""},
		{"always failing", faulty.Rule{Effect: faulty.Fail(errFlaky)}, 5, errFlaky, "gave up after 5 attempts"},
		{"one transient failure", faulty.Rule{Nth: 1, Effect: faulty.Fail(errFlaky)}, 2, nil, ""},
		{"not found", faulty.Rule{Effect: faulty.Fail(backend.ErrNotFound)}, 1, backend.ErrNotFound, ""},
		{"short read", faulty.Rule{Effect: faulty.Fail(backend.ErrShortRead)}, 1, backend.ErrShortRead, ""},
		{"invalid handle", faulty.Rule{Effect: faulty.Fail(backend.ErrInvalidHandle)}, 1, backend.ErrInvalidHandle, ""},
		{"read-only", faulty.Rule{Effect: faulty.Fail(backend.ErrReadOnly)}, 1, backend.ErrReadOnly, ""},
		{"marked permanent", faulty.Rule{Effect: faulty.Fail(backend.Permanent(errFlaky))}, 1, errFlaky, ""},
		{"context error", faulty.Rule{Effect: faulty.Fail(context.DeadlineExceeded)}, 1, context.DeadlineExceeded, ""},
		{"lost reply", faulty.Rule{Nth: 1, Effect: faulty.FailAfter(errFlaky)}, 2, nil, ""},
	}
	for m, call := range calls {
		for _, tc := range tests {
			t.Run(m.String()+"/"+tc.name, func(t *testing.T) {
				fb := faulty.New(mem.New(), 1) // a Flusher and TempCleaner over any backend
				if m == faulty.Load || m == faulty.Stat {
					if err := fb.Save(ctx, h, []byte("data")); err != nil {
						t.Fatal(err)
					}
				}
				r := tc.rule
				r.Method = m
				fb.AddRule(r)
				b, _ := newFake(fb, Options{MaxAttempts: 5})
				err := call(b)
				if got := fb.Calls(m, 0); got != tc.attempts {
					t.Errorf("%d attempts, want %d", got, tc.attempts)
				}
				switch {
				case tc.wantErr == nil && err != nil:
					t.Errorf("err = %v, want success", err)
				case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
					t.Errorf("err = %v, want %v", err, tc.wantErr)
				case tc.wantMsg != "" && (err == nil || !strings.Contains(err.Error(), tc.wantMsg)):
					t.Errorf("err = %v, want it to say %q", err, tc.wantMsg)
				}
			})
		}
	}
}

// TestPauses: pauses double from InitialDelay up to MaxDelay, each drawn
// from [d/2, d].
func TestPauses(t *testing.T) {
	fb := faulty.New(mem.New(), 1)
	fb.AddRule(faulty.Rule{Effect: faulty.Fail(errFlaky)})
	for _, draw := range []string{"low", "high"} {
		b, c := newFake(fb, Options{MaxAttempts: 8, MaxElapsed: time.Hour, InitialDelay: 100 * time.Millisecond, MaxDelay: time.Second})
		b.draw = func(n int64) int64 {
			if draw == "low" {
				return 0
			}
			return n - 1
		}
		if _, err := b.Stat(context.Background(), chunk("ab")); !errors.Is(err, errFlaky) {
			t.Fatal(err)
		}
		want := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
		for i := range want {
			want[i] *= time.Millisecond
			if draw == "low" {
				want[i] /= 2
			}
		}
		if fmt.Sprint(c.pauses) != fmt.Sprint(want) {
			t.Errorf("%s draws: pauses %v, want %v", draw, c.pauses, want)
		}
	}
	// The real draw stays within the bounds.
	b := New(fb, Options{InitialDelay: 100 * time.Millisecond, MaxDelay: time.Second})
	for attempt := 1; attempt < 10; attempt++ {
		d := min(100*time.Millisecond<<(attempt-1), time.Second)
		for range 100 {
			if p := b.pause(attempt); p < d/2 || p > d {
				t.Fatalf("pause after attempt %d: %v, outside [%v, %v]", attempt, p, d/2, d)
			}
		}
	}
}

// TestTimeBudget: no attempt starts after MaxElapsed.
func TestTimeBudget(t *testing.T) {
	fb := faulty.New(mem.New(), 1)
	fb.AddRule(faulty.Rule{Effect: faulty.Fail(errFlaky)})
	b, c := newFake(fb, Options{MaxAttempts: 100, MaxElapsed: 2 * time.Second, InitialDelay: 100 * time.Millisecond, MaxDelay: time.Second})
	b.draw = func(n int64) int64 { return n - 1 }
	_, err := b.Stat(context.Background(), chunk("ab"))
	// Pauses 0.1, 0.2, 0.4, 0.8 (1.5 s); the next, 1 s, would end after 2 s.
	if !errors.Is(err, errFlaky) || !strings.Contains(err.Error(), "gave up after 5 attempts in 1.5s") || len(c.pauses) != 4 {
		t.Fatalf("err = %v after pauses %v", err, c.pauses)
	}
}

// TestDeadline: no pause begins that would end after the context's
// deadline; the last error is returned at once.
func TestDeadline(t *testing.T) {
	fb := faulty.New(mem.New(), 1)
	fb.AddRule(faulty.Rule{Effect: faulty.Fail(errFlaky)})
	b := New(fb, Options{InitialDelay: 10 * time.Second, Logger: quiet()})
	slept := 0
	b.sleep = func(ctx context.Context, d time.Duration) error { slept++; return sleepCtx(ctx, d) }
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := b.Stat(ctx, chunk("ab"))
	if !errors.Is(err, errFlaky) || errors.Is(err, context.DeadlineExceeded) || slept != 0 || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("err = %v after %d pauses", err, slept)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("returned after %v", d)
	}
}

// TestCancelDuringPause: cancelling the context ends a pause at once.
func TestCancelDuringPause(t *testing.T) {
	fb := faulty.New(mem.New(), 1)
	fb.AddRule(faulty.Rule{Effect: faulty.Fail(errFlaky)})
	b := New(fb, Options{InitialDelay: time.Hour, MaxElapsed: 10 * time.Hour, Logger: quiet()})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	done := make(chan error)
	go func() { _, err := b.Stat(ctx, chunk("ab")); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || !errors.Is(err, errFlaky) {
			t.Fatalf("err = %v, want context.Canceled and the last error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still pausing 10 s after the cancellation")
	}
	if n := fb.Calls(faulty.Stat, 0); n != 1 {
		t.Errorf("%d attempts", n)
	}
}

// TestList: a listing is retried while it has not called fn; after that,
// and for errors of fn, its error is returned; fn sees every object once.
func TestList(t *testing.T) {
	ctx := context.Background()
	errFn := errors.New("callback failed")
	tests := []struct {
		name     string
		rule     faulty.Rule
		fnErr    bool
		attempts int
		wantErr  error
		listed   int
	}{
		{"fails before listing", faulty.Rule{Method: faulty.List, Effect: faulty.Fail(errFlaky)}, false, 3, errFlaky, 0},
		{"fails once before listing", faulty.Rule{Method: faulty.List, Nth: 1, Effect: faulty.Fail(errFlaky)}, false, 2, nil, 3},
		{"fails after listing", faulty.Rule{Method: faulty.List, Nth: 1, Effect: faulty.FailAfter(errFlaky)}, false, 1, errFlaky, 3},
		{"callback fails", faulty.Rule{Method: faulty.Stat, Effect: faulty.Fail(errFlaky)}, true, 1, errFn, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fb := faulty.New(mem.New(), 1)
			for _, n := range []string{"aa", "bb", "cc"} {
				if err := fb.Save(ctx, chunk(n), nil); err != nil {
					t.Fatal(err)
				}
			}
			fb.AddRule(tc.rule)
			b, _ := newFake(fb, Options{MaxAttempts: 3})
			listed := 0
			err := b.List(ctx, backend.ChunkFile, func(backend.FileInfo) error {
				listed++
				if tc.fnErr {
					return errFn
				}
				return nil
			})
			if n := fb.Calls(faulty.List, 0); n != tc.attempts || listed != tc.listed {
				t.Errorf("%d attempts listed %d objects; want %d and %d", n, listed, tc.attempts, tc.listed)
			}
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// TestSaveAfterLostReply: a Save whose reply was lost is retried and the
// object is stored once, intact.
func TestSaveAfterLostReply(t *testing.T) {
	ctx := context.Background()
	fb := faulty.New(newLocal(t), 1)
	fb.AddRule(faulty.Rule{Method: faulty.Save, Nth: 1, Effect: faulty.FailAfter(errFlaky)})
	fb.AddRule(faulty.Rule{Method: faulty.Save, Nth: 2, Effect: faulty.Fail(errFlaky)})
	b, _ := newFake(fb, Options{})
	data := bytes.Repeat([]byte("chunk"), 1000)
	if err := b.Save(ctx, chunk("abcd"), data); err != nil {
		t.Fatal(err)
	}
	got, err := b.Load(ctx, chunk("abcd"), 0, -1)
	if err != nil || !bytes.Equal(got, data) || fb.Calls(faulty.Save, 0) != 3 {
		t.Fatalf("load after 3 saves (%d): %v", fb.Calls(faulty.Save, 0), err)
	}
	n := 0
	_ = b.List(ctx, backend.ChunkFile, func(backend.FileInfo) error { n++; return nil })
	if n != 1 {
		t.Errorf("%d objects listed", n)
	}
}

// logRecords collects log records.
type logRecords struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r)
	l.mu.Unlock()
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

// TestLogging: one warning per retry naming the operation and the handle,
// none for the final failure, never the data.
func TestLogging(t *testing.T) {
	fb := faulty.New(mem.New(), 1)
	fb.AddRule(faulty.Rule{Method: faulty.Save, Effect: faulty.Fail(errFlaky)})
	logs := &logRecords{}
	b, _ := newFake(fb, Options{MaxAttempts: 4, Logger: slog.New(logs)})
	secret := []byte("SECRET-PAYLOAD")
	if err := b.Save(context.Background(), chunk("abcd"), secret); !errors.Is(err, errFlaky) {
		t.Fatal(err)
	}
	if len(logs.recs) != 3 {
		t.Fatalf("%d log records for 3 retries", len(logs.recs))
	}
	for i, r := range logs.recs {
		attrs := map[string]string{}
		r.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
		text := r.Message + fmt.Sprint(attrs)
		if r.Level != slog.LevelWarn || attrs["op"] != "save" || attrs["handle"] != "chunks/abcd" ||
			attrs["attempt"] != fmt.Sprint(i+1) || strings.Contains(text, "SECRET") {
			t.Errorf("record %d: %v %s", i, r.Level, text)
		}
	}
}

func TestDelegation(t *testing.T) {
	ctx := context.Background()
	inner := newLocal(t)
	b := New(inner, Options{})
	if b.Location() != inner.Location() || b.Properties() != inner.Properties() {
		t.Errorf("location %q / properties %+v differ from the inner backend's", b.Location(), b.Properties())
	}
	h := chunk("abcd")
	if err := b.Save(ctx, h, []byte("data")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 0, 16)
	if got, err := b.LoadInto(ctx, h, buf); err != nil || string(got) != "data" || &got[0] != &buf[:1][0] {
		t.Errorf("LoadInto did not use the inner LoadInto with the caller's buffer: %q, %v", got, err)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Without the optional interfaces: no-ops and a Load.
	m := New(mem.New(), Options{})
	if err := m.Save(ctx, h, []byte("data")); err != nil {
		t.Fatal(err)
	}
	if got, err := m.LoadInto(ctx, h, nil); err != nil || string(got) != "data" {
		t.Errorf("LoadInto over mem: %q, %v", got, err)
	}
	if n, err := m.RemoveTemp(ctx, time.Now()); n != 0 || err != nil {
		t.Errorf("RemoveTemp over mem: %d, %v", n, err)
	}
	if err := m.Flush(ctx); err != nil {
		t.Errorf("Flush over mem: %v", err)
	}
	m.Prefetch(h)
}

package faulty_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend { return faulty.New(mem.New(), 1) })
}

var errBoom = errors.New("boom")

func chunk(name string) backend.Handle { return backend.Handle{Type: backend.ChunkFile, Name: name} }

// outcome runs fn n times and returns a string of '.' (nil) and 'x'
// (errBoom) per call.
func outcome(n int, fn func() error) string {
	var sb strings.Builder
	for range n {
		switch err := fn(); {
		case err == nil:
			sb.WriteByte('.')
		case errors.Is(err, errBoom):
			sb.WriteByte('x')
		default:
			sb.WriteString("(" + err.Error() + ")")
		}
	}
	return sb.String()
}

// TestSelection: which calls a rule selects, by method, type, prefix,
// Nth, From and Probability.
func TestSelection(t *testing.T) {
	ctx := context.Background()
	saveA := func(b *faulty.Backend) func() error {
		return func() error { return b.Save(ctx, chunk("aa01"), []byte("x")) }
	}
	tests := []struct {
		name string
		rule faulty.Rule
		call func(*faulty.Backend) func() error
		want string
	}{
		{"every matching call", faulty.Rule{Method: faulty.Save, Effect: faulty.Fail(errBoom)}, saveA, "xxxxxx"},
		{"the 3rd", faulty.Rule{Method: faulty.Save, Nth: 3, Effect: faulty.Fail(errBoom)}, saveA, "..x..."},
		{"from the 4th", faulty.Rule{Method: faulty.Save, From: 4, Effect: faulty.Fail(errBoom)}, saveA, "...xxx"},
		{"other method", faulty.Rule{Method: faulty.Load, Effect: faulty.Fail(errBoom)}, saveA, "......"},
		{"any method", faulty.Rule{Nth: 2, Effect: faulty.Fail(errBoom)}, saveA, ".x...."},
		{"type matches", faulty.Rule{Type: backend.ChunkFile, Effect: faulty.Fail(errBoom)}, saveA, "xxxxxx"},
		{"other type", faulty.Rule{Type: backend.IndexFile, Effect: faulty.Fail(errBoom)}, saveA, "......"},
		{"prefix matches", faulty.Rule{Prefix: "aa", Effect: faulty.Fail(errBoom)}, saveA, "xxxxxx"},
		{"other prefix", faulty.Rule{Prefix: "ab", Effect: faulty.Fail(errBoom)}, saveA, "......"},
		{"prefix never matches a listing", faulty.Rule{Prefix: "a", Effect: faulty.Fail(errBoom)},
			func(b *faulty.Backend) func() error {
				return func() error { return b.List(ctx, backend.ChunkFile, func(backend.FileInfo) error { return nil }) }
			}, "......"},
		{"listing of its type", faulty.Rule{Method: faulty.List, Type: backend.ChunkFile, Nth: 2, Effect: faulty.Fail(errBoom)},
			func(b *faulty.Backend) func() error {
				return func() error { return b.List(ctx, backend.ChunkFile, func(backend.FileInfo) error { return nil }) }
			}, ".x...."},
		{"LoadInto is Load", faulty.Rule{Method: faulty.Load, From: 2, Effect: faulty.Fail(errBoom)},
			func(b *faulty.Backend) func() error {
				_ = b.Save(ctx, chunk("aa01"), []byte("x"))
				return func() error { _, err := b.LoadInto(ctx, chunk("aa01"), nil); return err }
			}, ".xxxxx"},
		{"flush", faulty.Rule{Method: faulty.Flush, Nth: 1, Effect: faulty.Fail(errBoom)},
			func(b *faulty.Backend) func() error { return func() error { return b.Flush(ctx) } }, "x....."},
		{"remove temporary files", faulty.Rule{Method: faulty.RemoveTemp, From: 6, Effect: faulty.Fail(errBoom)},
			func(b *faulty.Backend) func() error {
				return func() error { _, err := b.RemoveTemp(ctx, time.Now()); return err }
			}, ".....x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := faulty.New(mem.New(), 1)
			b.AddRule(tc.rule)
			if got := outcome(6, tc.call(b)); got != tc.want {
				t.Errorf("calls: %s, want %s", got, tc.want)
			}
		})
	}
}

// TestProbability: the same seed fails the same calls; the share of
// failures is near the probability.
func TestProbability(t *testing.T) {
	ctx := context.Background()
	run := func(seed uint64) string {
		b := faulty.New(mem.New(), seed)
		b.AddRule(faulty.Rule{Method: faulty.Stat, Probability: 0.25, Effect: faulty.Fail(errBoom)})
		return outcome(2000, func() error {
			_, err := b.Stat(ctx, chunk("aa"))
			if errors.Is(err, backend.ErrNotFound) {
				return nil
			}
			return err
		})
	}
	a, a2, c := run(7), run(7), run(8)
	if a != a2 {
		t.Error("the same seed failed different calls")
	}
	if a == c {
		t.Error("different seeds failed the same calls")
	}
	if n := strings.Count(a, "x"); n < 400 || n > 600 {
		t.Errorf("%d of 2000 calls failed with probability 0.25", n)
	}
}

func TestFailAfter(t *testing.T) {
	ctx := context.Background()
	b := faulty.New(mem.New(), 1)
	b.AddRule(faulty.Rule{Method: faulty.Save, Type: backend.ChunkFile, Effect: faulty.FailAfter(errBoom)})
	b.AddRule(faulty.Rule{Method: faulty.Remove, Effect: faulty.FailAfter(errBoom)})
	h := chunk("abcd")
	err := b.Save(ctx, h, []byte("data"))
	if !errors.Is(err, errBoom) || !strings.Contains(err.Error(), "save chunks/abcd") {
		t.Fatalf("save: %v, want errBoom naming the operation and handle", err)
	}
	if got, err := b.Inner().Load(ctx, h, 0, -1); err != nil || string(got) != "data" {
		t.Fatalf("object not stored by a FailAfter save: %q, %v", got, err)
	}
	if err := b.Remove(ctx, h); !errors.Is(err, errBoom) {
		t.Fatalf("remove: %v", err)
	}
	if _, err := b.Inner().Stat(ctx, h); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("object not removed by a FailAfter remove: %v", err)
	}
	// Fail, unlike FailAfter, never reaches the inner backend.
	b.ClearRules()
	b.AddRule(faulty.Rule{Method: faulty.Save, Effect: faulty.Fail(errBoom)})
	if err := b.Save(ctx, h, []byte("data")); !errors.Is(err, errBoom) {
		t.Fatal(err)
	}
	if _, err := b.Inner().Stat(ctx, h); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("a failed save stored the object: %v", err)
	}
}

// TestLoadEffects: truncation and byte flips, by Load and LoadInto, on
// mem (no BufferLoader) and local (one); the stored object never changes.
func TestLoadEffects(t *testing.T) {
	ctx := context.Background()
	data := []byte("0123456789")
	flipped := func(i int) []byte { b := bytes.Clone(data); b[i] ^= 0xff; return b }
	tests := []struct {
		name   string
		effect []faulty.Effect
		prefix string
		want   []byte
	}{
		{"truncate", []faulty.Effect{faulty.Truncate(4)}, "", data[:4]},
		{"truncate to nothing", []faulty.Effect{faulty.Truncate(0)}, "", data[:0]},
		{"truncate beyond the end", []faulty.Effect{faulty.Truncate(99)}, "", data},
		{"flip the last byte", []faulty.Effect{faulty.FlipByte(-1)}, "", flipped(9)},
		{"flip byte 2", []faulty.Effect{faulty.FlipByte(2)}, "", flipped(2)},
		{"flip out of range", []faulty.Effect{faulty.FlipByte(10)}, "", data},
		{"truncate then flip", []faulty.Effect{faulty.Truncate(3), faulty.FlipByte(-1)}, "", flipped(2)[:3]},
		{"another object", []faulty.Effect{faulty.FlipByte(0)}, "ff", data},
	}
	inners := map[string]func(t *testing.T) backend.Backend{
		"mem": func(*testing.T) backend.Backend { return mem.New() },
		"local": func(t *testing.T) backend.Backend {
			be, err := local.Create(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return be
		},
	}
	for inner, newInner := range inners {
		for _, tc := range tests {
			t.Run(inner+"/"+tc.name, func(t *testing.T) {
				b := faulty.New(newInner(t), 1)
				h := chunk("abcd")
				if err := b.Save(ctx, h, data); err != nil {
					t.Fatal(err)
				}
				for _, e := range tc.effect {
					b.AddRule(faulty.Rule{Method: faulty.Load, Prefix: tc.prefix, Effect: e})
				}
				got, err := b.Load(ctx, h, 0, -1)
				if err != nil || !bytes.Equal(got, tc.want) {
					t.Errorf("Load = %q, %v; want %q", got, err, tc.want)
				}
				got, err = b.LoadInto(ctx, h, make([]byte, 0, 64))
				if err != nil || !bytes.Equal(got, tc.want) {
					t.Errorf("LoadInto = %q, %v; want %q", got, err, tc.want)
				}
				if got, err := b.Inner().Load(ctx, h, 0, -1); err != nil || !bytes.Equal(got, data) {
					t.Errorf("stored object changed: %q, %v", got, err)
				}
			})
		}
	}
}

func TestDelay(t *testing.T) {
	b := faulty.New(mem.New(), 1)
	b.AddRule(faulty.Rule{Method: faulty.Stat, Effect: faulty.Delay(50 * time.Millisecond)})
	start := time.Now()
	if _, err := b.Stat(context.Background(), chunk("ab")); !errors.Is(err, backend.ErrNotFound) {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("delayed stat returned after %v", d)
	}
	b.AddRule(faulty.Rule{Method: faulty.Save, Effect: faulty.Delay(time.Hour)})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := b.Save(ctx, chunk("ab"), nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("save delayed past its deadline: %v", err)
	}
	if _, err := b.Inner().Stat(context.Background(), chunk("ab")); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("a save that timed out in its delay stored the object: %v", err)
	}
}

// prefetchRecorder is a backend that takes fetch hints.
type prefetchRecorder struct {
	backend.Backend
	mu    sync.Mutex
	hints []string
}

func (p *prefetchRecorder) Prefetch(h backend.Handle) {
	p.mu.Lock()
	p.hints = append(p.hints, h.Name)
	p.mu.Unlock()
}

func TestCountsAndPrefetch(t *testing.T) {
	ctx := context.Background()
	inner := &prefetchRecorder{Backend: mem.New()}
	b := faulty.New(inner, 1)
	id := b.AddRule(faulty.Rule{Method: faulty.Prefetch, Prefix: "bb", Effect: faulty.Fail(errBoom)})
	for _, n := range []string{"aa", "bb", "aa"} {
		b.Prefetch(chunk(n))
	}
	_ = b.Save(ctx, chunk("aa"), []byte("x"))
	_ = b.Save(ctx, backend.Handle{Type: backend.IndexFile, Name: "cc"}, []byte("x"))
	_, _ = b.Load(ctx, chunk("aa"), 0, -1)
	_, _ = b.LoadInto(ctx, chunk("aa"), nil)
	_ = b.Flush(ctx)
	if fmt.Sprint(inner.hints) != "[aa aa]" {
		t.Errorf("hints passed on: %v, want [aa aa] (bb dropped by the rule)", inner.hints)
	}
	for _, c := range []struct {
		m    faulty.Method
		t    backend.FileType
		want int
	}{
		{faulty.Prefetch, backend.ChunkFile, 3},
		{faulty.Save, 0, 2},
		{faulty.Save, backend.IndexFile, 1},
		{faulty.Load, backend.ChunkFile, 2},
		{faulty.Flush, 0, 1},
		{faulty.AnyMethod, backend.ChunkFile, 6},
		{faulty.AnyMethod, 0, 8},
		{faulty.Remove, 0, 0},
	} {
		if got := b.Calls(c.m, c.t); got != c.want {
			t.Errorf("Calls(%v, %v) = %d, want %d", c.m, c.t, got, c.want)
		}
	}
	if got := fmt.Sprint(b.Names(faulty.Prefetch, backend.ChunkFile)); got != "map[aa:2 bb:1]" {
		t.Errorf("Names(prefetch) = %s", got)
	}
	b.RemoveRule(id)
	b.ResetCalls()
	b.Prefetch(chunk("bb"))
	if got := fmt.Sprint(b.Names(faulty.AnyMethod, 0)); got != "map[bb:1]" || fmt.Sprint(inner.hints) != "[aa aa bb]" {
		t.Errorf("after RemoveRule and ResetCalls: names %s, hints %v", got, inner.hints)
	}
}

// TestConcurrent: under concurrent calls, a From rule fails exactly the
// calls past its count and the counters add up.
func TestConcurrent(t *testing.T) {
	ctx := context.Background()
	b := faulty.New(mem.New(), 1)
	b.AddRule(faulty.Rule{Method: faulty.Save, From: 101, Effect: faulty.Fail(errBoom)})
	const workers, each = 8, 50
	var mu sync.Mutex
	failed := 0
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				err := b.Save(ctx, chunk(fmt.Sprintf("w%di%d", w, i)), []byte("x"))
				_, _ = b.Load(ctx, chunk("w0i0"), 0, -1)
				if errors.Is(err, errBoom) {
					mu.Lock()
					failed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if failed != workers*each-100 || b.Calls(faulty.Save, 0) != workers*each || b.Calls(faulty.Load, 0) != workers*each {
		t.Errorf("%d saves failed (want %d), %d saves and %d loads counted (want %d each)",
			failed, workers*each-100, b.Calls(faulty.Save, 0), b.Calls(faulty.Load, 0), workers*each)
	}
}

func TestBadRulesPanic(t *testing.T) {
	for _, r := range []faulty.Rule{
		{Method: faulty.Save},
		{Effect: faulty.Fail(nil)},
		{Nth: 1, From: 2, Effect: faulty.Fail(errBoom)},
		{Nth: -1, Effect: faulty.Fail(errBoom)},
		{Probability: 1.5, Effect: faulty.Fail(errBoom)},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("AddRule(%+v) did not panic", r)
				}
			}()
			faulty.New(mem.New(), 1).AddRule(r)
		}()
	}
}

func TestPassesThrough(t *testing.T) {
	inner := mem.New()
	b := faulty.New(inner, 1)
	if b.Location() != inner.Location() || b.Properties() != inner.Properties() {
		t.Errorf("location %q / properties %+v differ from the inner backend's", b.Location(), b.Properties())
	}
}

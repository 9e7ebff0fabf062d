// Package faulty is a backend.Backend for tests that passes calls to
// another backend and injects faults into the ones its rules select:
// errors (before the call, or after it reached the inner backend), delays,
// truncated loads and flipped bytes. It counts every call by method, type
// and object name so tests can assert on what a caller did.
//
// Invariants: without rules it behaves exactly like the inner backend
// (it passes backendtest.Run); rules select calls deterministically
// except for Probability, which draws from a generator seeded by New; the
// inner backend's data is never modified (a flipped byte is flipped in a
// copy); all methods, AddRule, RemoveRule and the counters are safe for
// concurrent use.
package faulty

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
)

// Method names a backend method in rules and counters.
type Method uint8

// The methods. LoadInto is counted and matched as Load: both load a whole
// object, and a caller uses whichever the backend offers.
const (
	AnyMethod Method = iota // in rules and counters: every method
	Save
	Load
	Stat
	List
	Remove
	Flush
	RemoveTemp
	Prefetch
)

var methodNames = [...]string{"any", "save", "load", "stat", "list", "remove", "flush", "remove temporary files", "prefetch"}

func (m Method) String() string {
	if int(m) < len(methodNames) {
		return methodNames[m]
	}
	return fmt.Sprintf("Method(%d)", uint8(m))
}

type effectKind uint8

const (
	fail effectKind = iota + 1
	failAfter
	delay
	truncate
	flipByte
)

// Effect is what a rule does to the calls it selects. Effects that do not
// apply to a method (Truncate on a Save) leave its calls alone.
type Effect struct {
	kind effectKind
	err  error
	d    time.Duration
	n    int64
}

// Fail makes the call fail with err (wrapped with the method and handle)
// without reaching the inner backend. A failed Prefetch drops the hint.
func Fail(err error) Effect { return Effect{kind: fail, err: err} }

// FailAfter passes the call to the inner backend and then fails it with
// err: a Save stored the object, a Remove removed it, yet the caller sees
// an error (a lost reply).
func FailAfter(err error) Effect { return Effect{kind: failAfter, err: err} }

// Delay makes the call wait d before anything else happens, or until its
// context ends (then it fails with the context's error). Prefetch, which
// has no context and must return quickly, is never delayed.
func Delay(d time.Duration) Effect { return Effect{kind: delay, d: d} }

// Truncate makes loads return at most the first n bytes of what the
// inner backend returned, without an error (a broken backend).
func Truncate(n int64) Effect { return Effect{kind: truncate, n: n} }

// FlipByte makes loads return their bytes with byte i inverted (i < 0
// counts from the end: -1 is the last byte); a load of too few bytes for
// i is returned unchanged.
func FlipByte(i int64) Effect { return Effect{kind: flipByte, n: i} }

// Rule selects calls and gives their Effect. A call matches when its
// method, type and name fit the first three fields; Nth, From and
// Probability then narrow the matching calls (each rule counts its own);
// when all three are zero every matching call is selected.
type Rule struct {
	Method Method           // AnyMethod: every method
	Type   backend.FileType // 0: every type (List matches its type; Flush and RemoveTemp have none)
	Prefix string           // "": every name; else only handles whose name starts with it (never List, Flush, RemoveTemp)

	Nth         int     // only the Nth matching call (1-based)
	From        int     // every matching call from the From-th on
	Probability float64 // each matching call with this probability

	Effect Effect
}

func (r Rule) check() error {
	switch {
	case r.Effect.kind == 0:
		return fmt.Errorf("rule %+v has no effect", r)
	case (r.Effect.kind == fail || r.Effect.kind == failAfter) && r.Effect.err == nil:
		return fmt.Errorf("rule %+v fails with a nil error", r)
	case r.Nth < 0 || r.From < 0 || r.Nth > 0 && r.From > 0:
		return fmt.Errorf("rule %+v: Nth and From are positive and exclusive", r)
	case r.Probability < 0 || r.Probability > 1:
		return fmt.Errorf("rule %+v: Probability outside [0,1]", r)
	case int(r.Method) >= len(methodNames):
		return fmt.Errorf("rule %+v: unknown method", r)
	}
	return nil
}

type rule struct {
	Rule
	seen int // matching calls so far
}

// call identifies one call for rules and counters.
type call struct {
	m    Method
	t    backend.FileType
	name string // "" for List, Flush, RemoveTemp
}

func (r *rule) matches(c call) bool {
	return (r.Method == AnyMethod || r.Method == c.m) &&
		(r.Type == 0 || r.Type == c.t) &&
		(r.Prefix == "" || c.name != "" && strings.HasPrefix(c.name, r.Prefix))
}

// Backend wraps another backend and injects faults. Create it with New.
type Backend struct {
	be backend.Backend

	mu     sync.Mutex
	rng    *rand.Rand
	rules  map[int]*rule
	nextID int
	calls  map[call]int
}

var (
	_ backend.Backend      = (*Backend)(nil)
	_ backend.Flusher      = (*Backend)(nil)
	_ backend.TempCleaner  = (*Backend)(nil)
	_ backend.Prefetcher   = (*Backend)(nil)
	_ backend.BufferLoader = (*Backend)(nil)
)

// New returns be wrapped, with no rules; seed seeds the generator of
// Probability rules.
func New(be backend.Backend, seed uint64) *Backend {
	return &Backend{be: be, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), rules: map[int]*rule{}, calls: map[call]int{}}
}

// Inner returns the wrapped backend.
func (b *Backend) Inner() backend.Backend { return b.be }

// AddRule adds r and returns its id for RemoveRule. Rules apply in the
// order they were added. It panics on a rule that cannot work (no effect,
// both Nth and From, a probability outside [0,1]): a mistake in the test.
func (b *Backend) AddRule(r Rule) int {
	if err := r.check(); err != nil {
		panic("faulty.AddRule: " + err.Error())
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.nextID++
	b.rules[b.nextID] = &rule{Rule: r}
	return b.nextID
}

// RemoveRule removes the rule with id; unknown ids are ignored.
func (b *Backend) RemoveRule(id int) {
	b.mu.Lock()
	delete(b.rules, id)
	b.mu.Unlock()
}

// ClearRules removes every rule.
func (b *Backend) ClearRules() {
	b.mu.Lock()
	clear(b.rules)
	b.mu.Unlock()
}

// Calls returns how many calls of method m on objects of type t were made
// (AnyMethod and 0 count every method and type). Calls a rule failed count
// too: they were made.
func (b *Backend) Calls(m Method, t backend.FileType) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for c, k := range b.calls {
		if (m == AnyMethod || c.m == m) && (t == 0 || c.t == t) {
			n += k
		}
	}
	return n
}

// Names returns how often each object name was passed to calls of method
// m on type t (AnyMethod and 0 as in Calls).
func (b *Backend) Names(m Method, t backend.FileType) map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	names := map[string]int{}
	for c, k := range b.calls {
		if c.name != "" && (m == AnyMethod || c.m == m) && (t == 0 || c.t == t) {
			names[c.name] += k
		}
	}
	return names
}

// ResetCalls sets every counter to zero (the rules' own counts stay).
func (b *Backend) ResetCalls() {
	b.mu.Lock()
	clear(b.calls)
	b.mu.Unlock()
}

// plan is what the selected rules do to one call.
type plan struct {
	delay     time.Duration
	fail      error // before the call
	failAfter error // after it
	loads     []Effect
}

// begin counts c and returns the effects of the rules that select it.
func (b *Backend) begin(c call) plan {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls[c]++
	ids := make([]int, 0, len(b.rules))
	for id := range b.rules {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var p plan
	for _, id := range ids {
		r := b.rules[id]
		if !r.matches(c) {
			continue
		}
		r.seen++
		if r.Nth > 0 && r.seen != r.Nth || r.From > 0 && r.seen < r.From {
			continue
		}
		if r.Probability > 0 && b.rng.Float64() >= r.Probability {
			continue
		}
		e := r.Effect
		switch e.kind {
		case delay:
			p.delay += e.d
		case fail:
			if p.fail == nil {
				p.fail = e.err
			}
		case failAfter:
			if p.failAfter == nil {
				p.failAfter = e.err
			}
		case truncate, flipByte:
			p.loads = append(p.loads, e)
		}
	}
	return p
}

// before runs the delay and the failure that precede the call.
func (p plan) before(ctx context.Context, what string) error {
	if p.delay > 0 {
		t := time.NewTimer(p.delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
	if p.fail != nil {
		return fmt.Errorf("%s: %w", what, p.fail)
	}
	return nil
}

// after returns the failure that follows a successful call.
func (p plan) after(what string) error {
	if p.failAfter != nil {
		return fmt.Errorf("%s: %w", what, p.failAfter)
	}
	return nil
}

// load applies truncations and flips to data; owned says whether data may
// be changed in place (else a flip works on a copy).
func (p plan) load(data []byte, owned bool) []byte {
	for _, e := range p.loads {
		switch e.kind {
		case truncate:
			if int64(len(data)) > e.n {
				data = data[:max(e.n, 0)]
			}
		case flipByte:
			i := e.n
			if i < 0 {
				i += int64(len(data))
			}
			if i < 0 || i >= int64(len(data)) {
				continue
			}
			if !owned {
				data = bytes.Clone(data)
				owned = true
			}
			data[i] ^= 0xff
		}
	}
	return data
}

func handleCall(m Method, h backend.Handle) call { return call{m: m, t: h.Type, name: h.Name} }

func what(m Method, h backend.Handle) string { return m.String() + " " + h.String() }

// Save implements backend.Backend.
func (b *Backend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	p := b.begin(handleCall(Save, h))
	if err := p.before(ctx, what(Save, h)); err != nil {
		return err
	}
	if err := b.be.Save(ctx, h, data); err != nil {
		return err
	}
	return p.after(what(Save, h))
}

// Load implements backend.Backend.
func (b *Backend) Load(ctx context.Context, h backend.Handle, off, length int64) ([]byte, error) {
	p := b.begin(handleCall(Load, h))
	if err := p.before(ctx, what(Load, h)); err != nil {
		return nil, err
	}
	data, err := b.be.Load(ctx, h, off, length)
	if err != nil {
		return nil, err
	}
	if err := p.after(what(Load, h)); err != nil {
		return nil, err
	}
	return p.load(data, false), nil
}

// LoadInto implements backend.BufferLoader with the inner backend's
// LoadInto, or its Load when it has none. It is counted as Load.
func (b *Backend) LoadInto(ctx context.Context, h backend.Handle, buf []byte) ([]byte, error) {
	p := b.begin(handleCall(Load, h))
	if err := p.before(ctx, what(Load, h)); err != nil {
		return nil, err
	}
	var data []byte
	var err error
	owned := false
	if bl, ok := b.be.(backend.BufferLoader); ok {
		data, err = bl.LoadInto(ctx, h, buf)
		owned = true // the caller's buffer or a new slice
	} else {
		data, err = b.be.Load(ctx, h, 0, -1)
	}
	if err != nil {
		return nil, err
	}
	if err := p.after(what(Load, h)); err != nil {
		return nil, err
	}
	return p.load(data, owned), nil
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	p := b.begin(handleCall(Stat, h))
	if err := p.before(ctx, what(Stat, h)); err != nil {
		return backend.FileInfo{}, err
	}
	fi, err := b.be.Stat(ctx, h)
	if err != nil {
		return backend.FileInfo{}, err
	}
	if err := p.after(what(Stat, h)); err != nil {
		return backend.FileInfo{}, err
	}
	return fi, nil
}

// List implements backend.Backend.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	w := List.String() + " " + t.String()
	p := b.begin(call{m: List, t: t})
	if err := p.before(ctx, w); err != nil {
		return err
	}
	if err := b.be.List(ctx, t, fn); err != nil {
		return err
	}
	return p.after(w)
}

// Remove implements backend.Backend.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	p := b.begin(handleCall(Remove, h))
	if err := p.before(ctx, what(Remove, h)); err != nil {
		return err
	}
	if err := b.be.Remove(ctx, h); err != nil {
		return err
	}
	return p.after(what(Remove, h))
}

// Flush implements backend.Flusher; without an inner Flusher there is
// nothing to flush.
func (b *Backend) Flush(ctx context.Context) error {
	p := b.begin(call{m: Flush})
	if err := p.before(ctx, Flush.String()); err != nil {
		return err
	}
	if f, ok := b.be.(backend.Flusher); ok {
		if err := f.Flush(ctx); err != nil {
			return err
		}
	}
	return p.after(Flush.String())
}

// RemoveTemp implements backend.TempCleaner; without an inner TempCleaner
// there are no temporary files.
func (b *Backend) RemoveTemp(ctx context.Context, olderThan time.Time) (int, error) {
	p := b.begin(call{m: RemoveTemp})
	if err := p.before(ctx, RemoveTemp.String()); err != nil {
		return 0, err
	}
	n := 0
	if tc, ok := b.be.(backend.TempCleaner); ok {
		var err error
		if n, err = tc.RemoveTemp(ctx, olderThan); err != nil {
			return n, err
		}
	}
	return n, p.after(RemoveTemp.String())
}

// Prefetch implements backend.Prefetcher: the hint goes to the inner
// backend when it takes hints, unless a Fail rule drops it.
func (b *Backend) Prefetch(h backend.Handle) {
	p := b.begin(handleCall(Prefetch, h))
	if p.fail != nil {
		return
	}
	if pf, ok := b.be.(backend.Prefetcher); ok {
		pf.Prefetch(h)
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

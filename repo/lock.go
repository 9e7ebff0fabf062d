package repo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	iofs "io/fs"
	"log/slog"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/format"
)

// Lock timing.
const (
	LockRefreshInterval = 5 * time.Minute
	StaleLockAge        = 30 * time.Minute
)

// ErrLocked means a conflicting lock is held.
var ErrLocked = errors.New("repository is locked")

// ErrReadOnly means the repository cannot be written (a read-only
// filesystem, no write permission, or a read-only backend).
var ErrReadOnly = errors.New("repository is read-only")

// isReadOnly reports whether err says the backend refuses writes.
func isReadOnly(err error) bool {
	return errors.Is(err, backend.ErrReadOnly) || errors.Is(err, iofs.ErrPermission) || errors.Is(err, syscall.EROFS)
}

// LockInfo is a lock object as found in the repository.
type LockInfo struct {
	Name string
	format.Lock
	// ModTime is the object's modification time on the storage's clock.
	ModTime time.Time
	Stale   bool
	// StaleReason says why a lock is stale; for an unreadable lock object
	// (Garbage) it is the parse error.
	StaleReason string
	// Garbage is set for a lock object that cannot be parsed. One younger
	// than StaleLockAge is taken for a writer that started at ModTime.
	Garbage bool
}

// Lock is a held repository lock; it refreshes itself until Unlock. A
// reader's lock on a read-only repository is a stand-in that holds nothing
// (ReadOnly reports it).
type Lock struct {
	r        *Repository
	readOnly bool

	mu     sync.Mutex
	name   string
	lock   format.Lock
	pins   map[format.ID]*pinRef
	stop   chan struct{}
	done   chan struct{}
	closed bool
}

type pinRef struct {
	indexes []string
	refs    int
}

// storageClock relates the storage's clock to this host's: hosts whose
// clocks differ still agree on the age of lock objects when they measure
// it against the modification times the storage itself assigns.
type storageClock struct {
	mu      sync.Mutex
	storage time.Time // a modification time the storage gave our object
	host    time.Time // this host's time when we learned it
}

// observe records that an object written just now got modification time t.
func (c *storageClock) observe(t, hostNow time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.storage, c.host = t, hostNow
}

// now is the storage's current time as best known: the last observed
// storage time plus the host time elapsed since, or the host's clock when
// nothing was observed yet.
func (r *Repository) storageNow() time.Time {
	c := &r.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	now := r.now()
	if c.storage.IsZero() {
		return now
	}
	return c.storage.Add(now.Sub(c.host))
}

// staleness decides whether a lock's holder is gone: its process no
// longer runs on this host, or its object is older than StaleLockAge on
// the storage's clock (a holder rewrites its object every
// LockRefreshInterval).
func (r *Repository) staleness(l *format.Lock, modTime time.Time) (bool, string) {
	if l.Hostname == r.hostname && l.PID > 0 {
		if err := syscall.Kill(l.PID, 0); errors.Is(err, syscall.ESRCH) {
			return true, fmt.Sprintf("process %d on this host is gone", l.PID)
		}
	}
	if age := r.storageNow().Sub(modTime); age > StaleLockAge {
		return true, fmt.Sprintf("not refreshed for %s", age.Round(time.Second))
	}
	return false, ""
}

// Locks lists the lock objects in the repository. An object that cannot
// be parsed is returned with Garbage set: it is stale (ignored) once it is
// older than StaleLockAge on the storage's clock, and `vmvault unlock
// --remove-all` removes it.
func (r *Repository) Locks(ctx context.Context) ([]LockInfo, error) {
	var infos []backend.FileInfo
	if err := r.be.List(ctx, backend.LockFile, func(fi backend.FileInfo) error {
		infos = append(infos, fi)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list locks: %w", err)
	}
	var out []LockInfo
	for _, fi := range infos {
		h := backend.Handle{Type: backend.LockFile, Name: fi.Name}
		if err := h.Valid(); err != nil {
			out = append(out, LockInfo{Name: fi.Name, ModTime: fi.ModTime, Garbage: true, StaleReason: "not a lock vmvault writes: " + err.Error(),
				Stale: r.storageNow().Sub(fi.ModTime) > StaleLockAge})
			continue
		}
		b, err := r.be.Load(ctx, h, 0, -1)
		if errors.Is(err, backend.ErrNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("load lock %s: %w", fi.Name, err)
		}
		l, err := format.ParseLock(b)
		if err != nil {
			li := LockInfo{Name: fi.Name, ModTime: fi.ModTime, Garbage: true, StaleReason: err.Error()}
			li.Stale = r.storageNow().Sub(fi.ModTime) > StaleLockAge
			out = append(out, li)
			continue
		}
		li := LockInfo{Name: fi.Name, Lock: *l, ModTime: fi.ModTime}
		li.Stale, li.StaleReason = r.staleness(l, fi.ModTime)
		out = append(out, li)
	}
	return out, nil
}

// RemoveLocks deletes stale locks, or all locks with all=true, and returns
// how many it removed.
func (r *Repository) RemoveLocks(ctx context.Context, all bool) (int, error) {
	locks, err := r.Locks(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range locks {
		if all || l.Stale {
			h := backend.Handle{Type: backend.LockFile, Name: l.Name}
			var err error
			if fr, ok := r.be.(backend.ForeignRemover); ok && h.Valid() != nil {
				err = fr.RemoveForeign(ctx, backend.LockFile, l.Name)
			} else {
				err = r.be.Remove(ctx, h)
			}
			if err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

func newLockName() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// LockOptions describe a lock to take.
type LockOptions struct {
	Kind      string // format.LockReader, LockWriter or LockMaintenance
	Operation string // what holds it, for people ("serve", "capture web01")
	// Pins are restore points to pin at once (see Lock.Pin).
	Pins []*RestorePoint
	// Wait is how long to retry while a conflicting lock is held.
	Wait time.Duration
}

// conflicts reports whether a lock of kind k may not be taken while o is
// held. Readers and writers never conflict with anything of this build:
// gc keeps what they pin and what they may still reference (see the
// package doc). Maintenance runs one at a time.
func conflicts(k string, o *LockInfo) bool {
	if o.Garbage {
		return false
	}
	return k == format.LockMaintenance && o.EffectiveKind() == format.LockMaintenance ||
		o.Exclusive && o.Kind == "" // a build that knows only exclusive locks
}

// Lock takes a lock of the given kind. It retries for up to opts.Wait
// when a conflicting lock is held, then fails with ErrLocked. A reader on
// a repository it cannot write gets a stand-in lock (ReadOnly) instead of
// an error; writers and maintenance fail with ErrReadOnly there.
func (r *Repository) Lock(ctx context.Context, opts LockOptions) (*Lock, error) {
	deadline := time.Now().Add(opts.Wait)
	for {
		l, err := r.tryLock(ctx, opts)
		if err == nil || !errors.Is(err, ErrLocked) || time.Now().After(deadline) {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (r *Repository) tryLock(ctx context.Context, opts LockOptions) (*Lock, error) {
	now := r.now().UTC()
	l := &Lock{r: r, name: newLockName(), pins: map[format.ID]*pinRef{}, lock: format.Lock{
		Exclusive: opts.Kind == format.LockMaintenance, Kind: opts.Kind, Operation: opts.Operation,
		Hostname: r.hostname, PID: os.Getpid(), Started: now, Refreshed: now,
	}}
	for _, rp := range opts.Pins {
		l.addPin(rp)
	}
	h := backend.Handle{Type: backend.LockFile, Name: l.name}
	before := r.now()
	if err := r.be.Save(ctx, h, l.marshal()); err != nil {
		if isReadOnly(err) {
			if opts.Kind == format.LockReader {
				return &Lock{r: r, readOnly: true, closed: true}, nil
			}
			return nil, fmt.Errorf("%w: cannot lock it for %s: %v", ErrReadOnly, opts.Operation, err)
		}
		return nil, fmt.Errorf("lock repository: %w", err)
	}
	// The storage's time of the first object is the lock's epoch.
	if fi, err := r.be.Stat(ctx, h); err == nil {
		l.lock.Epoch = fi.ModTime.UTC()
		r.clock.observe(fi.ModTime, before)
	}
	locks, err := r.Locks(ctx)
	if err != nil {
		_ = r.be.Remove(context.WithoutCancel(ctx), h)
		return nil, err
	}
	for _, o := range locks {
		if o.Garbage {
			slog.Warn("the repository holds an unreadable lock object ('vmvault unlock --list' shows it, 'vmvault unlock --remove-all' removes it); until it is 30 minutes old gc counts it as a running capture",
				"name", o.Name, "err", o.StaleReason)
		}
		if o.Name == l.name || o.Stale || !conflicts(opts.Kind, &o) {
			continue
		}
		_ = r.be.Remove(context.WithoutCancel(ctx), h)
		return nil, fmt.Errorf("%w: %s lock by %q on %s (pid %d) since %s", ErrLocked, o.EffectiveKind(), o.Operation, o.Hostname, o.PID, o.Started.Format(time.RFC3339))
	}
	// Rewrite with the epoch, so gc sees it without a Stat.
	if err := l.save(ctx); err != nil {
		_ = r.be.Remove(context.WithoutCancel(ctx), h)
		return nil, err
	}
	if err := l.validate(ctx, opts.Pins); err != nil {
		_ = l.Unlock()
		return nil, err
	}
	if opts.Kind == format.LockWriter {
		// Announced first, then checked: a gc that starts deleting after
		// this sees the writer; one deleting now is waited for.
		if err := l.waitForDeletions(ctx); err != nil {
			_ = l.Unlock()
			return nil, err
		}
	}
	l.stop = make(chan struct{})
	l.done = make(chan struct{})
	go l.refreshLoop()
	return l, nil
}

// waitForDeletions returns once no live gc is deleting, with the writer's
// lock announced as active. While one is, the lock says the writer is
// waiting (gc does not wait for waiting writers), and is announced active
// again before the next check, so gc and writer never miss each other.
func (l *Lock) waitForDeletions(ctx context.Context) error {
	for logged := false; ; {
		gc, err := l.r.deletingGC(ctx)
		if err != nil || gc == nil {
			return err
		}
		if !logged {
			slog.Info("waiting for a gc to finish removing objects", "gc_host", gc.Hostname, "gc_pid", gc.PID)
			logged = true
		}
		l.lock.Phase = format.LockPhaseWaiting
		if err := l.save(ctx); err != nil {
			return err
		}
		for gc != nil {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
			if gc, err = l.r.deletingGC(ctx); err != nil {
				return err
			}
		}
		l.lock.Phase = ""
		if err := l.save(ctx); err != nil {
			return err
		}
	}
}

// deletingGC returns the lock of a live gc in its deleting phase, or nil.
func (r *Repository) deletingGC(ctx context.Context) (*LockInfo, error) {
	locks, err := r.Locks(ctx)
	if err != nil {
		return nil, err
	}
	for i, o := range locks {
		if !o.Stale && !o.Garbage && o.Phase == format.LockPhaseDeleting {
			return &locks[i], nil
		}
	}
	return nil, nil
}

func (l *Lock) marshal() []byte {
	b, _ := l.lock.Marshal()
	return b
}

// addPin records rp in l.lock; the caller holds l.mu or owns l.
func (l *Lock) addPin(rp *RestorePoint) bool {
	if p := l.pins[rp.ID]; p != nil {
		p.refs++
		return false
	}
	p := &pinRef{refs: 1}
	for _, d := range rp.Disks {
		p.indexes = append(p.indexes, d.Index)
	}
	l.pins[rp.ID] = p
	l.syncPins()
	return true
}

// syncPins writes l.pins into l.lock (sorted, so objects are stable).
func (l *Lock) syncPins() {
	l.lock.Pins, l.lock.Indexes = nil, nil
	for id, p := range l.pins {
		l.lock.Pins = append(l.lock.Pins, id.String())
		l.lock.Indexes = append(l.lock.Indexes, p.indexes...)
	}
	slices.Sort(l.lock.Pins)
	slices.Sort(l.lock.Indexes)
	l.lock.Indexes = slices.Compact(l.lock.Indexes)
}

// save writes the lock's current content as a new object and removes the
// old one; the caller holds l.mu or owns l.
func (l *Lock) save(ctx context.Context) error {
	l.lock.Refreshed = l.r.now().UTC()
	name := newLockName()
	h := backend.Handle{Type: backend.LockFile, Name: name}
	before := l.r.now()
	if err := l.r.be.Save(ctx, h, l.marshal()); err != nil {
		return fmt.Errorf("update repository lock: %w", err)
	}
	if fi, err := l.r.be.Stat(ctx, h); err == nil {
		l.r.clock.observe(fi.ModTime, before)
	}
	_ = l.r.be.Remove(context.WithoutCancel(ctx), backend.Handle{Type: backend.LockFile, Name: l.name})
	l.name = name
	return nil
}

// validate checks, after the pins are visible, that the pinned restore
// points still exist: a restore point forgotten before its pin was seen
// may already have lost chunks to gc.
func (l *Lock) validate(ctx context.Context, rps []*RestorePoint) error {
	for _, rp := range rps {
		if _, err := l.r.be.Stat(ctx, snapshotHandle(rp.ID)); err != nil {
			if errors.Is(err, backend.ErrNotFound) {
				return fmt.Errorf("restore point %s was forgotten: %w", rp.ID.Short(), ErrNotFoundRP)
			}
			return fmt.Errorf("check restore point %s: %w", rp.ID.Short(), err)
		}
	}
	return nil
}

// ReadOnly reports whether the lock is a stand-in taken on a repository
// that cannot be written: nothing is pinned, so gc running elsewhere may
// remove what is being read (reads then fail with a clear error; they
// never return wrong data).
func (l *Lock) ReadOnly() bool { return l != nil && l.readOnly }

// Epoch is when the lock became visible, on the storage's clock.
func (l *Lock) Epoch() time.Time { return l.lock.Epoch }

// setPhase records a maintenance phase (format.LockPhaseDeleting, or ""
// when it ends) in the lock object.
func (l *Lock) setPhase(ctx context.Context, phase string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lock.Phase = phase
	return l.save(ctx)
}

// Pin adds restore points to the lock's pins: until Unpin or Unlock, gc
// keeps their indexes and chunks even when they are forgotten. Pinning is
// counted: each Pin of a restore point needs its own Unpin. It fails with
// ErrNotFoundRP when a restore point was forgotten before the pin was
// visible.
func (l *Lock) Pin(ctx context.Context, rps ...*RestorePoint) error {
	if l.readOnly {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("pin: the lock was released")
	}
	var added []*RestorePoint
	for _, rp := range rps {
		if l.addPin(rp) {
			added = append(added, rp)
		}
	}
	if len(added) == 0 {
		return nil
	}
	if err := l.save(ctx); err != nil {
		l.dropPins(added)
		return err
	}
	if err := l.validate(ctx, added); err != nil {
		l.dropPins(added)
		_ = l.save(context.WithoutCancel(ctx))
		return err
	}
	return nil
}

func (l *Lock) dropPins(rps []*RestorePoint) {
	for _, rp := range rps {
		delete(l.pins, rp.ID)
	}
	l.syncPins()
}

// Unpin releases one Pin of each restore point.
func (l *Lock) Unpin(ctx context.Context, rps ...*RestorePoint) error {
	if l.readOnly {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	changed := false
	for _, rp := range rps {
		if p := l.pins[rp.ID]; p != nil {
			if p.refs--; p.refs == 0 {
				delete(l.pins, rp.ID)
				changed = true
			}
		}
	}
	if !changed {
		return nil
	}
	l.syncPins()
	return l.save(ctx)
}

func (l *Lock) refreshLoop() {
	defer close(l.done)
	t := time.NewTicker(LockRefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			if err := l.refresh(); err != nil {
				slog.Warn("refresh repository lock: gc may treat it as stale after "+StaleLockAge.String(), "operation", l.lock.Operation, "err", err)
			}
		}
	}
}

// refresh writes a new lock object and removes the old one.
func (l *Lock) refresh() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	return l.save(context.Background())
}

// Unlock releases the lock. It is safe to call more than once, and on nil.
func (l *Lock) Unlock() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	name := l.name
	l.mu.Unlock()
	if l.stop != nil {
		close(l.stop)
		<-l.done
	}
	return l.r.be.Remove(context.Background(), backend.Handle{Type: backend.LockFile, Name: name})
}

package repo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
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

// LockInfo is a lock object as found in the repository.
type LockInfo struct {
	Name string
	format.Lock
	Stale       bool
	StaleReason string
}

// Lock is a held repository lock; it refreshes itself until Unlock.
type Lock struct {
	r      *Repository
	mu     sync.Mutex
	name   string
	lock   format.Lock
	stop   chan struct{}
	done   chan struct{}
	closed bool
}

// staleness decides whether a lock's holder is gone.
func (r *Repository) staleness(l *format.Lock) (bool, string) {
	if l.Hostname == r.hostname && l.PID > 0 {
		if err := syscall.Kill(l.PID, 0); errors.Is(err, syscall.ESRCH) {
			return true, fmt.Sprintf("process %d on this host is gone", l.PID)
		}
	}
	if age := r.now().Sub(l.Refreshed); age > StaleLockAge {
		return true, fmt.Sprintf("not refreshed for %s", age.Round(time.Second))
	}
	return false, ""
}

// Locks lists the lock objects in the repository.
func (r *Repository) Locks(ctx context.Context) ([]LockInfo, error) {
	var names []string
	if err := r.be.List(ctx, backend.LockFile, func(fi backend.FileInfo) error {
		names = append(names, fi.Name)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list locks: %w", err)
	}
	var out []LockInfo
	for _, n := range names {
		b, err := r.be.Load(ctx, backend.Handle{Type: backend.LockFile, Name: n}, 0, -1)
		if errors.Is(err, backend.ErrNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("load lock %s: %w", n, err)
		}
		l, err := format.ParseLock(b)
		if err != nil {
			// An unreadable lock cannot be attributed to anybody: stale.
			out = append(out, LockInfo{Name: n, Stale: true, StaleReason: err.Error()})
			continue
		}
		li := LockInfo{Name: n, Lock: *l}
		li.Stale, li.StaleReason = r.staleness(l)
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
			if err := r.be.Remove(ctx, backend.Handle{Type: backend.LockFile, Name: l.Name}); err != nil {
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

// Lock takes a shared or exclusive lock for operation op. It retries for up
// to wait when a conflicting lock is held, then fails with ErrLocked.
func (r *Repository) Lock(ctx context.Context, exclusive bool, op string, wait time.Duration) (*Lock, error) {
	deadline := time.Now().Add(wait)
	for {
		l, err := r.tryLock(ctx, exclusive, op)
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

func (r *Repository) tryLock(ctx context.Context, exclusive bool, op string) (*Lock, error) {
	now := r.now().UTC()
	l := &Lock{r: r, name: newLockName(), lock: format.Lock{
		Exclusive: exclusive, Operation: op, Hostname: r.hostname, PID: os.Getpid(), Started: now, Refreshed: now,
	}}
	b, _ := l.lock.Marshal()
	if err := r.be.Save(ctx, backend.Handle{Type: backend.LockFile, Name: l.name}, b); err != nil {
		return nil, fmt.Errorf("lock repository: %w", err)
	}
	locks, err := r.Locks(ctx)
	if err != nil {
		_ = r.be.Remove(context.WithoutCancel(ctx), backend.Handle{Type: backend.LockFile, Name: l.name})
		return nil, err
	}
	for _, o := range locks {
		if o.Name == l.name || o.Stale {
			continue
		}
		if exclusive || o.Exclusive {
			_ = r.be.Remove(context.WithoutCancel(ctx), backend.Handle{Type: backend.LockFile, Name: l.name})
			kind := "shared"
			if o.Exclusive {
				kind = "exclusive"
			}
			return nil, fmt.Errorf("%w: %s lock by %q on %s (pid %d) since %s", ErrLocked, kind, o.Operation, o.Hostname, o.PID, o.Started.Format(time.RFC3339))
		}
	}
	l.stop = make(chan struct{})
	l.done = make(chan struct{})
	go l.refreshLoop()
	return l, nil
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
				slog.Warn("refresh repository lock", "err", err)
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
	ctx := context.Background()
	nl := l.lock
	nl.Refreshed = l.r.now().UTC()
	name := newLockName()
	b, _ := nl.Marshal()
	if err := l.r.be.Save(ctx, backend.Handle{Type: backend.LockFile, Name: name}, b); err != nil {
		return err
	}
	_ = l.r.be.Remove(ctx, backend.Handle{Type: backend.LockFile, Name: l.name})
	l.name, l.lock = name, nl
	return nil
}

// Unlock releases the lock. It is safe to call more than once.
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
	close(l.stop)
	<-l.done
	return l.r.be.Remove(context.Background(), backend.Handle{Type: backend.LockFile, Name: name})
}

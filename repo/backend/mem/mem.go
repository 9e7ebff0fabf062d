// Package mem is an in-memory Backend for tests. It meets the full backend
// contract (see package backend) except durability across processes.
package mem

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
)

type object struct {
	data    []byte
	modTime time.Time
}

// Backend keeps objects in a map guarded by a mutex.
type Backend struct {
	mu      sync.RWMutex
	objects map[backend.Handle]object
}

var _ backend.Backend = (*Backend)(nil)

// New returns an empty in-memory backend.
func New() *Backend { return &Backend{objects: make(map[backend.Handle]object)} }

// Save implements backend.Backend.
func (b *Backend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	if err := h.Valid(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	cp := append([]byte(nil), data...)
	b.mu.Lock()
	b.objects[h] = object{data: cp, modTime: time.Now()}
	b.mu.Unlock()
	return nil
}

// Load implements backend.Backend.
func (b *Backend) Load(ctx context.Context, h backend.Handle, off, length int64) ([]byte, error) {
	if err := h.Valid(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.RLock()
	o, ok := b.objects[h]
	b.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("load %v: %w", h, backend.ErrNotFound)
	}
	size := int64(len(o.data))
	if off < 0 || off > size {
		return nil, fmt.Errorf("load %v at %d: %w", h, off, backend.ErrShortRead)
	}
	if length < 0 {
		length = size - off
	}
	if off+length > size {
		return nil, fmt.Errorf("load %v [%d,+%d) of %d bytes: %w", h, off, length, size, backend.ErrShortRead)
	}
	return append([]byte(nil), o.data[off:off+length]...), nil
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	if err := h.Valid(); err != nil {
		return backend.FileInfo{}, err
	}
	b.mu.RLock()
	o, ok := b.objects[h]
	b.mu.RUnlock()
	if !ok {
		return backend.FileInfo{}, fmt.Errorf("stat %v: %w", h, backend.ErrNotFound)
	}
	return backend.FileInfo{Name: h.Name, Size: int64(len(o.data)), ModTime: o.modTime}, nil
}

// List implements backend.Backend. It lists a snapshot taken at the call.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	b.mu.RLock()
	var infos []backend.FileInfo
	for h, o := range b.objects {
		if h.Type == t {
			infos = append(infos, backend.FileInfo{Name: h.Name, Size: int64(len(o.data)), ModTime: o.modTime})
		}
	}
	b.mu.RUnlock()
	for _, fi := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(fi); err != nil {
			return err
		}
	}
	return nil
}

// Remove implements backend.Backend.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if err := h.Valid(); err != nil {
		return err
	}
	b.mu.Lock()
	delete(b.objects, h)
	b.mu.Unlock()
	return nil
}

// Location implements backend.Backend.
func (b *Backend) Location() string { return "mem:" }

// Close implements backend.Backend.
func (b *Backend) Close() error { return nil }

// Properties implements backend.Backend.
func (b *Backend) Properties() backend.Properties {
	return backend.Properties{ReadParallelism: 8, WriteParallelism: 8, CheapRangedReads: true, ConsistentListing: true}
}

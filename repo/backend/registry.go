package backend

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Factory opens and creates the backends of one location scheme.
type Factory struct {
	// Open returns the backend of an existing repository at loc.
	Open func(ctx context.Context, loc Location) (Backend, error)
	// Create prepares storage for a new repository at loc (which must not
	// hold one yet) and returns its backend.
	Create func(ctx context.Context, loc Location) (Backend, error)
}

// ErrUnsupportedScheme is wrapped by Open and Create for a location whose
// scheme no backend registered.
var ErrUnsupportedScheme = errors.New("repository location scheme not supported")

// unsupportedError is ErrUnsupportedScheme with the scheme and the
// supported ones in its message.
type unsupportedError struct{ msg string }

func (e *unsupportedError) Error() string        { return e.msg }
func (e *unsupportedError) Is(target error) bool { return target == ErrUnsupportedScheme }

var registry struct {
	mu        sync.RWMutex
	factories map[string]Factory
}

// Register makes the backend of scheme available to Open and Create.
// Implementations call it from init; repo/backend/all imports every
// implementation, so a binary that imports it knows every scheme. It
// panics when scheme is not a valid scheme (see Location), is registered
// twice, or f lacks a function: all are mistakes in the program.
func Register(scheme string, f Factory) {
	if s, _, ok := splitScheme(scheme + ":x"); !ok || s != scheme {
		panic(fmt.Sprintf("backend.Register: %q is not a lower-case location scheme", scheme))
	}
	if f.Open == nil || f.Create == nil {
		panic(fmt.Sprintf("backend.Register(%q): Open and Create are both required", scheme))
	}
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if _, dup := registry.factories[scheme]; dup {
		panic(fmt.Sprintf("backend.Register: scheme %q registered twice", scheme))
	}
	if registry.factories == nil {
		registry.factories = map[string]Factory{}
	}
	registry.factories[scheme] = f
}

// Schemes lists the registered schemes, sorted.
func Schemes() []string {
	registry.mu.RLock()
	defer registry.mu.RUnlock()
	s := make([]string, 0, len(registry.factories))
	for k := range registry.factories {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

func lookup(loc Location) (Factory, error) {
	registry.mu.RLock()
	f, ok := registry.factories[loc.Scheme]
	registry.mu.RUnlock()
	if !ok {
		supported := "none"
		if s := Schemes(); len(s) > 0 {
			supported = strings.Join(s, ", ")
		}
		return Factory{}, &unsupportedError{fmt.Sprintf("repository location scheme %q is not supported yet (supported: %s)",
			loc.Scheme, supported)}
	}
	return f, nil
}

// Open returns the backend of the existing repository at loc.
func Open(ctx context.Context, loc Location) (Backend, error) {
	f, err := lookup(loc)
	if err != nil {
		return nil, err
	}
	return f.Open(ctx, loc)
}

// Create prepares a new repository's storage at loc and returns its
// backend.
func Create(ctx context.Context, loc Location) (Backend, error) {
	f, err := lookup(loc)
	if err != nil {
		return nil, err
	}
	return f.Create(ctx, loc)
}

package readonly_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/faulty"
	"github.com/vmvault/vmvault/repo/backend/mem"
	"github.com/vmvault/vmvault/repo/backend/readonly"
)

// TestMutationsFail: every mutation fails with ErrReadOnly naming the
// operation and the object, and never reaches the inner backend.
func TestMutationsFail(t *testing.T) {
	ctx := context.Background()
	h := backend.Handle{Type: backend.SnapshotFile, Name: "abcd"}
	inner := faulty.New(mem.New(), 1)
	if err := inner.Save(ctx, h, []byte("manifest")); err != nil {
		t.Fatal(err)
	}
	inner.ResetCalls()
	b := readonly.New(inner)
	tests := []struct {
		name string
		call func() error
		want string
	}{
		{"save", func() error { return b.Save(ctx, h, []byte("x")) }, "save snapshots/abcd at mem:"},
		{"save new", func() error { return b.Save(ctx, backend.Handle{Type: backend.ChunkFile, Name: "ff"}, nil) }, "save chunks/ff"},
		{"remove", func() error { return b.Remove(ctx, h) }, "remove snapshots/abcd"},
		{"remove temporary files", func() error { _, err := b.RemoveTemp(ctx, time.Now()); return err }, "remove temporary files below mem:"},
	}
	for _, tc := range tests {
		err := tc.call()
		if !errors.Is(err, backend.ErrReadOnly) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrReadOnly naming %q", tc.name, err, tc.want)
		}
	}
	for _, m := range []faulty.Method{faulty.Save, faulty.Remove, faulty.RemoveTemp} {
		if n := inner.Calls(m, 0); n != 0 {
			t.Errorf("%d %v calls reached the inner backend", n, m)
		}
	}
	if got, err := inner.Load(ctx, h, 0, -1); err != nil || string(got) != "manifest" {
		t.Errorf("object changed: %q, %v", got, err)
	}
}

// TestReadsPass: loads, stats, listings, Flush and hints reach the inner
// backend and return what it returns.
func TestReadsPass(t *testing.T) {
	ctx := context.Background()
	h := backend.Handle{Type: backend.ChunkFile, Name: "abcd"}
	inner := faulty.New(mem.New(), 1)
	if err := inner.Save(ctx, h, []byte("chunk data")); err != nil {
		t.Fatal(err)
	}
	inner.ResetCalls()
	b := readonly.New(inner)
	if got, err := b.Load(ctx, h, 6, 4); err != nil || string(got) != "data" {
		t.Errorf("Load = %q, %v", got, err)
	}
	if got, err := b.LoadInto(ctx, h, nil); err != nil || string(got) != "chunk data" {
		t.Errorf("LoadInto = %q, %v", got, err)
	}
	if fi, err := b.Stat(ctx, h); err != nil || fi.Size != 10 {
		t.Errorf("Stat = %+v, %v", fi, err)
	}
	if _, err := b.Stat(ctx, backend.Handle{Type: backend.ChunkFile, Name: "ff"}); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Stat of a missing object: %v", err)
	}
	var names []string
	if err := b.List(ctx, backend.ChunkFile, func(fi backend.FileInfo) error { names = append(names, fi.Name); return nil }); err != nil || len(names) != 1 {
		t.Errorf("List = %v, %v", names, err)
	}
	if err := b.Flush(ctx); err != nil {
		t.Errorf("Flush: %v", err)
	}
	b.Prefetch(h)
	for _, c := range []struct {
		m    faulty.Method
		want int
	}{{faulty.Load, 2}, {faulty.Stat, 2}, {faulty.List, 1}, {faulty.Flush, 1}, {faulty.Prefetch, 1}} {
		if n := inner.Calls(c.m, 0); n != c.want {
			t.Errorf("%d %v calls reached the inner backend, want %d", n, c.m, c.want)
		}
	}
	if b.Location() != inner.Location() || b.Properties() != inner.Properties() {
		t.Errorf("location %q / properties %+v differ from the inner backend's", b.Location(), b.Properties())
	}
}

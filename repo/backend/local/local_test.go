package local_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/backendtest"
	"github.com/vmvault/vmvault/repo/backend/local"
)

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		be, err := local.Create(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return be
	})
}

func TestTempFilesHiddenAndCleaned(t *testing.T) {
	root := t.TempDir()
	be, err := local.Create(root)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// A crash between write and rename leaves a temp file behind.
	tmp := filepath.Join(root, "chunks", "ab", ".tmp-abcd-123456")
	if err := os.WriteFile(tmp, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(tmp, old, old); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := be.List(ctx, backend.ChunkFile, func(fi backend.FileInfo) error {
		if strings.HasPrefix(fi.Name, ".tmp") {
			t.Errorf("temp file listed: %s", fi.Name)
		}
		n++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	removed, err := be.RemoveTemp(ctx, time.Now().Add(-time.Hour))
	if err != nil || removed != 1 {
		t.Fatalf("RemoveTemp = %d, %v; want 1", removed, err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatalf("temp file still there: %v", err)
	}
}

func TestCreateRefusesExisting(t *testing.T) {
	root := t.TempDir()
	be, err := local.Create(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Save(context.Background(), backend.Handle{Type: backend.ConfigFile, Name: "config"}, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if _, err := local.Create(root); err == nil {
		t.Fatal("Create over an existing repository succeeded")
	}
}

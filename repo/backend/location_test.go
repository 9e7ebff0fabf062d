package backend_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	_ "github.com/vmvault/vmvault/repo/backend/all"
)

func TestParseLocation(t *testing.T) {
	tests := []struct {
		in      string
		scheme  string
		path    string
		str     string // Location.String
		wantErr string
	}{
		{in: "/srv/vmvault", scheme: "local", path: "/srv/vmvault", str: "local:/srv/vmvault"},
		{in: "repo", scheme: "local", path: "repo"},
		{in: "./a:b", scheme: "local", path: "./a:b"},
		{in: "/srv/x:y", scheme: "local", path: "/srv/x:y"},
		{in: "dir/a:b", scheme: "local", path: "dir/a:b"},
		{in: "../up:1", scheme: "local", path: "../up:1"},
		{in: "a:b", scheme: "local", path: "a:b"},   // one letter is no scheme
		{in: "C:/x", scheme: "local", path: "C:/x"}, // nor a drive letter
		{in: "my_repo:1", scheme: "local", path: "my_repo:1"},
		{in: "1st:x", scheme: "local", path: "1st:x"},
		{in: ":x", scheme: "local", path: ":x"},
		{in: "~/repo", scheme: "local", path: "~/repo"},
		{in: " s3:x", scheme: "local", path: " s3:x"},
		{in: "local:/srv/x", scheme: "local", path: "/srv/x", str: "local:/srv/x"},
		{in: "local:rel:x", scheme: "local", path: "rel:x"},
		{in: "LOCAL:/x", scheme: "local", path: "/x"},
		{in: "local:user:pw@host/x", scheme: "local", path: "user:pw@host/x", str: "local:user:pw@host/x"}, // a path: nothing to hide
		{in: "s3:bucket/prefix", scheme: "s3", path: "bucket/prefix", str: "s3:bucket/prefix"},
		{in: "S3:bucket", scheme: "s3", path: "bucket"},
		{in: "backup.1:old", scheme: "backup.1", path: "old"},
		{in: "sftp:user@host:/srv/repo", scheme: "sftp", path: "user@host:/srv/repo", str: "sftp:***@host:/srv/repo"},
		{in: "sftp:user:pw@host:/srv/a@b", scheme: "sftp", path: "user:pw@host:/srv/a@b", str: "sftp:***@host:/srv/a@b"},
		{in: "rest:https://u:secret@host:8000/repo", scheme: "rest", path: "https://u:secret@host:8000/repo", str: "rest:https://***@host:8000/repo"},
		{in: "rest:https://u:se/cr@et@host/repo", scheme: "rest", path: "https://u:se/cr@et@host/repo", str: "rest:https://***@host/repo"},
		{in: "rest:https://host/repo?x=a@b", scheme: "rest", path: "https://host/repo?x=a@b", str: "rest:https://host/repo?x=a@b"},
		{in: "https://host/repo", scheme: "https", path: "//host/repo", str: "https://host/repo"},
		{in: "azure:container:/path", scheme: "azure", path: "container:/path"},
		{in: "b2:bucket:path", scheme: "b2", path: "bucket:path"},
		{in: "gs:bucket:/", scheme: "gs", path: "bucket:/"},
		{in: "svn+ssh:x", scheme: "svn+ssh", path: "x"},
		{in: "", wantErr: "empty repository location"},
		{in: "local:", wantErr: `nothing after "local:"`},
		{in: "s3:", wantErr: `nothing after "s3:"`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			loc, err := backend.ParseLocation(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseLocation(%q) = %+v, %v; want an error containing %q", tc.in, loc, err, tc.wantErr)
				}
				return
			}
			if err != nil || loc.Scheme != tc.scheme || loc.Path != tc.path {
				t.Fatalf("ParseLocation(%q) = %+v, %v; want scheme %q path %q", tc.in, loc, err, tc.scheme, tc.path)
			}
			if tc.str != "" && loc.String() != tc.str {
				t.Errorf("String() = %q, want %q", loc.String(), tc.str)
			}
			if strings.Contains(loc.String(), "secret") || strings.Contains(backend.Redact(tc.in), "secret") {
				t.Errorf("%q shows the secret: String %q, Redact %q", tc.in, loc.String(), backend.Redact(tc.in))
			}
		})
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"/srv/u:p@x":                       "/srv/u:p@x", // a plain path
		"local:u:p@x":                      "local:u:p@x",
		"rest:http://user:pass@host/":      "rest:http://***@host/",
		"s3:https://KEY:SECRET@s3.example": "s3:https://***@s3.example",
		"sftp:root@backup:/srv":            "sftp:***@backup:/srv",
		"s3:bucket/dir":                    "s3:bucket/dir",
	} {
		if got := backend.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRegistry(t *testing.T) {
	ctx := context.Background()
	if got := fmt.Sprint(backend.Schemes()); !strings.Contains(got, "local") {
		t.Fatalf("schemes %s lack local (repo/backend/all imports it)", got)
	}
	// Create then Open through the registry, by plain path and local:PATH.
	dir := filepath.Join(t.TempDir(), "repo:1")
	loc, err := backend.ParseLocation(dir)
	if err != nil {
		t.Fatal(err)
	}
	be, err := backend.Create(ctx, loc)
	if err != nil {
		t.Fatal(err)
	}
	h := backend.Handle{Type: backend.ConfigFile, Name: "config"}
	if err := be.Save(ctx, h, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	loc2, _ := backend.ParseLocation("local:" + dir)
	be2, err := backend.Open(ctx, loc2)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := be2.Load(ctx, h, 0, -1); err != nil || string(b) != "{}" {
		t.Fatalf("load through the second backend: %q, %v", b, err)
	}
	if be2.Location() != dir {
		t.Errorf("Location() = %q, want %q", be2.Location(), dir)
	}
	// Open of a missing directory fails naming it, with a nil backend.
	missing, _ := backend.ParseLocation(filepath.Join(dir, "nothing"))
	if be, err := backend.Open(ctx, missing); err == nil || be != nil || !strings.Contains(err.Error(), missing.Path) {
		t.Errorf("open missing: %v, %v", be, err)
	}

	// Unsupported schemes.
	for _, s := range []string{"sftp:u:secret@h:/x", "rest:https://u:secret@h/", "b2:b:p", "azure:c:/", "gs:b:/", "https://h/x"} {
		loc, err := backend.ParseLocation(s)
		if err != nil {
			t.Fatal(err)
		}
		for name, f := range map[string]func(context.Context, backend.Location) (backend.Backend, error){"open": backend.Open, "create": backend.Create} {
			be, err := f(ctx, loc)
			want := fmt.Sprintf("repository location scheme %q is not supported yet (supported: local, s3)", loc.Scheme)
			if be != nil || !errors.Is(err, backend.ErrUnsupportedScheme) || err.Error() != want {
				t.Errorf("%s %q: %v, %v; want %q", name, s, be, err, want)
			}
		}
	}

	// A location its backend cannot parse is ErrInvalidLocation.
	bad, _ := backend.ParseLocation("s3:bucket")
	if be, err := backend.Open(ctx, bad); be != nil || !errors.Is(err, backend.ErrInvalidLocation) {
		t.Errorf("open s3:bucket: %v, %v; want ErrInvalidLocation", be, err)
	}
}

func TestRegisterRefusesMistakes(t *testing.T) {
	f := backend.Factory{
		Open:   func(context.Context, backend.Location) (backend.Backend, error) { return nil, nil },
		Create: func(context.Context, backend.Location) (backend.Backend, error) { return nil, nil },
	}
	for _, tc := range []struct {
		scheme string
		f      backend.Factory
	}{
		{"local", f}, // registered by local
		{"S3", f},    // not lower case
		{"x", f},     // one letter
		{"a/b", f},   // not a scheme
		{"a:b", f},   // not a scheme
		{"test-nil", backend.Factory{}},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Register(%q) did not panic", tc.scheme)
				}
			}()
			backend.Register(tc.scheme, tc.f)
		}()
	}
}

func TestPermanent(t *testing.T) {
	h := backend.Handle{Type: backend.ChunkFile, Name: "../x"}
	transient := errors.New("connection reset")
	tests := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{transient, false},
		{fmt.Errorf("load: %w", transient), false},
		{backend.Permanent(transient), true},
		{fmt.Errorf("load: %w", backend.Permanent(transient)), true},
		{fmt.Errorf("load x: %w", backend.ErrNotFound), true},
		{fmt.Errorf("load x: %w", backend.ErrShortRead), true},
		{h.Valid(), true},
		{fmt.Errorf("save x: %w", backend.ErrReadOnly), true},
		{fmt.Errorf("gc: %w", &backend.RetainedError{Handle: h}), true},
		{context.Canceled, true},
		{fmt.Errorf("load: %w", context.DeadlineExceeded), true},
	}
	for _, tc := range tests {
		if got := backend.IsPermanent(tc.err); got != tc.want {
			t.Errorf("IsPermanent(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if backend.Permanent(nil) != nil {
		t.Error("Permanent(nil) is not nil")
	}
	until := time.Date(2031, 2, 3, 4, 5, 6, 0, time.UTC)
	re := fmt.Errorf("gc: %w", &backend.RetainedError{Handle: backend.Handle{Type: backend.PackFile, Name: "ab"}, Until: until, Mode: "COMPLIANCE"})
	if !errors.Is(re, backend.ErrRetained) || !strings.Contains(re.Error(), "packs/ab") || !strings.Contains(re.Error(), "COMPLIANCE") ||
		!strings.Contains(re.Error(), "until 2031-02-03T04:05:06Z") {
		t.Errorf("retained error %q: want it to match ErrRetained and name the object, mode and time", re)
	}
	if p := backend.Permanent(transient); !errors.Is(p, transient) || p.Error() != transient.Error() {
		t.Errorf("Permanent hides its error: %v", p)
	}
	if err := h.Valid(); !errors.Is(err, backend.ErrInvalidHandle) || err.Error() != "invalid handle chunks/../x: bad character in name" {
		t.Errorf("Valid() = %v", err)
	}
}

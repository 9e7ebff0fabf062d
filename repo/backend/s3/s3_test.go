package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/backendtest"
	"github.com/vmvault/vmvault/repo/backend/retry"
	"github.com/vmvault/vmvault/repo/backend/s3"
	"github.com/vmvault/vmvault/repo/backend/s3/s3test"
)

func TestMain(m *testing.M) { s3test.Main(m) }

var ctx = context.Background()

func name(i int) string { return fmt.Sprintf("%064x", i) }

// open returns a backend for cfg, closed when t ends.
func open(t *testing.T, cfg s3.Config) *s3.Backend {
	t.Helper()
	be, err := s3.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	return be
}

// quietRetry wraps be in a retry backend with short pauses and no log
// noise.
func quietRetry(be backend.Backend, attempts int) *retry.Backend {
	return retry.New(be, retry.Options{MaxAttempts: attempts, InitialDelay: 10 * time.Millisecond, MaxDelay: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

// TestParseConfig: locations and options, and what is refused.
func TestParseConfig(t *testing.T) {
	tests := []struct {
		path    string
		opts    map[string]string
		want    s3.Config
		wantErr string
	}{
		{path: "https://s3.example.com/bkt", want: s3.Config{Endpoint: "s3.example.com", Secure: true, Bucket: "bkt"}},
		{path: "http://127.0.0.1:9000/bkt/a/b/", want: s3.Config{Endpoint: "127.0.0.1:9000", Bucket: "bkt", Prefix: "a/b"}},
		{path: "https://h/bkt/p", opts: map[string]string{"region": "eu-west-1", "path-style": "true", "ca-file": "/ca.pem", "insecure": "1",
			"credentials-file": "/c", "object-lock": "30d", "object-lock-mode": "GOVERNANCE"},
			want: s3.Config{Endpoint: "h", Secure: true, Bucket: "bkt", Prefix: "p", Region: "eu-west-1", Lookup: minio.BucketLookupPath,
				CAFile: "/ca.pem", Insecure: true, CredentialsFile: "/c", Lock: s3.Retention{Mode: minio.Governance, Period: 30 * 24 * time.Hour}}},
		{path: "https://h/bkt", opts: map[string]string{"path-style": "false", "object-lock": "36h"},
			want: s3.Config{Endpoint: "h", Secure: true, Bucket: "bkt", Lookup: minio.BucketLookupDNS, Lock: s3.Retention{Period: 36 * time.Hour}}},
		{path: "https://AKIA:secret@h/bkt", wantErr: "credentials do not belong in the location"},
		{path: "https://h:secret@h/bkt", wantErr: "credentials do not belong"},
		{path: "bucket/x", wantErr: "must start with https:// or http://"},
		{path: "ftp://h/bkt", wantErr: "must start with https://"},
		{path: "https:///bkt", wantErr: "no host"},
		{path: "https://h/", wantErr: "no bucket"},
		{path: "https://h/b", wantErr: "bucket \"b\""},
		{path: "https://h/bkt?x=1", wantErr: "query"},
		{path: "https://h/bkt/a//b", wantErr: "prefix"},
		{path: "https://h/bkt/a/../b", wantErr: "prefix"},
		{path: "https://h/bkt", opts: map[string]string{"path-style": "maybe"}, wantErr: "path-style"},
		{path: "https://h/bkt", opts: map[string]string{"object-lock": "1.5d"}, wantErr: "object-lock"},
		{path: "https://h/bkt", opts: map[string]string{"object-lock-mode": "strict"}, wantErr: "object-lock-mode"},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			cfg, err := s3.ParseConfig(backend.Location{Scheme: "s3", Path: tc.path, Options: tc.opts})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, backend.ErrInvalidLocation) {
					t.Fatalf("err = %v, want ErrInvalidLocation with %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error shows the secret: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want.Lock.Mode == "" {
				tc.want.Lock.Mode = minio.Compliance
			}
			if fmt.Sprintf("%+v", cfg) != fmt.Sprintf("%+v", tc.want) {
				t.Errorf("got  %+v\nwant %+v", cfg, tc.want)
			}
		})
	}
}

// TestConformance runs the backend suite against MinIO, in a plain
// bucket and in a versioned one (where Remove deletes versions).
func TestConformance(t *testing.T) {
	srv := s3test.Shared(t)
	for _, versioned := range []bool{false, true} {
		t.Run(fmt.Sprintf("versioned=%v", versioned), func(t *testing.T) {
			bucket := srv.NewBucket(t, s3test.BucketOptions{Versioned: versioned})
			n := 0
			backendtest.Run(t, func(t *testing.T) backend.Backend {
				n++
				be, err := s3.Create(ctx, s3test.Config(srv.Addr, bucket, fmt.Sprintf("repo%d", n)))
				if err != nil {
					t.Fatal(err)
				}
				return be
			})
			if versioned {
				// Nothing the suite removed left a version behind.
				c := srv.Client(t)
				live := map[string]bool{}
				for o := range c.ListObjectsIter(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
					live[o.Key] = true
				}
				for o := range c.ListObjectsIter(ctx, bucket, minio.ListObjectsOptions{Recursive: true, WithVersions: true}) {
					if o.Err != nil {
						t.Fatal(o.Err)
					}
					if !live[o.Key] {
						t.Errorf("removed object %s left version %s (delete marker: %v)", o.Key, o.VersionID, o.IsDeleteMarker)
					}
				}
			}
		})
	}
}

// TestRangedReads: the edges of ranges, on empty and non-empty objects,
// and LoadRangeInto's use of the caller's buffer.
func TestRangedReads(t *testing.T) {
	srv := s3test.Shared(t)
	be := open(t, s3test.Config(srv.Addr, srv.NewBucket(t, s3test.BucketOptions{}), "r"))
	empty := backend.Handle{Type: backend.PackFile, Name: "empty"}
	full := backend.Handle{Type: backend.PackFile, Name: "full"}
	data := s3test.Bytes(1000)
	if err := be.Save(ctx, empty, nil); err != nil {
		t.Fatal(err)
	}
	if err := be.Save(ctx, full, data); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		h           backend.Handle
		off, length int64
		want        []byte // nil: ErrShortRead
	}{
		{empty, 0, -1, []byte{}},
		{empty, 0, 0, []byte{}},
		{empty, 0, 1, nil},
		{empty, 1, 0, nil},
		{empty, 1, -1, nil},
		{full, 0, -1, data},
		{full, 0, 1000, data},
		{full, 1, -1, data[1:]},
		{full, 999, -1, data[999:]},
		{full, 1000, -1, []byte{}},
		{full, 1000, 0, []byte{}},
		{full, 500, 0, []byte{}},
		{full, 10, 20, data[10:30]},
		{full, 999, 1, data[999:]},
		{full, 999, 2, nil},
		{full, 1000, 1, nil},
		{full, 1001, -1, nil},
		{full, 1001, 0, nil},
		{full, 5000, 10, nil},
		{full, -1, 10, nil},
	}
	for _, tc := range tests {
		got, err := be.Load(ctx, tc.h, tc.off, tc.length)
		if tc.want == nil {
			if !errors.Is(err, backend.ErrShortRead) {
				t.Errorf("load %v [%d,+%d): %v, want ErrShortRead", tc.h, tc.off, tc.length, err)
			}
			continue
		}
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("load %v [%d,+%d): %d bytes, %v; want %d bytes", tc.h, tc.off, tc.length, len(got), err, len(tc.want))
		}
	}
	buf := make([]byte, 0, 64)
	got, err := be.LoadRangeInto(ctx, full, 100, 50, buf)
	if err != nil || !bytes.Equal(got, data[100:150]) || &got[0] != &buf[:1][0] {
		t.Errorf("LoadRangeInto: %v; equal %v, in the caller's buffer %v", err, bytes.Equal(got, data[100:150]), len(got) > 0 && &got[0] == &buf[:1][0])
	}
	got, err = be.LoadInto(ctx, full, make([]byte, 0, 10))
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("LoadInto with a small buffer: %v", err)
	}
	missing := backend.Handle{Type: backend.PackFile, Name: "missing"}
	for _, r := range [][2]int64{{0, -1}, {0, 0}, {10, 5}, {10, -1}} {
		if _, err := be.Load(ctx, missing, r[0], r[1]); !errors.Is(err, backend.ErrNotFound) {
			t.Errorf("load missing %v: %v, want ErrNotFound", r, err)
		}
	}
}

// TestListPagination: more objects than one listing page (1000) are
// listed once each, over several requests; objects of other types,
// other prefixes and deeper keys are not.
func TestListPagination(t *testing.T) {
	srv := s3test.Shared(t)
	bucket := srv.NewBucket(t, s3test.BucketOptions{})
	proxy := s3test.NewProxy(t, srv.Addr)
	be := open(t, s3test.Config(proxy.Addr, bucket, "p/q"))
	const n = 1234
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := be.Save(ctx, backend.Handle{Type: backend.SnapshotFile, Name: name(i)}, []byte{byte(i)}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	c := srv.Client(t)
	for _, key := range []string{"p/q/snapshots/sub/" + name(1), "p/q/snapshots/Not-Valid", "p/q/snapshotsx/" + name(2), "p/snapshots/" + name(3), "p/q/index/" + name(4)} {
		if _, err := c.PutObject(ctx, bucket, key, bytes.NewReader([]byte("x")), 1, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	before := proxy.Requests()
	seen := map[string]int{}
	err := be.List(ctx, backend.SnapshotFile, func(fi backend.FileInfo) error {
		seen[fi.Name]++
		if fi.Size != 1 || fi.ModTime.IsZero() {
			return fmt.Errorf("%s: size %d, time %v", fi.Name, fi.Size, fi.ModTime)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != n {
		t.Errorf("listed %d names, want %d", len(seen), n)
	}
	for i := 0; i < n; i++ {
		if seen[name(i)] != 1 {
			t.Fatalf("%s listed %d times", name(i), seen[name(i)])
		}
	}
	if pages := proxy.Requests() - before; pages < 2 {
		t.Errorf("listing %d objects took %d requests, want pages of at most 1000", n, pages)
	}
	// A callback error ends the listing at once, mid-page.
	stop := errors.New("stop")
	calls := 0
	if err := be.List(ctx, backend.SnapshotFile, func(backend.FileInfo) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Errorf("list with a failing callback: %v after %d calls", err, calls)
	}
}

// TestConcurrentWriters: two clients (two hosts) save overlapping
// content-addressed objects into one prefix at once.
func TestConcurrentWriters(t *testing.T) {
	srv := s3test.Shared(t)
	cfg := s3test.Config(srv.Addr, srv.NewBucket(t, s3test.BucketOptions{}), "shared")
	hosts := []*s3.Backend{open(t, cfg), open(t, cfg)}
	const objects = 120
	content := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 1000+i*97) }
	var wg sync.WaitGroup
	errs := make(chan error, 4*objects)
	for hi, be := range hosts {
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < objects; i += 8 {
					j := (i + hi*objects/2) % objects // the hosts overlap in every object, in another order
					h := backend.Handle{Type: backend.PackFile, Name: name(j)}
					if err := be.Save(ctx, h, content(j)); err != nil {
						errs <- err
						continue
					}
					if got, err := be.Load(ctx, h, 0, -1); err != nil || !bytes.Equal(got, content(j)) {
						errs <- fmt.Errorf("read-after-write of %v on host %d: %v", h, hi, err)
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	count := 0
	if err := hosts[1].List(ctx, backend.PackFile, func(fi backend.FileInfo) error {
		count++
		var i int
		if _, err := fmt.Sscanf(fi.Name, "%x", &i); err != nil || fi.Size != int64(len(content(i))) {
			return fmt.Errorf("%s: %d bytes", fi.Name, fi.Size)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if count != objects {
		t.Errorf("listed %d objects, want %d", count, objects)
	}
}

// TestKeyWithoutDelete: a key that may write but not delete saves and
// loads; its Remove fails at once, permanently, through the retry
// wrapper, and the object stays.
func TestKeyWithoutDelete(t *testing.T) {
	srv := s3test.Shared(t)
	for _, versioned := range []bool{false, true} {
		t.Run(fmt.Sprintf("versioned=%v", versioned), func(t *testing.T) {
			bucket := srv.NewBucket(t, s3test.BucketOptions{Versioned: versioned})
			creds := srv.RestrictedCreds(t, s3test.Policy(bucket, "s3:GetObject", "s3:PutObject", "s3:ListBucket",
				"s3:ListBucketVersions", "s3:GetObjectVersion", "s3:GetBucketVersioning", "s3:GetBucketLocation"))
			proxy := s3test.NewProxy(t, srv.Addr)
			cfg := s3test.Config(proxy.Addr, bucket, "r")
			cfg.Creds = creds
			raw := open(t, cfg)
			be := quietRetry(raw, 5)
			h := backend.Handle{Type: backend.PackFile, Name: name(1)}
			if err := be.Save(ctx, h, []byte("pack")); err != nil {
				t.Fatalf("save with a write-only key: %v", err)
			}
			before := proxy.Requests()
			err := be.Remove(ctx, h)
			if err == nil || !backend.IsPermanent(err) || errors.Is(err, backend.ErrNotFound) || !strings.Contains(err.Error(), "AccessDenied") {
				t.Fatalf("remove with a key without delete permission: %v; want a permanent AccessDenied", err)
			}
			if reqs := proxy.Requests() - before; (versioned && reqs > 3) || (!versioned && reqs != 1) {
				t.Errorf("remove took %d requests: a permanent error must not be retried", reqs)
			}
			if got, err := be.Load(ctx, h, 0, -1); err != nil || string(got) != "pack" {
				t.Errorf("after the refused remove: %q, %v", got, err)
			}
		})
	}
}

// TestMissingBucket: Open names the missing bucket, permanently; Create
// makes it.
func TestMissingBucket(t *testing.T) {
	srv := s3test.Shared(t)
	cfg := s3test.Config(srv.Addr, "no-such-bucket-"+fmt.Sprint(time.Now().UnixNano()), "x")
	_, err := s3.Open(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("bucket %q does not exist", cfg.Bucket)) || !backend.IsPermanent(err) {
		t.Fatalf("open of a missing bucket: %v", err)
	}
	_, err = backend.Open(ctx, srv.Location(cfg.Bucket, "x"))
	if err == nil || !strings.Contains(err.Error(), cfg.Bucket) {
		t.Fatalf("open through the registry: %v", err)
	}
	be, err := s3.Create(ctx, cfg)
	if err != nil {
		t.Fatalf("create makes the bucket: %v", err)
	}
	defer be.Close()
	if err := be.Save(ctx, backend.Handle{Type: backend.ConfigFile, Name: "config"}, []byte("cfg")); err != nil {
		t.Fatal(err)
	}
	if _, err := s3.Create(ctx, cfg); err == nil || !strings.Contains(err.Error(), "a repository already exists") {
		t.Errorf("create over a repository: %v", err)
	}
	other := cfg
	other.Prefix = "y"
	if be2, err := s3.Create(ctx, other); err != nil {
		t.Errorf("create beside a repository in the same bucket: %v", err)
	} else {
		be2.Close()
	}
	if _, err := s3.Open(ctx, cfg); err != nil {
		t.Errorf("open after create: %v", err)
	}
}

// TestCredentials: refused credentials give a clear, permanent error
// that names where they came from and not the secret; credentials come
// from the environment and from credentials files.
func TestCredentials(t *testing.T) {
	srv := s3test.Shared(t)
	bucket := srv.NewBucket(t, s3test.BucketOptions{})
	const wrongSecret = "wrong-secret-Zq8vX2"
	dir := t.TempDir()
	writeCreds := func(name, id, secret string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", id, secret)), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := writeCreds("good", s3test.RootUser, s3test.RootPassword)
	bad := writeCreds("bad", s3test.RootUser, wrongSecret)
	unknown := writeCreds("unknown", "NOSUCHKEY", wrongSecret)
	broken := filepath.Join(dir, "broken")
	if err := os.WriteFile(broken, []byte("[default\naws_secret_access_key "+wrongSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clearEnv := func(t *testing.T) {
		for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"} {
			t.Setenv(v, "")
		}
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "none"))
		t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "none"))
	}
	tests := []struct {
		name    string
		env     map[string]string
		opts    map[string]string
		creds   *credentials.Credentials
		wantErr string // "" opens
	}{
		{name: "static wrong secret", creds: credentials.NewStaticV4(s3test.RootUser, wrongSecret, ""), wantErr: "refused the credentials from the given credentials: SignatureDoesNotMatch"},
		{name: "env", env: map[string]string{"AWS_ACCESS_KEY_ID": s3test.RootUser, "AWS_SECRET_ACCESS_KEY": s3test.RootPassword}},
		{name: "env wrong secret", env: map[string]string{"AWS_ACCESS_KEY_ID": s3test.RootUser, "AWS_SECRET_ACCESS_KEY": wrongSecret},
			wantErr: "refused the credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"},
		{name: "env unknown key", env: map[string]string{"AWS_ACCESS_KEY_ID": "NOSUCHKEY", "AWS_SECRET_ACCESS_KEY": wrongSecret}, wantErr: "InvalidAccessKeyId"},
		{name: "env half", env: map[string]string{"AWS_ACCESS_KEY_ID": s3test.RootUser}, wantErr: "must both be set"},
		{name: "shared file", env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": good}},
		{name: "shared file wrong secret", env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": bad}, wantErr: "refused the credentials from shared credentials file " + bad},
		{name: "credentials-file option", opts: map[string]string{backend.OptionCredentialsFile: good}},
		{name: "credentials-file unknown key", opts: map[string]string{backend.OptionCredentialsFile: unknown}, wantErr: "refused the credentials from credentials file " + unknown},
		{name: "credentials-file missing", opts: map[string]string{backend.OptionCredentialsFile: filepath.Join(dir, "gone")}, wantErr: "no such file"},
		{name: "credentials-file broken", opts: map[string]string{backend.OptionCredentialsFile: broken}, wantErr: "cannot read them"},
		{name: "none", wantErr: "no S3 credentials"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			loc := srv.Location(bucket, "c")
			for k, v := range tc.opts {
				loc.Options[k] = v
			}
			cfg, err := s3.ParseConfig(loc)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Creds = tc.creds
			be, err := s3.Open(ctx, cfg)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				defer be.Close()
				if err := be.Save(ctx, backend.Handle{Type: backend.LockFile, Name: "l"}, []byte("x")); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				be.Close()
				t.Fatalf("opened; want an error with %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) || !backend.IsPermanent(err) {
				t.Errorf("err = %v; want a permanent error with %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), wrongSecret) || strings.Contains(err.Error(), s3test.RootPassword) {
				t.Errorf("error shows a secret: %v", err)
			}
		})
	}
}

// TestRetries: transient faults between the backend and MinIO (503,
// 500, connection resets, a body cut short, a stalled request) are
// retried by the retry wrapper and the calls succeed; the backend
// itself makes one attempt per call, so retries do not multiply.
func TestRetries(t *testing.T) {
	srv := s3test.Shared(t)
	bucket := srv.NewBucket(t, s3test.BucketOptions{})
	proxy := s3test.NewProxy(t, srv.Addr)
	cfg := s3test.Config(proxy.Addr, bucket, "r")
	cfg.Timeout = time.Second
	raw := open(t, cfg)
	be := quietRetry(raw, 6)
	data := s3test.Bytes(300 << 10)
	h := backend.Handle{Type: backend.PackFile, Name: name(1)}
	if err := be.Save(ctx, h, data); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		method string
		faults []s3test.Fault
		call   func() error
	}{
		{"save 503", "PUT", []s3test.Fault{s3test.Unavailable, s3test.Unavailable, s3test.Unavailable}, func() error {
			return be.Save(ctx, backend.Handle{Type: backend.PackFile, Name: name(2)}, data)
		}},
		{"save reset", "PUT", []s3test.Fault{s3test.Reset, s3test.InternalError}, func() error {
			return be.Save(ctx, backend.Handle{Type: backend.PackFile, Name: name(3)}, data)
		}},
		{"save hang", "PUT", []s3test.Fault{s3test.Hang}, func() error {
			return be.Save(ctx, backend.Handle{Type: backend.PackFile, Name: name(4)}, data)
		}},
		{"load reset", "GET", []s3test.Fault{s3test.Reset, s3test.Reset}, func() error {
			got, err := be.Load(ctx, h, 0, -1)
			if err == nil && !bytes.Equal(got, data) {
				err = errors.New("wrong bytes")
			}
			return err
		}},
		{"ranged load cut", "GET", []s3test.Fault{s3test.CutBody, s3test.Unavailable}, func() error {
			got, err := be.Load(ctx, h, 1000, 200<<10)
			if err == nil && !bytes.Equal(got, data[1000:1000+200<<10]) {
				err = errors.New("wrong bytes")
			}
			return err
		}},
		{"load hang", "GET", []s3test.Fault{s3test.Hang}, func() error {
			_, err := be.Load(ctx, h, 0, 10)
			return err
		}},
		{"stat 500", "HEAD", []s3test.Fault{s3test.InternalError, s3test.Reset}, func() error {
			_, err := be.Stat(ctx, h)
			return err
		}},
		{"list 503", "GET", []s3test.Fault{s3test.Unavailable, s3test.Reset}, func() error {
			return be.List(ctx, backend.PackFile, func(backend.FileInfo) error { return nil })
		}},
		{"remove 503", "DELETE", []s3test.Fault{s3test.Unavailable, s3test.Reset}, func() error {
			return be.Remove(ctx, backend.Handle{Type: backend.PackFile, Name: name(2)})
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			injected := proxy.Injected()
			proxy.InjectFor(tc.method, tc.faults...)
			if err := tc.call(); err != nil {
				t.Fatalf("%v with %v injected", err, tc.faults)
			}
			if got := proxy.Injected() - injected; got != int64(len(tc.faults)) || proxy.Pending() != 0 {
				t.Errorf("%d faults injected, %d pending; want all %d injected", got, proxy.Pending(), len(tc.faults))
			}
		})
	}

	t.Run("one attempt per call", func(t *testing.T) {
		before := proxy.Requests()
		proxy.InjectFor("HEAD", s3test.Unavailable)
		_, err := raw.Stat(ctx, h)
		if err == nil || backend.IsPermanent(err) || !strings.Contains(err.Error(), "HTTP 503") {
			t.Errorf("stat with one 503 and no retry wrapper: %v; want a transient 503 error", err)
		}
		if n := proxy.Requests() - before; n != 1 {
			t.Errorf("the backend made %d requests for one call: minio-go's retries are on", n)
		}
	})
	t.Run("open while the server starts", func(t *testing.T) {
		proxy.Inject(s3test.Unavailable, s3test.Unavailable)
		be, err := s3.Open(ctx, cfg)
		if err != nil {
			t.Fatalf("open with two 503 answers first: %v", err)
		}
		be.Close()
		if proxy.Pending() != 0 {
			t.Errorf("%d faults not reached", proxy.Pending())
		}
	})
	t.Run("budget spent", func(t *testing.T) {
		proxy.InjectFor("HEAD", s3test.Unavailable, s3test.Unavailable, s3test.Unavailable)
		_, err := quietRetry(raw, 3).Stat(ctx, h)
		if err == nil || !strings.Contains(err.Error(), "gave up after 3 attempts") {
			t.Errorf("stat with more faults than attempts: %v", err)
		}
	})
}

// TestLatency: with 20 ms added to every request, every operation still
// works.
func TestLatency(t *testing.T) {
	srv := s3test.Shared(t)
	bucket := srv.NewBucket(t, s3test.BucketOptions{})
	proxy := s3test.NewProxy(t, srv.Addr)
	proxy.SetLatency(20 * time.Millisecond)
	be := open(t, s3test.Config(proxy.Addr, bucket, "slow"))
	start, reqs := time.Now(), proxy.Requests()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := backend.Handle{Type: backend.PackFile, Name: name(i)}
			data := s3test.Bytes(100 << 10)
			if err := be.Save(ctx, h, data); err != nil {
				errs <- err
				return
			}
			if got, err := be.Load(ctx, h, 10, 1000); err != nil || !bytes.Equal(got, data[10:1010]) {
				errs <- fmt.Errorf("load %v: %v", h, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	n := 0
	if err := be.List(ctx, backend.PackFile, func(backend.FileInfo) error { n++; return nil }); err != nil || n != 16 {
		t.Errorf("list: %d, %v", n, err)
	}
	if sent := proxy.Requests() - reqs; time.Since(start) < 40*time.Millisecond || sent < 33 {
		t.Errorf("%d requests in %v: the latency was not injected", sent, time.Since(start))
	}
}

// TestServerKilled: MinIO is killed in the middle of a sequence of
// Saves and comes back; each Save either retries through or fails with
// a clear error, and every Save that succeeded loads back intact.
func TestServerKilled(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t, s3test.BucketOptions{})
	cfg := s3test.Config(srv.Addr, bucket, "k")
	cfg.Timeout = 5 * time.Second
	raw := open(t, cfg)
	be := retry.New(raw, retry.Options{MaxAttempts: 30, MaxElapsed: 60 * time.Second, InitialDelay: 100 * time.Millisecond, MaxDelay: time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	const saves = 40
	saved := map[int][]byte{}
	var failed []error
	restarted := make(chan error, 1)
	for i := 0; i < saves; i++ {
		if i == 10 {
			srv.Kill()
			go func() {
				time.Sleep(time.Second)
				restarted <- srv.Restart()
			}()
		}
		data := s3test.Bytes(64<<10 + i)
		if err := be.Save(ctx, backend.Handle{Type: backend.PackFile, Name: name(i)}, data); err != nil {
			if !strings.Contains(err.Error(), "save packs/"+name(i)) {
				t.Errorf("save %d failed without saying what: %v", i, err)
			}
			failed = append(failed, err)
			continue
		}
		saved[i] = data
	}
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	for i := 0; i < saves; i++ {
		if _, ok := saved[i]; !ok && (i < 10 || i >= saves-5) {
			t.Errorf("save %d failed, before the kill or after the restart (%d failed: %v)", i, len(failed), failed)
		}
	}
	for i, data := range saved {
		got, err := be.Load(ctx, backend.Handle{Type: backend.PackFile, Name: name(i)}, 0, -1)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("saved object %d after the restart: %v", i, err)
		}
	}
	t.Logf("%d saves succeeded across the kill and restart, %d failed", len(saved), len(failed))
}

// TestDriveRemoved: one of MinIO's 4 drive directories vanishes while it
// serves; reads (and writes) go on.
func TestDriveRemoved(t *testing.T) {
	srv := s3test.Start(t)
	be := open(t, s3test.Config(srv.Addr, srv.NewBucket(t, s3test.BucketOptions{}), "d"))
	objects := map[string][]byte{}
	for i := 0; i < 30; i++ {
		data := s3test.Bytes(200<<10 + i)
		objects[name(i)] = data
		if err := be.Save(ctx, backend.Handle{Type: backend.PackFile, Name: name(i)}, data); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.RemoveDrive(2); err != nil {
		t.Fatal(err)
	}
	for i := 30; i < 40; i++ {
		data := s3test.Bytes(100 << 10)
		objects[name(i)] = data
		if err := be.Save(ctx, backend.Handle{Type: backend.PackFile, Name: name(i)}, data); err != nil {
			t.Errorf("save with a drive gone: %v", err)
			delete(objects, name(i))
		}
	}
	for n, data := range objects {
		h := backend.Handle{Type: backend.PackFile, Name: n}
		if got, err := be.Load(ctx, h, 0, -1); err != nil || !bytes.Equal(got, data) {
			t.Errorf("load %v with a drive gone: %v", h, err)
		}
		if got, err := be.Load(ctx, h, 4096, 8192); err != nil || !bytes.Equal(got, data[4096:4096+8192]) {
			t.Errorf("ranged load %v with a drive gone: %v", h, err)
		}
	}
	n := 0
	if err := be.List(ctx, backend.PackFile, func(backend.FileInfo) error { n++; return nil }); err != nil || n != len(objects) {
		t.Errorf("list with a drive gone: %d objects, %v; want %d", n, err, len(objects))
	}
}

// TestMultipart: an object larger than one PUT takes goes up in parts,
// with its retention; RemoveTemp aborts uploads that never completed,
// under the prefix only.
func TestMultipart(t *testing.T) {
	defer s3.SetSinglePutMax(5 << 20)()
	srv := s3test.Shared(t)
	for _, locked := range []bool{false, true} {
		t.Run(fmt.Sprintf("locked=%v", locked), func(t *testing.T) {
			bucket := srv.NewBucket(t, s3test.BucketOptions{ObjectLock: locked})
			cfg := s3test.Config(srv.Addr, bucket, "m")
			if locked {
				cfg.Lock.Period = time.Hour
			}
			be := open(t, cfg)
			h := backend.Handle{Type: backend.PackFile, Name: name(9)}
			data := s3test.Bytes(11<<20 + 123)
			if err := be.Save(ctx, h, data); err != nil {
				t.Fatal(err)
			}
			info, err := srv.Client(t).StatObject(ctx, bucket, "m/packs/"+h.Name, minio.StatObjectOptions{})
			if err != nil || !strings.HasSuffix(info.ETag, "-3") {
				t.Errorf("ETag %q, %v: want a multipart upload of 3 parts", info.ETag, err)
			}
			if got, err := be.Load(ctx, h, 0, -1); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("load: %v", err)
			}
			if fi, err := be.Stat(ctx, h); err != nil || fi.Size != int64(len(data)) || fi.RetainUntil.IsZero() != !locked {
				t.Errorf("stat: %+v, %v", fi, err)
			}
		})
	}

	bucket := srv.NewBucket(t, s3test.BucketOptions{})
	be := open(t, s3test.Config(srv.Addr, bucket, "m"))
	core := minio.Core{Client: srv.Client(t)}
	for _, key := range []string{"m/packs/" + name(1), "other/packs/" + name(1)} {
		if _, err := core.NewMultipartUpload(ctx, bucket, key, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := be.RemoveTemp(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Errorf("RemoveTemp of uploads older than an hour: %d, %v; want 0", n, err)
	}
	if n, err := be.RemoveTemp(ctx, time.Now().Add(time.Minute)); err != nil || n != 1 {
		t.Errorf("RemoveTemp: %d, %v; want 1", n, err)
	}
	var left []string
	for up := range srv.Client(t).ListIncompleteUploads(ctx, bucket, "", true) {
		left = append(left, up.Key)
	}
	if fmt.Sprint(left) != "[other/packs/"+name(1)+"]" {
		t.Errorf("uploads left: %v; want the one outside the prefix", left)
	}
}

// Package s3test runs a real MinIO server for tests, and a fault-injecting
// HTTP proxy to put between it and a client.
//
// Start runs a server of its own for one test; Shared runs one per test
// binary (the package's TestMain calls Main so it stops at the end). Each
// server is erasure-coded over 4 directories, listens on 127.0.0.1 at a
// free port, and counts as up once /minio/health/ready answers without
// an "X-Minio-Server-Status: unavailable" header (/live answers before the
// drives are formatted, /ready before the object layer is up). The minio binary must be on
// PATH: .ci/run installs it. Without it a test skips, saying why, unless
// the environment variable CI is set; then it fails.
//
// Servers run with MINIO_CI_CD=1 (MinIO otherwise refuses directories on
// the root disk) and are killed with the test (or the test binary, by a
// parent-death signal, should Main not run).
package s3test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/s3"
)

// The root credentials of every server started here.
const (
	RootUser     = "vmvault-test-root"
	RootPassword = "vmvault-test-root-password"
)

// Version is the MinIO module version .ci/run installs.
const Version = "v0.0.0-20260212201848-7aac2a2c5b7c"

// Server is a running MinIO.
type Server struct {
	Addr string    // 127.0.0.1:PORT of the S3 API
	Dirs [4]string // the drive directories

	bin     string
	console string
	base    string // directory of Dirs, certs and the log
	log     string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd exits
}

// Binary returns the path of the minio binary, or skips t (fails it
// when CI is set) when there is none.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("minio")
	if err == nil {
		return bin
	}
	msg := "minio is not on PATH; .ci/run installs it with: GOBIN=/usr/local/bin go install github.com/minio/minio@" + Version
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// Start runs a MinIO of its own for t, stopped when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Binary(t)
	base, err := os.MkdirTemp("", "vmvault-minio-")
	if err != nil {
		t.Fatal(err)
	}
	s, err := start(bin, base)
	if err != nil {
		_ = os.RemoveAll(base)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Stop()
		_ = os.RemoveAll(base)
	})
	return s
}

var shared struct {
	mu  sync.Mutex
	srv *Server
	err error
}

// Shared returns the test binary's shared MinIO, started on first use.
// Tests share it through buckets of their own (NewBucket). Call Main
// from TestMain so that it stops when the tests end.
func Shared(t testing.TB) *Server {
	t.Helper()
	bin := Binary(t)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv == nil && shared.err == nil {
		base, err := os.MkdirTemp("", "vmvault-minio-")
		if err == nil {
			shared.srv, err = start(bin, base)
			if err != nil {
				_ = os.RemoveAll(base)
			}
		}
		shared.err = err
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.srv
}

// Main runs the tests and then stops the shared server: call it from
// TestMain.
func Main(m *testing.M) {
	code := m.Run()
	shared.mu.Lock()
	if s := shared.srv; s != nil {
		s.Stop()
		_ = os.RemoveAll(s.base)
	}
	shared.mu.Unlock()
	os.Exit(code)
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func start(bin, base string) (*Server, error) {
	s := &Server{bin: bin, base: base, log: filepath.Join(base, "minio.log")}
	for i := range s.Dirs {
		s.Dirs[i] = filepath.Join(base, fmt.Sprintf("drive%d", i+1))
		if err := os.MkdirAll(s.Dirs[i], 0o700); err != nil {
			return nil, err
		}
	}
	var err error
	// A port freed here can be taken by someone else before MinIO binds
	// it: try a few.
	for attempt := 0; attempt < 3; attempt++ {
		if s.Addr, err = freePort(); err != nil {
			return nil, err
		}
		if s.console, err = freePort(); err != nil {
			return nil, err
		}
		if err = s.run(); err == nil {
			return s, nil
		}
	}
	return nil, err
}

// run starts the process on s.Addr and waits until it is ready.
func (s *Server) run() error {
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	args := []string{"server", "--quiet", "--address", s.Addr, "--console-address", s.console,
		"--certs-dir", filepath.Join(s.base, "certs")}
	args = append(args, s.Dirs[:]...)
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+RootUser, "MINIO_ROOT_PASSWORD="+RootPassword,
		"MINIO_CI_CD=1", "MINIO_BROWSER=off", "MINIO_UPDATE=off",
		"HOME="+s.base)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start minio: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	if err := s.waitReady(done, 90*time.Second); err != nil {
		s.Kill()
		return fmt.Errorf("minio on %s: %w\n%s", s.Addr, err, s.logTail())
	}
	return nil
}

func (s *Server) waitReady(done chan struct{}, limit time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("exited before it was ready")
		default:
		}
		resp, err := client.Get(s.URL() + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			// Ready answers 200 before the object layer is up, saying
			// so in this header; S3 calls fail with 503 until then.
			if resp.StatusCode == http.StatusOK && resp.Header.Get("X-Minio-Server-Status") == "" {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %v", limit)
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// URL is the server's S3 endpoint URL.
func (s *Server) URL() string { return "http://" + s.Addr }

// Kill ends the server at once (SIGKILL) and waits for it to exit.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Stop ends the server.
func (s *Server) Stop() { s.Kill() }

// Restart starts a killed server again on the same address and drives.
func (s *Server) Restart() error {
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		if err = s.run(); err == nil || !strings.Contains(s.logTail(), "address already in use") {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
	return err
}

// RemoveDrive deletes drive directory i (0–3) with everything in it, as
// a failed disk would vanish.
func (s *Server) RemoveDrive(i int) error { return os.RemoveAll(s.Dirs[i]) }

// RootCreds are the server's root credentials.
func RootCreds() *credentials.Credentials {
	return credentials.NewStaticV4(RootUser, RootPassword, "")
}

// Client returns a client of the server with root credentials.
func (s *Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	return ClientAt(t, s.Addr, RootCreds())
}

// ClientAt returns a client of the S3 API at addr (a server, or a proxy
// in front of one).
func ClientAt(t testing.TB, addr string, creds *credentials.Credentials) *minio.Client {
	t.Helper()
	c, err := minio.New(addr, &minio.Options{Creds: creds, BucketLookup: minio.BucketLookupPath, Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// BucketOptions choose how NewBucket makes a bucket.
type BucketOptions struct {
	ObjectLock bool // Object Lock (and so versions)
	Versioned  bool
}

// NewBucket creates a bucket with a fresh name and returns the name.
func (s *Server) NewBucket(t testing.TB, opts BucketOptions) string {
	t.Helper()
	name := "t-" + randomHex(8)
	c := s.Client(t)
	ctx := context.Background()
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{ObjectLocking: opts.ObjectLock}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
	if opts.Versioned && !opts.ObjectLock {
		if err := c.EnableVersioning(ctx, name); err != nil {
			t.Fatalf("enable versioning of %s: %v", name, err)
		}
	}
	return name
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Config returns the configuration of a backend at addr (the server's
// Addr, or a proxy's) in bucket under prefix, with root credentials.
func Config(addr, bucket, prefix string) s3.Config {
	return s3.Config{Endpoint: addr, Bucket: bucket, Prefix: prefix, Region: "us-east-1",
		Lookup: minio.BucketLookupPath, Creds: RootCreds()}
}

// Location returns the location of bucket/prefix on the server.
func (s *Server) Location(bucket, prefix string) backend.Location {
	p := s.URL() + "/" + bucket
	if prefix != "" {
		p += "/" + prefix
	}
	return backend.Location{Scheme: s3.Scheme, Path: p, Options: map[string]string{backend.OptionRegion: "us-east-1", backend.OptionPathStyle: "true"}}
}

// NewBackend returns a backend over a new empty prefix of a new bucket
// of the shared server, closed when t ends.
func NewBackend(t testing.TB) *s3.Backend {
	t.Helper()
	srv := Shared(t)
	be, err := s3.Create(context.Background(), Config(srv.Addr, srv.NewBucket(t, BucketOptions{}), "repo-"+randomHex(4)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	return be
}

// Policy is an IAM policy document allowing actions on bucket and the
// objects in it.
func Policy(bucket string, actions ...string) string {
	return fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":[%s],"Resource":["arn:aws:s3:::%s","arn:aws:s3:::%s/*"]}]}`,
		`"`+strings.Join(actions, `","`)+`"`, bucket, bucket)
}

// RestrictedCreds returns temporary credentials (STS AssumeRole of the
// root user) that may do only what policy allows: a session policy
// narrows the root's rights to its intersection with them. Keys
// without delete permission, say, need no users or admin API.
func (s *Server) RestrictedCreds(t testing.TB, policy string) *credentials.Credentials {
	t.Helper()
	creds, err := credentials.NewSTSAssumeRole(s.URL(), credentials.STSAssumeRoleOptions{
		AccessKey: RootUser, SecretKey: RootPassword, Policy: policy, DurationSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := creds.Get(); err != nil {
		t.Fatalf("assume role with a session policy: %v", err)
	}
	return creds
}

// Bytes returns n random bytes.
func Bytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

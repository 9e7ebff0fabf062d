package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/repotest"
)

func TestParseSize(t *testing.T) {
	cases := map[string]int64{"262144": 262144, "256K": 256 << 10, "256KiB": 256 << 10, "4m": 4 << 20, "1G": 1 << 30, "64KB": 64 << 10}
	for in, want := range cases {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "K", "-1", "1.5M", "99999999999T"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

func TestExitCodes(t *testing.T) {
	cases := []struct {
		err  error
		want int
	}{
		{nil, ExitOK},
		{errors.New("boom"), ExitError},
		{Usagef("bad"), ExitUsage},
		{fmt.Errorf("open: %w", repo.ErrNoRepository), ExitNoRepo},
		{fmt.Errorf("x: %w", repo.ErrLocked), ExitLocked},
		{ErrDamage, ExitDamage},
		{&repo.ChunkError{Err: errors.New("bad")}, ExitDamage},
	}
	for _, c := range cases {
		if got := report(&bytes.Buffer{}, c.err, false); got != c.want {
			t.Errorf("report(%v) = %d, want %d", c.err, got, c.want)
		}
	}
	if got := report(&bytes.Buffer{}, errors.New("x"), true); got != ExitInterrupted {
		t.Errorf("interrupted: %d", got)
	}
}

func TestProgressLine(t *testing.T) {
	l := progressLine("capture", 512<<20, 1<<30, 2*time.Second)
	for _, want := range []string{"512.0 MiB / 1.0 GiB", "50.0%", "256.0 MiB/s", "ETA 2s"} {
		if !strings.Contains(l, want) {
			t.Errorf("progress line %q lacks %q", l, want)
		}
	}
}

func TestStreamFile(t *testing.T) {
	p := t.TempDir() + "/out"
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	s := NewStreamFile(f, 64<<10)
	want := make([]byte, 1<<20)
	for i := range want {
		want[i] = byte(i * 7)
	}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := w * 16384; off < len(want); off += 4 * 16384 {
				if _, err := s.WriteAt(want[off:off+16384], int64(off)); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	if !bytes.Equal(got, want) {
		t.Fatal("content differs")
	}
}

// TestCPUProfileCoversEverySubcommand: --cpu-profile is a global flag, so
// every subcommand writes the profile (gzip-compressed pprof), also when
// it fails, and a profile that cannot be created is an error up front.
func TestCPUProfileCoversEverySubcommand(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		runErr  error
		path    string
		wantErr bool
		written bool
	}{
		{"success", nil, filepath.Join(dir, "ok.prof"), false, true},
		{"failing subcommand", errors.New("boom"), filepath.Join(dir, "fail.prof"), true, true},
		{"uncreatable profile", nil, filepath.Join(dir, "missing", "x.prof"), true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &Global{}
			root := &cobra.Command{Use: "root", SilenceErrors: true, SilenceUsage: true}
			g.Install(root)
			ran := false
			root.AddCommand(&cobra.Command{Use: "sub", RunE: func(*cobra.Command, []string) error { ran = true; return tt.runErr }})
			root.SetArgs([]string{"sub", "--cpu-profile", tt.path})
			err := root.Execute()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Execute: %v, want error %v", err, tt.wantErr)
			}
			b, rerr := os.ReadFile(tt.path)
			if !tt.written {
				if rerr == nil || ran {
					t.Fatalf("profile written %v, subcommand ran %v; want neither", rerr == nil, ran)
				}
				return
			}
			if rerr != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
				t.Fatalf("profile %s: %v, %d bytes; want a gzip-compressed pprof file", tt.path, rerr, len(b))
			}
		})
	}
}

// TestOpenRepo: locations reach the registry; a location no backend serves
// is wrong usage, one without a repository exits with ExitNoRepo, and
// messages name the location without its secrets.
func TestOpenRepo(t *testing.T) {
	_, dir := repotest.NewLocal(t, repotest.Options{})
	empty := t.TempDir()
	tests := []struct {
		repo    string
		code    int // ExitOK: opens
		wantMsg string
	}{
		{dir, ExitOK, ""},
		{"local:" + dir, ExitOK, ""},
		{"LOCAL:" + dir, ExitOK, ""},
		{"", ExitUsage, "no repository given"},
		{"local:", ExitUsage, `nothing after "local:"`},
		{filepath.Join(dir, "missing"), ExitNoRepo, filepath.Join(dir, "missing")},
		{"local:" + empty, ExitNoRepo, "open repository at " + empty},
		{"gs:bucket/x", ExitUsage, `repository location scheme "gs" is not supported yet (supported: local, s3)`},
		{"s3:bucket/x", ExitUsage, `the URL must start with https:// or http://`},
		{"s3:https://key:secret@host/bucket", ExitUsage, `credentials do not belong in the location`},
		{"rest:https://user:secret@host/", ExitUsage, `scheme "rest" is not supported yet`},
		{"sftp:u:secret@host:/srv", ExitUsage, `scheme "sftp" is not supported yet`},
	}
	for _, tc := range tests {
		t.Run(tc.repo, func(t *testing.T) {
			g := &Global{Repo: tc.repo}
			r, err := g.OpenRepo(context.Background(), repo.Options{})
			if err == nil {
				r.Close()
			}
			var out bytes.Buffer
			if code := report(&out, err, false); code != tc.code || !strings.Contains(out.String(), tc.wantMsg) {
				t.Errorf("exit %d (%q), want %d with %q", code, out.String(), tc.code, tc.wantMsg)
			}
			if strings.Contains(out.String(), "secret") {
				t.Errorf("message shows the secret: %q", out.String())
			}
		})
	}
}

// TestCreateBackend: init's backend comes from the same locations.
func TestCreateBackend(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new:repo")
	g := &Global{Repo: "local:" + dir}
	be, err := g.CreateBackend(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if be.Location() != dir {
		t.Errorf("created at %q, want %q", be.Location(), dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "chunks")); err != nil {
		t.Errorf("no layout at %s: %v", dir, err)
	}
	g.Repo = "gs:bucket"
	if _, err := g.CreateBackend(context.Background()); report(&bytes.Buffer{}, err, false) != ExitUsage {
		t.Errorf("create on gs: %v, want wrong usage", err)
	}
}

func TestParseDuration(t *testing.T) {
	cases := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"30d", 30 * 24 * time.Hour, true}, {"2w", 14 * 24 * time.Hour, true}, {"36h", 36 * time.Hour, true},
		{"90m", 90 * time.Minute, true}, {"0d", 0, true}, {"-1d", 0, false}, {"d", 0, false}, {"1.5d", 0, false},
		{"-5m", 0, false}, {"soon", 0, false}, {"99999999999999999d", 0, false},
	}
	for _, c := range cases {
		got, err := ParseDuration(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}

// TestRepoOptions: the --repo-* flags and VMVAULT_REPO_* variables become
// the location's options; flags win over variables.
func TestRepoOptions(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		want    map[string]string
		wantErr string
	}{
		{name: "none", want: map[string]string{}},
		{name: "flags", args: []string{"--repo-ca-file", "/ca.pem", "--repo-insecure", "--repo-region", "eu-central-1", "--repo-path-style"},
			want: map[string]string{"ca-file": "/ca.pem", "insecure": "true", "region": "eu-central-1", "path-style": "true"}},
		{name: "virtual host", args: []string{"--repo-path-style=false"}, want: map[string]string{"path-style": "false"}},
		{name: "env", env: map[string]string{"VMVAULT_REPO_CA_FILE": "/e.pem", "VMVAULT_REPO_INSECURE": "1", "VMVAULT_REPO_REGION": "r1",
			"VMVAULT_REPO_PATH_STYLE": "false", "VMVAULT_REPO_CREDENTIALS_FILE": "/creds"},
			want: map[string]string{"ca-file": "/e.pem", "insecure": "true", "region": "r1", "path-style": "false", "credentials-file": "/creds"}},
		{name: "flag over env", env: map[string]string{"VMVAULT_REPO_REGION": "r1", "VMVAULT_REPO_INSECURE": "true"}, args: []string{"--repo-region", "r2", "--repo-insecure=false"},
			want: map[string]string{"region": "r2"}},
		{name: "bad path style", args: []string{"--repo-path-style=sometimes"}, wantErr: "--repo-path-style"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, v := range []string{"VMVAULT_REPO_CA_FILE", "VMVAULT_REPO_INSECURE", "VMVAULT_REPO_REGION", "VMVAULT_REPO_PATH_STYLE", "VMVAULT_REPO_CREDENTIALS_FILE"} {
				t.Setenv(v, tc.env[v])
			}
			var g Global
			cmd := &cobra.Command{Use: "x"}
			g.AddFlags(cmd.Flags())
			if err := cmd.Flags().Parse(append([]string{"--repo", "s3:https://h/b"}, tc.args...)); err != nil {
				t.Fatal(err)
			}
			loc, err := g.Location()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(loc.Options) != fmt.Sprint(tc.want) {
				t.Errorf("options %v, want %v", loc.Options, tc.want)
			}
		})
	}
}

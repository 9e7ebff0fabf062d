// Package cli holds what both vmvault binaries share: global flags, opening
// the repository, exit codes, human-readable sizes and the progress line.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/backend"
	_ "github.com/vmvault/vmvault/repo/backend/all" // every backend's location scheme
	"github.com/vmvault/vmvault/repo/format"
	"github.com/vmvault/vmvault/repo/keys"
)

// Exit codes, documented in both binaries' --help.
const (
	ExitOK          = 0
	ExitError       = 1
	ExitUsage       = 2
	ExitDamage      = 3 // verify found damage, or data could not be read
	ExitNothing     = 4 // copy: every restore point asked for is there already
	ExitNoRepo      = 10
	ExitLocked      = 11
	ExitPassword    = 12 // wrong password, or none for an encrypted repository
	ExitInterrupted = 130
)

// ExitCodesHelp is appended to the root command's help.
const ExitCodesHelp = `Exit codes:
  0    success
  1    error
  2    wrong usage (unknown flag, missing argument)
  3    damaged data found (verify), a chunk could not be read, or (copy)
       restore points left out for damaged source data
  4    nothing to do (copy: the destination has everything asked for)
  10   no repository at the given location
  11   the repository is locked by another operation
  12   wrong password (or none given) for an encrypted repository
  130  interrupted (SIGINT/SIGTERM); nothing half-done is left visible`

// ErrDamage marks a command result that found damaged data.
var ErrDamage = errors.New("damaged data found")

// ErrNothingToDo marks a command that found its work done already; it
// exits with ExitNothing and its message is no error.
var ErrNothingToDo = errors.New("nothing to do")

// usageError marks wrong usage.
type usageError struct{ error }

// Usagef returns an error that exits with ExitUsage.
func Usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// Global holds flags every command shares.
type Global struct {
	Repo string
	// Options of remote repositories (backend.Location.Options).
	RepoCAFile    string
	RepoInsecure  bool
	RepoRegion    string
	RepoPathStyle string // "true", "false", or "" for the backend's choice
	LockWait      time.Duration
	Quiet         bool
	CPUProfile    string
	CacheDir      string
	CacheSize     string

	stopProfile func()
}

// AddFlags registers the global flags.
func (g *Global) AddFlags(fs *pflag.FlagSet) {
	fs.StringVarP(&g.Repo, "repo", "r", os.Getenv("VMVAULT_REPOSITORY"), "repository location: a directory, local:PATH, or s3:https://HOST[:PORT]/BUCKET[/PREFIX] (env VMVAULT_REPOSITORY)")
	fs.StringVar(&g.RepoCAFile, "repo-ca-file", os.Getenv("VMVAULT_REPO_CA_FILE"), "PEM file of CA certificates to trust for a remote repository, beside the system's (env VMVAULT_REPO_CA_FILE)")
	insecure, _ := strconv.ParseBool(os.Getenv("VMVAULT_REPO_INSECURE"))
	fs.BoolVar(&g.RepoInsecure, "repo-insecure", insecure, "do not verify the TLS certificate of a remote repository (env VMVAULT_REPO_INSECURE)")
	fs.StringVar(&g.RepoRegion, "repo-region", os.Getenv("VMVAULT_REPO_REGION"), "region of an S3 repository's bucket (env VMVAULT_REPO_REGION)")
	fs.StringVar(&g.RepoPathStyle, "repo-path-style", os.Getenv("VMVAULT_REPO_PATH_STYLE"), "S3 bucket in the URL path (true, what MinIO and most S3-compatibles want) or the host name (false, AWS); unset: by endpoint (env VMVAULT_REPO_PATH_STYLE)")
	fs.Lookup("repo-path-style").NoOptDefVal = "true"
	fs.DurationVar(&g.LockWait, "lock-wait", 0, "wait up to this long for a conflicting lock to go away")
	fs.BoolVarP(&g.Quiet, "quiet", "q", false, "no progress, summaries or informational log lines (errors, warnings, listings and --json still print)")
	fs.StringVar(&g.CPUProfile, "cpu-profile", "", "write a CPU profile (pprof) to this file")
	_ = fs.MarkHidden("cpu-profile")
	fs.StringVar(&g.CacheDir, "cache-dir", os.Getenv("VMVAULT_CACHE_DIR"), "disk cache for repositories on object storage (env VMVAULT_CACHE_DIR; default ~/.cache/vmvault; \"off\" for none)")
	fs.StringVar(&g.CacheSize, "cache-size", envOr("VMVAULT_CACHE_SIZE", "4GiB"), "most the disk cache holds per repository (env VMVAULT_CACHE_SIZE)")
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// diskCache returns the disk cache directory and size of the flags.
func (g *Global) diskCache() (string, int64, error) {
	sizeFlag := g.CacheSize
	if sizeFlag == "" { // a Global made in code, not by AddFlags
		sizeFlag = envOr("VMVAULT_CACHE_SIZE", "4GiB")
	}
	size, err := ParseSize(sizeFlag)
	if err != nil {
		return "", 0, Usagef("--cache-size: %v", err)
	}
	switch g.CacheDir {
	case "off":
		return "", 0, nil
	case "":
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", 0, nil // no home: no cache
			}
			base = filepath.Join(home, ".cache")
		}
		return filepath.Join(base, "vmvault"), size, nil
	}
	return g.CacheDir, size, nil
}

// Install registers the global flags on root and makes --cpu-profile
// cover whichever subcommand runs, from its start to the end of Execute
// (also when it fails).
func (g *Global) Install(root *cobra.Command) {
	g.AddFlags(root.PersistentFlags())
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		if g.Quiet {
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
		}
		if g.CPUProfile == "" {
			return nil
		}
		f, err := os.Create(g.CPUProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return fmt.Errorf("cpu profile %s: %w", g.CPUProfile, err)
		}
		g.stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
		return nil
	}
	cobra.OnFinalize(func() {
		if g.stopProfile != nil {
			g.stopProfile()
			g.stopProfile = nil
		}
	})
}

// Summary is where a command writes the summary of what it did (not data
// the user asked for, such as a listing or --json): w, or nowhere with
// --quiet.
func (g *Global) Summary(w io.Writer) io.Writer {
	if g.Quiet {
		return io.Discard
	}
	return w
}

// Location parses the repository location of the global flags; a missing
// or malformed one is wrong usage.
func (g *Global) Location() (backend.Location, error) {
	if g.Repo == "" {
		return backend.Location{}, Usagef("no repository given: use --repo LOCATION or set VMVAULT_REPOSITORY")
	}
	return g.LocationOf(g.Repo)
}

// LocationOf parses a repository location with the options of the global
// flags (they apply to every remote location a command names).
func (g *Global) LocationOf(s string) (backend.Location, error) {
	loc, err := backend.ParseLocation(s)
	if err != nil {
		return backend.Location{}, Usagef("%v", err)
	}
	if g.RepoPathStyle != "" {
		if _, err := strconv.ParseBool(g.RepoPathStyle); err != nil {
			return backend.Location{}, Usagef("--repo-path-style %q: want true or false", g.RepoPathStyle)
		}
	}
	loc.Options = map[string]string{}
	for k, v := range map[string]string{
		backend.OptionCAFile:          g.RepoCAFile,
		backend.OptionRegion:          g.RepoRegion,
		backend.OptionPathStyle:       g.RepoPathStyle,
		backend.OptionCredentialsFile: os.Getenv("VMVAULT_REPO_CREDENTIALS_FILE"),
	} {
		if v != "" {
			loc.Options[k] = v
		}
	}
	if g.RepoInsecure {
		loc.Options[backend.OptionInsecure] = "true"
	}
	return loc, nil
}

// OpenRepo opens the repository named by the global flags. A location no
// backend serves is wrong usage; one that cannot be opened has no
// repository.
func (g *Global) OpenRepo(ctx context.Context, opts repo.Options) (*repo.Repository, error) {
	loc, err := g.Location()
	if err != nil {
		return nil, err
	}
	return g.OpenRepoAt(ctx, loc, "", opts)
}

// OpenRepoAt opens the repository at loc. Its password comes from
// VMVAULT_<side>_PASSWORD_FILE or _COMMAND when side is set and either is,
// else as ReadPassword says.
func (g *Global) OpenRepoAt(ctx context.Context, loc backend.Location, side string, opts repo.Options) (*repo.Repository, error) {
	be, err := backend.Open(ctx, loc)
	if errors.Is(err, backend.ErrUnsupportedScheme) || errors.Is(err, backend.ErrInvalidLocation) {
		return nil, usageError{err}
	}
	if errors.Is(err, backend.ErrNotFound) {
		return nil, fmt.Errorf("%w: %v", repo.ErrNoRepository, err)
	}
	if err != nil {
		return nil, err
	}
	if opts.Hostname == "" {
		opts.Hostname = os.Getenv("VMVAULT_HOSTNAME")
	}
	if opts.Password == nil {
		opts.Password = func() ([]byte, error) { return ReadSidePassword(side, "password of "+be.Location()) }
	}
	if opts.DiskCacheDir == "" {
		if opts.DiskCacheDir, opts.DiskCacheSize, err = g.diskCache(); err != nil {
			_ = be.Close()
			return nil, err
		}
	}
	r, err := repo.Open(ctx, be, opts)
	if err != nil {
		_ = be.Close()
		return nil, err
	}
	return r, nil
}

// CreateBackend prepares the storage of a new repository at the location
// of the global flags.
func (g *Global) CreateBackend(ctx context.Context) (backend.Backend, error) {
	return g.CreateBackendWith(ctx, nil)
}

// CreateBackendWith is CreateBackend with more location options.
func (g *Global) CreateBackendWith(ctx context.Context, opts map[string]string) (backend.Backend, error) {
	loc, err := g.Location()
	if err != nil {
		return nil, err
	}
	for k, v := range opts {
		loc.Options[k] = v
	}
	be, err := backend.Create(ctx, loc)
	if errors.Is(err, backend.ErrUnsupportedScheme) || errors.Is(err, backend.ErrInvalidLocation) {
		return nil, usageError{err}
	}
	return be, err
}

// Main runs root with a context cancelled on SIGINT/SIGTERM and exits with
// the documented code.
func Main(root *cobra.Command) {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	root.SilenceErrors = true
	root.SilenceUsage = true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	err := root.ExecuteContext(ctx)
	interrupted := ctx.Err() != nil
	stop()
	os.Exit(report(root.ErrOrStderr(), err, interrupted))
}

func report(w io.Writer, err error, interrupted bool) int {
	if err == nil {
		return ExitOK
	}
	if errors.Is(err, ErrNothingToDo) && !interrupted {
		fmt.Fprintln(w, err)
		return ExitNothing
	}
	fmt.Fprintf(w, "%s: %v\n", "error", err)
	var ue usageError
	switch {
	case interrupted || errors.Is(err, context.Canceled):
		return ExitInterrupted
	case errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") || strings.Contains(err.Error(), "arg(s)"):
		return ExitUsage
	case errors.Is(err, repo.ErrNoRepository):
		return ExitNoRepo
	case errors.Is(err, repo.ErrLocked):
		return ExitLocked
	case errors.Is(err, repo.ErrWrongPassword) || errors.Is(err, repo.ErrNeedPassword):
		return ExitPassword
	case errors.Is(err, keys.ErrCaptureKey):
		return ExitError
	case errors.Is(err, ErrDamage) || repo.IsChunkError(err):
		return ExitDamage
	}
	return ExitError
}

// PrintJSON writes v as indented JSON.
func PrintJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Bytes formats n in binary units.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// ParseSize parses "262144", "256K", "256KiB", "4M", "1G".
func ParseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "IB"), "B")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult, t = 1<<10, t[:n-1]
		case 'M':
			mult, t = 1<<20, t[:n-1]
		case 'G':
			mult, t = 1<<30, t[:n-1]
		case 'T':
			mult, t = 1<<40, t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a number with an optional K, M, G or T suffix", s)
	}
	return v * mult, nil
}

// PrintSkipped writes a disk's record of skipped free space and swap
// (format.SkipStats.Lines), the first line after label, the others
// aligned under it; nothing when s is nil.
func PrintSkipped(w io.Writer, indent, label string, s *format.SkipStats) {
	if s == nil {
		return
	}
	pad := strings.Repeat(" ", len(label))
	for i, l := range s.Lines() {
		if i == 0 {
			fmt.Fprintf(w, "%s%s%s\n", indent, label, l)
		} else {
			fmt.Fprintf(w, "%s%s%s\n", indent, pad, l)
		}
	}
}

// Version describes the build of the running binary for --version: module
// version, VCS revision and time (and whether the tree was modified), Go
// version, and the repository format versions it reads and writes; extra
// lines follow (formats only one binary uses).
func Version(extra ...string) string {
	var b strings.Builder
	version, rev, when, modified := "(unknown)", "", "", false
	goVersion := runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		version, goVersion = bi.Main.Version, bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	b.WriteString(version + "\n")
	if rev != "" {
		fmt.Fprintf(&b, "commit %s", rev)
		if when != "" {
			fmt.Fprintf(&b, " (%s)", when)
		}
		if modified {
			b.WriteString(" with uncommitted changes")
		}
		b.WriteString("\n")
	} else {
		b.WriteString("commit unknown (built without VCS stamping, e.g. -buildvcs=false or outside a git checkout)\n")
	}
	fmt.Fprintf(&b, "built with %s for %s/%s\n", goVersion, runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&b, "repository format: config %d, index %d, manifest %d, chunk frame %d (reads and writes exactly these)",
		format.ConfigVersion, format.IndexVersion, format.ManifestVersion, format.ChunkVersion)
	for _, e := range extra {
		b.WriteString("\n" + e)
	}
	return b.String()
}

// SetVersion gives root a --version flag printing Version(extra...).
func SetVersion(root *cobra.Command, extra ...string) {
	root.Version = Version(extra...)
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
}

// ReadLock takes a reader's lock pinning rps, for the life of a command
// that reads them. On a repository it cannot write it says on stderr that
// nothing is pinned, and goes on.
func ReadLock(ctx context.Context, r *repo.Repository, op string, wait time.Duration, rps ...*repo.RestorePoint) (*repo.Lock, error) {
	l, err := r.Lock(ctx, repo.LockOptions{Kind: format.LockReader, Operation: op, Pins: rps, Wait: wait})
	if err != nil {
		return nil, err
	}
	if l.ReadOnly() {
		fmt.Fprintln(os.Stderr, "note: the repository is read-only here: no lock was taken, so a gc elsewhere may remove what is being read (reads would then fail, never return wrong data)")
	}
	return l, nil
}

// ParseDuration parses a Go duration ("36h", "90m") or a whole number of
// days or weeks ("30d", "2w").
func ParseDuration(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	for suffix, unit := range map[string]time.Duration{"d": 24 * time.Hour, "w": 7 * 24 * time.Hour} {
		if n, ok := strings.CutSuffix(t, suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil || v < 0 || v > int64(1<<62/unit) {
				return 0, fmt.Errorf("duration %q: want a number of days or weeks, or a Go duration like 36h", s)
			}
			return time.Duration(v) * unit, nil
		}
	}
	d, err := time.ParseDuration(t)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("duration %q: want e.g. 30d, 2w, 36h or 90m", s)
	}
	return d, nil
}

// ReadPassword returns the repository password: the first line of the
// file VMVAULT_PASSWORD_FILE names, the output of VMVAULT_PASSWORD_COMMAND
// (run by the shell, its first line), or what the user types on the
// terminal (prompt names what is asked). Never an argument, never logged.
func ReadPassword(prompt string) ([]byte, error) {
	if f := os.Getenv("VMVAULT_PASSWORD_FILE"); f != "" {
		return passwordFile(f)
	}
	if c := os.Getenv("VMVAULT_PASSWORD_COMMAND"); c != "" {
		return passwordCommand("VMVAULT_PASSWORD_COMMAND", c)
	}
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("%w (and no terminal to ask on)", repo.ErrNeedPassword)
	}
	defer tty.Close()
	fmt.Fprintf(tty, "%s: ", prompt)
	pw, err := term.ReadPassword(int(tty.Fd()))
	fmt.Fprintln(tty)
	if err != nil {
		return nil, fmt.Errorf("read password: %w", err)
	}
	if len(pw) == 0 {
		return nil, fmt.Errorf("%w: an empty one was typed", repo.ErrNeedPassword)
	}
	return pw, nil
}

// KDFFlag registers the hidden --insecure-kdf-for-tests flag of commands
// that make key slots and returns what KDF makes of it.
func KDFFlag(fs *pflag.FlagSet) func() keys.KDF {
	var insecure bool
	fs.BoolVar(&insecure, "insecure-kdf-for-tests", false, "derive keys with argon2id at 8 MiB and one pass (tests only: a slot made so is cheap to brute-force)")
	_ = fs.MarkHidden("insecure-kdf-for-tests")
	return func() keys.KDF {
		if insecure {
			return keys.KDF{Alg: "argon2id", Time: 1, Memory: 8 << 10, Threads: 1}
		}
		return keys.KDF{} // calibrated
	}
}

// ReadSidePassword is ReadPassword for one side of a command that opens
// two repositories (side "FROM" or "TO"): VMVAULT_FROM_PASSWORD_FILE or
// _COMMAND when set, else ReadPassword's sources.
func ReadSidePassword(side, prompt string) ([]byte, error) {
	if side != "" {
		if f := os.Getenv("VMVAULT_" + side + "_PASSWORD_FILE"); f != "" {
			return passwordFile(f)
		}
		if c := os.Getenv("VMVAULT_" + side + "_PASSWORD_COMMAND"); c != "" {
			return passwordCommand("VMVAULT_"+side+"_PASSWORD_COMMAND", c)
		}
	}
	return ReadPassword(prompt)
}

func passwordCommand(name, c string) ([]byte, error) {
	out, err := exec.Command("sh", "-c", c).Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return firstLine(out)
}

// NewPassword asks for a new password: from file when not empty, else
// (with fromEnv) through ReadPassword's environment variables, else on the
// terminal, twice.
func NewPassword(file string, fromEnv bool) ([]byte, error) {
	if file != "" {
		return passwordFile(file)
	}
	if fromEnv && (os.Getenv("VMVAULT_PASSWORD_FILE") != "" || os.Getenv("VMVAULT_PASSWORD_COMMAND") != "") {
		return ReadPassword("new password")
	}
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, Usagef("no terminal to ask for the new password on: give a password file")
	}
	tty.Close()
	a, err := ReadPassword("new password")
	if err != nil {
		return nil, err
	}
	b, err := ReadPassword("new password again")
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(a, b) {
		return nil, Usagef("the two passwords differ")
	}
	return a, nil
}

func passwordFile(f string) ([]byte, error) {
	b, err := os.ReadFile(f)
	if err != nil {
		return nil, fmt.Errorf("password file: %w", err)
	}
	if fi, err := os.Stat(f); err == nil && fi.Mode().Perm()&0o077 != 0 {
		slog.Warn("password file is readable by others: chmod 600 it", "file", f)
	}
	return firstLine(b)
}

func firstLine(b []byte) ([]byte, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) == 0 {
		return nil, fmt.Errorf("%w: the password given is empty", repo.ErrNeedPassword)
	}
	return line, nil
}

// NeedReadKey fails when the repository was opened with a capture key,
// for commands that read restore point contents.
func NeedReadKey(r *repo.Repository, what string) error {
	if _, canRead := r.Encrypted(); !canRead {
		return fmt.Errorf("%s: %w", what, keys.ErrCaptureKey)
	}
	return nil
}

// CompressionFlag adds --compression to a capture command: the codec of
// the chunks it stores ("" keeps the repository's default).
func CompressionFlag(fs *pflag.FlagSet, p *string) {
	fs.StringVar(p, "compression", "", "codec of the chunks this stores: "+strings.Join(format.CompressionNames(), ", ")+" (default: the repository's, set at init)")
}

// CheckCompression makes a bad --compression value a usage error.
func CheckCompression(c string) error {
	if c == "" {
		return nil
	}
	if err := format.ValidCompression(c); err != nil {
		return Usagef("--compression: %v", err)
	}
	return nil
}

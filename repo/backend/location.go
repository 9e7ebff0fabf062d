package backend

import (
	"errors"
	"fmt"
	"strings"
)

// Location is a parsed repository location (the --repo flag or
// VMVAULT_REPOSITORY): the scheme picks the backend, Path is the rest,
// which only that backend interprets (a directory for local, later a
// bucket or URL).
//
// Syntax. A location is SCHEME:REST when it starts with a scheme: a
// letter followed by at least one more letter, digit, '+', '-' or '.',
// then ':'. Anything else is a path of the local backend, so "/srv/x:y",
// "./a:b", "dir/a:b", "C:/x" (one letter is no scheme) and "my_repo:1"
// ('_' is not a scheme character) are paths. A relative path whose first
// component looks like a scheme ("backup.1:old") must be written
// "./backup.1:old" or "local:backup.1:old". Schemes are case-insensitive
// and kept in lower case.
type Location struct {
	Scheme string
	Path   string
	// Options are settings beyond the location string, from the command
	// line (--repo-* flags, VMVAULT_REPO_* variables) or a program: keys
	// are the Option* constants (a backend may document more), values
	// strings. A backend reads the keys that apply to it, ignores the
	// others, and fails Open or Create with ErrInvalidLocation for a value
	// it cannot parse. Options never hold secrets (credentials come from
	// the environment or files named here), so they may be logged.
	Options map[string]string
}

// Option keys shared by the backends that take them.
const (
	OptionRegion          = "region"           // the storage region ("us-east-1")
	OptionPathStyle       = "path-style"       // "true": bucket in the URL path; "false": in the host name; unset: the backend decides
	OptionCAFile          = "ca-file"          // PEM file of CA certificates trusted beside the system's
	OptionInsecure        = "insecure"         // "true": do not verify the server's TLS certificate
	OptionCredentialsFile = "credentials-file" // a file of credentials (for S3: the AWS shared credentials format)
	OptionObjectLock      = "object-lock"      // retention period of every object but locks ("30d", "720h"); unset or "0": none
	OptionObjectLockMode  = "object-lock-mode" // "compliance" (the default) or "governance"
)

// Option returns the value of key in l.Options ("" when unset).
func (l Location) Option(key string) string { return l.Options[key] }

// ErrInvalidLocation is wrapped by the errors of Open and Create for a
// location (or an option) its backend cannot parse: wrong usage, not a
// missing repository.
var ErrInvalidLocation = errors.New("invalid repository location")

// LocalScheme is the scheme of plain paths.
const LocalScheme = "local"

// ParseLocation parses s. It checks syntax only; Open and Create report a
// scheme no backend registered.
func ParseLocation(s string) (Location, error) {
	if s == "" {
		return Location{}, errors.New("empty repository location")
	}
	scheme, rest, ok := splitScheme(s)
	if !ok {
		return Location{Scheme: LocalScheme, Path: s}, nil
	}
	if rest == "" {
		return Location{}, fmt.Errorf("repository location %q: nothing after %q", Redact(s), scheme+":")
	}
	return Location{Scheme: scheme, Path: rest}, nil
}

// splitScheme returns the lower-cased scheme and the rest of s when s
// starts with one (see Location).
func splitScheme(s string) (scheme, rest string, ok bool) {
	i := strings.IndexByte(s, ':')
	if i < 2 || !isLetter(s[0]) {
		return "", "", false
	}
	for j := 1; j < i; j++ {
		if c := s[j]; !isLetter(c) && !(c >= '0' && c <= '9') && c != '+' && c != '-' && c != '.' {
			return "", "", false
		}
	}
	return strings.ToLower(s[:i]), s[i+1:], true
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// String returns the location as SCHEME:PATH with any user information
// (user names, passwords, keys in the authority part) replaced by "***".
// It is what messages and logs show.
func (l Location) String() string {
	if l.Scheme == LocalScheme {
		return l.Scheme + ":" + l.Path
	}
	return l.Scheme + ":" + redactUserinfo(l.Path)
}

// Redact returns the location string s fit for messages: user
// information of a non-local location is replaced by "***"; local paths
// and strings that do not parse are returned as they are, apart from
// their user information when they look like URLs.
func Redact(s string) string {
	scheme, rest, ok := splitScheme(s)
	if !ok {
		return s
	}
	if scheme == LocalScheme {
		return s
	}
	return s[:len(s)-len(rest)] + redactUserinfo(rest)
}

// redactUserinfo replaces the user information of s by "***": what lies
// between the start of the authority (after "//" when s has one before
// any other '/', else the start of s) and the '@' that ends it, which is
// the last '@' before the first '/' that follows the first '@' (so a
// password holding '/' or '@' is hidden too). Without an '@' before any
// '?' or '#', s has no user information.
func redactUserinfo(s string) string {
	start := 0
	if i := strings.Index(s, "//"); i >= 0 && !strings.Contains(s[:i], "/") {
		start = i + 2
	}
	region := s[start:]
	if j := strings.IndexAny(region, "?#"); j >= 0 {
		region = region[:j]
	}
	first := strings.IndexByte(region, '@')
	if first < 0 {
		return s
	}
	end := len(region)
	if j := strings.IndexByte(region[first:], '/'); j >= 0 {
		end = first + j
	}
	at := strings.LastIndexByte(region[:end], '@')
	return s[:start] + "***" + s[start+at:]
}

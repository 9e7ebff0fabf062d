package s3

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/vmvault/vmvault/repo/backend"
)

// Scheme is the location scheme of the backend.
const Scheme = "s3"

// DefaultTimeout is how long a request may go without progress when
// Config.Timeout is zero.
const DefaultTimeout = time.Minute

// Config says where a repository is and how to reach it. ParseConfig
// makes one from a location; programs and tests may fill one in.
type Config struct {
	Endpoint string // HOST[:PORT]
	Secure   bool   // https (else http)
	Bucket   string
	Prefix   string // the repository's directory in the bucket, without leading or trailing '/'; "" for the bucket's root

	Region string // "" lets the client ask the server
	// Lookup says whether the bucket goes into the URL path
	// (minio.BucketLookupPath, what MinIO and most S3-compatibles want) or
	// the host name (minio.BucketLookupDNS, AWS); minio.BucketLookupAuto
	// picks the host name for AWS and Google endpoints, the path elsewhere.
	Lookup   minio.BucketLookupType
	CAFile   string // PEM CA certificates trusted beside the system's
	Insecure bool   // skip verifying the server's TLS certificate

	// Creds, when set, are the credentials; else they come from
	// CredentialsFile, else from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
	// (and AWS_SESSION_TOKEN), else from the shared credentials file
	// (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile
	// AWS_PROFILE or "default").
	Creds           *credentials.Credentials
	CredentialsFile string // AWS shared credentials format; profile AWS_PROFILE or "default"

	// Lock, when its Period is set, writes every object but locks with an
	// Object Lock retention of that period; Create makes the bucket with
	// Object Lock enabled.
	Lock Retention

	// Timeout bounds how long a request may go without progress:
	// connecting, sending the body, waiting for the answer, receiving the
	// body. A stalled request fails with a transient error (repeated by
	// repo/backend/retry). DefaultTimeout when zero.
	Timeout time.Duration
}

// Retention is an Object Lock retention.
type Retention struct {
	Mode   minio.RetentionMode // minio.Compliance (when empty) or minio.Governance
	Period time.Duration       // 0: no retention
}

// mode returns the effective mode.
func (r Retention) mode() minio.RetentionMode {
	if r.Mode == "" {
		return minio.Compliance
	}
	return r.Mode
}

const locationSyntax = "s3:https://HOST[:PORT]/BUCKET[/PREFIX]"

func invalid(loc backend.Location, format string, args ...any) error {
	return fmt.Errorf("%w %s: %s (want %s)", backend.ErrInvalidLocation, loc, fmt.Sprintf(format, args...), locationSyntax)
}

// ParseConfig reads a location s3:https://HOST[:PORT]/BUCKET[/PREFIX]
// (or s3:http://…) and its options (the backend.Option* keys). Errors
// wrap backend.ErrInvalidLocation; user information in the URL is
// refused (credentials never go into locations) and never shown.
func ParseConfig(loc backend.Location) (Config, error) {
	var cfg Config
	u, err := url.Parse(loc.Path)
	if err != nil {
		return cfg, invalid(loc, "not a URL")
	}
	switch u.Scheme {
	case "https":
		cfg.Secure = true
	case "http":
	default:
		return cfg, invalid(loc, "the URL must start with https:// or http://")
	}
	if u.User != nil {
		return cfg, invalid(loc, "credentials do not belong in the location: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in ~/.aws/credentials, or VMVAULT_REPO_CREDENTIALS_FILE")
	}
	if u.Host == "" || u.Opaque != "" {
		return cfg, invalid(loc, "no host")
	}
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return cfg, invalid(loc, "a query or fragment is not allowed")
	}
	cfg.Endpoint = u.Host
	p := strings.TrimPrefix(u.Path, "/")
	p = strings.TrimSuffix(p, "/")
	bucket, prefix, _ := strings.Cut(p, "/")
	if bucket == "" {
		return cfg, invalid(loc, "no bucket")
	}
	if err := s3utils.CheckValidBucketName(bucket); err != nil {
		return cfg, invalid(loc, "bucket %q: %v", bucket, err)
	}
	if prefix != "" {
		for _, seg := range strings.Split(prefix, "/") {
			if seg == "" || seg == "." || seg == ".." || strings.ContainsFunc(seg, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				return cfg, invalid(loc, "prefix %q: empty, '.', '..' or control characters in a path component", prefix)
			}
		}
	}
	cfg.Bucket, cfg.Prefix = bucket, prefix

	cfg.Region = loc.Option(backend.OptionRegion)
	if v := loc.Option(backend.OptionPathStyle); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return cfg, fmt.Errorf("%w: option %s=%q: want true or false", backend.ErrInvalidLocation, backend.OptionPathStyle, v)
		}
		cfg.Lookup = minio.BucketLookupDNS
		if b {
			cfg.Lookup = minio.BucketLookupPath
		}
	}
	if v := loc.Option(backend.OptionInsecure); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return cfg, fmt.Errorf("%w: option %s=%q: want true or false", backend.ErrInvalidLocation, backend.OptionInsecure, v)
		}
		cfg.Insecure = b
	}
	cfg.CAFile = loc.Option(backend.OptionCAFile)
	cfg.CredentialsFile = loc.Option(backend.OptionCredentialsFile)
	if v := loc.Option(backend.OptionObjectLock); v != "" {
		d, err := ParsePeriod(v)
		if err != nil {
			return cfg, fmt.Errorf("%w: option %s=%q: %v", backend.ErrInvalidLocation, backend.OptionObjectLock, v, err)
		}
		cfg.Lock.Period = d
	}
	switch v := strings.ToLower(loc.Option(backend.OptionObjectLockMode)); v {
	case "", "compliance":
		cfg.Lock.Mode = minio.Compliance
	case "governance":
		cfg.Lock.Mode = minio.Governance
	default:
		return cfg, fmt.Errorf("%w: option %s=%q: want compliance or governance", backend.ErrInvalidLocation, backend.OptionObjectLockMode, v)
	}
	return cfg, nil
}

// ParsePeriod parses a retention period: a whole number of days ("30d")
// or a Go duration ("720h"); "0" is none.
func ParsePeriod(s string) (time.Duration, error) {
	if s == "0" {
		return 0, nil
	}
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.ParseUint(n, 10, 32)
		if err != nil || days > 100*365 {
			return 0, errors.New("want a whole number of days up to 36500 (30d) or a duration (720h)")
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 || d > 100*365*24*time.Hour {
		return 0, errors.New("want a whole number of days (30d) or a duration (720h) up to 100 years")
	}
	return d, nil
}

// location is the Location string of cfg: no secrets in it.
func (cfg Config) location() string {
	scheme := "http"
	if cfg.Secure {
		scheme = "https"
	}
	s := Scheme + ":" + scheme + "://" + cfg.Endpoint + "/" + cfg.Bucket
	if cfg.Prefix != "" {
		s += "/" + cfg.Prefix
	}
	return s
}

// transport returns the HTTP transport for cfg: connections kept for
// every request in flight, timeouts from cfg.Timeout, TLS verified
// against the system's CAs and cfg.CAFile unless cfg.Insecure.
func (cfg Config) transport() (*http.Transport, error) {
	tr, err := minio.DefaultTransport(cfg.Secure)
	if err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	tr.DialContext = (&net.Dialer{Timeout: min(timeout, 30*time.Second), KeepAlive: 30 * time.Second}).DialContext
	tr.ResponseHeaderTimeout = timeout
	tr.TLSHandshakeTimeout = min(timeout, 30*time.Second)
	// Idle connections for every request a repository keeps in flight
	// (ReadParallelism + WriteParallelism and then some), so that bursts
	// reuse connections instead of paying TCP and TLS handshakes.
	tr.MaxIdleConnsPerHost = 2 * (readParallelism + writeParallelism)
	tr.MaxIdleConns = tr.MaxIdleConnsPerHost
	tr.IdleConnTimeout = 90 * time.Second
	if !cfg.Secure {
		return tr, nil
	}
	if tr.TLSClientConfig == nil {
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := tr.TLSClientConfig.RootCAs
		if pool == nil {
			if pool, err = x509.SystemCertPool(); err != nil {
				pool = x509.NewCertPool()
			}
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate in it", cfg.CAFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	tr.TLSClientConfig.InsecureSkipVerify = cfg.Insecure
	return tr, nil
}

// credentialsOf returns cfg's credentials and where they come from (for
// messages: names of variables and files, never values). It fails when
// none are found.
func (cfg Config) credentialsOf() (*credentials.Credentials, string, error) {
	var (
		creds  *credentials.Credentials
		source string
	)
	profile := os.Getenv("AWS_PROFILE")
	if profile == "" {
		profile = "default"
	}
	switch {
	case cfg.Creds != nil:
		creds, source = cfg.Creds, "the given credentials"
	case cfg.CredentialsFile != "":
		creds = credentials.New(&credentials.FileAWSCredentials{Filename: cfg.CredentialsFile, Profile: profile})
		source = fmt.Sprintf("credentials file %s (profile %s)", cfg.CredentialsFile, profile)
	case os.Getenv("AWS_ACCESS_KEY_ID") != "" || os.Getenv("AWS_SECRET_ACCESS_KEY") != "":
		if os.Getenv("AWS_ACCESS_KEY_ID") == "" || os.Getenv("AWS_SECRET_ACCESS_KEY") == "" {
			return nil, "", errors.New("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must both be set")
		}
		creds, source = credentials.NewEnvAWS(), "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
	default:
		file := os.Getenv("AWS_SHARED_CREDENTIALS_FILE")
		if file == "" {
			file = "~/.aws/credentials"
		}
		creds = credentials.New(&credentials.FileAWSCredentials{Profile: profile})
		source = fmt.Sprintf("shared credentials file %s (profile %s)", file, profile)
	}
	v, err := creds.Get()
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe // names the file; the parser's own messages may quote a line of it, so they are not shown
		} else {
			err = errors.New("cannot read them")
		}
		return nil, "", fmt.Errorf("no S3 credentials from %s: %v (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in ~/.aws/credentials, or VMVAULT_REPO_CREDENTIALS_FILE)", source, err)
	}
	if v.SignerType.IsAnonymous() || v.AccessKeyID == "" || v.SecretAccessKey == "" {
		return nil, "", fmt.Errorf("no S3 credentials in %s (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in ~/.aws/credentials, or VMVAULT_REPO_CREDENTIALS_FILE)", source)
	}
	return creds, source, nil
}

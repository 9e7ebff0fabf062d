// Package s3 is the Backend for a repository in a bucket of S3-compatible
// object storage (AWS S3, MinIO, Ceph RGW, Wasabi, Backblaze B2's S3 API),
// spoken through github.com/minio/minio-go/v7.
//
// Location: s3:https://HOST[:PORT]/BUCKET[/PREFIX], or s3:http://… for a
// plain-HTTP endpoint. PREFIX is a directory inside the bucket, so several
// repositories can share one bucket. The options of backend.Location
// (region, path-style, ca-file, insecure, credentials-file, object-lock,
// object-lock-mode) tune the connection; credentials come from the
// environment or files (see Config.Creds), never from the location, and no
// message or log line shows them.
//
// Layout: PREFIX/config and PREFIX/TYPE/NAME, TYPE being FileType.String()
// ("packs", "packidx", "snapshots", ...). Names are not sharded: S3 scales
// by key, not by directory.
//
// Invariants:
//   - Save is one PUT for objects up to singlePutMax (512 MiB), a
//     multipart upload in singlePutMax parts above; S3 makes either
//     visible atomically when it completes, and strongly consistent
//     (AWS since December 2020, MinIO always): a Save that returned is
//     seen by every later Load, Stat and List. The request carries the
//     body's CRC-32C, which the server checks before storing.
//   - Each method makes one attempt at each request: minio-go's own
//     retries are off (MaxRetries 1), and the factory registered for
//     "s3" wraps the backend in repo/backend/retry, the one place that
//     retries (5xx, throttling, timeouts, resets). Two layers of retries
//     would multiply (minio-go's 10 × retry's 10 attempts per call).
//     Open and Create, which no wrapper covers, repeat their first
//     requests a few times in about 4 s at transient errors.
//     Errors that cannot heal are marked backend.Permanent: refused
//     credentials, access denied, a missing bucket, other 4xx answers.
//   - A request that makes no progress for Config.Timeout (connecting,
//     sending, waiting, receiving) is abandoned with a transient error.
//   - Load of a range is one ranged GET; ranges past the end fail with
//     backend.ErrShortRead (S3 answers 416, or fewer bytes), missing
//     objects with backend.ErrNotFound.
//   - Object Lock (Config.Lock): every object but locks (LockFile) is
//     written with a retention (COMPLIANCE unless GOVERNANCE is asked);
//     see Remove for deleting in versioned buckets.
//
// The package registers the scheme "s3" with backend.Register.
package s3

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/retry"
)

// Properties of object storage (see Properties).
const (
	// readParallelism: a ranged GET costs a round trip (1–50 ms) plus
	// the server's time to first byte, so a bulk reader needs many in
	// flight to fill a pipe: 32 frames of 256 KiB are 8 MiB in flight,
	// about 1 GB/s at 8 ms per request, while CPU, memory and the
	// server's per-client limits stay modest.
	readParallelism = 32
	// writeParallelism: Saves are ~32 MiB packs; 8 uploads keep 256 MiB
	// in flight, several times what one TCP stream carries to a remote
	// endpoint, and bound the memory of buffered packs.
	writeParallelism = 8
	// maxWholeLoad bounds the allocation of a Load of a whole object by
	// the size the server announces.
	maxWholeLoad = 4 << 30
)

// singlePutMax is the largest object saved with one PUT (S3 allows
// 5 GiB); larger ones go in a multipart upload of parts this size. A
// variable for tests.
var singlePutMax = 512 << 20

// Backend stores objects in one bucket under a prefix. Create it with
// Open or Create.
type Backend struct {
	client   *minio.Client
	core     minio.Core
	tr       *http.Transport
	cfg      Config
	prefix   string // cfg.Prefix + "/", or ""
	loc      string
	timeout  time.Duration
	creds    string // where the credentials come from, for messages
	now      func() time.Time
	lockMu   sync.RWMutex
	lock     Retention
	versions bool // the bucket keeps versions: Remove deletes each
}

var (
	_ backend.Backend      = (*Backend)(nil)
	_ backend.RangeLoader  = (*Backend)(nil)
	_ backend.BufferLoader = (*Backend)(nil)
	_ backend.TempCleaner  = (*Backend)(nil)
)

func init() {
	backend.Register(Scheme, backend.Factory{
		Open: func(ctx context.Context, loc backend.Location) (backend.Backend, error) {
			cfg, err := ParseConfig(loc)
			if err != nil {
				return nil, err
			}
			be, err := Open(ctx, cfg)
			if err != nil {
				return nil, err
			}
			return retry.New(be, retry.Options{}), nil
		},
		Create: func(ctx context.Context, loc backend.Location) (backend.Backend, error) {
			cfg, err := ParseConfig(loc)
			if err != nil {
				return nil, err
			}
			be, err := Create(ctx, cfg)
			if err != nil {
				return nil, err
			}
			return retry.New(be, retry.Options{}), nil
		},
	})
}

func newBackend(cfg Config) (*Backend, error) {
	loc := cfg.location()
	creds, source, err := cfg.credentialsOf()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", loc, backend.Permanent(err))
	}
	tr, err := cfg.transport()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", loc, backend.Permanent(err))
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        creds,
		Secure:       cfg.Secure,
		Transport:    tr,
		Region:       cfg.Region,
		BucketLookup: cfg.Lookup,
		MaxRetries:   1, // retries are repo/backend/retry's (see the package comment)
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", loc, backend.Permanent(err))
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	b := &Backend{client: client, core: minio.Core{Client: client}, tr: tr, cfg: cfg, loc: loc,
		timeout: timeout, creds: source, now: time.Now, lock: cfg.Lock}
	if cfg.Prefix != "" {
		b.prefix = cfg.Prefix + "/"
	}
	return b, nil
}

// Open returns the backend of an existing bucket. A missing bucket, or
// credentials the server refuses, fail with a permanent error that names
// the bucket and where the credentials came from.
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	b, err := newBackend(cfg)
	if err != nil {
		return nil, err
	}
	if err := b.probeRetrying(ctx, false); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// Create prepares a new repository: it creates the bucket when it is
// missing (with Object Lock when cfg.Lock.Period is set; an existing
// bucket must then have Object Lock enabled already) and fails when a
// repository exists at the prefix.
func Create(ctx context.Context, cfg Config) (*Backend, error) {
	b, err := newBackend(cfg)
	if err != nil {
		return nil, err
	}
	if err := b.probeRetrying(ctx, true); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// probeAttempts bounds the attempts of Open's and Create's requests when
// they fail with transient errors (a server still starting answers 503
// for a few seconds): the pauses between them add up to about 4 s.
const probeAttempts = 5

func (b *Backend) probeRetrying(ctx context.Context, create bool) error {
	pause := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := b.probe(ctx, create)
		if err == nil || backend.IsPermanent(err) || attempt == probeAttempts {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pause):
		}
		pause *= 2
	}
}

// probe checks the bucket (creating it when create is set), its Object
// Lock configuration when a retention is asked for, and whether it keeps
// versions.
func (b *Backend) probe(ctx context.Context, create bool) error {
	op := "open repository at " + b.loc
	if create {
		op = "create repository at " + b.loc
	}
	exists, err := b.client.BucketExists(ctx, b.cfg.Bucket)
	if err != nil {
		return b.openError(op, err)
	}
	lock := b.retention()
	switch {
	case !exists && !create:
		return fmt.Errorf("%s: %w", op, backend.Permanent(backend.NotFound(fmt.Sprintf("bucket %q does not exist at %s", b.cfg.Bucket, b.cfg.Endpoint))))
	case !exists:
		err := b.client.MakeBucket(ctx, b.cfg.Bucket, minio.MakeBucketOptions{Region: b.cfg.Region, ObjectLocking: lock.Period > 0})
		if code := minio.ToErrorResponse(err).Code; err != nil && code != "BucketAlreadyOwnedByYou" {
			if code == "BucketAlreadyExists" {
				return fmt.Errorf("%s: %w", op, backend.Permanent(fmt.Errorf("bucket %q belongs to another account: choose another name", b.cfg.Bucket)))
			}
			return b.openError(op+": create bucket "+b.cfg.Bucket, err)
		}
	}
	if lock.Period > 0 {
		if err := b.checkObjectLock(ctx); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	v, err := b.client.GetBucketVersioning(ctx, b.cfg.Bucket)
	switch {
	case err == nil:
		b.versions = v.Enabled() || v.Suspended() || lock.Period > 0
	case minio.ToErrorResponse(err).StatusCode == http.StatusForbidden:
		// A key that may not read the bucket's settings: delete version
		// by version, which is right for both kinds of bucket.
		b.versions = true
	default:
		return b.openError(op, err)
	}
	if create {
		_, err := b.Stat(ctx, backend.Handle{Type: backend.ConfigFile, Name: "config"})
		switch {
		case err == nil:
			return fmt.Errorf("%s: %w", op, backend.Permanent(errors.New("a repository already exists there")))
		case !errors.Is(err, backend.ErrNotFound):
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	return nil
}

// checkObjectLock fails unless the bucket has Object Lock enabled.
func (b *Backend) checkObjectLock(ctx context.Context) error {
	enabled, _, _, _, err := b.client.GetObjectLockConfig(ctx, b.cfg.Bucket)
	if err != nil && minio.ToErrorResponse(err).Code != "ObjectLockConfigurationNotFoundError" {
		return b.classify("get object lock configuration of bucket", b.cfg.Bucket, err)
	}
	if enabled != "Enabled" {
		return backend.Permanent(fmt.Errorf("bucket %q does not have Object Lock enabled, which can only be chosen when a bucket is created: use a new bucket", b.cfg.Bucket))
	}
	return nil
}

// SetRetention makes every later Save of an object but a lock carry
// retention r (r.Period 0: none). The repository calls it after reading
// its config; it fails when the bucket lacks Object Lock.
func (b *Backend) SetRetention(ctx context.Context, r Retention) error {
	if r.Period > 0 {
		if err := b.checkObjectLock(ctx); err != nil {
			return fmt.Errorf("set retention at %s: %w", b.loc, err)
		}
	}
	b.lockMu.Lock()
	b.lock = r
	if r.Period > 0 {
		b.versions = true
	}
	b.lockMu.Unlock()
	return nil
}

// Retain implements backend.Retainer through SetRetention.
func (b *Backend) Retain(ctx context.Context, period time.Duration, mode string) error {
	r := Retention{Period: period}
	switch strings.ToLower(mode) {
	case "", "compliance":
		r.Mode = minio.Compliance
	case "governance":
		r.Mode = minio.Governance
	default:
		return fmt.Errorf("retention mode %q: want compliance or governance", mode)
	}
	return b.SetRetention(ctx, r)
}

func (b *Backend) retention() Retention {
	b.lockMu.RLock()
	defer b.lockMu.RUnlock()
	return b.lock
}

func (b *Backend) versioned() bool {
	b.lockMu.RLock()
	defer b.lockMu.RUnlock()
	return b.versions
}

// openError describes a failure of Open or Create, naming where the
// credentials came from when the server refused them.
func (b *Backend) openError(op string, err error) error {
	er := minio.ToErrorResponse(err)
	if credentialCodes[er.Code] {
		return fmt.Errorf("%s: %w", op, backend.Permanent(fmt.Errorf("the server refused the credentials from %s: %s", b.creds, describe(er))))
	}
	return b.classify(op, "", err)
}

// credentialCodes are the S3 error codes of credentials the server does
// not accept.
var credentialCodes = map[string]bool{
	"InvalidAccessKeyId": true, "SignatureDoesNotMatch": true, "InvalidToken": true,
	"ExpiredToken": true, "InvalidClientTokenId": true, "AuthorizationHeaderMalformed": true,
	"XMinioInvalidToken": true, "AccountProblem": true,
}

// retryableCodes are S3 error codes of answers worth repeating.
var retryableCodes = map[string]bool{
	"RequestTimeout": true, "InternalError": true, "SlowDown": true,
	"SlowDownRead": true, "SlowDownWrite": true, "ServiceUnavailable": true, "Throttling": true,
	"ThrottlingException": true, "RequestLimitExceeded": true, "RequestThrottled": true,
	"XMinioServerNotInitialized": true, "XMinioReadQuorum": true, "XMinioWriteQuorum": true,
	"OperationAborted": true,
}

func describe(er minio.ErrorResponse) string {
	msg := er.Message
	if msg == "" {
		msg = http.StatusText(er.StatusCode)
	}
	return fmt.Sprintf("%s (HTTP %d): %s", er.Code, er.StatusCode, msg)
}

// errStalled is the cause of a request abandoned for making no progress.
var errStalled = errors.New("no progress")

// classify wraps err of op on what (a handle or a bucket) as the backend
// contract wants: ErrNotFound, permanent errors marked, transient errors
// plain, context errors kept.
func (b *Backend) classify(op, what string, err error) error {
	if what != "" {
		op += " " + what
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", op, err)
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) && er.Code != "" {
		switch {
		case er.Code == "NoSuchKey" || er.Code == "NoSuchVersion":
			return fmt.Errorf("%s: %w", op, backend.ErrNotFound)
		case er.Code == "NoSuchBucket":
			return fmt.Errorf("%s: %w", op, backend.Permanent(fmt.Errorf("bucket %q does not exist at %s", b.cfg.Bucket, b.cfg.Endpoint)))
		case retryableCodes[er.Code] || er.StatusCode >= 500 || er.StatusCode == http.StatusTooManyRequests ||
			er.StatusCode == http.StatusRequestTimeout || er.StatusCode == 499:
			return fmt.Errorf("%s: %s", op, describe(er))
		default: // other 4xx, and minio-go's own checks of arguments
			return fmt.Errorf("%s: %w", op, backend.Permanent(errors.New(describe(er))))
		}
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "x509:") || strings.Contains(msg, "tls: "):
		return fmt.Errorf("%s: %w", op, backend.Permanent(fmt.Errorf("TLS with %s: %v (trust its CA with --repo-ca-file, or --repo-insecure to skip the check)", b.cfg.Endpoint, err)))
	case strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("%s: %w", op, backend.Permanent(fmt.Errorf("%s speaks plain HTTP: use s3:http://", b.cfg.Endpoint)))
	}
	return fmt.Errorf("%s: %w", op, err)
}

// key returns the object key of h.
func (b *Backend) key(h backend.Handle) string {
	if h.Type == backend.ConfigFile {
		return b.prefix + h.Name
	}
	return b.prefix + h.Type.String() + "/" + h.Name
}

// watchdog cancels a request that makes no progress for a while.
type watchdog struct {
	ctx    context.Context
	d      time.Duration
	timer  *time.Timer
	cancel context.CancelCauseFunc
}

// watch returns a watchdog over a request made with its ctx: the request
// is cancelled when b.timeout passes without kick.
func (b *Backend) watch(ctx context.Context) *watchdog {
	wctx, cancel := context.WithCancelCause(ctx)
	w := &watchdog{ctx: wctx, d: b.timeout, cancel: cancel}
	w.timer = time.AfterFunc(b.timeout, func() { cancel(errStalled) })
	return w
}

func (w *watchdog) kick() { w.timer.Reset(w.d) }

func (w *watchdog) stop() {
	w.timer.Stop()
	w.cancel(nil)
}

// err turns the error of a request abandoned by the watchdog into a
// transient one (a context error would be taken for the caller's).
func (w *watchdog) err(parent context.Context, err error) error {
	if err != nil && parent.Err() == nil && context.Cause(w.ctx) == errStalled {
		return fmt.Errorf("request abandoned after %v without progress: %w", w.d, errStalled)
	}
	return err
}

// progressReader kicks the watchdog on every read.
type progressReader struct {
	r io.Reader
	w *watchdog
}

func (p *progressReader) Read(buf []byte) (int, error) {
	n, err := p.r.Read(buf)
	if n > 0 {
		p.w.kick()
	}
	return n, err
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Save implements backend.Backend with one PUT (see the package comment).
func (b *Backend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	if err := h.Valid(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var crc [4]byte
	binary.BigEndian.PutUint32(crc[:], crc32.Checksum(data, castagnoli))
	opts := minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		// The server checks this CRC-32C of the body before it stores
		// the object; with it no SHA-256 of the payload is needed for
		// the signature (an Object Lock PUT needs a checksum header too).
		UserMetadata:         map[string]string{"x-amz-checksum-crc32c": base64.StdEncoding.EncodeToString(crc[:])},
		DisableContentSha256: true,
		DisableMultipart:     len(data) <= singlePutMax,
		PartSize:             uint64(singlePutMax),
	}
	if r := b.retention(); r.Period > 0 && h.Type != backend.LockFile {
		opts.Mode = r.mode()
		// Whole seconds, rounded up: never shorter than the period.
		opts.RetainUntilDate = b.now().Add(r.Period + time.Second).Truncate(time.Second).UTC()
	}
	w := b.watch(ctx)
	defer w.stop()
	body := &progressReader{r: bytes.NewReader(data), w: w}
	var err error
	if opts.DisableMultipart {
		_, err = b.core.PutObject(w.ctx, b.cfg.Bucket, b.key(h), body, int64(len(data)), "", "", opts)
	} else {
		// The checksum header names the whole object, not a part.
		opts.UserMetadata = nil
		_, err = b.client.PutObject(w.ctx, b.cfg.Bucket, b.key(h), body, int64(len(data)), opts)
	}
	if err != nil {
		return b.classify("save", h.String(), w.err(ctx, err))
	}
	return nil
}

// Load implements backend.Backend with one GET (ranged unless the whole
// object is asked for).
func (b *Backend) Load(ctx context.Context, h backend.Handle, off, length int64) ([]byte, error) {
	return b.load(ctx, h, off, length, nil)
}

// LoadRangeInto implements backend.RangeLoader.
func (b *Backend) LoadRangeInto(ctx context.Context, h backend.Handle, off, length int64, buf []byte) ([]byte, error) {
	return b.load(ctx, h, off, length, buf)
}

// LoadInto implements backend.BufferLoader.
func (b *Backend) LoadInto(ctx context.Context, h backend.Handle, buf []byte) ([]byte, error) {
	return b.load(ctx, h, 0, -1, buf)
}

// load reads [off, off+length) of h into buf (length < 0: to the end).
// What MinIO answers, as RFC 9110 has it: 416 InvalidRange for a range
// that starts at or past the end, and so for every range of an empty
// object (even bytes=0-0); 206 with the bytes up to the end for a range
// that starts inside and ends past it. A server that ignores the range
// answers 200 with the whole object, which is read from off. There is no
// empty range, so a load of 0 bytes, or from the very end, asks Stat for
// the size.
func (b *Backend) load(ctx context.Context, h backend.Handle, off, length int64, buf []byte) ([]byte, error) {
	if err := h.Valid(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("load %v at %d: %w", h, off, backend.ErrShortRead)
	}
	if length == 0 {
		// S3 has no empty range: the size says whether off is inside.
		fi, err := b.Stat(ctx, h)
		if err != nil {
			return nil, fmt.Errorf("load %v: %w", h, err)
		}
		if off > fi.Size {
			return nil, fmt.Errorf("load %v at %d of %d bytes: %w", h, off, fi.Size, backend.ErrShortRead)
		}
		return buf[:0:0], nil
	}
	var opts minio.GetObjectOptions
	switch {
	case length > 0:
		opts.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+length-1))
	case off > 0:
		opts.Set("Range", fmt.Sprintf("bytes=%d-", off))
	}
	w := b.watch(ctx)
	defer w.stop()
	body, info, hdr, err := b.core.GetObject(w.ctx, b.cfg.Bucket, b.key(h), opts)
	if err != nil {
		if er := minio.ToErrorResponse(err); er.StatusCode == http.StatusRequestedRangeNotSatisfiable {
			// off is at or past the end (or the object is empty).
			if length < 0 {
				fi, serr := b.Stat(ctx, h)
				if serr != nil {
					return nil, fmt.Errorf("load %v: %w", h, serr)
				}
				if off == fi.Size {
					return buf[:0:0], nil
				}
			}
			return nil, fmt.Errorf("load %v [%d,+%d): %w", h, off, length, backend.ErrShortRead)
		}
		return nil, b.classify("load", h.String(), w.err(ctx, err))
	}
	defer body.Close()
	r := io.Reader(&progressReader{r: body, w: w})
	start, total, ranged, err := contentRange(hdr.Get("Content-Range"))
	if err != nil {
		return nil, fmt.Errorf("load %v: %w", h, err)
	}
	avail := info.Size // bytes in the body
	switch {
	case !ranged:
		// The whole object (no range asked, or the server ignored it).
		if avail < 0 {
			return nil, fmt.Errorf("load %v: the server did not say the object's size", h)
		}
		if off > avail {
			return nil, fmt.Errorf("load %v at %d of %d bytes: %w", h, off, avail, backend.ErrShortRead)
		}
		if off > 0 {
			if _, err := io.CopyN(io.Discard, r, off); err != nil {
				return nil, b.classify("load", h.String(), w.err(ctx, err))
			}
		}
		avail -= off
	case start != off:
		return nil, fmt.Errorf("load %v at %d: the server answered from %d", h, off, start)
	case avail < 0 || (total >= 0 && start+avail > total):
		return nil, fmt.Errorf("load %v: inconsistent Content-Range %q for %d bytes", h, hdr.Get("Content-Range"), avail)
	}
	if length < 0 {
		length = avail
	}
	if length > avail {
		return nil, fmt.Errorf("load %v [%d,+%d) of %d bytes: %w", h, off, length, off+avail, backend.ErrShortRead)
	}
	if length > maxWholeLoad {
		return nil, fmt.Errorf("load %v: %d bytes is more than the %d a load may take", h, length, int64(maxWholeLoad))
	}
	if int64(cap(buf)) >= length {
		buf = buf[:length]
	} else {
		buf = make([]byte, length)
	}
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // the body ended before its announced length: a transfer fault
		}
		return nil, b.classify("load", h.String(), w.err(ctx, err))
	}
	return buf, nil
}

// contentRange parses "bytes START-END/TOTAL" (TOTAL may be "*"); an
// empty header is no range.
func contentRange(s string) (start, total int64, ranged bool, err error) {
	if s == "" {
		return 0, -1, false, nil
	}
	bad := fmt.Errorf("malformed Content-Range %q", s)
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, false, bad
	}
	span, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, false, bad
	}
	first, _, ok := strings.Cut(span, "-")
	if !ok {
		return 0, 0, false, bad
	}
	if start, err = strconv.ParseInt(first, 10, 64); err != nil || start < 0 {
		return 0, 0, false, bad
	}
	total = -1
	if tot != "*" {
		if total, err = strconv.ParseInt(tot, 10, 64); err != nil || total < 0 {
			return 0, 0, false, bad
		}
	}
	return start, total, true, nil
}

// Stat implements backend.Backend with one HEAD; FileInfo.RetainUntil is
// the object's Object Lock retention, when it has one.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	if err := h.Valid(); err != nil {
		return backend.FileInfo{}, err
	}
	w := b.watch(ctx)
	defer w.stop()
	info, err := b.client.StatObject(w.ctx, b.cfg.Bucket, b.key(h), minio.StatObjectOptions{})
	if err != nil {
		return backend.FileInfo{}, b.classify("stat", h.String(), w.err(ctx, err))
	}
	fi := backend.FileInfo{Name: h.Name, Size: info.Size, ModTime: info.LastModified}
	hdr := info.Headers
	if hdr == nil {
		hdr = info.Metadata
	}
	if v := hdr.Get("X-Amz-Object-Lock-Retain-Until-Date"); v != "" {
		if t, err := time.Parse(time.RFC3339, v); err == nil {
			fi.RetainUntil = t
		}
	}
	return fi, nil
}

// List implements backend.Backend with ListObjectsV2, a page of up to
// 1000 objects per request; fn runs on the caller's goroutine between
// pages. Keys that are no valid names (foreign objects, deeper paths) are
// skipped.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if t == backend.ConfigFile {
		fi, err := b.Stat(ctx, backend.Handle{Type: t, Name: "config"})
		if errors.Is(err, backend.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return fn(fi)
	}
	if err := (backend.Handle{Type: t, Name: "x"}).Valid(); err != nil {
		return fmt.Errorf("list %v: %w", t, err)
	}
	dir := b.prefix + t.String() + "/"
	// The iterator ends the listing quietly when ctx ends: the check
	// after the loop reports it.
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	noOwner := false
	for obj := range b.client.ListObjectsIter(lctx, b.cfg.Bucket, minio.ListObjectsOptions{Prefix: dir, FetchOwner: &noOwner}) {
		if obj.Err != nil {
			return b.classify("list", t.String(), obj.Err)
		}
		name, ok := strings.CutPrefix(obj.Key, dir)
		if !ok || (backend.Handle{Type: t, Name: name}).Valid() != nil {
			continue
		}
		if err := fn(backend.FileInfo{Name: name, Size: obj.Size, ModTime: obj.LastModified}); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %v: %w", t, err)
	}
	return nil
}

// Remove implements backend.Backend. In a bucket without versions it is
// one DELETE. In a versioned bucket (Object Lock implies versions) a
// plain DELETE would only add a delete marker: the data would stay, and
// for an object under retention the marker would look like success. So
// Remove lists the name's versions and deletes each by its version id,
// oldest first; delete markers go too. A version under retention stops
// it with a *backend.RetainedError (until when, which mode): the
// versions it did not reach stay, the name keeps its current content, and
// nothing marks the object deleted. Removing a missing object succeeds.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if err := h.Valid(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	key := b.key(h)
	if !b.versioned() {
		w := b.watch(ctx)
		defer w.stop()
		err := b.client.RemoveObject(w.ctx, b.cfg.Bucket, key, minio.RemoveObjectOptions{})
		if err != nil && minio.ToErrorResponse(err).Code != "NoSuchKey" {
			return b.classify("remove", h.String(), w.err(ctx, err))
		}
		return nil
	}
	versions, err := b.versionsOf(ctx, key)
	if err != nil {
		return b.classify("remove", h.String()+": list versions", err)
	}
	for _, v := range versions {
		if err := b.removeVersion(ctx, h, key, v); err != nil {
			return err
		}
	}
	return nil
}

// versionsOf lists the versions (and delete markers) of key, oldest
// first.
func (b *Backend) versionsOf(ctx context.Context, key string) ([]minio.ObjectInfo, error) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var vs []minio.ObjectInfo
	noOwner := false
	for obj := range b.client.ListObjectsIter(lctx, b.cfg.Bucket, minio.ListObjectsOptions{
		Prefix: key, WithVersions: true, Recursive: true, FetchOwner: &noOwner}) {
		if obj.Err != nil {
			return nil, obj.Err
		}
		if obj.Key == key {
			vs = append(vs, obj)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// S3 lists a key's versions newest first.
	slices.Reverse(vs)
	return vs, nil
}

func (b *Backend) removeVersion(ctx context.Context, h backend.Handle, key string, v minio.ObjectInfo) error {
	w := b.watch(ctx)
	defer w.stop()
	err := b.client.RemoveObject(w.ctx, b.cfg.Bucket, key, minio.RemoveObjectOptions{VersionID: v.VersionID})
	if err == nil {
		return nil
	}
	er := minio.ToErrorResponse(err)
	switch {
	case er.Code == "NoSuchKey" || er.Code == "NoSuchVersion":
		return nil // removed meanwhile
	case er.StatusCode == http.StatusForbidden || er.Code == "ObjectLocked" || er.Code == "InvalidRequest":
		// Refused: by a retention, or by the key's permissions.
		if v.IsDeleteMarker {
			break
		}
		mode, until, rerr := b.client.GetObjectRetention(ctx, b.cfg.Bucket, key, v.VersionID)
		if rerr == nil && until != nil && until.After(b.now()) {
			re := &backend.RetainedError{Handle: h, Until: *until}
			if mode != nil {
				re.Mode = string(*mode)
			}
			return re
		}
	}
	return b.classify("remove", h.String()+" version "+v.VersionID, w.err(ctx, err))
}

// RemoveTemp implements backend.TempCleaner: it aborts the multipart
// uploads under the prefix begun before olderThan (a Save of more than
// 512 MiB that never completed leaves one, and S3 bills its parts).
func (b *Backend) RemoveTemp(ctx context.Context, olderThan time.Time) (int, error) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := 0
	// The whole bucket is listed: MinIO lists the uploads of one exact
	// key only when given a prefix.
	for up := range b.client.ListIncompleteUploads(lctx, b.cfg.Bucket, "", true) {
		if up.Err != nil {
			return n, b.classify("list incomplete uploads under", b.loc, up.Err)
		}
		if !strings.HasPrefix(up.Key, b.prefix) || !up.Initiated.Before(olderThan) {
			continue
		}
		if err := b.core.AbortMultipartUpload(ctx, b.cfg.Bucket, up.Key, up.UploadID); err != nil &&
			minio.ToErrorResponse(err).Code != "NoSuchUpload" {
			return n, b.classify("abort upload of", up.Key, err)
		}
		n++
	}
	if err := ctx.Err(); err != nil {
		return n, err
	}
	return n, nil
}

// Location implements backend.Backend: the location URL, which holds no
// secrets.
func (b *Backend) Location() string { return b.loc }

// Properties implements backend.Backend. Listings are consistent: AWS S3
// has been strongly consistent for every operation since December 2020,
// and MinIO always was.
func (b *Backend) Properties() backend.Properties {
	return backend.Properties{
		ReadParallelism:   readParallelism,
		WriteParallelism:  writeParallelism,
		CheapRangedReads:  false,
		ConsistentListing: true,
	}
}

// Close implements backend.Backend: it closes idle connections.
func (b *Backend) Close() error {
	b.tr.CloseIdleConnections()
	return nil
}

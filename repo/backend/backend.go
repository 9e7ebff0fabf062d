// Package backend defines where a vmvault repository keeps its objects.
//
// A Backend stores immutable, named objects of a few types (config, lock,
// snapshot manifest, disk index, chunk). It knows nothing about their
// contents: framing, hashing and compression live in repo/format, and the
// meaning of objects lives in package repo.
//
// Contract every implementation meets (checked by backendtest.Run):
//   - Save is atomic and durable: when it returns nil, a crash at any later
//     moment leaves either the whole object or, had Save not returned, no
//     object at all under that name. Saving a name that exists replaces it
//     atomically; callers only do that with identical bytes (content
//     addressed objects) or for objects they own. Exception: a backend that
//     implements Flusher may defer the durability of a ChunkFile's *name*
//     (never of its content) until Flush; a crash before that can only lose
//     the whole chunk, never leave a partial one.
//   - Load of a range returns exactly the bytes asked for or an error; a
//     range that reaches past the end fails with an error matching
//     ErrShortRead. A missing object fails with an error matching
//     ErrNotFound.
//   - Remove of a missing object is not an error (idempotent).
//   - List calls fn on the caller's goroutine, once per complete object of
//     the type, in no particular order; objects being written are never
//     listed. An error from fn stops the listing and is returned.
//   - All methods are safe for concurrent use.
//   - Location never shows a secret (credentials in a URL are redacted).
//
// Locations. A repository is named by a location string (the --repo
// flag): a plain path, or SCHEME:REST (see Location for the rule that
// tells them apart). Each implementation registers its scheme with
// Register from init; Open and Create pick the backend by scheme.
// repo/backend/all imports every implementation, and only commands and
// tests import it: libraries take a Backend.
//
// Wrappers. retry, readonly and faulty (for tests) each wrap any Backend
// and implement every optional interface below by delegating; when the
// inner backend lacks one, Flush and RemoveTemp do nothing, Prefetch drops
// the hint and LoadInto is a Load. So wrapping never hides a capability.
package backend

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// FileType is the kind of an object; each type lives in its own namespace.
type FileType uint8

// The object types of a repository.
const (
	ConfigFile    FileType = iota + 1 // the single repository config, named "config"
	LockFile                          // one per running operation
	SnapshotFile                      // restore point manifests, named by id
	IndexFile                         // fixed disk indexes, named by content hash
	ChunkFile                         // disk chunks, named by content hash
	StateFile                         // repository state kept beside the data: verify records, quarantined chunks
	PackFile                          // packs of chunk frames (repo/backend/pack), named by content hash
	PackIndexFile                     // where chunks sit in packs, named by content hash
	KeyFile                           // an encrypted repository's key slots and sealed data keys
)

var typeNames = map[FileType]string{
	ConfigFile:    "config",
	LockFile:      "locks",
	SnapshotFile:  "snapshots",
	IndexFile:     "index",
	ChunkFile:     "chunks",
	StateFile:     "state",
	PackFile:      "packs",
	PackIndexFile: "packidx",
	KeyFile:       "keys",
}

// String returns the type's directory-style name.
func (t FileType) String() string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("FileType(%d)", uint8(t))
}

// Types lists every object type, for backends that prepare storage per type.
func Types() []FileType {
	return []FileType{ConfigFile, LockFile, SnapshotFile, IndexFile, ChunkFile, StateFile, PackFile, PackIndexFile, KeyFile}
}

// Handle names one object.
type Handle struct {
	Type FileType
	Name string
}

func (h Handle) String() string { return h.Type.String() + "/" + h.Name }

// Valid reports whether h can name an object: a known type and a name of
// lowercase letters, digits, '-' and '_' (no path separators, no dots, so a
// name can never escape its namespace or look like a temporary file).
func (h Handle) Valid() error {
	if _, ok := typeNames[h.Type]; !ok {
		return fmt.Errorf("%w %v: unknown type", ErrInvalidHandle, h)
	}
	if h.Name == "" || len(h.Name) > 128 {
		return fmt.Errorf("%w %v: bad name length", ErrInvalidHandle, h)
	}
	if strings.IndexFunc(h.Name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) >= 0 {
		return fmt.Errorf("%w %v: bad character in name", ErrInvalidHandle, h)
	}
	return nil
}

// FileInfo describes a stored object.
type FileInfo struct {
	Name    string
	Size    int64
	ModTime time.Time
	// RetainUntil, when not zero, is the time before which storage
	// refuses to remove or replace the object (S3 Object Lock). Backends
	// fill it where that costs no extra request (the s3 backend in Stat,
	// not in List).
	RetainUntil time.Time
}

// Errors that callers test with errors.Is.
var (
	ErrNotFound  = errors.New("object not found")
	ErrShortRead = errors.New("range reaches past the end of the object")
	// ErrInvalidHandle is wrapped by every error of Handle.Valid.
	ErrInvalidHandle = errors.New("invalid handle")
	// ErrReadOnly is the error of every mutation of a read-only backend.
	ErrReadOnly = errors.New("repository is read-only")
	// ErrRetained is wrapped by the error of a Remove of an object that
	// storage keeps for a retention period that has not ended (S3 Object
	// Lock); the error is a *RetainedError, which says until when.
	ErrRetained = errors.New("object is under retention")
)

// RetainedError is the error of removing an object under retention.
type RetainedError struct {
	Handle Handle
	Until  time.Time // zero when storage did not say
	Mode   string    // the retention mode as storage names it ("COMPLIANCE", "GOVERNANCE"), or ""
}

func (e *RetainedError) Error() string {
	msg := fmt.Sprintf("remove %v: %v", e.Handle, ErrRetained)
	if e.Mode != "" {
		msg += " (" + e.Mode + ")"
	}
	if !e.Until.IsZero() {
		msg += " until " + e.Until.UTC().Format(time.RFC3339)
	}
	return msg
}

// Is makes errors.Is(err, ErrRetained) hold.
func (e *RetainedError) Is(target error) bool { return target == ErrRetained }

// Permanent marks err as one that the same call will fail with again, so
// wrappers such as repo/backend/retry return it at once. A backend marks
// what it knows cannot heal (a refused credential, a missing bucket).
// NotFound returns an error with message msg that is ErrNotFound for
// errors.Is (for messages that say better what is missing than "object
// not found").
func NotFound(msg string) error { return notFoundError(msg) }

type notFoundError string

func (e notFoundError) Error() string        { return string(e) }
func (e notFoundError) Is(target error) bool { return target == ErrNotFound }

// Permanent(nil) is nil; errors.Is and errors.As see through the mark.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// IsPermanent reports whether repeating the call that returned err cannot
// succeed: the error was marked with Permanent, or it is one whose cause
// a repetition does not change (ErrNotFound, ErrShortRead,
// ErrInvalidHandle, ErrReadOnly, ErrRetained, a cancelled context or an
// expired deadline).
func IsPermanent(err error) bool {
	var p *permanentError
	switch {
	case err == nil:
		return false
	case errors.As(err, &p),
		errors.Is(err, ErrNotFound),
		errors.Is(err, ErrShortRead),
		errors.Is(err, ErrInvalidHandle),
		errors.Is(err, ErrReadOnly),
		errors.Is(err, ErrRetained),
		errors.Is(err, context.Canceled),
		errors.Is(err, context.DeadlineExceeded):
		return true
	}
	return false
}

// Backend stores the objects of one repository. See the package comment for
// the contract.
type Backend interface {
	// Save stores data under h, atomically and durably.
	Save(ctx context.Context, h Handle, data []byte) error
	// Load returns length bytes of h starting at off; length < 0 means up to
	// the end of the object.
	Load(ctx context.Context, h Handle, off, length int64) ([]byte, error)
	// Stat describes h.
	Stat(ctx context.Context, h Handle) (FileInfo, error)
	// List calls fn for every object of type t.
	List(ctx context.Context, t FileType, fn func(FileInfo) error) error
	// Remove deletes h; a missing object is not an error.
	Remove(ctx context.Context, h Handle) error
	// Location describes the backend for messages (a path or URL, no secrets).
	Location() string
	// Properties describes what the backend is good at.
	Properties() Properties
	// Close releases resources; the backend is unusable afterwards.
	Close() error
}

// Properties describe a backend's costs, so the repository sizes its
// parallelism and read strategy from them instead of from constants tuned
// for one kind of storage.
type Properties struct {
	// ReadParallelism is how many Loads are worth keeping in flight for a
	// bulk reader (restore, verify, listing manifests): enough to keep a
	// disk's queue or a network pipe busy.
	ReadParallelism int
	// WriteParallelism is how many Saves a capture keeps in flight.
	WriteParallelism int
	// CheapRangedReads is true when a Load of part of an object costs
	// about the bytes it returns (local files); false when every request
	// pays a round trip (object stores), so readers should ask for more at
	// once.
	CheapRangedReads bool
	// ConsistentListing is true when List shows every object whose Save
	// returned before the List began (read-after-write for listings).
	ConsistentListing bool
}

// Flusher is implemented by backends that batch the durability of chunk
// names. Flush returns once every ChunkFile saved before the call is
// durable. Writers call it before saving anything that references those
// chunks.
type Flusher interface {
	Flush(ctx context.Context) error
}

// TempCleaner is implemented by backends that can leave temporary files
// behind after a crash. RemoveTemp deletes those older than the cutoff and
// reports how many it removed. Only call it under an exclusive repository
// lock.
type TempCleaner interface {
	RemoveTemp(ctx context.Context, olderThan time.Time) (int, error)
}

// Retainer is implemented by backends that can keep objects immutable for
// a period after they are written (S3 Object Lock). Retain makes every
// later Save of an object but a lock carry a retention of period (0:
// none) in mode ("compliance", "governance"; "": the backend's default);
// it fails when the storage cannot retain.
type Retainer interface {
	Retain(ctx context.Context, period time.Duration, mode string) error
}

// Wrapper is implemented by backends that add behaviour to another
// (retry, readonly, the pack layer): Inner returns the wrapped one.
type Wrapper interface {
	Inner() Backend
}

// Find returns the first backend in be's chain of wrappers (be itself
// first) that implements T.
func Find[T any](be Backend) (T, bool) {
	for be != nil {
		if t, ok := be.(T); ok {
			return t, true
		}
		w, ok := be.(Wrapper)
		if !ok {
			break
		}
		be = w.Inner()
	}
	var zero T
	return zero, false
}

// RangeLoader is implemented by backends that load a range of an object
// into a caller's buffer (the pack layer reads chunk frames so).
// LoadRangeInto returns the range in buf[:length] when cap(buf) suffices,
// else in a new slice; errors are those of Load.
type RangeLoader interface {
	LoadRangeInto(ctx context.Context, h Handle, off, length int64, buf []byte) ([]byte, error)
}

// RangePrefetcher is a Prefetcher for part of an object (a chunk's frame
// in a pack).
type RangePrefetcher interface {
	PrefetchRange(h Handle, off, length int64)
}

// ForeignRemover is implemented by backends whose listings can show
// entries vmvault did not write (a file dropped into a repository
// directory by hand, whose name is no valid handle). RemoveForeign
// removes such an entry of type t by its exact listed name; it refuses
// names that could leave the type's namespace ("/", NUL, "." or "..").
type ForeignRemover interface {
	RemoveForeign(ctx context.Context, t FileType, name string) error
}

// Counter is implemented by backends that count a type's objects much
// faster than List describes them (names only, no sizes or times).
type Counter interface {
	Count(ctx context.Context, t FileType) (int, error)
}

// Prefetcher is implemented by backends that can start fetching objects
// ahead of their Load, so a sequential reader's next chunks come from
// several requests in flight instead of one read after another. Prefetch
// is a hint: it returns quickly, reports nothing, and Load stays correct
// whether or not it was called.
type Prefetcher interface {
	Prefetch(h Handle)
}

// BufferLoader is implemented by backends that can load a whole object into
// a caller's buffer, so hot read paths can recycle buffers instead of
// allocating one per load. LoadInto returns the object in buf[:size] when
// cap(buf) suffices, else in a new slice.
type BufferLoader interface {
	LoadInto(ctx context.Context, h Handle, buf []byte) ([]byte, error)
}

// BatchLoader is implemented by backends that load many whole objects of
// one type at once cheaper than one by one (the pack layer reads runs of
// neighbouring chunk frames with one ranged read). Objects that are
// missing are left out of the result; fn gets each loaded object once.
type BatchLoader interface {
	LoadBatch(ctx context.Context, t FileType, names []string, fn func(name string, data []byte) error) error
}

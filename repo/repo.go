// Package repo is vmvault's deduplicated, content-addressed store of
// restore points of virtual-machine disks.
//
// Data model. A disk is cut into fixed-size chunks aligned to disk offsets
// (chunk size chosen at init, a power of two). Each chunk is stored once,
// named by the BLAKE3 hash of its content, zstd-compressed when that pays,
// in a checksummed frame (repo/format). All-zero chunks are never stored.
// A restore point is a manifest (JSON) plus one fixed index per disk that
// lists every chunk ID of the disk. Every restore point is a full image by
// reference: reading one never walks a chain.
//
// Data path: cbt → Repository.Capture (writer) → backend, and backend →
// Disk (io.ReaderAt) → nbd | fs → mount.
//
// Commit order. A capture writes chunks, then index objects, then the
// manifest; each Save is atomic and durable, so a restore point exists
// exactly when its manifest does, and every object a manifest names was
// durable before the manifest was written. An interrupted capture leaves
// only unreferenced chunks and indexes, which gc removes.
//
// Locks and gc. Lock objects announce who uses the repository; none of
// them stops a reader or a capture, and gc runs beside both:
//
//	holder            lock         what it promises / what it is promised
//	reader (serve,    reader       pins the restore points it reads: gc keeps
//	mount, restore,                their indexes and chunks until it unpins,
//	verify, cat, cp)               also when they are forgotten meanwhile
//	capture           writer       pins its bases; waits while a gc deletes
//	forget, prune     none         removes manifests only
//	gc                maintenance  one at a time; deletes only while no
//	                               writer runs
//
// Pin, then check: a reader writes its pins, then checks that each pinned
// restore point's manifest still exists (Lock.Pin). gc reads the pins,
// then the manifests, and marks both; so either gc sees the pin or the
// reader sees that its restore point is gone (a clear error, never wrong
// data). A reader on a repository it cannot write pins nothing and says so.
//
// gc marks every chunk of every manifest and pinned index in a Bloom
// filter (11 bits per stored chunk; a false positive keeps a dead chunk
// one more run), sweeps by listing stored objects, and removes an object
// only when it is unmarked and older than the grace period on the
// storage's clock. Removal needs a moment without writers: gc sets its
// lock's phase to "deleting", then lists the locks; a writer saves its
// lock, then waits while any gc is deleting. Each looks after announcing
// itself, so at least one sees the other: gc defers (and waits up to its
// lock wait for a moment without captures) or the capture waits. Before
// removing, gc marks again whatever restore points and pins appeared
// while it swept, so a capture that committed meanwhile (also one that
// reused a stored chunk no restore point referenced when gc began) keeps
// its chunks. Lock ages are measured on the storage's clock (modification
// times of lock objects), so hosts whose clocks differ agree on staleness.
//
// Verify records what it finds (state objects): a record per restore
// point, and the damaged list. A damaged chunk object is copied aside
// (quarantine) before anything may replace it; captures store chunks on
// the damaged list again instead of taking them from a base index; a
// verify that finds a listed chunk good takes it off the list.
//
// Chunk identity is trusted only after checking: the writer reuses a chunk
// without storing it when the base restore point's verified index lists it,
// when this capture stored it, or when the stored object decodes and hashes
// to its name. Readers check every chunk against its ID.
//
// Storage. Format version 1 stores each chunk as its own object. Version 2
// (the default) gathers chunk frames into pack objects of about
// Config.PackSize bytes (repo/backend/pack): a capture's packs and their
// pack index are durable before the capture writes its disk indexes, so
// the commit order above still holds, and gc removes dead frames by
// rewriting packs (Compact). Version 3 is version 2 encrypted: object
// names and chunk IDs are keyed, every frame and every metadata object is
// sealed (AES-256-GCM), and a capture key can write restore points it
// cannot read. crypto.go states the threat model and what stays visible.
//
// Reading. Disks share one bounded cache of decoded chunks per Repository.
// A Disk that sees a sequential reader asks a backend that implements
// backend.Prefetcher to fetch the next chunk objects in the background
// (hint.go); hints never change what a read returns.
package repo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/cache"
	"github.com/vmvault/vmvault/repo/backend/crypt"
	"github.com/vmvault/vmvault/repo/backend/pack"
	"github.com/vmvault/vmvault/repo/bufpool"
	"github.com/vmvault/vmvault/repo/format"
	"github.com/vmvault/vmvault/repo/keys"
)

// ErrNoRepository means there is no repository (no config) at the location.
var ErrNoRepository = errors.New("no repository")

var configHandle = backend.Handle{Type: backend.ConfigFile, Name: "config"}

// Repository is an open repository. It is safe for concurrent use.
type Repository struct {
	be       backend.Backend
	packs    *pack.Backend // the pack layer in be's chain (format version 2), or nil
	keys     *keys.Set     // an encrypted repository's keys (format version 3), or nil
	dkMu     sync.Mutex    // one data key load at a time
	cfg      *format.Config
	cache    *chunkCache
	bufs     *bufpool.Pool      // chunk frames and decoded chunks of the cache
	fetcher  backend.Prefetcher // be, when it takes fetch hints (hint.go); else nil
	props    backend.Properties
	hostname string
	now      func() time.Time
	listing  listing      // cached restore points (snapshots.go)
	clock    storageClock // the storage's time, learned from lock objects (lock.go)
}

// Options tune an open repository.
type Options struct {
	// CacheSize bounds the decoded-chunk cache shared by all Disks, in bytes.
	// Zero means DefaultCacheSize.
	CacheSize int64
	// DiskCacheDir, when set, keeps local copies of what a repository on a
	// backend with costly reads (object storage: Properties.CheapRangedReads
	// false) gives out: chunk frames, indexes, manifests and pack indexes,
	// at most DiskCacheSize bytes (repo/backend/cache). Backends with cheap
	// reads get no disk cache.
	DiskCacheDir  string
	DiskCacheSize int64
	// Hostname names this host in lock objects ("" : os.Hostname). Hosts
	// sharing a repository must have different names: a lock of this
	// host's name whose process is gone is stale at once.
	Hostname string
	// Password returns the password of an encrypted repository (called
	// once, only for one); nil means none is known.
	Password func() ([]byte, error)
}

// DefaultCompression is the codec new repositories give captures: s2
// encodes at about 2.5 times zstd-fastest's speed and decodes (with the
// hash check every read makes) at about 1.7 times, for a ratio of 2.0
// instead of 2.4 on the benchmark workload; vmvault compact makes what
// has sat for a while dense (README, "Codecs").
const DefaultCompression = format.CompressionS2

// DefaultCacheSize is the default chunk cache size.
const DefaultCacheSize = 256 << 20

// InitOptions choose the repository's format parameters.
type InitOptions struct {
	ChunkSize   int64  // zero means format.DefaultChunkSize
	Compression string // the capture default; empty means DefaultCompression
	// PackSize is the target size of packs; zero means
	// format.DefaultPackSize, negative one object per chunk (format
	// version 1, as repositories before packs).
	PackSize int64
	// ObjectLock is the retention every object gets from a backend that
	// locks objects (S3 Object Lock; the backend must have been created
	// with it); recorded so forget, prune and gc leave protected objects
	// alone.
	ObjectLock     time.Duration
	ObjectLockMode string // "compliance" (when empty) or "governance"
	// Password, when set, encrypts the repository (format version 3); it
	// opens the first (full) key slot. KDF are its key derivation
	// parameters (zero: calibrated here, keys.Calibrate).
	Password []byte
	KDF      keys.KDF
	// Like, when set, makes a twin of that repository for vmvault copy:
	// its chunk size and compression and, when it is encrypted, its keys
	// (opened with a full key; Password then opens the twin). Copies
	// between twins move stored chunk frames as they are.
	Like *Repository
}

// Init creates a repository in an empty backend.
func Init(ctx context.Context, be backend.Backend, opts InitOptions) (*Repository, error) {
	if _, err := be.Stat(ctx, configHandle); err == nil {
		return nil, fmt.Errorf("init repository at %s: already initialised", be.Location())
	}
	if l := opts.Like; l != nil {
		if opts.ChunkSize != 0 && opts.ChunkSize != l.cfg.ChunkSize {
			return nil, fmt.Errorf("init repository at %s: the chunk size of a twin is its original's (%d)", be.Location(), l.cfg.ChunkSize)
		}
		opts.ChunkSize = l.cfg.ChunkSize
		if opts.Compression == "" {
			opts.Compression = l.cfg.Compression
		}
		switch {
		case l.keys == nil && opts.Password != nil:
			return nil, fmt.Errorf("init repository at %s: %s is not encrypted, so neither is its twin", be.Location(), l.be.Location())
		case l.keys != nil && opts.Password == nil:
			return nil, fmt.Errorf("init repository at %s: %s is encrypted: its twin needs a password", be.Location(), l.be.Location())
		case l.keys != nil && !l.keys.CanRead():
			return nil, fmt.Errorf("init repository at %s: a twin of %s needs its full key: %w", be.Location(), l.be.Location(), keys.ErrCaptureKey)
		}
	}
	if opts.ChunkSize == 0 {
		opts.ChunkSize = format.DefaultChunkSize
	}
	if opts.Compression == "" {
		opts.Compression = DefaultCompression
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	var err error
	cfg := &format.Config{
		Version: format.ConfigVersion, ID: hex.EncodeToString(id[:]), ChunkSize: opts.ChunkSize,
		Hash: format.HashBLAKE3, Compression: opts.Compression, Created: time.Now().UTC(), PackSize: opts.PackSize,
		ObjectLockSeconds: int64(opts.ObjectLock / time.Second), ObjectLockMode: opts.ObjectLockMode,
	}
	if err := retain(ctx, be, cfg); err != nil {
		return nil, fmt.Errorf("init repository at %s: %w", be.Location(), err)
	}
	switch {
	case opts.PackSize == 0:
		cfg.PackSize = format.DefaultPackSize
	case opts.PackSize < 0:
		cfg.Version, cfg.PackSize = 1, 0
	}
	if cfg.Version > 2 {
		cfg.Version = 2
	}
	var set *keys.Set
	if opts.Password != nil {
		if cfg.PackSize == 0 {
			return nil, fmt.Errorf("init repository at %s: encryption needs packs", be.Location())
		}
		cfg.Version, cfg.Encryption = 3, format.EncryptionV1
		if opts.Like != nil {
			set = opts.Like.keys
		} else if set, err = keys.NewSet(); err != nil {
			return nil, err
		}
		kdf := opts.KDF
		if kdf.Alg == "" {
			kdf = keys.Calibrate(keys.DefaultKDFTime)
		}
		slot, err := keys.NewSlot(set, keys.KindFull, opts.Password, kdf, hostname(""))
		if err != nil {
			return nil, fmt.Errorf("init repository at %s: %w", be.Location(), err)
		}
		if err := be.Save(ctx, keyHandle(slotName()), slot); err != nil {
			return nil, fmt.Errorf("init repository at %s: save key: %w", be.Location(), err)
		}
	}
	b, err := cfg.Marshal()
	if err != nil {
		return nil, fmt.Errorf("init repository at %s: %w", be.Location(), err)
	}
	if err := be.Save(ctx, configHandle, b); err != nil {
		return nil, fmt.Errorf("init repository at %s: %w", be.Location(), err)
	}
	return newRepository(be, cfg, set, Options{}), nil
}

// Open opens the repository stored in be.
func Open(ctx context.Context, be backend.Backend, opts Options) (*Repository, error) {
	b, err := be.Load(ctx, configHandle, 0, -1)
	if errors.Is(err, backend.ErrNotFound) {
		return nil, fmt.Errorf("open repository at %s: %w (run 'vmvault init' first)", be.Location(), ErrNoRepository)
	}
	if err != nil {
		return nil, fmt.Errorf("open repository at %s: %w", be.Location(), err)
	}
	cfg, err := format.ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("open repository at %s: %w", be.Location(), err)
	}
	if err := retain(ctx, be, cfg); err != nil {
		return nil, fmt.Errorf("open repository at %s: %w", be.Location(), err)
	}
	var set *keys.Set
	if cfg.Encryption != "" {
		if set, err = openKeys(ctx, be, opts.Password); err != nil {
			return nil, fmt.Errorf("open repository at %s: %w", be.Location(), err)
		}
	}
	return newRepository(be, cfg, set, opts), nil
}

func hostname(h string) string {
	if h == "" {
		h, _ = os.Hostname()
	}
	return h
}

// indexEveryPacks is how many uploaded packs a writer names in one pack
// index before the end of its work: an interrupted writer that runs again
// stores again at most these packs besides those open or in flight, and
// writing one uses 1 + 1/indexEveryPacks requests per pack.
const indexEveryPacks = 4

func newRepository(be backend.Backend, cfg *format.Config, set *keys.Set, opts Options) *Repository {
	if opts.CacheSize <= 0 {
		opts.CacheSize = DefaultCacheSize
	}
	remote := opts.DiskCacheDir != "" && !be.Properties().CheapRangedReads
	if set != nil {
		be = crypt.New(be, set)
	}
	var packs *pack.Backend
	if cfg.PackSize > 0 {
		po := pack.Options{PackSize: cfg.PackSize, IndexEvery: indexEveryPacks * cfg.PackSize}
		if set != nil {
			po.SealTrailer = func(t []byte) []byte { return set.Seal("pack", "trailer", t) }
		}
		if remote {
			po.IndexCacheDir = filepath.Join(opts.DiskCacheDir, cfg.ID, "packidx")
		}
		packs = pack.New(be, po)
		be = packs
	}
	if remote {
		c, err := cache.New(be, cache.Options{Dir: filepath.Join(opts.DiskCacheDir, cfg.ID, "objects"), Size: opts.DiskCacheSize})
		if err != nil {
			slog.Warn("no disk cache: reading everything from the backend", "err", err)
		} else {
			be = c
		}
	}
	bufs := bufpool.New(poolLimit(cfg.ChunkSize))
	fetcher, _ := be.(backend.Prefetcher)
	return &Repository{be: be, packs: packs, keys: set, cfg: cfg, cache: newChunkCache(opts.CacheSize, bufs), bufs: bufs, fetcher: fetcher,
		props: be.Properties(), hostname: hostname(opts.Hostname), now: time.Now}
}

// Config returns the repository config.
func (r *Repository) Config() format.Config { return *r.cfg }

// Backend returns the underlying backend.
func (r *Repository) Backend() backend.Backend { return r.be }

// Close releases the repository; open Disks become unusable.
func (r *Repository) Close() error { return r.be.Close() }

func chunkHandle(id format.ID) backend.Handle {
	return backend.Handle{Type: backend.ChunkFile, Name: id.String()}
}

// poolLimit bounds the recycled buffers a Repository keeps per size class:
// four chunks' worth, at least 1 MiB. Loads and evictions pair up, so a few
// spare buffers catch almost every eviction. More is worse where the heap
// is held near a memory limit (vmvault serve): what the pool keeps is live
// heap, and less headroom means more collections — measured on a cold
// 4 GiB nbdcopy, 256 KiB chunks, 256 MiB cache: 1 MiB per class 255
// collections and ~1 GB/s, 4 MiB 1,500 and ~0.65 GB/s, 8 MiB 2,100 and
// ~0.56 GB/s.
func poolLimit(chunkSize int64) int64 { return max(1<<20, 4*chunkSize) }

// Frames of raw chunks fit chunk-sized pool buffers (see loadChunk).
const _ = uint(bufpool.Slack - format.ChunkHeaderSize)

// loadChunk loads, decodes and checks one chunk, bypassing the cache.
func (r *Repository) loadChunk(ctx context.Context, id format.ID, dst []byte) ([]byte, error) {
	// Frames are dead once decoded: recycle them. A pooled buffer has
	// bufpool.Slack spare bytes past its size class, which hold the frame
	// header, so a raw chunk's frame fits a chunk-sized class instead of
	// taking (and clearing) one twice its size.
	buf := r.bufs.Get(int(r.cfg.ChunkSize))
	out, frame, err := r.loadChunkFrame(ctx, id, buf[:0], dst)
	if frame != nil {
		r.bufs.Put(frame)
	} else {
		r.bufs.Put(buf)
	}
	return out, err
}

// loadChunkFrame is loadChunk with the caller's buffer for the stored
// frame: it returns the decoded chunk (appended to dst) and the frame,
// which lives in frameBuf when its capacity sufficed (nil when nothing was
// loaded), for the caller to reuse.
func (r *Repository) loadChunkFrame(ctx context.Context, id format.ID, frameBuf, dst []byte) (out, frame []byte, err error) {
	if bl, ok := r.be.(backend.BufferLoader); ok {
		frame, err = bl.LoadInto(ctx, chunkHandle(id), frameBuf)
	} else {
		frame, err = r.be.Load(ctx, chunkHandle(id), 0, -1)
	}
	if err != nil {
		return nil, nil, err
	}
	out, err = r.decodeFrame(ctx, dst, frame, id)
	if err != nil {
		return nil, frame, fmt.Errorf("chunk %s: %w", id, err)
	}
	return out, frame, nil
}

// decodeFrame decodes a stored frame of chunk id (decrypting it first in
// an encrypted repository) and checks the content against id; the content
// is appended to dst.
func (r *Repository) decodeFrame(ctx context.Context, dst, frame []byte, id format.ID) ([]byte, error) {
	if r.keys == nil {
		return format.DecodeChunkID(dst, frame, id)
	}
	plain, err := r.openFrame(ctx, frame, id)
	if err != nil {
		return nil, err
	}
	defer r.bufs.Put(plain)
	return format.DecodeChunkHashed(dst, plain, id, r.keys.ChunkID)
}

// ChunkError reports a chunk that cannot be read, naming where it is used.
type ChunkError struct {
	RestorePoint string
	Disk         string
	Offset       int64
	Chunk        format.ID
	Err          error
}

func (e *ChunkError) Error() string {
	return fmt.Sprintf("restore point %s disk %s offset %d: chunk %s: %v", e.RestorePoint, e.Disk, e.Offset, e.Chunk.Short(), e.Err)
}

func (e *ChunkError) Unwrap() error { return e.Err }

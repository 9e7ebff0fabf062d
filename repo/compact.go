package repo

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/pack"
	"github.com/vmvault/vmvault/repo/format"
	"github.com/vmvault/vmvault/repo/keys"
)

// Compaction recompresses stored chunks in place: captures store chunks
// with a cheap codec (fast to write in the backup window, fast to read
// when a fresh restore point is booted), and compaction later rewrites
// the packs that have sat for a while with a dense one. A chunk keeps its
// id; only its frame changes. Each batch of packs goes through the pack
// layer's rewrite (pack.Backend.RewritePacks): new packs, a pack index
// naming them, a pack index saying the old packs are gone, then their
// removal; so killing compaction loses at most the batch in flight, and
// readers and captures, which never lose a chunk in that order, run on.
// Compaction takes the maintenance lock, so it never runs beside gc.
//
// What is done is recorded so the next run does not read it again: state
// objects "compacted-<payload type>-<unix ns>-<random>" (compactRecord)
// list packs whose every frame is of that payload type or raw. The record
// is a cache: a pack missing from it is read and, when nothing in it
// needs recompressing, recorded without being rewritten.

// compactBatchPacks is how many packs' worth of bytes one compaction
// batch reads before it is committed: what a killed compaction may lose.
const compactBatchPacks = 4

// CompactOptions tune Compact.
type CompactOptions struct {
	// Codec is the codec chunks are recompressed with (a
	// format.Compression* name; "": format.CompressionZstdBest).
	Codec string
	// OlderThan leaves packs younger than this alone (by the pack's
	// modification time on the storage's clock).
	OlderThan time.Duration
	// MaxDuration: no batch starts after this much time has passed (0:
	// no limit). The batch running then is finished and committed.
	MaxDuration time.Duration
	// Workers recompress this many chunks at once (0: GOMAXPROCS).
	Workers int
	// BatchBytes is how many bytes of packs a batch reads before it is
	// committed (0: four times the repository's pack size).
	BatchBytes int64
	// DryRun only counts what would be read.
	DryRun   bool
	LockWait time.Duration
	// Progress counts the bytes of packs to read and read.
	Progress *Progress
	// OnBatch, when set, is called after each committed batch with the
	// report so far.
	OnBatch func(CompactReport)
}

// CompactReport is what Compact did (or would do, with DryRun).
type CompactReport struct {
	Codec  string
	DryRun bool
	// Packs to read: old enough, not protected, not recorded as done.
	Packs          int
	PacksRewritten int // read, recompressed into new packs, removed
	PacksUnchanged int // read, nothing to recompress (now recorded)
	PacksWritten   int // new packs
	PacksKnown     int // skipped: an earlier run recorded them as done
	PacksYoung     int // skipped: younger than OlderThan
	PacksProtected int // skipped: an object lock protects them from removal
	PacksLeft      int // not reached before MaxDuration
	Batches        int
	// Chunks were stored again (recompressed, or copied as they were);
	// DroppedChunks were old copies of chunks stored again in a newer
	// pack, not copied; DamagedChunks do not decode to their id and were
	// copied as they were (verify names them).
	Chunks, DroppedChunks, DamagedChunks int
	// BytesBefore and BytesAfter are the sizes of the frames stored again,
	// before and after.
	BytesBefore, BytesAfter int64
	// PackBytesRead is what was read; PackBytesRemoved and
	// PackBytesWritten the sizes of the packs removed and written.
	PackBytesRead, PackBytesRemoved, PackBytesWritten int64
	Stopped                                           bool // MaxDuration ended it with packs left
	IndexesMerged                                     int
	Seconds                                           float64
}

// compactRecordPrefix starts the names of compaction's state objects.
const compactRecordPrefix = "compacted-"

// compactRecord lists packs whose frames are all of one payload type (or
// raw): compaction to that type has nothing to do in them.
type compactRecord struct {
	Version int      `json:"version"`
	Payload int      `json:"payload"`
	Packs   []string `json:"packs"`
}

// canRecompress says whether this process may rewrite the repository's
// chunk frames. Recompressing decodes every frame and encodes it anew
// under the same chunk id: in an encrypted repository that takes a key
// that decrypts chunks (a full key; a capture key cannot).
func (r *Repository) canRecompress() error {
	if enc, canRead := r.Encrypted(); enc && !canRead {
		return fmt.Errorf("recompressing decrypts every chunk: %w", keys.ErrCaptureKey)
	}
	return nil
}

// Compact recompresses the chunks of packs older than opts.OlderThan with
// opts.Codec, batch by batch (see the top of this file).
func (r *Repository) Compact(ctx context.Context, opts CompactOptions) (*CompactReport, error) {
	start := time.Now()
	if opts.Codec == "" {
		opts.Codec = format.CompressionZstdBest
	}
	payload, err := format.CompressionPayload(opts.Codec)
	if err != nil {
		return nil, fmt.Errorf("compact: %w", err)
	}
	if r.packs == nil {
		return nil, errors.New("compact: this repository stores one object per chunk (format version 1); compaction rewrites packs")
	}
	if err := r.canRecompress(); err != nil {
		return nil, fmt.Errorf("compact: %w", err)
	}
	if opts.BatchBytes <= 0 {
		opts.BatchBytes = compactBatchPacks * r.cfg.PackSize
	}
	if opts.Progress == nil {
		opts.Progress = &Progress{}
	}
	if !opts.DryRun {
		lock, err := r.Lock(ctx, LockOptions{Kind: format.LockMaintenance, Operation: "compact", Wait: opts.LockWait})
		if err != nil {
			return nil, fmt.Errorf("compact: %w", err)
		}
		defer lock.Unlock()
	}
	rep := &CompactReport{Codec: opts.Codec, DryRun: opts.DryRun}
	packs, err := r.packs.Packs(ctx)
	if err != nil {
		return nil, fmt.Errorf("compact: %w", err)
	}
	done, records, err := r.compactRecords(ctx, payload)
	if err != nil {
		return nil, fmt.Errorf("compact: %w", err)
	}
	cutoff := r.storageNow().Add(-opts.OlderThan)
	var todo []pack.PackInfo
	for _, p := range packs {
		switch {
		case done[p.Name]:
			rep.PacksKnown++
		case p.ModTime.After(cutoff):
			rep.PacksYoung++
		case !r.removable(backend.PackFile, p.ModTime):
			rep.PacksProtected++
		default:
			todo = append(todo, p)
		}
	}
	// Oldest first: what has sat longest is least likely to be read soon.
	slices.SortFunc(todo, func(a, b pack.PackInfo) int {
		return cmp.Or(a.ModTime.Compare(b.ModTime), strings.Compare(a.Name.String(), b.Name.String()))
	})
	rep.Packs = len(todo)
	for _, p := range todo {
		opts.Progress.Total.Add(p.Size)
	}
	if opts.DryRun {
		for _, p := range todo {
			rep.PackBytesRead += p.Size
		}
		rep.Seconds = time.Since(start).Seconds()
		return rep, nil
	}

	var dk *keys.DataKey
	if r.keys != nil { // new frames are sealed with this run's data key
		if dk, err = r.newDataKey(ctx); err != nil {
			return nil, fmt.Errorf("compact: %w", err)
		}
	}
	var damaged atomic.Int64
	transform := r.recompressor(ctx, opts.Codec, payload, dk, &damaged)
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	stored := map[format.ID]bool{} // packs now stored, for the merged record
	sizes := map[format.ID]int64{}
	for _, p := range packs {
		stored[p.Name] = true
		sizes[p.Name] = p.Size
	}
	var written []string // records this run wrote
	for len(todo) > 0 {
		if opts.MaxDuration > 0 && time.Since(start) >= opts.MaxDuration {
			rep.Stopped, rep.PacksLeft = true, len(todo)
			break
		}
		var batch []format.ID
		var size int64
		for len(todo) > 0 && (len(batch) == 0 || size+todo[0].Size <= opts.BatchBytes) {
			batch = append(batch, todo[0].Name)
			size += todo[0].Size
			todo = todo[1:]
		}
		res, err := r.packs.RewritePacks(ctx, batch, transform, workers)
		if err != nil {
			return nil, fmt.Errorf("compact: %w", err)
		}
		rep.Batches++
		rep.PacksRewritten += len(res.Rewritten)
		rep.PacksUnchanged += len(res.Unchanged)
		rep.PacksWritten += len(res.Written)
		rep.Chunks += res.Chunks
		rep.DroppedChunks += res.Dropped
		rep.DamagedChunks = int(damaged.Load())
		rep.BytesBefore += res.BytesBefore
		rep.BytesAfter += res.BytesAfter
		rep.PackBytesRead += size
		for _, n := range res.Rewritten {
			rep.PackBytesRemoved += sizes[n]
			delete(stored, n)
		}
		rec := slices.Clone(res.Unchanged)
		for _, p := range res.Written {
			rep.PackBytesWritten += p.Size
			stored[p.Name] = true
			rec = append(rec, p.Name)
		}
		for _, n := range rec {
			done[n] = true
		}
		name, err := r.saveCompactRecord(ctx, payload, rec)
		if err != nil {
			return nil, fmt.Errorf("compact: %w", err)
		}
		written = append(written, name)
		opts.Progress.Done.Add(size)
		if opts.OnBatch != nil {
			opts.OnBatch(*rep)
		}
	}
	// One record for what is stored now replaces this run's and earlier
	// ones (packs gc removed meanwhile drop out).
	var keep []format.ID
	for n := range done {
		if stored[n] {
			keep = append(keep, n)
		}
	}
	if len(written) > 0 || len(records) > 1 {
		if _, err := r.saveCompactRecord(ctx, payload, keep); err != nil {
			return nil, fmt.Errorf("compact: %w", err)
		}
		for _, n := range append(records, written...) {
			if err := r.be.Remove(ctx, stateHandle(n)); err != nil {
				return nil, fmt.Errorf("compact: remove record %s: %w", n, err)
			}
		}
	}
	var protected func(time.Time) bool
	if r.lockPeriod() > 0 {
		protected = func(mtime time.Time) bool { return !r.removable(backend.PackFile, mtime) }
	}
	if rep.IndexesMerged, err = r.packs.MergeIndexes(ctx, 32, protected); err != nil {
		return nil, fmt.Errorf("compact: %w", err)
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// recompressor returns the transform that stores a frame with codec: a
// frame of payload type payload stays as it is; any other is decoded
// (decrypted first in an encrypted repository), checked against its chunk
// id and encoded again (which leaves it raw where compressing does not
// pay), sealed with dk when the repository is encrypted. A frame that
// does not decode to its id stays as it is too, counted in damaged:
// recompressing it would make a good-looking frame of bad content; so
// does a frame of a type this build does not know.
func (r *Repository) recompressor(ctx context.Context, codec string, payload byte, dk *keys.DataKey, damaged *atomic.Int64) pack.Transform {
	return func(id format.ID, frame []byte) ([]byte, error) {
		p, err := format.FramePayload(frame)
		if err == nil && p&^encryptedPayload == payload {
			return frame, nil
		}
		buf := r.bufs.Get(int(r.cfg.ChunkSize))
		defer r.bufs.Put(buf)
		raw, err := r.decodeFrame(ctx, buf[:0], frame, id)
		switch {
		case errors.Is(err, format.ErrCorrupt) || errors.Is(err, keys.ErrTampered):
			damaged.Add(1)
			slog.Warn("compact: chunk is damaged: copied as it is (run verify)", "chunk", id.String(), "err", err)
			return frame, nil
		case errors.Is(err, format.ErrUnsupportedVersion):
			return frame, nil
		case err != nil:
			return nil, err
		}
		// Frames wait for the rest of their pack: keep them at their size,
		// not the encoder's worst case.
		ebuf := r.bufs.Get(format.ChunkHeaderSize + len(raw) + len(raw)/8)
		defer r.bufs.Put(ebuf)
		out, err := format.EncodeChunk(ebuf[:0], raw, codec)
		switch {
		case err != nil:
			return nil, err
		case dk == nil:
			return bytes.Clone(out), nil
		case out[5] == format.PayloadRaw && p&^encryptedPayload == format.PayloadRaw:
			return frame, nil // raw it stays: sealing it anew would change nothing but the nonce
		}
		return dk.SealFrame(make([]byte, 0, len(out)+64), out, id), nil
	}
}

// encryptedPayload is the payload type bit of encrypted frames (repo/keys).
const encryptedPayload = 0x80

// compactRecords returns the packs recorded as holding only frames of
// payload type payload (or raw), and the names of the records.
func (r *Repository) compactRecords(ctx context.Context, payload byte) (map[format.ID]bool, []string, error) {
	prefix := compactRecordPrefix + strconv.Itoa(int(payload)) + "-"
	objs, err := r.listState(ctx, prefix)
	if err != nil {
		return nil, nil, err
	}
	done := map[format.ID]bool{}
	var names []string
	for _, fi := range objs {
		b, err := r.be.Load(ctx, stateHandle(fi.Name), 0, -1)
		if errors.Is(err, backend.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("load compaction record %s: %w", fi.Name, err)
		}
		names = append(names, fi.Name)
		var rec compactRecord
		if err := json.Unmarshal(b, &rec); err != nil || rec.Version != 1 || rec.Payload != int(payload) {
			// A record is a cache: one that cannot be used costs a re-read.
			slog.Warn("compact: ignoring a compaction record that cannot be read", "name", fi.Name, "err", err)
			continue
		}
		for _, s := range rec.Packs {
			if id, err := format.ParseID(s); err == nil {
				done[id] = true
			}
		}
	}
	return done, names, nil
}

// saveCompactRecord writes a record of packs and returns its name.
func (r *Repository) saveCompactRecord(ctx context.Context, payload byte, packs []format.ID) (string, error) {
	rec := compactRecord{Version: 1, Payload: int(payload), Packs: make([]string, 0, len(packs))}
	for _, p := range packs {
		rec.Packs = append(rec.Packs, p.String())
	}
	slices.Sort(rec.Packs)
	b, err := json.Marshal(rec)
	if err != nil {
		return "", err
	}
	name := stateName(strings.TrimSuffix(compactRecordPrefix, "-"), strconv.Itoa(int(payload)))
	if err := r.be.Save(ctx, stateHandle(name), b); err != nil {
		return "", fmt.Errorf("save compaction record: %w", err)
	}
	return name, nil
}

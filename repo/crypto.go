package repo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/format"
	"github.com/vmvault/vmvault/repo/keys"
)

// Encrypted repositories (format version 3). The threat model, in short
// (repo/keys has the key material):
//
//   - Whoever can read the storage but holds no key learns object sizes,
//     counts and times, and nothing else: chunk frames, manifests,
//     indexes, pack indexes and trailers, locks and state are encrypted
//     and authenticated, and object names are keyed hashes (a known block
//     of data cannot be tested for).
//   - A full key (password of a full key slot) reads and writes
//     everything and manages keys.
//   - A capture key (`vmvault key add --capture-only`) is for hypervisor
//     hosts: it writes restore points (it holds the id key, for
//     deduplication, and the metadata key, to read manifests and indexes)
//     but cannot decrypt chunk contents: chunk payloads are sealed with
//     per-session data keys that only the private key of full keys opens.
//     A stolen capture key reveals metadata (VM names, disk sizes, times,
//     tags, VM configurations, which chunks each restore point uses) and
//     lets its holder test whether a block it knows is stored (it can
//     compute chunk ids), and add restore points; it cannot read disks.
//     It cannot delete either, when the storage forbids it: a local
//     repository whose files the capture host may create but not remove,
//     an S3 key without delete permission, or S3 Object Lock.
//   - Every object authenticates its type and name: a valid object moved
//     under another name, or a chunk frame moved under another chunk's
//     id, fails to open.

// ErrWrongPassword means no key slot opens with the password given.
var ErrWrongPassword = keys.ErrWrongPassword

// ErrNeedPassword means the repository is encrypted and no password was given.
var ErrNeedPassword = errors.New("the repository is encrypted: a password is needed (VMVAULT_PASSWORD_FILE, VMVAULT_PASSWORD_COMMAND or a terminal)")

func keyHandle(name string) backend.Handle { return backend.Handle{Type: backend.KeyFile, Name: name} }

func slotName() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "slot-" + hex.EncodeToString(b[:])
}

// openKeys opens the first key slot the password opens.
func openKeys(ctx context.Context, be backend.Backend, password func() ([]byte, error)) (*keys.Set, error) {
	if password == nil {
		return nil, ErrNeedPassword
	}
	pw, err := password()
	if err != nil {
		return nil, err
	}
	var names []string
	if err := be.List(ctx, backend.KeyFile, func(fi backend.FileInfo) error {
		if strings.HasPrefix(fi.Name, "slot-") {
			names = append(names, fi.Name)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("an encrypted repository without key slots: %w", format.ErrCorrupt)
	}
	var bad []error
	for _, n := range names {
		b, err := be.Load(ctx, keyHandle(n), 0, -1)
		if err != nil {
			return nil, fmt.Errorf("load key %s: %w", n, err)
		}
		set, err := keys.OpenSlot(b, pw)
		if err == nil {
			return set, nil
		}
		if !errors.Is(err, keys.ErrWrongPassword) {
			bad = append(bad, fmt.Errorf("key %s: %w", n, err))
		}
	}
	if len(bad) > 0 {
		return nil, errors.Join(append([]error{keys.ErrWrongPassword}, bad...)...)
	}
	return nil, keys.ErrWrongPassword
}

// Encrypted reports whether the repository is encrypted, and whether the
// key it was opened with reads chunk contents.
func (r *Repository) Encrypted() (encrypted, canRead bool) {
	if r.keys == nil {
		return false, true
	}
	return true, r.keys.CanRead()
}

// chunkID is the id of a chunk's content (keyed when encrypted).
func (r *Repository) chunkID(data []byte) format.ID {
	if r.keys != nil {
		return r.keys.ChunkID(data)
	}
	return format.Hash(data)
}

// nameID is the name of a manifest or disk index with content data
// (keyed when encrypted).
func (r *Repository) nameID(data []byte) format.ID {
	if r.keys != nil {
		return r.keys.NameID(data)
	}
	return format.Hash(data)
}

// openFrame decrypts an encrypted chunk frame into a pooled buffer (the
// caller puts it back), opening its data key first when needed.
func (r *Repository) openFrame(ctx context.Context, frame []byte, id format.ID) ([]byte, error) {
	enc, dk := keys.Encrypted(frame)
	if !enc {
		return nil, fmt.Errorf("an unencrypted chunk frame in an encrypted repository: %w", format.ErrCorrupt)
	}
	if !r.keys.CanRead() {
		return nil, keys.ErrCaptureKey
	}
	if !r.keys.HasDataKey(dk) {
		r.dkMu.Lock()
		err := r.loadDataKey(ctx, dk)
		r.dkMu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	buf := r.bufs.Get(len(frame))
	out, err := r.keys.OpenFrame(buf[:0], frame, id)
	if err != nil {
		r.bufs.Put(buf)
		return nil, err
	}
	return out, nil
}

func (r *Repository) loadDataKey(ctx context.Context, id [16]byte) error {
	if r.keys.HasDataKey(id) {
		return nil
	}
	name := "dk-" + hex.EncodeToString(id[:])
	b, err := r.be.Load(ctx, keyHandle(name), 0, -1)
	if err != nil {
		return fmt.Errorf("data key %s: %w", name, err)
	}
	return r.keys.OpenDataKey(id, b)
}

// newDataKey makes a writing session's data key and stores it sealed.
func (r *Repository) newDataKey(ctx context.Context) (*keys.DataKey, error) {
	dk, sealed, err := r.keys.NewDataKey()
	if err != nil {
		return nil, err
	}
	if err := r.be.Save(ctx, keyHandle("dk-"+hex.EncodeToString(dk.ID[:])), sealed); err != nil {
		return nil, fmt.Errorf("save data key: %w", err)
	}
	return dk, nil
}

// KeySlot describes one password that opens the repository.
type KeySlot struct {
	Name     string    `json:"name"`
	Kind     string    `json:"kind"`
	Created  time.Time `json:"created"`
	Hostname string    `json:"hostname,omitempty"`
	Comment  string    `json:"comment,omitempty"`
}

// KeySlots lists the key slots of an encrypted repository.
func (r *Repository) KeySlots(ctx context.Context) ([]KeySlot, error) {
	if r.keys == nil {
		return nil, errors.New("the repository is not encrypted")
	}
	var out []KeySlot
	err := r.be.List(ctx, backend.KeyFile, func(fi backend.FileInfo) error {
		if !strings.HasPrefix(fi.Name, "slot-") {
			return nil
		}
		b, err := r.be.Load(ctx, keyHandle(fi.Name), 0, -1)
		if err != nil {
			return err
		}
		s, err := keys.ParseSlot(b)
		if err != nil {
			return fmt.Errorf("key %s: %w", fi.Name, err)
		}
		out = append(out, KeySlot{Name: fi.Name, Kind: s.Kind, Created: s.Created, Hostname: s.Hostname, Comment: s.Comment})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, err
}

// AddKey adds a key slot of kind (keys.KindFull or keys.KindCapture) for
// password and returns its name. Only a full key adds keys.
func (r *Repository) AddKey(ctx context.Context, kind string, password []byte, kdf keys.KDF) (string, error) {
	if r.keys == nil {
		return "", errors.New("the repository is not encrypted")
	}
	if !r.keys.CanRead() {
		return "", fmt.Errorf("add key: %w", keys.ErrCaptureKey)
	}
	if kdf.Alg == "" {
		kdf = keys.Calibrate(keys.DefaultKDFTime)
	}
	slot, err := keys.NewSlot(r.keys, kind, password, kdf, r.hostname)
	if err != nil {
		return "", err
	}
	name := slotName()
	if err := r.be.Save(ctx, keyHandle(name), slot); err != nil {
		return "", fmt.Errorf("save key: %w", err)
	}
	return name, nil
}

// RemoveKey removes a key slot; the last full key is never removed, and
// only a full key removes keys.
func (r *Repository) RemoveKey(ctx context.Context, name string) error {
	if r.keys == nil {
		return errors.New("the repository is not encrypted")
	}
	if !r.keys.CanRead() {
		return fmt.Errorf("remove key: %w", keys.ErrCaptureKey)
	}
	slots, err := r.KeySlots(ctx)
	if err != nil {
		return err
	}
	full, found := 0, false
	for _, s := range slots {
		if s.Kind == keys.KindFull && s.Name != name {
			full++
		}
		found = found || s.Name == name
	}
	if !found {
		return fmt.Errorf("no key %s (vmvault key list)", name)
	}
	if full == 0 {
		return errors.New("refusing to remove the last full key: the repository could not be read any more")
	}
	return r.be.Remove(ctx, keyHandle(name))
}

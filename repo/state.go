package repo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/format"
)

// Repository state objects (backend.StateFile) record what verify found;
// they are named
//
//	damaged-<unix ns>-<random>          the damaged list (the newest wins)
//	verified-<restore point>-<unix ns>  a verify record (the newest per restore point wins)
//	quarantine-<chunk>-<unix ns>        a damaged chunk's bytes as verify found them
//
// Objects stay immutable: a new list or record is a new object, and older
// ones are removed after it is written.

func stateName(parts ...string) string {
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	return strings.Join(parts, "-") + "-" + strconv.FormatInt(time.Now().UnixNano(), 10) + "-" + hex.EncodeToString(rnd[:])
}

func stateHandle(name string) backend.Handle {
	return backend.Handle{Type: backend.StateFile, Name: name}
}

// listState returns the state objects whose names start with prefix.
func (r *Repository) listState(ctx context.Context, prefix string) ([]backend.FileInfo, error) {
	var out []backend.FileInfo
	err := r.be.List(ctx, backend.StateFile, func(fi backend.FileInfo) error {
		if strings.HasPrefix(fi.Name, prefix) {
			out = append(out, fi)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list repository state: %w", err)
	}
	return out, nil
}

// stamp is the time in a state object's name (0 when it has none).
func stamp(name string, field int) int64 {
	parts := strings.Split(name, "-")
	if field >= len(parts) {
		return 0
	}
	n, _ := strconv.ParseInt(parts[field], 10, 64)
	return n
}

// DamagedChunks returns the chunks on the damaged list, by id, and the
// names of the list objects they came from.
func (r *Repository) DamagedChunks(ctx context.Context) (map[format.ID]format.DamagedChunk, []string, error) {
	objs, err := r.listState(ctx, "damaged-")
	if err != nil {
		return nil, nil, err
	}
	out := map[format.ID]format.DamagedChunk{}
	var newest backend.FileInfo
	var names []string
	for _, fi := range objs {
		names = append(names, fi.Name)
		if stamp(fi.Name, 1) >= stamp(newest.Name, 1) {
			newest = fi
		}
	}
	if newest.Name == "" {
		return out, nil, nil
	}
	b, err := r.be.Load(ctx, stateHandle(newest.Name), 0, -1)
	if err != nil {
		return nil, nil, fmt.Errorf("load damaged list %s: %w", newest.Name, err)
	}
	d, err := format.ParseDamaged(b)
	if err != nil {
		return nil, nil, fmt.Errorf("damaged list %s: %w", newest.Name, err)
	}
	for _, c := range d.Chunks {
		id, _ := format.ParseID(c.ID)
		out[id] = c
	}
	return out, names, nil
}

// saveDamaged writes the damaged list as a new object and removes the
// objects in old.
func (r *Repository) saveDamaged(ctx context.Context, list map[format.ID]format.DamagedChunk, old []string) error {
	d := &format.Damaged{Chunks: make([]format.DamagedChunk, 0, len(list))}
	for _, c := range list {
		d.Chunks = append(d.Chunks, c)
	}
	b, err := d.Marshal()
	if err != nil {
		return err
	}
	if err := r.be.Save(ctx, stateHandle(stateName("damaged")), b); err != nil {
		return fmt.Errorf("save damaged list: %w", err)
	}
	for _, n := range old {
		_ = r.be.Remove(ctx, stateHandle(n))
	}
	return nil
}

// quarantine keeps a copy of a damaged chunk object's bytes beside the
// data, so that storing a good copy under its name loses nothing. It
// returns the copy's name, or "" when there is nothing to keep.
func (r *Repository) quarantine(ctx context.Context, id format.ID) (string, error) {
	b, err := r.be.Load(ctx, chunkHandle(id), 0, -1)
	if errors.Is(err, backend.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read damaged chunk %s: %w", id.Short(), err)
	}
	name := stateName("quarantine", id.String())
	if err := r.be.Save(ctx, stateHandle(name), b); err != nil {
		return "", fmt.Errorf("quarantine chunk %s: %w", id.Short(), err)
	}
	return name, nil
}

// VerifyRecords returns the newest verify record of each restore point.
func (r *Repository) VerifyRecords(ctx context.Context) (map[format.ID]*format.VerifyRecord, error) {
	objs, err := r.listState(ctx, "verified-")
	if err != nil {
		return nil, err
	}
	newest := map[format.ID]backend.FileInfo{}
	for _, fi := range objs {
		parts := strings.SplitN(fi.Name, "-", 3)
		if len(parts) < 3 {
			continue
		}
		id, err := format.ParseID(parts[1])
		if err != nil {
			continue
		}
		if cur, ok := newest[id]; !ok || stamp(fi.Name, 2) > stamp(cur.Name, 2) {
			newest[id] = fi
		}
	}
	out := map[format.ID]*format.VerifyRecord{}
	for id, fi := range newest {
		b, err := r.be.Load(ctx, stateHandle(fi.Name), 0, -1)
		if errors.Is(err, backend.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("load verify record %s: %w", fi.Name, err)
		}
		v, err := format.ParseVerifyRecord(b)
		if err != nil || v.RestorePoint != id.String() {
			continue // an unreadable record only means "not verified"
		}
		out[id] = v
	}
	return out, nil
}

// saveVerifyRecord writes a restore point's record and removes its older
// ones.
func (r *Repository) saveVerifyRecord(ctx context.Context, v *format.VerifyRecord, old []string) error {
	b, err := v.Marshal()
	if err != nil {
		return err
	}
	if err := r.be.Save(ctx, stateHandle(stateName("verified", v.RestorePoint)), b); err != nil {
		return fmt.Errorf("save verify record of %s: %w", v.RestorePoint[:8], err)
	}
	for _, n := range old {
		_ = r.be.Remove(ctx, stateHandle(n))
	}
	return nil
}

// forgetState removes the verify records of restore points that no
// longer exist (gc calls it).
func (r *Repository) forgetState(ctx context.Context, exists func(format.ID) bool) error {
	objs, err := r.listState(ctx, "verified-")
	if err != nil {
		return err
	}
	for _, fi := range objs {
		parts := strings.SplitN(fi.Name, "-", 3)
		if len(parts) < 3 {
			continue
		}
		if id, err := format.ParseID(parts[1]); err == nil && !exists(id) {
			if err := r.be.Remove(ctx, stateHandle(fi.Name)); err != nil {
				return err
			}
		}
	}
	return nil
}

package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// removeOwn removes the exports, jobs and nodes a capture created: those
// of run, or every vmvault-* one when run is "". It waits for the
// asynchronous removals (export deleted, job cancelled) before deleting
// the nodes below them, and deletes the overlay files of nodes it removes.
// It returns what it removed, and the capture temp directories of the
// overlay files (to be removed once the NBD server's socket is gone).
func removeOwn(ctx context.Context, m *Monitor, run string, log *slog.Logger) ([]string, []string, error) {
	st, err := queryState(ctx, m)
	if err != nil {
		return nil, nil, err
	}
	var dirs []string
	mine := func(name, kind string) bool {
		if run == "" {
			return strings.HasPrefix(name, prefix)
		}
		return strings.HasPrefix(name, prefix+kind+"-"+run+"-")
	}
	var removed []string
	var errs []error
	for _, e := range st.exports {
		if !mine(e.ID, "exp") {
			continue
		}
		id := e.ID
		w := m.Expect("BLOCK_EXPORT_DELETED", func(d json.RawMessage) bool { return field(d, "id") == id })
		if err := m.Execute(ctx, "block-export-del", map[string]any{"id": id, "mode": "hard"}, nil); err != nil && !e.ShuttingDown {
			m.forget(w)
			errs = append(errs, err)
			continue
		}
		if _, err := w.Wait(ctx, m); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "export "+id)
	}
	for _, j := range st.jobs {
		if !mine(j.ID, "job") {
			continue
		}
		id := j.ID
		switch j.Status {
		case "concluded", "null":
			if err := m.Execute(ctx, "job-dismiss", map[string]any{"id": id}, nil); err != nil {
				errs = append(errs, err)
				continue
			}
		default:
			w := m.Expect("BLOCK_JOB_CANCELLED", func(d json.RawMessage) bool { return field(d, "device") == id })
			w2 := m.Expect("BLOCK_JOB_COMPLETED", func(d json.RawMessage) bool { return field(d, "device") == id })
			if err := m.Execute(ctx, "block-job-cancel", map[string]any{"device": id, "force": true}, nil); err != nil {
				m.forget(w)
				m.forget(w2)
				errs = append(errs, err)
				continue
			}
			select {
			case <-w.ch:
			case <-w2.ch:
			case <-ctx.Done():
				errs = append(errs, fmt.Errorf("waiting for job %s to end: %w", id, ctx.Err()))
				continue
			case <-m.done:
				errs = append(errs, fmt.Errorf("waiting for job %s to end: %w", id, m.connErr()))
				continue
			}
			m.forget(w)
			m.forget(w2)
		}
		removed = append(removed, "job "+id)
	}
	for _, n := range st.nodes {
		if !mine(n.NodeName, "ovl") {
			continue
		}
		if err := m.Execute(ctx, "blockdev-del", map[string]any{"node-name": n.NodeName}, nil); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "node "+n.NodeName)
	}
	// overlay files: the file nodes below the overlays (the overlays'
	// own filename may be a json: description) in capture temp directories
	for _, n := range st.nodes {
		f := n.Image.Filename
		dir := filepath.Dir(f)
		if n.Drv != "file" || !strings.HasPrefix(filepath.Base(dir), "vmvault-qemu-") || !mine(filepath.Base(f), "ovl") {
			continue
		}
		if err := os.Remove(f); err == nil {
			removed = append(removed, "file "+f)
		} else if !errors.Is(err, os.ErrNotExist) {
			log.Warn("overlay file not removed", "file", f, "err", err)
		}
		dirs = append(dirs, dir)
	}
	return removed, dirs, errors.Join(errs...)
}

// removeTempDirs removes capture temp directories holding nothing but the
// NBD server's socket.
func removeTempDirs(dirs []string) {
	for _, dir := range dirs {
		os.Remove(filepath.Join(dir, "nbd.sock"))
		os.Remove(dir) // only when empty
	}
}

// field returns a string field of an event's data.
func field(data json.RawMessage, name string) string {
	var m map[string]any
	json.Unmarshal(data, &m)
	s, _ := m[name].(string)
	return s
}

// Cleanup removes what interrupted captures left in the QEMU at monitor:
// vmvault-* exports, jobs and overlay nodes with their files; and it
// merges each capture's new bitmap back into the previous one it had
// disabled (a restore point that recorded the new one then gets a full
// capture next time, never a short one). When it removed exports and the
// NBD server serves no other, it stops the server. It returns what it did.
func Cleanup(ctx context.Context, monitor string, log *slog.Logger) ([]string, error) {
	if log == nil {
		log = slog.Default()
	}
	m, err := DialMonitor(ctx, monitor)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	done, dirs, err := removeOwn(ctx, m, "", log)
	if err != nil {
		return done, err
	}
	defer removeTempDirs(dirs)
	st, err := queryState(ctx, m)
	if err != nil {
		return done, err
	}
	removedExport := false
	for _, d := range done {
		removedExport = removedExport || strings.HasPrefix(d, "export ")
	}
	if removedExport && len(st.exports) == 0 {
		if err := m.Execute(ctx, "nbd-server-stop", nil, nil); err == nil {
			done = append(done, "NBD server stopped")
		}
	}
	for _, n := range st.nodes {
		groups := map[string][]bitmapInfo{}
		for _, b := range n.Bitmaps {
			rest, ok := strings.CutPrefix(b.Name, bitmapPrefix)
			if !ok || b.Inconsistent || b.Busy {
				continue
			}
			tag, _, _ := strings.Cut(rest, "-")
			groups[tag] = append(groups[tag], b)
		}
		for tag := range groups {
			own := ownBitmaps(&n, tag)
			target := ""
			for _, b := range own {
				if !b.Recording {
					target = b.Name // the newest disabled one
				}
			}
			if target == "" {
				continue
			}
			actions := []any{map[string]any{"type": "block-dirty-bitmap-enable", "data": map[string]any{"node": n.NodeName, "name": target}}}
			var merged []string
			for _, b := range own {
				if b.Name != target {
					merged = append(merged, b.Name)
				}
			}
			if len(merged) > 0 {
				actions = append(actions, map[string]any{"type": "block-dirty-bitmap-merge", "data": map[string]any{"node": n.NodeName, "target": target, "bitmaps": merged}})
				for _, b := range merged {
					actions = append(actions, map[string]any{"type": "block-dirty-bitmap-remove", "data": map[string]any{"node": n.NodeName, "name": b}})
				}
			}
			if err := m.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil); err != nil {
				return done, fmt.Errorf("node %s: merge bitmaps into %s: %w", n.NodeName, target, err)
			}
			d := fmt.Sprintf("bitmap %s/%s enabled", n.NodeName, target)
			if len(merged) > 0 {
				d += " with " + strings.Join(merged, ", ") + " merged into it"
			}
			done = append(done, d)
		}
	}
	return done, nil
}

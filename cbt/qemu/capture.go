// Package qemu captures running QEMU VMs (qemu-system-* or
// qemu-storage-daemon) through QMP, at one point in time for all their
// disks, reading only what changed since the last capture.
//
// A capture makes, in one QMP transaction for every disk: a new
// persistent dirty bitmap (the change token stored with the restore
// point), the previous bitmap disabled (it now holds exactly the writes
// since the previous capture), and a backup job with sync=none into a
// temporary qcow2 overlay backed by the disk, so the overlay reads as the
// disk did at the transaction while the guest writes on. The overlay is
// exported over NBD with the previous bitmap; cbt/nbdsrc reads it, only
// the areas the bitmap marks when the VM's latest restore point of this
// lineage ("qemu:VM") recorded that bitmap, and only allocated areas on
// full captures. --quiesce freezes the guest's file systems through the
// guest agent around the transaction.
//
// Invariants: what a capture creates in QEMU is named vmvault-* and is
// removed in every outcome (export, NBD server, job, overlay node, temp
// file) with a context that Ctrl-C does not cancel; a capture that does
// not produce a restore point merges the new bitmap back into the
// previous one, so no write is ever missing from the bitmap the last
// restore point names; the guest is thawed whenever it was frozen. A
// missing, inconsistent (QEMU crashed) or different bitmap makes that
// disk a full capture with the reason. A capture refuses to start while
// leftovers of an interrupted one are there (Cleanup removes them).
package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vmvault/vmvault/cbt"
	"github.com/vmvault/vmvault/cbt/nbdsrc"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
)

// LineagePrefix starts the lineage of QEMU captures: "qemu:" + VM name.
const LineagePrefix = "qemu:"

// DiskSpec names a disk to capture.
type DiskSpec struct {
	Name string // name in the restore point; "" derives it from Node
	// Node is a block node name or a device (-drive id, qdev id or path).
	Node string
}

// Options control one capture.
type Options struct {
	Repo *repo.Repository
	VM   string
	// Monitor is the QMP address: unix:PATH, a path, or tcp:HOST:PORT.
	Monitor string
	// Disks to capture; nil: every writable device with a medium.
	Disks []DiskSpec
	// Agent, when set, is the guest agent socket: the guest's file systems
	// are frozen for the transaction.
	Agent string
	// TmpDir holds the overlays and the NBD socket (default os.TempDir());
	// QEMU must be able to create files there.
	TmpDir   string
	Full     bool
	Tags     []string
	Log      *slog.Logger
	LockWait time.Duration
	Progress *repo.Progress
	Workers  int
	// Compression is the codec of the stored chunks ("": the repository's).
	Compression string
	// TeardownTimeout bounds the teardown after the capture (default 2
	// minutes).
	TeardownTimeout time.Duration
	// SkipFreeSpace and SkipSwap: see cbt.Options.
	SkipFreeSpace bool
	SkipSwap      bool

	// wrapReader, for tests, wraps the reader of every disk.
	wrapReader func(name string, r io.ReaderAt) io.ReaderAt
	// afterTransaction, for tests, runs right after the transaction.
	afterTransaction func()
}

// disk is one disk of a capture.
type disk struct {
	name, node, device string
	size               int64
	drv, file          string
	prev               string // bitmap holding the writes since the last capture ("" none)
	noPrev             string // why there is none
	next               string // bitmap created by this capture
	ovl, job, export   string
	ovlFile            string
	e                  *nbdsrc.Export
}

// session is one capture's state in QEMU, torn down by teardown.
type session struct {
	o      Options
	m      *Monitor
	log    *slog.Logger
	run    string
	tmp    string
	sock   string
	disks  []*disk
	config json.RawMessage

	added, started, transacted, serverUp bool
}

// CaptureVM captures the VM behind o.Monitor as a new restore point.
func CaptureVM(ctx context.Context, o Options) (rp *repo.RestorePoint, err error) {
	if err := format.ValidName("VM", o.VM); err != nil {
		return nil, err
	}
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	m, err := DialMonitor(ctx, o.Monitor)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	s := &session{o: o, m: m, log: log, run: randomHex(3)}
	defer func() {
		timeout := o.TeardownTimeout
		if timeout == 0 {
			timeout = 2 * time.Minute
		}
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		if terr := s.teardown(tctx, err == nil); terr != nil {
			log.Error("QEMU teardown incomplete: run 'vmvault-capture qemu cleanup'", "vm", o.VM, "err", terr)
			err = errors.Join(err, terr)
		}
	}()
	if err := s.prepare(ctx); err != nil {
		return nil, fmt.Errorf("capture %s: %w", o.VM, err)
	}
	rp, err = cbt.Capture(ctx, o.Repo, &source{s: s}, cbt.Options{
		VM: o.VM, Tags: o.Tags, Full: o.Full, Progress: o.Progress, LockWait: o.LockWait, Workers: o.Workers, Log: log,
		Compression:   o.Compression,
		SkipFreeSpace: o.SkipFreeSpace, SkipSwap: o.SkipSwap,
	})
	return rp, err
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// prepare finds the disks, freezes the view in one transaction and
// exports it.
func (s *session) prepare(ctx context.Context) error {
	st, err := queryState(ctx, s.m)
	if err != nil {
		return err
	}
	if left := st.leftovers(); len(left) > 0 {
		return fmt.Errorf("an earlier capture left %s in QEMU (or one is running): run 'vmvault-capture qemu cleanup'", strings.Join(left, ", "))
	}
	if err := s.findDisks(st); err != nil {
		return err
	}
	if s.config, err = s.queryConfig(ctx, st); err != nil {
		return err
	}
	repoTag := s.o.Repo.Config().ID
	if len(repoTag) > 8 {
		repoTag = repoTag[:8]
	}
	now := time.Now().UTC()
	for i, d := range s.disks {
		n := st.node(d.node)
		own := ownBitmaps(n, repoTag)
		var stale []string
		for j := len(own) - 1; j >= 0; j-- {
			b := own[j]
			switch {
			case b.Inconsistent:
				if d.prev == "" && d.noPrev == "" {
					d.noPrev = fmt.Sprintf("bitmap %s is inconsistent: QEMU stopped without saving it (crash or kill)", b.Name)
				}
				stale = append(stale, b.Name)
			case b.Busy:
				return fmt.Errorf("disk %s: bitmap %s is in use by another operation", d.name, b.Name)
			case d.prev == "" && d.noPrev == "" && b.Recording:
				d.prev = b.Name
			default:
				stale = append(stale, b.Name)
			}
		}
		if d.prev == "" && d.noPrev == "" {
			d.noPrev = fmt.Sprintf("no vmvault bitmap on node %s (a new disk, or QEMU restarted without a persistent bitmap)", d.node)
		}
		for _, b := range stale {
			s.log.Warn("removing a stale bitmap", "vm", s.o.VM, "disk", d.name, "bitmap", b)
			if err := s.m.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": d.node, "name": b}, nil); err != nil {
				return fmt.Errorf("disk %s: %w", d.name, err)
			}
		}
		d.next = fmt.Sprintf("%s%s-%s.%s", bitmapPrefix, repoTag, now.Format("20060102T150405.000Z"), s.run)
		d.ovl = fmt.Sprintf("%sovl-%s-%d", prefix, s.run, i)
		d.job = fmt.Sprintf("%sjob-%s-%d", prefix, s.run, i)
		d.export = fmt.Sprintf("%sexp-%s-%d", prefix, s.run, i)
	}

	if s.tmp, err = os.MkdirTemp(s.o.TmpDir, "vmvault-qemu-"); err != nil {
		return err
	}
	for _, d := range s.disks {
		d.ovlFile = filepath.Join(s.tmp, d.ovl+".qcow2")
		if err := createOverlay(ctx, s.m, d.job+"-create", d.ovlFile, d.size); err != nil {
			return fmt.Errorf("disk %s: %w", d.name, err)
		}
	}
	for _, d := range s.disks {
		s.added = true
		if err := s.m.Execute(ctx, "blockdev-add", map[string]any{
			"driver": "qcow2", "node-name": d.ovl, "backing": d.node,
			"file": map[string]any{"driver": "file", "filename": d.ovlFile},
		}, nil); err != nil {
			return fmt.Errorf("disk %s: overlay: %w", d.name, err)
		}
	}

	if err := s.transaction(ctx); err != nil {
		return err
	}

	s.sock = filepath.Join(s.tmp, "nbd.sock")
	if err := s.m.Execute(ctx, "nbd-server-start", map[string]any{
		"addr": map[string]any{"type": "unix", "data": map[string]any{"path": s.sock}},
	}, nil); err != nil {
		return fmt.Errorf("start QEMU's NBD server (QEMU runs one; is it serving something else, or left by a killed capture: 'vmvault-capture qemu cleanup'?): %w", err)
	}
	s.serverUp = true
	for _, d := range s.disks {
		args := map[string]any{"type": "nbd", "id": d.export, "node-name": d.ovl, "name": d.export, "writable": false}
		if d.prev != "" {
			args["bitmaps"] = []any{map[string]any{"node": d.node, "name": d.prev}}
		}
		if err := s.m.Execute(ctx, "block-export-add", args, nil); err != nil {
			return fmt.Errorf("disk %s: export: %w", d.name, err)
		}
		e, err := nbdsrc.Open(ctx, "nbd+unix:///"+d.export+"?socket="+s.sock, "", d.prev)
		if err != nil {
			return fmt.Errorf("disk %s: %w", d.name, err)
		}
		d.e = e
	}
	return nil
}

// transaction freezes the point in time: for every disk the new bitmap,
// the previous one disabled, and the backup job into the overlay, with
// the guest frozen around it when an agent is given.
func (s *session) transaction(ctx context.Context) (err error) {
	var actions []any
	for _, d := range s.disks {
		actions = append(actions, map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{
			"node": d.node, "name": d.next, "persistent": d.drv == "qcow2"}})
		if d.prev != "" {
			actions = append(actions, map[string]any{"type": "block-dirty-bitmap-disable", "data": map[string]any{
				"node": d.node, "name": d.prev}})
		}
		actions = append(actions, map[string]any{"type": "blockdev-backup", "data": map[string]any{
			"job-id": d.job, "device": d.node, "target": d.ovl, "sync": "none", "auto-dismiss": true}})
	}
	if s.o.Agent != "" {
		a, err := DialAgent(ctx, s.o.Agent)
		if err != nil {
			return fmt.Errorf("--quiesce: %w", err)
		}
		defer a.Close()
		fctx, cancel := context.WithTimeout(ctx, time.Minute)
		n, err := a.Freeze(fctx)
		cancel()
		if err != nil {
			return fmt.Errorf("--quiesce: freeze the guest's file systems: %w", err)
		}
		s.log.Info("guest file systems frozen", "vm", s.o.VM, "count", n)
		defer func() {
			tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if terr := a.Thaw(tctx); terr != nil {
				s.log.Error("guest file systems NOT thawed: run guest-fsfreeze-thaw through the agent", "vm", s.o.VM, "err", terr)
				err = errors.Join(err, fmt.Errorf("thaw the guest's file systems: %w", terr))
				return
			}
			s.log.Info("guest file systems thawed", "vm", s.o.VM)
		}()
	}
	if err := s.m.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil); err != nil {
		return fmt.Errorf("point-in-time transaction: %w", err)
	}
	s.transacted, s.started = true, true
	if s.o.afterTransaction != nil {
		s.o.afterTransaction()
	}
	return nil
}

// findDisks resolves the disks to capture.
func (s *session) findDisks(st *state) error {
	specs := s.o.Disks
	if len(specs) == 0 {
		for _, b := range st.devices() {
			specs = append(specs, DiskSpec{Node: devName(b)})
		}
		if len(specs) == 0 {
			return errors.New("QEMU has no writable block device with a medium: name the nodes to capture (--disk)")
		}
	}
	seen := map[string]bool{}
	for _, sp := range specs {
		n, dev, err := st.resolve(sp.Node)
		if err != nil {
			return err
		}
		name := sp.Name
		if name == "" {
			name = dev
			if name == "" {
				name = n.NodeName
			}
		}
		if err := format.ValidName("disk", name); err != nil {
			return err
		}
		if seen[name] || seen["node:"+n.NodeName] {
			return fmt.Errorf("disk %s (node %s) named twice", name, n.NodeName)
		}
		seen[name], seen["node:"+n.NodeName] = true, true
		if n.Image.VirtualSize <= 0 {
			return fmt.Errorf("disk %s: node %s has no size", name, n.NodeName)
		}
		s.disks = append(s.disks, &disk{name: name, node: n.NodeName, device: dev, size: n.Image.VirtualSize,
			drv: n.Drv, file: n.File})
	}
	return nil
}

// teardown removes what the capture created in QEMU, and settles the
// bitmaps: after success the previous bitmap goes; otherwise the new one
// is merged back into it.
func (s *session) teardown(ctx context.Context, ok bool) error {
	var errs []error
	for _, d := range s.disks {
		if d.e != nil {
			d.e.Close()
		}
	}
	if s.serverUp || s.added {
		_, _, err := removeOwn(ctx, s.m, s.run, s.log)
		errs = append(errs, err)
	}
	if s.serverUp {
		if err := s.m.Execute(ctx, "nbd-server-stop", nil, nil); err != nil {
			errs = append(errs, err)
		}
	}
	if s.transacted {
		var actions []any
		for _, d := range s.disks {
			switch {
			case ok && d.prev != "":
				actions = append(actions, map[string]any{"type": "block-dirty-bitmap-remove", "data": map[string]any{"node": d.node, "name": d.prev}})
			case !ok && d.prev != "":
				actions = append(actions,
					map[string]any{"type": "block-dirty-bitmap-enable", "data": map[string]any{"node": d.node, "name": d.prev}},
					map[string]any{"type": "block-dirty-bitmap-merge", "data": map[string]any{"node": d.node, "target": d.prev, "bitmaps": []string{d.next}}},
					map[string]any{"type": "block-dirty-bitmap-remove", "data": map[string]any{"node": d.node, "name": d.next}})
			case !ok:
				actions = append(actions, map[string]any{"type": "block-dirty-bitmap-remove", "data": map[string]any{"node": d.node, "name": d.next}})
			}
		}
		if len(actions) > 0 {
			if err := s.m.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil); err != nil {
				errs = append(errs, fmt.Errorf("settle the dirty bitmaps: %w", err))
			} else if !ok {
				s.log.Info("capture failed: the new bitmaps were merged back into the previous ones", "vm", s.o.VM)
			}
		}
	}
	if s.tmp != "" {
		if err := os.RemoveAll(s.tmp); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// source is a session's disks as a cbt.Source.
type source struct{ s *session }

var _ cbt.Source = (*source)(nil)

func (src *source) disk(name string) (*disk, error) {
	for _, d := range src.s.disks {
		if d.name == name {
			return d, nil
		}
	}
	return nil, fmt.Errorf("QEMU capture has no disk %q", name)
}

// Describe implements cbt.Source.
func (src *source) Describe(context.Context) (*cbt.Description, error) {
	s := src.s
	desc := &cbt.Description{Lineage: LineagePrefix + s.o.VM, Source: "qemu", Config: s.config,
		Labels: map[string]string{}}
	for _, d := range s.disks {
		desc.Labels["qemu.disk."+d.name+".node"] = d.node
		desc.Disks = append(desc.Disks, cbt.Disk{Name: d.name, Size: d.e.Size(), ChangeToken: d.next})
	}
	return desc, nil
}

// Open implements cbt.Source: the overlay's export.
func (src *source) Open(_ context.Context, cd cbt.Disk) (io.ReaderAt, error) {
	d, err := src.disk(cd.Name)
	if err != nil {
		return nil, err
	}
	if w := src.s.o.wrapReader; w != nil {
		return w(d.name, d.e), nil
	}
	return d.e, nil
}

// DataRanges implements cbt.Source with base:allocation of the overlay
// (which QEMU answers from the disk below it).
func (src *source) DataRanges(ctx context.Context, cd cbt.Disk) ([]extent.Range, error) {
	d, err := src.disk(cd.Name)
	if err != nil {
		return nil, err
	}
	return d.e.DataRanges(ctx)
}

// ChangedRanges implements cbt.Source: the previous bitmap's blocks, when
// base recorded that bitmap.
func (src *source) ChangedRanges(ctx context.Context, cd cbt.Disk, base cbt.BaseDisk) ([]extent.Range, error) {
	d, err := src.disk(cd.Name)
	if err != nil {
		return nil, err
	}
	tok := base.Disk.ChangeToken
	switch {
	case d.prev == "":
		return nil, cbt.NoChangeInfo("%s", d.noPrev)
	case tok == "":
		return nil, cbt.NoChangeInfo("restore point %s recorded no bitmap for this disk", base.RestorePoint.ID.Short())
	case tok != d.prev:
		return nil, cbt.NoChangeInfo("the bitmap on node %s (%s) is not the one restore point %s recorded (%s)", d.node, d.prev, base.RestorePoint.ID.Short(), tok)
	}
	return d.e.DirtyRanges(ctx)
}

// createOverlay makes an empty qcow2 image of size bytes at file, for a
// temporary overlay: QEMU formats it (blockdev-create, a job named id), so
// no qemu-img process is started (that cost 60 ms of a 0.35 s
// incremental); a QEMU without blockdev-create gets qemu-img.
func createOverlay(ctx context.Context, m *Monitor, id, file string, size int64) error {
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("create overlay file: %w", err)
	}
	f.Close()
	done := m.Expect("JOB_STATUS_CHANGE", func(d json.RawMessage) bool {
		return field(d, "id") == id && field(d, "status") == "concluded"
	})
	err = m.Execute(ctx, "blockdev-create", map[string]any{"job-id": id, "options": map[string]any{
		"driver": "qcow2", "size": size, "file": map[string]any{"driver": "file", "filename": file},
	}}, nil)
	if IsCommandNotFound(err) {
		m.forget(done)
		out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", file, strconv.FormatInt(size, 10)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("qemu-img create %s: %v: %s", file, err, out)
		}
		return nil
	}
	if err != nil {
		m.forget(done)
		return fmt.Errorf("format overlay %s: %w", file, err)
	}
	if _, err := done.Wait(ctx, m); err != nil {
		return fmt.Errorf("format overlay %s: %w", file, err)
	}
	var jobs []struct {
		ID    string `json:"id"`
		Error string `json:"error"`
	}
	err = m.Execute(ctx, "query-jobs", nil, &jobs)
	if derr := m.Execute(ctx, "job-dismiss", map[string]any{"id": id}, nil); err == nil {
		err = derr
	}
	if err != nil {
		return fmt.Errorf("format overlay %s: %w", file, err)
	}
	for _, j := range jobs {
		if j.ID == id && j.Error != "" {
			return fmt.Errorf("format overlay %s: %s", file, j.Error)
		}
	}
	return nil
}

// Package libvirt captures libvirt-managed QEMU/KVM domains through
// libvirt's backup API in pull mode with checkpoints, speaking libvirt's
// RPC protocol (github.com/digitalocean/go-libvirt, no cgo).
//
// libvirt owns the dirty bitmaps of the domains it manages: a capture
// asks for a pull backup (incremental from the newest vmvault checkpoint
// where a disk has one, full otherwise) that creates the next checkpoint
// atomically, reads each disk's point-in-time NBD export through
// cbt/nbdsrc (only the areas the checkpoint's bitmap marks, when the VM's
// latest restore point of the lineage "libvirt:UUID" recorded that
// checkpoint; otherwise the allocated areas), and ends the backup job.
// Checkpoints made by other tools (virtnbdbackup) are left alone; libvirt
// merges bitmaps across them.
//
// Invariants: the backup job is ended, the scratch files and socket
// removed, and the guest thawed, in every outcome, with a context that
// Ctrl-C does not cancel. A capture that does not produce a restore point
// deletes the checkpoint it created, which makes libvirt merge that
// checkpoint's bitmap into its parent: no write is missed. After a
// successful capture, vmvault checkpoints that no restore point of the
// lineage names any more (forgotten by retention) are deleted, except the
// newest. A disk without a vmvault checkpoint (first capture, new disk,
// checkpoint metadata lost) is a full capture with the reason.
package libvirt

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
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	"libvirt.org/go/libvirtxml"

	"github.com/vmvault/vmvault/cbt"
	"github.com/vmvault/vmvault/cbt/nbdsrc"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
)

// LineagePrefix starts the lineage of libvirt captures: "libvirt:" +
// domain UUID.
const LineagePrefix = "libvirt:"

// CheckpointPrefix starts the names of the checkpoints vmvault creates,
// followed by the repository id's first 8 characters.
const CheckpointPrefix = "vmvault-"

// DefaultSocket is libvirtd's (or virtqemud's) read-write socket.
const DefaultSocket = "/var/run/libvirt/libvirt-sock"

// Options control one capture.
type Options struct {
	Repo *repo.Repository
	// Domain is a domain name or UUID.
	Domain string
	// VM names the restore points; "" uses the domain's name.
	VM string
	// Socket is libvirt's socket (default DefaultSocket).
	Socket string
	// Disks are the target names (vda, sdb) to capture; nil: every disk
	// that is not read-only, shareable or a CD-ROM.
	Disks []string
	// Quiesce freezes the guest's file systems through the guest agent
	// (libvirt's fsfreeze) around the start of the backup.
	Quiesce bool
	// TmpDir holds the scratch files and NBD socket (default /var/tmp);
	// a directory below it is made writable for QEMU's user.
	TmpDir   string
	Full     bool
	Tags     []string
	Log      *slog.Logger
	LockWait time.Duration
	Progress *repo.Progress
	Workers  int
	// Compression is the codec of the stored chunks ("": the repository's).
	Compression string
	// SkipFreeSpace and SkipSwap: see cbt.Options.
	SkipFreeSpace bool
	SkipSwap      bool

	// wrapReader, for tests, wraps the reader of every disk.
	wrapReader func(name string, r io.ReaderAt) io.ReaderAt
	// afterBegin, for tests, runs right after the backup began.
	afterBegin func()
}

// Connect opens a connection to libvirt's QEMU driver at socket ("":
// DefaultSocket).
func Connect(socket string) (*golibvirt.Libvirt, error) {
	if socket == "" {
		socket = DefaultSocket
	}
	l := golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(socket), dialers.WithLocalTimeout(10*time.Second)))
	if err := l.ConnectToURI(golibvirt.QEMUSystem); err != nil {
		return nil, fmt.Errorf("connect to libvirt at %s: %w", socket, err)
	}
	return l, nil
}

// LookupDomain finds a domain by UUID or name.
func LookupDomain(l *golibvirt.Libvirt, spec string) (golibvirt.Domain, error) {
	if u, err := parseUUID(spec); err == nil {
		if d, err := l.DomainLookupByUUID(u); err == nil {
			return d, nil
		}
	}
	d, err := l.DomainLookupByName(spec)
	if err != nil {
		return golibvirt.Domain{}, fmt.Errorf("libvirt domain %q: %w", spec, err)
	}
	return d, nil
}

func parseUUID(s string) (golibvirt.UUID, error) {
	var u golibvirt.UUID
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != len(u) || len(s) != 36 {
		return u, errors.New("not a UUID")
	}
	copy(u[:], b)
	return u, nil
}

func uuidString(u golibvirt.UUID) string {
	h := hex.EncodeToString(u[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// disk is one disk of a capture.
type disk struct {
	target string
	source string
	driver string
	size   int64
	prev   string // checkpoint the backup is incremental from ("" full)
	noPrev string // why full
	bitmap string // export bitmap name ("" none)
	e      *nbdsrc.Export
}

type session struct {
	o       Options
	l       *golibvirt.Libvirt
	dom     golibvirt.Domain
	log     *slog.Logger
	uuid    string
	name    string
	xml     string
	disks   []*disk
	next    string // the checkpoint this capture creates
	tmp     string
	sock    string
	began   bool
	repoTag string
}

// CaptureDomain captures a libvirt domain as a new restore point.
func CaptureDomain(ctx context.Context, o Options) (rp *repo.RestorePoint, err error) {
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	l, err := Connect(o.Socket)
	if err != nil {
		return nil, err
	}
	defer l.Disconnect()
	dom, err := LookupDomain(l, o.Domain)
	if err != nil {
		return nil, err
	}
	s := &session{o: o, l: l, dom: dom, log: log, uuid: uuidString(dom.UUID), name: dom.Name}
	vm := o.VM
	if vm == "" {
		vm = dom.Name
	}
	if err := format.ValidName("VM", vm); err != nil {
		return nil, err
	}
	s.repoTag = o.Repo.Config().ID
	if len(s.repoTag) > 8 {
		s.repoTag = s.repoTag[:8]
	}
	defer func() {
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if terr := s.teardown(tctx, err == nil); terr != nil {
			log.Error("libvirt teardown incomplete", "domain", s.name, "err", terr)
			err = errors.Join(err, terr)
		}
	}()
	if err := s.begin(ctx); err != nil {
		return nil, fmt.Errorf("capture %s: %w", vm, err)
	}
	rp, err = cbt.Capture(ctx, o.Repo, &source{s: s}, cbt.Options{
		VM: vm, Tags: o.Tags, Full: o.Full, Progress: o.Progress, LockWait: o.LockWait, Workers: o.Workers, Log: log,
		Compression:   o.Compression,
		SkipFreeSpace: o.SkipFreeSpace, SkipSwap: o.SkipSwap,
	})
	if err != nil {
		return nil, err
	}
	if perr := s.prune(context.WithoutCancel(ctx)); perr != nil {
		log.Warn("old checkpoints not pruned", "domain", s.name, "err", perr)
	}
	return rp, nil
}

// checkpoint is one checkpoint of the domain.
type checkpoint struct {
	c    golibvirt.DomainCheckpoint
	x    libvirtxml.DomainCheckpoint
	time int64
}

func (s *session) checkpoints() ([]checkpoint, error) {
	cps, _, err := s.l.DomainListAllCheckpoints(s.dom, 1, 0)
	if err != nil {
		return nil, fmt.Errorf("list checkpoints of %s: %w", s.name, err)
	}
	var out []checkpoint
	for _, c := range cps {
		x, err := s.l.DomainCheckpointGetXMLDesc(c, 0)
		if err != nil {
			return nil, fmt.Errorf("checkpoint %s of %s: %w", c.Name, s.name, err)
		}
		var cp checkpoint
		cp.c = c
		if err := cp.x.Unmarshal(x); err != nil {
			return nil, fmt.Errorf("checkpoint %s of %s: %w", c.Name, s.name, err)
		}
		fmt.Sscan(cp.x.CreationTime, &cp.time)
		out = append(out, cp)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].time != out[j].time {
			return out[i].time < out[j].time
		}
		return out[i].c.Name < out[j].c.Name
	})
	return out, nil
}

func (s *session) own(name string) bool {
	return strings.HasPrefix(name, CheckpointPrefix+s.repoTag+"-")
}

// begin reads the domain, picks the checkpoint to build on and starts the
// pull backup that creates the next one.
func (s *session) begin(ctx context.Context) error {
	var err error
	if s.xml, err = s.l.DomainGetXMLDesc(s.dom, 0); err != nil {
		return fmt.Errorf("domain XML: %w", err)
	}
	var dx libvirtxml.Domain
	if err := dx.Unmarshal(s.xml); err != nil {
		return fmt.Errorf("domain XML: %w", err)
	}
	state, _, err := s.l.DomainGetState(s.dom, 0)
	if err != nil {
		return err
	}
	if golibvirt.DomainState(state) != golibvirt.DomainRunning && golibvirt.DomainState(state) != golibvirt.DomainPaused {
		return fmt.Errorf("domain %s is not running (libvirt's backup API needs a running domain)", s.name)
	}
	if err := s.findDisks(&dx); err != nil {
		return err
	}
	cps, err := s.checkpoints()
	if err != nil {
		return err
	}
	var prev *checkpoint
	for i := range cps {
		if s.own(cps[i].c.Name) {
			prev = &cps[i]
		}
	}
	var anyOther bool
	for _, c := range cps {
		anyOther = anyOther || !s.own(c.c.Name)
	}
	for _, d := range s.disks {
		switch {
		case prev == nil && len(cps) > 0 && anyOther:
			d.noPrev = "the domain has no vmvault checkpoint of this repository (first capture, or its checkpoint metadata was lost)"
		case prev == nil:
			d.noPrev = "the domain has no vmvault checkpoint (first capture, or its checkpoint metadata was lost)"
		default:
			in := false
			if prev.x.Disks != nil {
				for _, cd := range prev.x.Disks.Disks {
					in = in || (cd.Name == d.target && cd.Checkpoint == "bitmap")
				}
			}
			if in {
				d.prev = prev.c.Name
				d.bitmap = "vmvault-" + d.target
			} else {
				d.noPrev = fmt.Sprintf("disk %s is not in checkpoint %s (added since)", d.target, prev.c.Name)
			}
		}
	}

	base := s.o.TmpDir
	if base == "" {
		base = "/var/tmp"
	}
	if s.tmp, err = os.MkdirTemp(base, "vmvault-libvirt-"); err != nil {
		return err
	}
	// QEMU runs as the owner libvirt gave the disk images: let it create
	// the scratch files and the socket here.
	if len(s.disks) > 0 {
		if fi, err := os.Stat(s.disks[0].source); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
				os.Chown(s.tmp, int(st.Uid), int(st.Gid))
			}
		}
	}
	s.sock = filepath.Join(s.tmp, "nbd.sock")
	s.next = fmt.Sprintf("%s%s-%s.%s", CheckpointPrefix, s.repoTag, time.Now().UTC().Format("20060102T150405.000Z"), randomHex(3))

	bx := libvirtxml.DomainBackup{Pull: &libvirtxml.DomainBackupPull{
		Server: &libvirtxml.DomainBackupPullServer{UNIX: &libvirtxml.DomainBackupPullServerUNIX{Socket: s.sock}},
		Disks:  &libvirtxml.DomainBackupPullDisks{},
	}}
	cx := libvirtxml.DomainCheckpoint{Name: s.next, Description: "vmvault-capture", Disks: &libvirtxml.DomainCheckpointDisks{}}
	captured := map[string]bool{}
	for _, d := range s.disks {
		captured[d.target] = true
		pd := libvirtxml.DomainBackupPullDisk{Name: d.target, Backup: "yes", ExportName: d.target,
			Scratch: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: filepath.Join(s.tmp, d.target+".scratch")}},
			Driver:  &libvirtxml.DomainBackupDiskDriver{Type: "qcow2"}}
		if d.prev != "" {
			pd.BackupMode, pd.Incremental, pd.ExportBitmap = "incremental", d.prev, d.bitmap
		} else {
			pd.BackupMode = "full"
		}
		bx.Pull.Disks.Disks = append(bx.Pull.Disks.Disks, pd)
		cx.Disks.Disks = append(cx.Disks.Disks, libvirtxml.DomainCheckpointDisk{Name: d.target, Checkpoint: "bitmap"})
	}
	for _, dd := range dx.Devices.Disks {
		if dd.Target != nil && !captured[dd.Target.Dev] {
			bx.Pull.Disks.Disks = append(bx.Pull.Disks.Disks, libvirtxml.DomainBackupPullDisk{Name: dd.Target.Dev, Backup: "no"})
			cx.Disks.Disks = append(cx.Disks.Disks, libvirtxml.DomainCheckpointDisk{Name: dd.Target.Dev, Checkpoint: "no"})
		}
	}
	bxml, err := bx.Marshal()
	if err != nil {
		return err
	}
	cxml, err := cx.Marshal()
	if err != nil {
		return err
	}
	if s.o.Quiesce {
		n, err := s.l.DomainFsfreeze(s.dom, nil, 0)
		if err != nil {
			return fmt.Errorf("--quiesce: freeze the guest's file systems: %w", err)
		}
		s.log.Info("guest file systems frozen", "domain", s.name, "count", n)
		defer func() {
			if _, err := s.l.DomainFsthaw(s.dom, nil, 0); err != nil {
				s.log.Error("guest file systems NOT thawed: run 'virsh domfsthaw'", "domain", s.name, "err", err)
				return
			}
			s.log.Info("guest file systems thawed", "domain", s.name)
		}()
	}
	if err := s.l.DomainBackupBegin(s.dom, bxml, golibvirt.OptString{cxml}, 0); err != nil {
		return fmt.Errorf("begin the pull backup of %s: %w", s.name, err)
	}
	s.began = true
	if s.o.afterBegin != nil {
		s.o.afterBegin()
	}
	for _, d := range s.disks {
		e, err := nbdsrc.Open(ctx, "nbd+unix:///"+d.target+"?socket="+s.sock, "", d.bitmap)
		if err != nil {
			return fmt.Errorf("disk %s: %w", d.target, err)
		}
		d.e = e
		d.size = e.Size()
	}
	return nil
}

// findDisks picks the disks to capture from the domain XML.
func (s *session) findDisks(dx *libvirtxml.Domain) error {
	want := map[string]bool{}
	for _, t := range s.o.Disks {
		want[t] = true
	}
	if dx.Devices == nil {
		return fmt.Errorf("domain %s has no devices", s.name)
	}
	for _, dd := range dx.Devices.Disks {
		if dd.Target == nil {
			continue
		}
		t := dd.Target.Dev
		skip := ""
		switch {
		case dd.Device != "" && dd.Device != "disk":
			skip = dd.Device
		case dd.ReadOnly != nil:
			skip = "read-only"
		case dd.Shareable != nil:
			skip = "shareable"
		case dd.Transient != nil:
			skip = "transient"
		}
		if len(want) > 0 {
			if !want[t] {
				continue
			}
			if skip != "" {
				return fmt.Errorf("disk %s of %s cannot be captured: %s", t, s.name, skip)
			}
			delete(want, t)
		} else if skip != "" {
			continue
		}
		if err := format.ValidName("disk", t); err != nil {
			return err
		}
		d := &disk{target: t}
		if dd.Driver != nil {
			d.driver = dd.Driver.Type
		}
		if dd.Source != nil {
			switch {
			case dd.Source.File != nil:
				d.source = dd.Source.File.File
			case dd.Source.Block != nil:
				d.source = dd.Source.Block.Dev
			}
		}
		s.disks = append(s.disks, d)
	}
	for t := range want {
		return fmt.Errorf("domain %s has no disk %s", s.name, t)
	}
	if len(s.disks) == 0 {
		return fmt.Errorf("domain %s has no disk to capture", s.name)
	}
	return nil
}

// teardown ends the backup job and removes the scratch directory; when
// the capture failed it deletes the new checkpoint (libvirt merges its
// bitmap into the parent).
func (s *session) teardown(ctx context.Context, ok bool) error {
	var errs []error
	for _, d := range s.disks {
		if d.e != nil {
			d.e.Close()
		}
	}
	if s.began {
		if err := s.l.DomainAbortJob(s.dom); err != nil {
			errs = append(errs, fmt.Errorf("end the backup job: %w", err))
		}
		if !ok {
			if c, err := s.l.DomainCheckpointLookupByName(s.dom, s.next, 0); err == nil {
				if err := s.l.DomainCheckpointDelete(c, 0); err != nil {
					errs = append(errs, fmt.Errorf("delete checkpoint %s of the failed capture: %w", s.next, err))
				} else {
					s.log.Info("capture failed: its checkpoint was deleted, its changes merged into the previous one", "domain", s.name, "checkpoint", s.next)
				}
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

// prune deletes this repository's checkpoints that no restore point of
// the lineage names any more, except the newest.
func (s *session) prune(ctx context.Context) error {
	rps, _, err := s.o.Repo.ListRestorePoints(ctx)
	if err != nil {
		return err
	}
	named := map[string]bool{}
	for _, rp := range rps {
		if cbt.Lineage(rp) != LineagePrefix+s.uuid {
			continue
		}
		for _, d := range rp.Disks {
			named[d.ChangeToken] = true
		}
	}
	cps, err := s.checkpoints()
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range cps {
		if !s.own(c.c.Name) || c.c.Name == s.next || named[c.c.Name] {
			continue
		}
		if err := s.l.DomainCheckpointDelete(c.c, 0); err != nil {
			errs = append(errs, fmt.Errorf("delete checkpoint %s: %w", c.c.Name, err))
			continue
		}
		s.log.Info("checkpoint deleted: no restore point names it", "domain", s.name, "checkpoint", c.c.Name)
	}
	return errors.Join(errs...)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// source is a session's disks as a cbt.Source.
type source struct{ s *session }

var _ cbt.Source = (*source)(nil)

func (src *source) disk(name string) (*disk, error) {
	for _, d := range src.s.disks {
		if d.target == name {
			return d, nil
		}
	}
	return nil, fmt.Errorf("libvirt capture has no disk %q", name)
}

// Describe implements cbt.Source.
func (src *source) Describe(context.Context) (*cbt.Description, error) {
	s := src.s
	cfg, err := configJSON(s)
	if err != nil {
		return nil, err
	}
	desc := &cbt.Description{Lineage: LineagePrefix + s.uuid, Source: "libvirt", Config: cfg,
		Labels: map[string]string{"libvirt.domain": s.name, "libvirt.uuid": s.uuid}}
	for _, d := range s.disks {
		desc.Disks = append(desc.Disks, cbt.Disk{Name: d.target, Size: d.size, ChangeToken: s.next})
	}
	return desc, nil
}

// Open implements cbt.Source.
func (src *source) Open(_ context.Context, cd cbt.Disk) (io.ReaderAt, error) {
	d, err := src.disk(cd.Name)
	if err != nil {
		return nil, err
	}
	if w := src.s.o.wrapReader; w != nil {
		return w(d.target, d.e), nil
	}
	return d.e, nil
}

// DataRanges implements cbt.Source with base:allocation.
func (src *source) DataRanges(ctx context.Context, cd cbt.Disk) ([]extent.Range, error) {
	d, err := src.disk(cd.Name)
	if err != nil {
		return nil, err
	}
	return d.e.DataRanges(ctx)
}

// ChangedRanges implements cbt.Source: the blocks changed since the
// checkpoint the backup is incremental from, when base recorded it.
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
		return nil, cbt.NoChangeInfo("restore point %s recorded no checkpoint for this disk", base.RestorePoint.ID.Short())
	case tok != d.prev:
		return nil, cbt.NoChangeInfo("the domain's newest vmvault checkpoint is %s, restore point %s recorded %s", d.prev, base.RestorePoint.ID.Short(), tok)
	}
	return d.e.DirtyRanges(ctx)
}

// Config is the VM configuration stored with a libvirt restore point: a
// summary, and the domain XML as libvirt gave it.
type Config struct {
	Type        string       `json:"type"` // "libvirt"
	Name        string       `json:"name"`
	UUID        string       `json:"uuid"`
	DomainType  string       `json:"domain_type,omitempty"`
	Machine     string       `json:"machine,omitempty"`
	Arch        string       `json:"arch,omitempty"`
	Firmware    string       `json:"firmware,omitempty"`
	CPUs        uint         `json:"cpus,omitempty"`
	MemoryBytes uint64       `json:"memory_bytes,omitempty"`
	Disks       []ConfigDisk `json:"disks"`
	NICs        []string     `json:"nics,omitempty"`
	DomainXML   string       `json:"domain_xml"`
}

// ConfigDisk is one captured disk in Config.
type ConfigDisk struct {
	Target string `json:"target"`
	Bus    string `json:"bus,omitempty"`
	Driver string `json:"driver,omitempty"`
	Source string `json:"source,omitempty"`
	Size   int64  `json:"size"`
}

func configJSON(s *session) (json.RawMessage, error) {
	var dx libvirtxml.Domain
	if err := dx.Unmarshal(s.xml); err != nil {
		return nil, err
	}
	c := Config{Type: "libvirt", Name: s.name, UUID: s.uuid, DomainType: dx.Type, DomainXML: s.xml}
	if dx.OS != nil && dx.OS.Type != nil {
		c.Machine, c.Arch = dx.OS.Type.Machine, dx.OS.Type.Arch
		c.Firmware = dx.OS.Firmware
		if c.Firmware == "" && dx.OS.Loader != nil {
			c.Firmware = "uefi"
		}
		if c.Firmware == "" {
			c.Firmware = "bios"
		}
	}
	if dx.VCPU != nil {
		c.CPUs = dx.VCPU.Value
	}
	if dx.Memory != nil {
		c.MemoryBytes = memBytes(dx.Memory.Value, dx.Memory.Unit)
	}
	for _, d := range s.disks {
		cd := ConfigDisk{Target: d.target, Driver: d.driver, Source: d.source, Size: d.size}
		for _, dd := range dx.Devices.Disks {
			if dd.Target != nil && dd.Target.Dev == d.target {
				cd.Bus = dd.Target.Bus
			}
		}
		c.Disks = append(c.Disks, cd)
	}
	for _, n := range dx.Devices.Interfaces {
		desc := ""
		if n.Model != nil {
			desc = n.Model.Type
		}
		if n.MAC != nil {
			desc += " " + n.MAC.Address
		}
		c.NICs = append(c.NICs, strings.TrimSpace(desc))
	}
	return json.Marshal(c)
}

func memBytes(v uint, unit string) uint64 {
	m := map[string]uint64{"": 1 << 10, "KiB": 1 << 10, "k": 1 << 10, "K": 1 << 10, "b": 1, "bytes": 1,
		"MiB": 1 << 20, "M": 1 << 20, "GiB": 1 << 30, "G": 1 << 30, "KB": 1000, "MB": 1e6, "GB": 1e9}
	return uint64(v) * m[unit]
}

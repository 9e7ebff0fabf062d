package vsphere

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"

	"github.com/vmvault/vmvault/nbd/client"
)

// Transport reads a snapshot's disk.
type Transport interface {
	Name() string
	Open(ctx context.Context, s *Snapshot, d DiskInfo) (DiskReader, error)
}

// DiskReader is an open snapshot disk.
type DiskReader interface {
	io.ReaderAt
	io.Closer
}

// splitDatastorePath parses "[datastore] dir/file.vmdk".
func splitDatastorePath(p string) (ds, rel string, err error) {
	if !strings.HasPrefix(p, "[") {
		return "", "", fmt.Errorf("datastore path %q has no [datastore]", p)
	}
	ds, rel, ok := strings.Cut(p[1:], "] ")
	if !ok || ds == "" || rel == "" {
		return "", "", fmt.Errorf("datastore path %q is malformed", p)
	}
	return ds, rel, nil
}

// flatName is the data file of a flat disk: x.vmdk is the descriptor,
// x-flat.vmdk the bytes.
func flatName(rel string) string {
	return strings.TrimSuffix(rel, ".vmdk") + "-flat.vmdk"
}

// Counter counts the bytes a transport read (for the summary and tests);
// a transport without one counts nothing. Transports are used by parallel
// captures, so they never change after construction.
type Counter struct{ n atomic.Int64 }

// Bytes returns the count.
func (c *Counter) Bytes() int64 {
	if c == nil {
		return 0
	}
	return c.n.Load()
}

type counted struct {
	DiskReader
	c *Counter
}

func (r counted) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.DiskReader.ReadAt(p, off)
	if r.c != nil {
		r.c.n.Add(int64(n))
	}
	return n, err
}

// Direct reads the snapshot's frozen base file from a datastore mounted on
// this host (an NFS datastore), mapped by name to a local directory.
type Direct struct {
	Map   map[string]string // datastore name → local directory
	Count *Counter
}

// Name implements Transport.
func (t *Direct) Name() string { return "direct" }

// Open implements Transport.
func (t *Direct) Open(ctx context.Context, s *Snapshot, d DiskInfo) (DiskReader, error) {
	ds, rel, err := splitDatastorePath(d.File)
	if err != nil {
		return nil, err
	}
	dir, ok := t.Map[ds]
	if !ok {
		return nil, fmt.Errorf("datastore %s is not mapped to a local directory (--datastore-map %s=DIR)", ds, ds)
	}
	clean := filepath.Clean("/" + flatName(rel))
	f, err := os.Open(filepath.Join(dir, clean))
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", d.Name, err)
	}
	return zeroPad{counted{f, t.Count}, d.Capacity}, nil
}

// zeroPad reads a thin file shorter than the disk as zeros past its end.
type zeroPad struct {
	DiskReader
	size int64
}

func (z zeroPad) ReadAt(p []byte, off int64) (int, error) {
	n, err := z.DiskReader.ReadAt(p, off)
	if errors.Is(err, io.EOF) && off+int64(len(p)) <= z.size {
		clear(p[n:])
		return len(p), nil
	}
	return n, err
}

// HTTPS reads the snapshot's disk file through the host's datastore
// /folder HTTP interface with Range requests. It is meant for powered-off
// VMs (a running VM's files are locked on real ESXi) and for the simulator.
type HTTPS struct {
	Client *vim25.Client
	Count  *Counter
}

// Name implements Transport.
func (t *HTTPS) Name() string { return "https" }

// Open implements Transport.
func (t *HTTPS) Open(ctx context.Context, s *Snapshot, d DiskInfo) (DiskReader, error) {
	dsName, rel, err := splitDatastorePath(d.File)
	if err != nil {
		return nil, err
	}
	f := find.NewFinder(t.Client)
	if dc, err := f.DefaultDatacenter(ctx); err == nil {
		f.SetDatacenter(dc)
	}
	ds, err := f.Datastore(ctx, dsName)
	if err != nil {
		return nil, fmt.Errorf("datastore %s: %w", dsName, err)
	}
	return counted{&httpDisk{c: t.Client, ds: ds, rel: flatName(rel), size: d.Capacity}, t.Count}, nil
}

type httpDisk struct {
	c    *vim25.Client
	ds   *object.Datastore
	rel  string
	size int64
}

func (h *httpDisk) ReadAt(p []byte, off int64) (int, error) {
	if off >= h.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), h.size-off)
	u := h.ds.NewURL(h.rel)
	res, err := h.c.DownloadRequest(context.Background(), u, &soap.Download{
		Method:  http.MethodGet,
		Headers: map[string]string{"Range": fmt.Sprintf("bytes=%d-%d", off, off+want-1)},
	})
	if err != nil {
		return 0, fmt.Errorf("GET %s [%d,+%d): %w", h.rel, off, want, err)
	}
	defer res.Body.Close()
	switch res.StatusCode {
	case http.StatusPartialContent, http.StatusOK:
	case http.StatusRequestedRangeNotSatisfiable:
		// a thin file shorter than the disk: the rest reads as zeros
		clear(p[:want])
		return finish(int(want), len(p))
	default:
		return 0, fmt.Errorf("GET %s [%d,+%d): %s", h.rel, off, want, res.Status)
	}
	if res.StatusCode == http.StatusOK && off > 0 {
		return 0, fmt.Errorf("GET %s: the server ignored the Range header", h.rel)
	}
	n, err := io.ReadFull(res.Body, p[:want])
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		clear(p[n:want]) // short file: zeros
		n, err = int(want), nil
	}
	if err != nil {
		return n, fmt.Errorf("GET %s [%d,+%d): %w", h.rel, off, want, err)
	}
	return finish(n, len(p))
}

func finish(n, asked int) (int, error) {
	if n < asked {
		return n, io.EOF
	}
	return n, nil
}

func (h *httpDisk) Close() error { return nil }

// NBD reads each snapshot disk from an NBD server that a data mover
// command starts for it — typically nbdkit's vddk plugin with the user's
// own VDDK:
//
//	nbdkit -U {socket} --exit-with-parent vddk libdir=/opt/vmware-vix-disklib-distrib \
//	    server=vcenter.example.com user=backup@vsphere.local password=+/etc/vmvault/vc-password \
//	    thumbprint=AA:BB:… vm=moref={vm} snapshot={snapshot} file={file} transports=nbdssl:nbd
//
// Command is run with sh -c after substituting, shell-quoted, {socket} (a
// unix socket path the server must listen on), {vm} and {snapshot}
// (MoRefs), {file} ("[datastore] dir/disk.vmdk"), {datastore}, {path}
// (dir/disk.vmdk) and {flat} (dir/disk-flat.vmdk). The export name is
// Export ("" by default). The server is stopped when the disk is closed.
type NBD struct {
	Command string
	Export  string
	Dir     string // where sockets go (default os.TempDir())
	Count   *Counter
}

// Name implements Transport.
func (t *NBD) Name() string { return "nbd" }

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Open implements Transport.
func (t *NBD) Open(ctx context.Context, s *Snapshot, d DiskInfo) (DiskReader, error) {
	ds, rel, err := splitDatastorePath(d.File)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(t.Dir, "vmvault-nbd-")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "nbd.sock")
	cmdline := strings.NewReplacer(
		"{socket}", shellQuote(sock), "{vm}", shellQuote(s.VM.Reference().Value),
		"{snapshot}", shellQuote(s.Ref.Value), "{file}", shellQuote(d.File),
		"{datastore}", shellQuote(ds), "{path}", shellQuote(rel), "{flat}", shellQuote(flatName(rel)),
	).Replace(t.Command)
	cmd := exec.Command("sh", "-c", "exec "+cmdline)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start NBD server for disk %s: %w", d.Name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		os.RemoveAll(dir)
	}
	uri := "nbd+unix:///" + url.PathEscape(t.Export) + "?socket=" + url.QueryEscape(sock)
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := client.Dial(ctx, uri, client.Options{})
		if err == nil {
			if c.Size() < d.Capacity {
				c.Close()
				stop()
				return nil, fmt.Errorf("NBD export for disk %s has %d bytes, the disk %d", d.Name, c.Size(), d.Capacity)
			}
			return counted{&nbdDisk{c: c, stop: stop}, t.Count}, nil
		}
		select {
		case werr := <-exited:
			os.RemoveAll(dir)
			return nil, fmt.Errorf("NBD server for disk %s exited: %v", d.Name, werr)
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("NBD server for disk %s: %w", d.Name, err)
		}
	}
}

type nbdDisk struct {
	c    *client.Client
	stop func()
}

func (n *nbdDisk) ReadAt(p []byte, off int64) (int, error) { return n.c.ReadAt(p, off) }

func (n *nbdDisk) Close() error {
	err := n.c.Close()
	n.stop()
	return err
}

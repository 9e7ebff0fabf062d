package vsphere

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"
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

// Counter counts the bytes a transport read (for the summary and tests).
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
	r.c.n.Add(int64(n))
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
	return zeroPad{counted{f, t.counter()}, d.Capacity}, nil
}

func (t *Direct) counter() *Counter {
	if t.Count == nil {
		t.Count = &Counter{}
	}
	return t.Count
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
	if t.Count == nil {
		t.Count = &Counter{}
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

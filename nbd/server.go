// Package nbd serves block devices over the Network Block Device protocol
// (NetworkBlockDevice/nbd doc/proto.md): fixed newstyle handshake with
// EXPORT_NAME, INFO/GO (with block sizes), LIST, ABORT, STARTTLS,
// STRUCTURED_REPLY and the base:allocation meta context; READ, WRITE,
// FLUSH, TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS and DISC in transmission.
//
// Invariants:
//   - Every request is validated (magic, flags, command, range, size,
//     export mode) before any byte of its reply is written, and a failed
//     request is answered with an NBD error for that request alone: the
//     connection stays open. A refused WRITE is answered before its
//     payload is read; the payload (at most MaxBlockSize) is then skipped
//     without being buffered. Only a broken stream (bad magic, short read)
//     or a WRITE longer than MaxBlockSize (which the protocol forbids
//     clients to send) ends a connection, the latter right after its error
//     reply and without reading its payload.
//   - No allocation is driven by a length the client sent before it is
//     checked against MaxBlockSize; payload buffers (or, for devices that
//     lend their bytes, see SliceReader, the cached data pinned for a
//     reply) come from a per-connection share (MaxBlockSize) of a
//     server-wide byte budget, so memory stays bounded whatever clients
//     do, and a client that stops reading its replies holds its share for
//     at most writeTimeout.
//   - Requests on one connection run concurrently and may complete out of
//     order; all socket writes of one reply are serialised under one lock.
//   - A read's data is fully read from the device before its reply starts,
//     so a device error becomes an error reply, never a torn one.
//
// The server knows nothing about repositories: a Catalog names exports and
// opens Devices (see catalog.go for the repository-backed one, which makes
// exports writable through nbd/overlay). The wire format lives in
// nbd/proto, shared with the client in nbd/client; neither of those nor
// nbd/overlay imports this package, so capture code reads NBD exports and
// overlays without pulling in the server.
package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/vmvault/vmvault/repo/bufpool"
)

// Block size constraints advertised with NBD_INFO_BLOCK_SIZE.
const (
	MinBlockSize       = 1
	PreferredBlockSize = 4096
	MaxBlockSize       = 32 << 20
)

// Server serves the exports of a Catalog. Configure the fields, then call
// Serve for each listener; Shutdown ends it.
type Server struct {
	Catalog Catalog
	// TLSConfig enables NBD_OPT_STARTTLS; nil refuses it.
	TLSConfig *tls.Config
	// RequireTLS refuses every option but STARTTLS and ABORT before TLS.
	RequireTLS bool
	// Logger gets one line per connection and one per failed request.
	Logger *slog.Logger
	// MaxInflight bounds concurrent requests per connection (default 64).
	MaxInflight int
	// BufferBudget bounds the payload bytes of all in-flight requests of
	// all connections together, lent reads included (default 64 MiB, at
	// least MaxBlockSize).
	BufferBudget int64
	// ReadAhead is the window prefetched ahead of a sequential reader
	// (default 8 MiB; negative disables).
	ReadAhead int64

	once      sync.Once
	budget    *semaphore.Weighted
	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	shutdown  bool
	wg        sync.WaitGroup
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

func (s *Server) init() {
	s.once.Do(func() {
		if s.MaxInflight <= 0 {
			s.MaxInflight = 64
		}
		if s.BufferBudget < MaxBlockSize {
			s.BufferBudget = max(64<<20, MaxBlockSize)
		}
		if s.ReadAhead == 0 {
			s.ReadAhead = 8 << 20
		}
		if s.Logger == nil {
			s.Logger = slog.New(slog.DiscardHandler)
		}
		s.budget = semaphore.NewWeighted(s.BufferBudget)
		s.listeners = map[net.Listener]struct{}{}
		s.conns = map[*conn]struct{}{}
	})
}

// Serve accepts connections on ln until Shutdown or an accept error.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			down := s.shutdown
			s.mu.Unlock()
			if down {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("nbd: accept on %s: %w", ln.Addr(), err)
		}
		c := s.newConn(nc)
		s.mu.Lock()
		if s.shutdown {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			c.serve()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// ServeConn serves one already accepted connection and returns when it ends
// (used by tests and fuzzing; Serve is the normal entry).
func (s *Server) ServeConn(nc net.Conn) {
	s.init()
	s.newConn(nc).serve()
}

// Shutdown stops accepting, lets every connection finish the requests it
// has read (new ones are not read), then closes them. If ctx ends first,
// the remaining connections are closed hard.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.stop()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.raw.Close()
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

// payloads recycles request and reply payload buffers (writes, and reads
// from devices that cannot lend their bytes). It outlives
// garbage collections (see bufpool), which run often when the chunk cache
// fills the heap up to the memory limit.
var payloads = bufpool.New(4 << 20)

// stats are one connection's counters, logged when it ends.
type stats struct {
	requests, failed       atomic.Int64
	bytesRead, bytesWrote  atomic.Int64
	bytesZeroed, bytesTrim atomic.Int64
}

// errStopped ends a connection that Shutdown asked to stop.
var errStopped = errors.New("server shutting down")

func (s *Server) newConn(nc net.Conn) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	client := nc.RemoteAddr().String()
	if nc.LocalAddr().Network() == "unix" { // unix socket peers have no useful address
		client = "unix:" + nc.LocalAddr().String()
	}
	return &conn{
		s: s, nc: nc, raw: nc, br: bufio.NewReaderSize(nc, 64<<10), bw: bufio.NewWriterSize(nc, 64<<10),
		ctx: ctx, cancel: cancel, sem: make(chan struct{}, s.MaxInflight), start: time.Now(),
		budget: semaphore.NewWeighted(MaxBlockSize),
		log:    s.Logger.With("client", client),
	}
}

// conn is one client connection.
type conn struct {
	s      *Server
	raw    net.Conn // the accepted socket: deadlines and hard close
	nc     net.Conn // what requests are read from (raw, or TLS over it)
	br     *bufio.Reader
	ctx    context.Context
	cancel context.CancelFunc
	start  time.Time
	log    *slog.Logger

	stopping atomic.Bool

	// Negotiated in the handshake.
	tls        bool
	structured bool
	metaExport *string // export name base:allocation was selected for
	exp        *Export
	flags      uint16

	// Transmission.
	sem      chan struct{}
	budget   *semaphore.Weighted // this connection's share of payload bytes
	inflight sync.WaitGroup
	wmu      sync.Mutex
	bw       *bufio.Writer
	waiting  atomic.Int32
	werr     error
	st       stats

	raMu     sync.Mutex
	raLast   int64 // end of the last read
	raSeq    int   // consecutive sequential reads
	raIssued int64 // prefetched up to here
	raBusy   bool
}

// stop makes the connection stop reading new requests.
func (c *conn) stop() {
	c.stopping.Store(true)
	c.raw.SetReadDeadline(time.Now())
}

func (c *conn) serve() {
	defer c.raw.Close()
	defer c.cancel()
	err := c.handshake()
	if err == nil && c.exp != nil {
		err = c.transmit()
	}
	if c.exp != nil {
		if cerr := c.exp.Close(); cerr != nil {
			c.log.Error("close export", "err", cerr) // c.log names the export
		}
	}
	if c.stopping.Load() || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = nil
	}
	attrs := []any{"tls", c.tls, "requests", c.st.requests.Load(), "failed", c.st.failed.Load(),
		"bytes_read", c.st.bytesRead.Load(), "bytes_written", c.st.bytesWrote.Load(),
		"duration", time.Since(c.start).Round(time.Millisecond).String()}
	if err != nil {
		attrs = append(attrs, "err", err.Error())
	}
	c.log.Info("connection closed", attrs...)
}

package s3test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Fault is what the proxy does to one request instead of passing it on.
type Fault int

// The faults a Proxy injects.
const (
	// Unavailable answers 503 SlowDown without asking the server.
	Unavailable Fault = iota + 1
	// InternalError answers 500 InternalError without asking the server.
	InternalError
	// Reset closes the client's connection with a TCP reset before
	// answering.
	Reset
	// Hang answers nothing until the client gives up (or a minute
	// passes, then it resets).
	Hang
	// CutBody passes the request on, sends the answer's headers and
	// half its body, then drops the connection.
	CutBody
)

func (f Fault) String() string {
	switch f {
	case Unavailable:
		return "503"
	case InternalError:
		return "500"
	case Reset:
		return "reset"
	case Hang:
		return "hang"
	case CutBody:
		return "cut body"
	}
	return fmt.Sprintf("Fault(%d)", int(f))
}

// hangLimit bounds a Hang, so that a test whose client never gives up
// still ends.
const hangLimit = time.Minute

// Proxy is an HTTP proxy in front of an S3 server that injects faults
// into the requests it forwards, and delays each by a latency. Requests
// keep their Host header, so their signatures stay valid.
type Proxy struct {
	Addr string // 127.0.0.1:PORT to point clients at

	target string
	srv    *http.Server
	tr     *http.Transport

	mu      sync.Mutex
	faults  []planned
	latency time.Duration

	requests atomic.Int64
	injected atomic.Int64
}

type planned struct {
	f      Fault
	method string // "" any
}

// NewProxy starts a proxy to the server at target (HOST:PORT), stopped
// when t ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: l.Addr().String(), target: target,
		tr: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true, ResponseHeaderTimeout: 2 * time.Minute}}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 30 * time.Second}
	go func() { _ = p.srv.Serve(l) }()
	t.Cleanup(func() {
		_ = p.srv.Close()
		p.tr.CloseIdleConnections()
	})
	return p
}

// Inject plans faults for the next requests, one each, in order, after
// those planned before.
func (p *Proxy) Inject(faults ...Fault) { p.InjectFor("", faults...) }

// InjectFor is Inject for requests of one HTTP method only ("GET",
// "PUT", "HEAD", "DELETE"); others pass.
func (p *Proxy) InjectFor(method string, faults ...Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range faults {
		p.faults = append(p.faults, planned{f, method})
	}
}

// SetLatency delays every request by d before it is passed on.
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// Requests counts the requests the proxy received.
func (p *Proxy) Requests() int64 { return p.requests.Load() }

// Injected counts the faults injected so far.
func (p *Proxy) Injected() int64 { return p.injected.Load() }

// Pending counts the planned faults not injected yet.
func (p *Proxy) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.faults)
}

func (p *Proxy) next(method string) (Fault, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, pl := range p.faults {
		if pl.method == "" || pl.method == method {
			p.faults = append(p.faults[:i], p.faults[i+1:]...)
			return pl.f, p.latency
		}
	}
	return 0, p.latency
}

// hopHeaders are not passed on (RFC 9110 section 7.6.1).
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Upgrade"}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.requests.Add(1)
	fault, latency := p.next(r.Method)
	if latency > 0 {
		select {
		case <-time.After(latency):
		case <-r.Context().Done():
			return
		}
	}
	if fault != 0 {
		p.injected.Add(1)
	}
	switch fault {
	case Unavailable, InternalError:
		_, _ = io.Copy(io.Discard, r.Body)
		code, status := "SlowDown", http.StatusServiceUnavailable
		if fault == InternalError {
			code, status = "InternalError", http.StatusInternalServerError
		}
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(status)
		fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>injected by the test proxy</Message></Error>`, code)
		return
	case Reset:
		reset(w)
		return
	case Hang:
		select {
		case <-r.Context().Done():
		case <-time.After(hangLimit):
		}
		reset(w)
		return
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, "http://"+p.target+r.URL.RequestURI(), r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = r.Header.Clone()
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	out.Host = r.Host
	out.ContentLength = r.ContentLength
	if r.ContentLength == 0 {
		out.Body = nil
	}
	resp, err := p.tr.RoundTrip(out)
	if err != nil {
		reset(w)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	for _, h := range hopHeaders {
		w.Header().Del(h)
	}
	w.WriteHeader(resp.StatusCode)
	if fault == CutBody && resp.ContentLength > 0 {
		_, _ = io.CopyN(w, resp.Body, resp.ContentLength/2)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler) // net/http drops the connection without a complete answer
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		panic(http.ErrAbortHandler) // the server's answer broke off: so does ours
	}
}

// reset closes the connection under w with a TCP reset.
func reset(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// fakeAgent speaks the guest agent protocol on a unix socket the way
// qemu-ga does (0xFF before the guest-sync-delimited answer, one JSON
// answer per command) and records the commands it ran. No guest here
// runs qemu-ga (the test guests are busybox), so --quiesce is tested
// against this fake.
type fakeAgent struct {
	sock     string
	mu       sync.Mutex
	log      []string
	frozen   bool
	failNext string // command to answer with an error once
}

func startFakeAgent(t *testing.T) *fakeAgent {
	a := &fakeAgent{sock: filepath.Join(t.TempDir(), "qga.sock")}
	l, err := net.Listen("unix", a.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go a.serve(c)
		}
	}()
	return a
}

func (a *fakeAgent) record(s string) {
	a.mu.Lock()
	a.log = append(a.log, s)
	a.mu.Unlock()
}

func (a *fakeAgent) events() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return strings.Join(a.log, " ")
}

func (a *fakeAgent) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	// stale output from an earlier client, which sync must skip
	io.WriteString(c, `{"return": 12345}`+"\n")
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return
		}
		line = []byte(strings.TrimLeft(string(line), "\xff"))
		var req struct {
			Execute   string                     `json:"execute"`
			Arguments map[string]json.RawMessage `json:"arguments"`
		}
		if err := json.Unmarshal(line, &req); err != nil {
			io.WriteString(c, `{"error": {"class": "GenericError", "desc": "bad JSON"}}`+"\n")
			continue
		}
		a.mu.Lock()
		fail := a.failNext == req.Execute
		if fail {
			a.failNext = ""
		}
		a.mu.Unlock()
		if fail {
			a.record(req.Execute + ":error")
			io.WriteString(c, `{"error": {"class": "GenericError", "desc": "injected"}}`+"\n")
			continue
		}
		switch req.Execute {
		case "guest-sync-delimited":
			fmt.Fprintf(c, "\xff{\"return\": %s}\n", req.Arguments["id"])
		case "guest-fsfreeze-status":
			st := "thawed"
			if a.frozen {
				st = "frozen"
			}
			fmt.Fprintf(c, "{\"return\": %q}\n", st)
		case "guest-fsfreeze-freeze":
			a.frozen = true
			a.record("freeze")
			io.WriteString(c, `{"return": 2}`+"\n")
		case "guest-fsfreeze-thaw":
			a.frozen = false
			a.record("thaw")
			io.WriteString(c, `{"return": 2}`+"\n")
		default:
			io.WriteString(c, `{"error": {"class": "CommandNotFound", "desc": "no"}}`+"\n")
		}
	}
}

// TestQuiesce: with an agent the guest is frozen right before the
// transaction and thawed right after it — also when the capture is
// interrupted at that moment; a failing freeze fails the capture before
// anything is created in QEMU.
func TestQuiesce(t *testing.T) {
	e := newEnv(t)
	v := startVM(t, e.dir, newDisk(t, e.dir, "vd0", "qcow2", 8<<20, 1))
	a := startFakeAgent(t)
	o := e.opts(v)
	o.Agent = "unix:" + a.sock
	o.afterTransaction = func() { a.record("transaction") }
	if _, err := CaptureVM(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if got := a.events(); got != "freeze transaction thaw" {
		t.Errorf("agent saw %q, want freeze, transaction, thaw", got)
	}
	v.clean(e.tmp)

	a.log = nil
	ctx, cancel := context.WithCancel(context.Background())
	o.afterTransaction = func() { a.record("transaction"); cancel() }
	if _, err := CaptureVM(ctx, o); err == nil {
		t.Fatal("an interrupted capture succeeded")
	}
	if got := a.events(); got != "freeze transaction thaw" || a.frozen {
		t.Errorf("interrupted capture: agent saw %q (frozen %v), want the guest thawed", got, a.frozen)
	}
	v.clean(e.tmp)

	a.log = nil
	a.failNext = "guest-fsfreeze-freeze"
	o.afterTransaction = func() { a.record("transaction") }
	if _, err := CaptureVM(context.Background(), o); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("capture with a failing freeze: %v", err)
	}
	if got := a.events(); got != "guest-fsfreeze-freeze:error thaw" {
		t.Errorf("failing freeze: agent saw %q, want a thaw after the failed freeze and no transaction", got)
	}
	v.clean(e.tmp)
}

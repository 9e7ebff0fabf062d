package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Monitor is a QMP connection to qemu-system-* or qemu-storage-daemon.
// Execute and Expect are safe for concurrent use.
type Monitor struct {
	conn net.Conn

	wmu sync.Mutex // one command line at a time on the wire

	mu      sync.Mutex
	next    int
	pending map[string]chan qmpReply
	waiters []*EventWaiter
	err     error
	done    chan struct{}
}

// Error is an error QMP answered a command with.
type Error struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *Error) Error() string { return fmt.Sprintf("QMP %s: %s: %s", e.Command, e.Class, e.Desc) }

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
}

// Event is an asynchronous QMP event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

// EventWaiter waits for one event; register it (Expect) before the
// command that causes the event, so the event cannot be missed.
type EventWaiter struct {
	name  string
	match func(json.RawMessage) bool
	ch    chan Event
}

// maxQMPLine bounds one QMP message (query answers of a VM with many
// nodes stay far below it).
const maxQMPLine = 64 << 20

// DialMonitor connects to a QMP monitor at addr: unix:PATH, a path, or
// tcp:HOST:PORT; it reads the greeting and enters command mode.
func DialMonitor(ctx context.Context, addr string) (*Monitor, error) {
	network, address := "unix", strings.TrimPrefix(addr, "unix:")
	if a, ok := strings.CutPrefix(addr, "tcp:"); ok {
		network, address = "tcp", a
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("connect to QMP monitor %s: %w", addr, err)
	}
	m := &Monitor{conn: conn, pending: map[string]chan qmpReply{}, done: make(chan struct{})}
	br := bufio.NewReaderSize(conn, 64<<10)
	if dl, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(dl)
	} else {
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	}
	line, err := readLine(br)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("QMP monitor %s: greeting: %w", addr, err)
	}
	var greet struct {
		QMP *struct {
			Version json.RawMessage `json:"version"`
		} `json:"QMP"`
	}
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("QMP monitor %s: not a QMP greeting: %.100q", addr, line)
	}
	conn.SetReadDeadline(time.Time{})
	go m.readLoop(br)
	if err := m.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		m.Close()
		return nil, fmt.Errorf("QMP monitor %s: %w", addr, err)
	}
	return m, nil
}

func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		part, isPrefix, err := br.ReadLine()
		if err != nil {
			return nil, err
		}
		line = append(line, part...)
		if len(line) > maxQMPLine {
			return nil, fmt.Errorf("QMP message longer than %d bytes", maxQMPLine)
		}
		if !isPrefix {
			return line, nil
		}
	}
}

// Close disconnects.
func (m *Monitor) Close() error {
	err := m.conn.Close()
	<-m.done
	return err
}

func (m *Monitor) fail(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err == nil {
		m.err = err
	}
	for id, ch := range m.pending {
		close(ch)
		delete(m.pending, id)
	}
}

func (m *Monitor) readLoop(br *bufio.Reader) {
	defer close(m.done)
	for {
		line, err := readLine(br)
		if err != nil {
			m.fail(fmt.Errorf("QMP connection: %w", err))
			return
		}
		var msg struct {
			ID json.RawMessage `json:"id"`
			qmpReply
			Event
		}
		if err := json.Unmarshal(line, &msg); err != nil {
			m.fail(fmt.Errorf("QMP: malformed message %.100q: %w", line, err))
			return
		}
		if msg.Name != "" {
			m.dispatch(msg.Event)
			continue
		}
		var id string
		if json.Unmarshal(msg.ID, &id) != nil {
			continue // a reply to no command of ours
		}
		m.mu.Lock()
		ch := m.pending[id]
		delete(m.pending, id)
		m.mu.Unlock()
		if ch != nil {
			ch <- msg.qmpReply
		}
	}
}

func (m *Monitor) dispatch(ev Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	kept := m.waiters[:0]
	for _, w := range m.waiters {
		if w.name == ev.Name && (w.match == nil || w.match(ev.Data)) {
			w.ch <- ev
			continue
		}
		kept = append(kept, w)
	}
	m.waiters = kept
}

// Expect registers a waiter for the next event name whose data match
// accepts (nil: any).
func (m *Monitor) Expect(name string, match func(data json.RawMessage) bool) *EventWaiter {
	w := &EventWaiter{name: name, match: match, ch: make(chan Event, 1)}
	m.mu.Lock()
	m.waiters = append(m.waiters, w)
	m.mu.Unlock()
	return w
}

// Wait returns the event, or fails when ctx ends or the connection does.
func (w *EventWaiter) Wait(ctx context.Context, m *Monitor) (Event, error) {
	select {
	case ev := <-w.ch:
		return ev, nil
	case <-ctx.Done():
		m.forget(w)
		return Event{}, fmt.Errorf("waiting for QMP event %s: %w", w.name, ctx.Err())
	case <-m.done:
		return Event{}, fmt.Errorf("waiting for QMP event %s: %w", w.name, m.connErr())
	}
}

func (m *Monitor) forget(w *EventWaiter) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, x := range m.waiters {
		if x == w {
			m.waiters = append(m.waiters[:i], m.waiters[i+1:]...)
			return
		}
	}
}

func (m *Monitor) connErr() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err == nil {
		return errors.New("QMP connection closed")
	}
	return m.err
}

// Execute runs a QMP command with arguments args (nil: none) and decodes
// its answer into result (nil: ignored).
func (m *Monitor) Execute(ctx context.Context, cmd string, args, result any) error {
	m.mu.Lock()
	if m.err != nil {
		m.mu.Unlock()
		return fmt.Errorf("QMP %s: %w", cmd, m.err)
	}
	m.next++
	id := "vmvault-" + strconv.Itoa(m.next)
	ch := make(chan qmpReply, 1)
	m.pending[id] = ch
	m.mu.Unlock()
	req := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("QMP %s: %w", cmd, err)
	}
	m.wmu.Lock()
	_, err = m.conn.Write(append(b, '\n'))
	m.wmu.Unlock()
	if err != nil {
		m.fail(err)
		return fmt.Errorf("QMP %s: %w", cmd, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return fmt.Errorf("QMP %s: %w", cmd, m.connErr())
		}
		if r.Error != nil {
			r.Error.Command = cmd
			return r.Error
		}
		if result != nil {
			if err := json.Unmarshal(r.Return, result); err != nil {
				return fmt.Errorf("QMP %s: answer %.200q: %w", cmd, r.Return, err)
			}
		}
		return nil
	case <-ctx.Done():
		m.mu.Lock()
		delete(m.pending, id)
		m.mu.Unlock()
		return fmt.Errorf("QMP %s: %w", cmd, ctx.Err())
	}
}

// IsCommandNotFound reports whether err is QMP's answer to a command the
// process does not have (qemu-storage-daemon lacks the VM queries).
func IsCommandNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Class == "CommandNotFound"
}

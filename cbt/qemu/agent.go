package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"time"
)

// Agent is a connection to the QEMU guest agent (qemu-ga) through the
// host side of its virtio-serial channel (a unix socket chardev). One
// command at a time.
type Agent struct {
	conn net.Conn
	br   *bufio.Reader
}

// DialAgent connects to the guest agent socket at addr (unix:PATH or a
// path) and synchronizes with guest-sync-delimited, so that answers left
// over from an earlier client are skipped.
func DialAgent(ctx context.Context, addr string) (*Agent, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", strings.TrimPrefix(addr, "unix:"))
	if err != nil {
		return nil, fmt.Errorf("connect to guest agent %s: %w", addr, err)
	}
	a := &Agent{conn: conn, br: bufio.NewReaderSize(conn, 64<<10)}
	if err := a.sync(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("guest agent %s: %w", addr, err)
	}
	return a, nil
}

// Close disconnects.
func (a *Agent) Close() error { return a.conn.Close() }

func (a *Agent) deadline(ctx context.Context) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(30 * time.Second)
	}
	a.conn.SetDeadline(dl)
}

// sync sends guest-sync-delimited with a random id; the agent answers
// with a 0xFF byte and then the id, after anything still buffered.
func (a *Agent) sync(ctx context.Context) error {
	a.deadline(ctx)
	id := rand.Int64N(1 << 40)
	// a 0xFF byte resets the agent's JSON parser
	req := fmt.Sprintf("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id)
	if _, err := a.conn.Write([]byte(req)); err != nil {
		return err
	}
	for {
		if _, err := a.br.ReadBytes(0xff); err != nil {
			return fmt.Errorf("guest-sync-delimited: %w", err)
		}
		line, err := readLine(a.br)
		if err != nil {
			return fmt.Errorf("guest-sync-delimited: %w", err)
		}
		var r struct {
			Return int64 `json:"return"`
		}
		if json.Unmarshal(bytes.TrimSpace(line), &r) == nil && r.Return == id {
			return nil
		}
	}
}

// Execute runs one agent command and decodes its answer into result.
func (a *Agent) Execute(ctx context.Context, cmd string, args, result any) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("guest agent %s: %w", cmd, err)
	}
	a.deadline(ctx)
	stop := context.AfterFunc(ctx, func() { a.conn.SetDeadline(time.Now()) })
	defer stop()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := a.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("guest agent %s: %w", cmd, err)
	}
	for {
		line, err := readLine(a.br)
		if err != nil {
			return fmt.Errorf("guest agent %s: %w", cmd, err)
		}
		line = bytes.TrimLeft(line, "\xff \t\r")
		if len(line) == 0 {
			continue
		}
		var r qmpReply
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("guest agent %s: malformed answer %.100q: %w", cmd, line, err)
		}
		if r.Error != nil {
			r.Error.Command = cmd
			return r.Error
		}
		if result != nil && len(r.Return) > 0 {
			if err := json.Unmarshal(r.Return, result); err != nil {
				return fmt.Errorf("guest agent %s: answer %.100q: %w", cmd, r.Return, err)
			}
		}
		return nil
	}
}

// Freeze freezes the guest's file systems and returns how many. A guest
// already frozen (by an earlier run that could not thaw) is thawed and
// frozen again, so the freeze belongs to this capture.
func (a *Agent) Freeze(ctx context.Context) (int, error) {
	var status string
	if err := a.Execute(ctx, "guest-fsfreeze-status", nil, &status); err == nil && status == "frozen" {
		if err := a.Thaw(ctx); err != nil {
			return 0, err
		}
	}
	var n int
	if err := a.Execute(ctx, "guest-fsfreeze-freeze", nil, &n); err != nil {
		// a partial freeze leaves some file systems frozen: thaw them
		return 0, errors.Join(err, a.Thaw(context.WithoutCancel(ctx)))
	}
	return n, nil
}

// Thaw thaws the guest's file systems.
func (a *Agent) Thaw(ctx context.Context) error {
	var n int
	return a.Execute(ctx, "guest-fsfreeze-thaw", nil, &n)
}

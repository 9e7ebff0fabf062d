package client

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vmvault/vmvault/nbd/proto"
)

// readAll reads a whole export with 8 concurrent readers of random sizes.
func readAll(t *testing.T, c *Client) []byte {
	t.Helper()
	out := make([]byte, c.Size())
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for off := int64(w) * (1 << 16); off < c.Size(); off += 8 << 16 {
				n := min(int64(1<<16), c.Size()-off)
				// split the 64 KiB stripe into two requests of random size
				k := rng.Int64N(n + 1)
				for _, r := range [][2]int64{{off, k}, {off + k, n - k}} {
					if r[1] == 0 {
						continue
					}
					if _, err := c.ReadAt(out[r[0]:r[0]+r[1]], r[0]); err != nil {
						errs <- err
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return out
}

// TestClientAgainstQemuNBD reads a sparse image served by qemu-nbd and
// checks its block status.
func TestClientAgainstQemuNBD(t *testing.T) {
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("qemu-nbd is required in CI")
		}
		t.Skip("skipping: qemu-nbd not installed (apt-get install qemu-utils)")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.raw")
	data := make([]byte, 8<<20)
	rng := rand.New(rand.NewPCG(3, 3))
	for i := 1 << 20; i < 3<<20; i++ {
		data[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	exec.Command("fallocate", "--punch-hole", "--offset", "4194304", "--length", "4194304", img).Run()
	sock := filepath.Join(dir, "nbd.sock")
	cmd := exec.Command("qemu-nbd", "-r", "-f", "raw", "-x", "disk", "--socket", sock, img)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var c *Client
	var err error
	for i := 0; i < 100; i++ {
		if c, err = Dial(context.Background(), "nbd+unix:///disk?socket="+sock, Options{}); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := readAll(t, c); !bytes.Equal(got, data) {
		t.Fatal("content differs from the image")
	}
	if !c.HasMetaContext(proto.MetaBaseAllocation) {
		t.Fatal("qemu-nbd offers base:allocation; it was not negotiated")
	}
	var covered int64
	var sawHole bool
	for covered < c.Size() {
		bs, err := c.BlockStatus(context.Background(), proto.MetaBaseAllocation, covered, uint32(c.Size()-covered))
		if err != nil || len(bs) == 0 {
			t.Fatalf("block status at %d: %v %v", covered, bs, err)
		}
		for _, b := range bs {
			if b.Hole() && b.Offset >= 4<<20 {
				sawHole = true
			}
			covered = b.Offset + b.Length
		}
	}
	if !sawHole {
		t.Error("the punched hole was not reported")
	}
}

// needTools skips the test when a tool is missing, unless CI is set.
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required in CI", tool)
			}
			t.Skipf("skipping: %s not installed (apt-get install qemu-utils)", tool)
		}
	}
}

// dialRetry dials until the server just started answers.
func dialRetry(t *testing.T, uri string, o Options) *Client {
	t.Helper()
	var c *Client
	var err error
	for i := 0; i < 100; i++ {
		if c, err = Dial(context.Background(), uri, o); err == nil {
			return c
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal(err)
	return nil
}

// statusMap walks BlockStatus of meta over the whole export and returns
// the ranges whose flags have bit set.
func statusMap(t *testing.T, c *Client, meta string, bit uint32) [][2]int64 {
	t.Helper()
	var out [][2]int64
	for covered := int64(0); covered < c.Size(); {
		bs, err := c.BlockStatus(context.Background(), meta, covered, uint32(c.Size()-covered))
		if err != nil || len(bs) == 0 {
			t.Fatalf("block status (%s) at %d: %v %v", meta, covered, bs, err)
		}
		for _, b := range bs {
			if b.Offset != covered || b.Length <= 0 {
				t.Fatalf("block status (%s): block %+v does not start at %d", meta, b, covered)
			}
			if b.Flags&bit != 0 {
				if n := len(out); n > 0 && out[n-1][0]+out[n-1][1] == b.Offset {
					out[n-1][1] += b.Length
				} else {
					out = append(out, [2]int64{b.Offset, b.Length})
				}
			}
			covered = b.Offset + b.Length
		}
	}
	return out
}

// TestClientMetaContexts negotiates base:allocation and a qemu dirty
// bitmap on one connection (export named by Options, not the URI) and
// reads each context's answer apart: qemu sends one BLOCK_STATUS chunk per
// context for every request.
func TestClientMetaContexts(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io", "qemu-nbd")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	for _, args := range [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", img, "8M"},
		{"qemu-img", "bitmap", "--add", img, "b0"},
		// bitmap granularity is 64 KiB: dirty [1M,+64K) and [5M,+64K)
		{"qemu-io", "-f", "qcow2", "-c", "write -P 0x55 1M 64k", "-c", "write -P 0x66 5M 4k", img},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	sock := filepath.Join(dir, "nbd.sock")
	cmd := exec.Command("qemu-nbd", "-r", "-f", "qcow2", "-x", "disk", "-B", "b0", "--socket", sock, img)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	const dirty, missing = proto.MetaQemuDirtyBitmap + "b0", proto.MetaQemuDirtyBitmap + "nope"
	c := dialRetry(t, "nbd+unix:///not-this-one?socket="+sock, Options{
		Export:       "disk",
		MetaContexts: []string{proto.MetaBaseAllocation, dirty, missing},
	})
	defer c.Close()
	if c.Size() != 8<<20 {
		t.Fatalf("size %d", c.Size())
	}
	for _, tc := range []struct {
		meta string
		want bool
	}{{proto.MetaBaseAllocation, true}, {dirty, true}, {missing, false}} {
		if got := c.HasMetaContext(tc.meta); got != tc.want {
			t.Errorf("HasMetaContext(%s) = %v, want %v", tc.meta, got, tc.want)
		}
	}
	if _, err := c.BlockStatus(context.Background(), missing, 0, 4096); err == nil {
		t.Error("block status of a context the server did not offer")
	}
	want := [][2]int64{{1 << 20, 64 << 10}, {5 << 20, 64 << 10}}
	if got := statusMap(t, c, dirty, proto.StateDirty); !slices.Equal(got, want) {
		t.Errorf("dirty ranges %v, want %v", got, want)
	}
	// base:allocation on the same connection: the written clusters are
	// data, the rest of the disk is holes.
	holes := statusMap(t, c, proto.MetaBaseAllocation, proto.StateHole)
	if len(holes) == 0 {
		t.Fatal("no holes in a mostly unwritten qcow2 image")
	}
	for _, h := range holes {
		for _, w := range want {
			if h[0] < w[0]+w[1] && w[0] < h[0]+h[1] {
				t.Errorf("hole %v overlaps written range %v", h, w)
			}
		}
	}
	buf := make([]byte, 4096)
	if _, err := c.ReadAt(buf, 5<<20); err != nil || buf[0] != 0x66 || buf[4095] != 0x66 {
		t.Errorf("read at 5M: %v %x", err, buf[:4])
	}
}

// FuzzClient feeds the client arbitrary server bytes (handshake and
// replies) after a valid greeting prefix: no panic, no hang, no write
// outside the caller's buffer.
func FuzzClient(f *testing.F) {
	greet := []byte("NBDMAGICIHAVEOPT\x00\x03")
	ack := func(opt uint32) []byte {
		b := make([]byte, 20)
		binary.BigEndian.PutUint64(b, proto.MagicOptionReply)
		binary.BigEndian.PutUint32(b[8:], opt)
		binary.BigEndian.PutUint32(b[12:], proto.RepAck)
		return b
	}
	info := make([]byte, 20+12)
	binary.BigEndian.PutUint64(info, proto.MagicOptionReply)
	binary.BigEndian.PutUint32(info[8:], proto.OptGo)
	binary.BigEndian.PutUint32(info[12:], proto.RepInfo)
	binary.BigEndian.PutUint32(info[16:], 12)
	binary.BigEndian.PutUint16(info[20:], proto.InfoExport)
	binary.BigEndian.PutUint64(info[22:], 1<<20)
	var seed []byte
	seed = append(seed, ack(proto.OptStructuredReply)...)
	seed = append(seed, ack(proto.OptSetMetaContext)...)
	seed = append(seed, info...)
	seed = append(seed, ack(proto.OptGo)...)
	chunk := make([]byte, 20+8+16)
	binary.BigEndian.PutUint32(chunk, proto.MagicStructuredReply)
	binary.BigEndian.PutUint16(chunk[4:], proto.ReplyFlagDone)
	binary.BigEndian.PutUint16(chunk[6:], proto.ReplyTypeOffsetData)
	binary.BigEndian.PutUint64(chunk[8:], 1)
	binary.BigEndian.PutUint32(chunk[16:], 24)
	f.Add(seed, chunk)
	f.Fuzz(func(t *testing.T, handshake, replies []byte) {
		cs, ss := net.Pipe()
		go func() {
			ss.Write(append(bytes.Clone(greet), handshake...))
			io.Copy(io.Discard, io.LimitReader(ss, 0))
		}()
		go func() {
			// drain what the client sends, then answer with the replies
			buf := make([]byte, 4096)
			ss.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			for {
				if _, err := ss.Read(buf); err != nil {
					break
				}
			}
			ss.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
			ss.Write(replies)
			ss.Close()
		}()
		cs.SetDeadline(time.Now().Add(2 * time.Second))
		c, err := newClient(cs, "", defaultMeta)
		if err != nil {
			cs.Close()
			return
		}
		p := make([]byte, 64)
		guard := bytes.Repeat([]byte{0xaa}, 64)
		big := append(p, guard...)
		c.ReadAt(big[:64], 0)
		if !bytes.Equal(big[64:], guard) {
			t.Fatal("client wrote past the caller's buffer")
		}
		c.conn.Close()
		<-c.done
	})
}

package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
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

// TestClientAgainstOurServer: structured reads with holes, block status
// from the zero chunks, a damaged chunk as a per-request EIO with the
// connection staying usable.
func TestClientAgainstOurServer(t *testing.T) {
	f := newFixture(t, "")
	c, err := Dial(context.Background(), "nbd+unix:///"+f.name()+"?socket="+f.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.structured || !c.CanBlockStatus() || c.Size() != int64(len(f.img)) {
		t.Fatalf("negotiated structured=%v block status=%v size=%d", c.structured, c.CanBlockStatus(), c.Size())
	}
	// damage chunk 5: EIO for reads touching it, the rest still reads
	d, err := f.r.OpenDisk(context.Background(), f.rp, "disk0")
	if err != nil {
		t.Fatal(err)
	}
	f.damage(d.Index().IDs[5].String())
	buf := make([]byte, 100)
	if _, err := c.ReadAt(buf, 5*testChunk+10); !errors.Is(err, syscall.EIO) {
		t.Errorf("read of a damaged chunk: %v", err)
	}
	if _, err := c.ReadAt(buf, 6*testChunk); err != nil || !bytes.Equal(buf, f.img[6*testChunk:6*testChunk+100]) {
		t.Errorf("read after the error: %v", err)
	}
	f.damage("")
	if got := readAll(t, c); !bytes.Equal(got, f.img) {
		t.Fatal("export content differs")
	}
	bs, err := c.BlockStatus(context.Background(), 0, uint32(len(f.img)))
	if err != nil {
		t.Fatal(err)
	}
	var holes []int64
	for _, b := range bs {
		if b.Hole && b.Zero {
			holes = append(holes, b.Offset/testChunk, b.Length/testChunk)
		}
	}
	if len(holes) != 4 || holes[0] != 3 || holes[1] != 2 || holes[2] != 10 || holes[3] != 1 {
		t.Errorf("holes (chunk, count): %v from %+v", holes, bs)
	}
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
		if c, err = Dial(context.Background(), "nbd+unix:///disk?socket="+sock); err == nil {
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
	if !c.CanBlockStatus() {
		t.Fatal("qemu-nbd offers base:allocation; it was not negotiated")
	}
	var covered int64
	var sawHole bool
	for covered < c.Size() {
		bs, err := c.BlockStatus(context.Background(), covered, uint32(c.Size()-covered))
		if err != nil || len(bs) == 0 {
			t.Fatalf("block status at %d: %v %v", covered, bs, err)
		}
		for _, b := range bs {
			if b.Hole && b.Offset >= 4<<20 {
				sawHole = true
			}
			covered = b.Offset + b.Length
		}
	}
	if !sawHole {
		t.Error("the punched hole was not reported")
	}
}

// FuzzClient feeds the client arbitrary server bytes (handshake and
// replies) after a valid greeting prefix: no panic, no hang, no write
// outside the caller's buffer.
func FuzzClient(f *testing.F) {
	greet := []byte("NBDMAGICIHAVEOPT\x00\x03")
	ack := func(opt uint32) []byte {
		b := make([]byte, 20)
		binary.BigEndian.PutUint64(b, magicOptReply)
		binary.BigEndian.PutUint32(b[8:], opt)
		binary.BigEndian.PutUint32(b[12:], repAck)
		return b
	}
	info := make([]byte, 20+12)
	binary.BigEndian.PutUint64(info, magicOptReply)
	binary.BigEndian.PutUint32(info[8:], optGo)
	binary.BigEndian.PutUint32(info[12:], repInfo)
	binary.BigEndian.PutUint32(info[16:], 12)
	binary.BigEndian.PutUint16(info[20:], infoExport)
	binary.BigEndian.PutUint64(info[22:], 1<<20)
	var seed []byte
	seed = append(seed, ack(optStructured)...)
	seed = append(seed, ack(optSetMetaCtx)...)
	seed = append(seed, info...)
	seed = append(seed, ack(optGo)...)
	chunk := make([]byte, 20+8+16)
	binary.BigEndian.PutUint32(chunk, magicStructReply)
	binary.BigEndian.PutUint16(chunk[4:], replyFlagDone)
	binary.BigEndian.PutUint16(chunk[6:], replyOffsetData)
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
		c, err := newClient(cs, "")
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

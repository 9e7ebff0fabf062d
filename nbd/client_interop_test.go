package nbd

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"

	"github.com/vmvault/vmvault/nbd/client"
	"github.com/vmvault/vmvault/nbd/proto"
)

// The server as nbd/client sees it.

// readAll reads a whole export with 8 concurrent readers of random sizes.
func readAll(t *testing.T, c *client.Client) []byte {
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
	c, err := client.Dial(context.Background(), "nbd+unix:///"+f.name()+"?socket="+f.sock, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Structured() || !c.HasMetaContext(proto.MetaBaseAllocation) || c.Size() != int64(len(f.img)) {
		t.Fatalf("negotiated structured=%v block status=%v size=%d", c.Structured(), c.HasMetaContext(proto.MetaBaseAllocation), c.Size())
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
	bs, err := c.BlockStatus(context.Background(), proto.MetaBaseAllocation, 0, uint32(len(f.img)))
	if err != nil {
		t.Fatal(err)
	}
	var holes []int64
	for _, b := range bs {
		if b.Hole() && b.Zero() {
			holes = append(holes, b.Offset/testChunk, b.Length/testChunk)
		}
	}
	if len(holes) != 4 || holes[0] != 3 || holes[1] != 2 || holes[2] != 10 || holes[3] != 1 {
		t.Errorf("holes (chunk, count): %v from %+v", holes, bs)
	}
}

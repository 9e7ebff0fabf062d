package client

import (
	"context"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vmvault/vmvault/nbd/proto"
)

// stingyServer serves an export of size bytes that offers base:allocation
// (context id 7) and answers every BLOCK_STATUS with at most two
// descriptors of step bytes (less than asked, the last one possibly
// reaching past the request), flags alternating between hole and data
// every flip bytes. It records the request lengths.
func stingyServer(t *testing.T, conn net.Conn, size uint64, step, flip uint32, lengths *[]uint32) {
	defer conn.Close()
	conn.Write(append([]byte("NBDMAGICIHAVEOPT"), 0, 3))
	var cflags [4]byte
	if _, err := io.ReadFull(conn, cflags[:]); err != nil {
		return
	}
	reply := func(opt, typ uint32, data []byte) {
		conn.Write(append(proto.OptionReplyHeader{Option: opt, Type: typ, Length: uint32(len(data))}.Append(nil), data...))
	}
	for done := false; !done; {
		var h [proto.OptionHeaderSize]byte
		if _, err := io.ReadFull(conn, h[:]); err != nil {
			return
		}
		oh, err := proto.ParseOptionHeader(h[:])
		if err != nil {
			return
		}
		data := make([]byte, oh.Length)
		if _, err := io.ReadFull(conn, data); err != nil {
			return
		}
		switch oh.Option {
		case proto.OptStructuredReply:
			reply(oh.Option, proto.RepAck, nil)
		case proto.OptSetMetaContext:
			reply(oh.Option, proto.RepMetaContext, proto.AppendMetaContext(nil, 7, proto.MetaBaseAllocation))
			reply(oh.Option, proto.RepAck, nil)
		case proto.OptGo:
			reply(oh.Option, proto.RepInfo, proto.AppendInfoExport(nil, size, 1))
			reply(oh.Option, proto.RepAck, nil)
			done = true
		default:
			reply(oh.Option, proto.RepFlagError|1, nil)
		}
	}
	for {
		var h [proto.RequestSize]byte
		if _, err := io.ReadFull(conn, h[:]); err != nil {
			return
		}
		r, err := proto.ParseRequest(h[:])
		if err != nil || r.Type != proto.CmdBlockStatus {
			return
		}
		*lengths = append(*lengths, r.Length)
		var ds []proto.Descriptor
		for pos := r.Offset; len(ds) < 2 && pos < r.Offset+uint64(r.Length); pos += uint64(step) {
			flags := uint32(0)
			if (pos/uint64(flip))%2 == 0 {
				flags = proto.StateHole | proto.StateZero
			}
			ds = append(ds, proto.Descriptor{Length: step, Flags: flags})
		}
		payload := proto.AppendBlockStatus(nil, 7, ds)
		conn.Write(append(proto.StructuredReply{Flags: proto.ReplyFlagDone, Type: proto.ReplyTypeBlockStatus,
			Cookie: r.Cookie, Length: uint32(len(payload))}.Append(nil), payload...))
	}
}

// TestMapLoops: Map keeps asking until the range is covered when the
// server describes less than asked, clips the last block to the range,
// joins neighbours of equal flags, and never sends a length past 32 bits.
func TestMapLoops(t *testing.T) {
	const size = 6 << 30 // more than a 32-bit length
	for _, tc := range []struct {
		name        string
		off, length int64
		step, flip  uint32
		want        []Block
	}{
		{"joined", 0, 1 << 20, 64 << 10, 256 << 10, []Block{
			{0, 256 << 10, proto.StateHole | proto.StateZero}, {256 << 10, 256 << 10, 0},
			{512 << 10, 256 << 10, proto.StateHole | proto.StateZero}, {768 << 10, 256 << 10, 0}}},
		{"clipped", 4096, 100 << 10, 32 << 10, 1 << 30, []Block{{4096, 100 << 10, proto.StateHole | proto.StateZero}}},
		{"past 4 GiB", 0, 5 << 30, 1 << 30, 1 << 30, []Block{
			{0, 1 << 30, proto.StateHole | proto.StateZero}, {1 << 30, 1 << 30, 0}, {2 << 30, 1 << 30, proto.StateHole | proto.StateZero},
			{3 << 30, 1 << 30, 0}, {4 << 30, 1 << 30, proto.StateHole | proto.StateZero}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs, ss := net.Pipe()
			var lengths []uint32
			done := make(chan struct{})
			go func() { defer close(done); stingyServer(t, ss, size, tc.step, tc.flip, &lengths) }()
			c, err := newClient(cs, "", defaultMeta)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.Map(context.Background(), proto.MetaBaseAllocation, tc.off, tc.length)
			c.Close()
			<-done
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Map = %v, want %v", got, tc.want)
			}
			if len(lengths) < 2 {
				t.Errorf("%d requests: the server described less than asked, Map must ask again", len(lengths))
			}
			for _, l := range lengths {
				if l > maxStatusRequest {
					t.Errorf("request length %d", l)
				}
			}
		})
	}
}

// TestMapErrors: ranges outside the export and contexts not negotiated
// are errors, not panics.
func TestMapErrors(t *testing.T) {
	cs, ss := net.Pipe()
	var lengths []uint32
	done := make(chan struct{})
	go func() { defer close(done); stingyServer(t, ss, 1<<20, 4096, 4096, &lengths) }()
	c, err := newClient(cs, "", defaultMeta)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Close(); <-done }()
	for _, tc := range []struct {
		meta        string
		off, length int64
	}{{proto.MetaBaseAllocation, -1, 10}, {proto.MetaBaseAllocation, 0, 1<<20 + 1}, {proto.MetaBaseAllocation, 1 << 20, 1}, {"qemu:dirty-bitmap:x", 0, 4096}} {
		if _, err := c.Map(context.Background(), tc.meta, tc.off, tc.length); err == nil {
			t.Errorf("Map(%s, %d, %d) succeeded", tc.meta, tc.off, tc.length)
		}
	}
}

// TestMapQemuLarge maps a sparse 6 GiB qcow2 image served by qemu-nbd
// whose only data lies beyond 4 GiB.
func TestMapQemuLarge(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io", "qemu-nbd")
	dir := t.TempDir()
	img := filepath.Join(dir, "big.qcow2")
	for _, args := range [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", img, "6G"},
		{"qemu-io", "-f", "qcow2", "-c", "write -P 0x11 4500M 1M", img},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	sock := filepath.Join(dir, "nbd.sock")
	cmd := exec.Command("qemu-nbd", "-r", "-f", "qcow2", "-x", "big", "--socket", sock, img)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	c := dialRetry(t, "nbd+unix:///big?socket="+sock, Options{})
	defer c.Close()
	bs, err := c.Map(context.Background(), proto.MetaBaseAllocation, 0, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	var data [][2]int64
	var covered int64
	for _, b := range bs {
		covered += b.Length
		if !b.Zero() {
			data = append(data, [2]int64{b.Offset, b.Length})
		}
	}
	if covered != 6<<30 {
		t.Errorf("map covers %d bytes", covered)
	}
	if want := [][2]int64{{4500 << 20, 1 << 20}}; !slices.Equal(data, want) {
		t.Errorf("data %v, want %v", data, want)
	}
}

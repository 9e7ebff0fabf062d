package format

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCodecMeasure measures every codec on the chunks of a disk image, one
// core at a time: compression ratio, the share of chunks stored raw, and
// CPU time per byte to encode, to decode, and to decode and check a chunk
// against its id (what every cold read pays). Times are the measuring
// thread's own CPU time (getrusage RUSAGE_THREAD) with the garbage
// collector off, so other load on the machine inflates them less than it
// would wall time; still, run it on a quiet machine.
//
//	VMVAULT_CODEC_IMAGE=/var/tmp/vmvault-bench/base.img go test -run TestCodecMeasure -v ./repo/format
//
// Env: VMVAULT_CODEC_IMAGE (required; the test skips without it),
// VMVAULT_CODEC_SAMPLE (MiB of non-zero chunks to use, default 1024: every
// k-th non-zero chunk when the image has more), VMVAULT_CODEC_CHUNK (bytes,
// default 262144), VMVAULT_CODEC_CODECS (comma-separated, default all),
// VMVAULT_CODEC_OUT (a file for the table as tab-separated values).
func TestCodecMeasure(t *testing.T) {
	path := os.Getenv("VMVAULT_CODEC_IMAGE")
	if path == "" {
		t.Skip("set VMVAULT_CODEC_IMAGE to a disk image to measure the codecs on its chunks")
	}
	sample := envInt(t, "VMVAULT_CODEC_SAMPLE", 1024) << 20
	cs := envInt(t, "VMVAULT_CODEC_CHUNK", DefaultChunkSize)
	if err := ValidChunkSize(int64(cs)); err != nil {
		t.Fatal(err)
	}
	names := CompressionNames()
	if s := os.Getenv("VMVAULT_CODEC_CODECS"); s != "" {
		names = strings.Split(s, ",")
	}
	chunks, total := sampleChunks(t, path, cs, sample)
	t.Logf("%s: %d non-zero chunks of %d bytes sampled (%d MiB)", path, len(chunks), cs, total>>20)

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer debug.SetGCPercent(debug.SetGCPercent(-1))

	// Hashing alone: what a raw frame costs a reader beyond the copy.
	hashCPU := threadCPU(t, func() {
		for _, c := range chunks {
			_ = Hash(c)
		}
	})
	var out strings.Builder
	fmt.Fprintf(&out, "codec\tratio\traw_share\tencode_MBps\tdecode_MBps\tdecode_hash_MBps\tdecode_hash_cpu_s_per_GiB\n")
	fmt.Fprintf(&out, "hash-only\t-\t-\t-\t-\t%.0f\t%.3f\n", mbps(total, hashCPU), perGiB(total, hashCPU))
	for _, name := range names {
		if err := ValidCompression(name); err != nil {
			t.Fatal(err)
		}
		frames := make([][]byte, len(chunks))
		for i, c := range chunks {
			frames[i] = make([]byte, 0, ChunkHeaderSize+c2max(len(c)))
		}
		var err error
		enc := threadCPU(t, func() {
			for i, c := range chunks {
				if frames[i], err = EncodeChunk(frames[i], c, name); err != nil {
					return
				}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		var stored, raw int64
		for _, f := range frames {
			stored += int64(len(f))
			if f[5] == PayloadRaw {
				raw++
			}
		}
		buf := make([]byte, 0, cs+DecodeSlack)
		dec := threadCPU(t, func() {
			for _, f := range frames {
				if _, err = DecodeChunk(buf[:0], f); err != nil {
					return
				}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		decHash := threadCPU(t, func() {
			for i, f := range frames {
				var got []byte
				if got, err = DecodeChunkID(buf[:0], f, Hash(chunks[i])); err != nil {
					return
				}
				if !bytes.Equal(got, chunks[i]) {
					err = fmt.Errorf("%s: chunk %d does not round trip", name, i)
					return
				}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		// decHash also hashed each chunk once more for its id: take that out.
		decHash -= hashCPU
		fmt.Fprintf(&out, "%s\t%.3f\t%.3f\t%.0f\t%.0f\t%.0f\t%.3f\n", name, float64(total)/float64(stored),
			float64(raw)/float64(len(frames)), mbps(total, enc), mbps(total, dec), mbps(total, decHash), perGiB(total, decHash))
	}
	t.Logf("one core, thread CPU time, MB = 10^6 bytes of raw chunk content:\n%s", out.String())
	if p := os.Getenv("VMVAULT_CODEC_OUT"); p != "" {
		if err := os.WriteFile(p, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func c2max(n int) int { return n + n/6 + 64 }

func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

// sampleChunks reads the image's non-zero chunks, every k-th of them when
// there are more than limit bytes, and returns them with their total size.
func sampleChunks(t *testing.T, path string, cs, limit int) ([][]byte, int64) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, cs)
	nonZero := 0
	for off := int64(0); ; off += int64(cs) {
		n, err := f.ReadAt(buf, off)
		if n > 0 && !IsZero(buf[:n]) {
			nonZero++
		}
		if err == io.EOF || n < cs {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	k := max(1, (nonZero*cs+limit-1)/limit)
	var chunks [][]byte
	var total int64
	seen := 0
	for off := int64(0); ; off += int64(cs) {
		n, err := f.ReadAt(buf, off)
		if n > 0 && !IsZero(buf[:n]) {
			if seen%k == 0 {
				chunks = append(chunks, bytes.Clone(buf[:n]))
				total += int64(n)
			}
			seen++
		}
		if err == io.EOF || n < cs {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(chunks) == 0 {
		t.Fatalf("%s has no non-zero chunk", path)
	}
	return chunks, total
}

// threadCPU returns the CPU time the calling (locked) thread spent in f.
func threadCPU(t *testing.T, f func()) time.Duration {
	var before, after unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &before); err != nil {
		t.Fatal(err)
	}
	f()
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &after); err != nil {
		t.Fatal(err)
	}
	tv := func(r *unix.Rusage) time.Duration {
		return time.Duration(r.Utime.Nano() + r.Stime.Nano())
	}
	return tv(&after) - tv(&before)
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

func perGiB(n int64, d time.Duration) float64 { return d.Seconds() / (float64(n) / (1 << 30)) }

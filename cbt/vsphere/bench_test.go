package vsphere_test

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmvault/vmvault/cbt/vsphere"
	"github.com/vmvault/vmvault/cbt/vsphere/vcsimtest"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/backend/local"
)

// BenchmarkIncrementalDirect: a full capture over the direct transport of
// a VM disk holding the image in VMVAULT_BENCH_IMAGE (the 4 GiB workload of
// scripts/bench-workload.sh), then 640 scattered 64 KiB guest writes (~1%),
// then the incremental. Reports both durations and their ratio
// (target: incremental ≤ 5% of full). Run by scripts/bench-vsphere.sh.
func BenchmarkIncrementalDirect(b *testing.B) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	img := os.Getenv("VMVAULT_BENCH_IMAGE")
	if img == "" {
		b.Skip("VMVAULT_BENCH_IMAGE not set (scripts/bench-vsphere.sh sets it)")
	}
	for i := 0; i < b.N; i++ {
		h := vcsimtest.New(b, 1)
		vm := h.VMNames()[0]
		src, err := os.Open(img)
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 64<<20)
		for off := int64(0); ; off += int64(len(buf)) {
			n, err := src.ReadAt(buf, off)
			if n > 0 {
				if werr := h.WriteGuest(vm, 204, off, buf[:n]); werr != nil {
					b.Fatal(werr)
				}
			}
			if err == io.EOF {
				break
			} else if err != nil {
				b.Fatal(err)
			}
		}
		src.Close()
		dir := filepath.Join(b.TempDir(), "repo")
		be, err := local.Create(dir)
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		r, err := repo.Init(ctx, be, repo.InitOptions{})
		if err != nil {
			b.Fatal(err)
		}
		c, err := vsphere.Connect(ctx, vsphere.ConnectOptions{URL: h.URL.String(), User: h.User, Password: h.Password, Insecure: true})
		if err != nil {
			b.Fatal(err)
		}
		vmo, err := vsphere.FindVM(ctx, c.Client, vm)
		if err != nil {
			b.Fatal(err)
		}
		capture := func() (time.Duration, vsphere.Result) {
			start := time.Now()
			res, err := vsphere.CaptureVM(ctx, vmo, vsphere.Options{Repo: r, Transport: &vsphere.Direct{Map: map[string]string{"LocalDS_0": h.DatastoreDir}}, EnableCBT: true, Log: quiet})
			if err != nil {
				b.Fatal(err)
			}
			return time.Since(start), res
		}
		b.ResetTimer()
		full, rf := capture()
		rng := rand.New(rand.NewPCG(7, 7))
		w := make([]byte, 64<<10)
		for k := 0; k < 640; k++ {
			for j := range w {
				w[j] = byte(rng.Uint32())
			}
			off := rng.Int64N(4<<30/int64(len(w))) * int64(len(w))
			if err := h.WriteGuest(vm, 204, off, w); err != nil {
				b.Fatal(err)
			}
		}
		incr, ri := capture()
		b.StopTimer()
		b.ReportMetric(full.Seconds(), "full-s")
		b.ReportMetric(incr.Seconds(), "incr-s")
		b.ReportMetric(100*incr.Seconds()/full.Seconds(), "incr-%-of-full")
		b.ReportMetric(float64(rf.Disks[0].BytesRead)/1e6, "full-read-MB")
		b.ReportMetric(float64(ri.Disks[0].BytesRead)/1e6, "incr-read-MB")
		b.Logf("full %s (%s), incremental %s (%s)", full, rf.Disks[0].Mode, incr, ri.Disks[0].Mode)
	}
}

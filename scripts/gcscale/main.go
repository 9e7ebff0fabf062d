// Command gcscale synthesizes a large local repository for measuring gc:
// -chunks chunk objects (tiny stand-in frames: gc lists chunks and never
// reads them), and -vms VMs with -rps restore points each, whose single
// disk has -disk-chunks chunks. Consecutive restore points of a VM share
// all but -churn of their chunks, the way daily captures do; restore
// points older than the newest -keep of each VM are forgotten at the end,
// so gc has dead chunks and indexes to find. Files are written without
// fsync (a fixture, not a backup).
//
// scripts/bench-gc.sh builds one and times 'vmvault gc' on it.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/backend/local"
	"github.com/vmvault/vmvault/repo/format"
)

func main() {
	dir := flag.String("dir", "", "repository directory to create (must not exist)")
	nChunks := flag.Int("chunks", 1_000_000, "chunk objects to create")
	vms := flag.Int("vms", 10, "VMs")
	rps := flag.Int("rps", 30, "restore points per VM")
	diskChunks := flag.Int("disk-chunks", 100_000, "chunks per disk")
	churn := flag.Float64("churn", 0.02, "share of a disk's chunks that change between restore points")
	keep := flag.Int("keep", 20, "newest restore points kept per VM; older ones are forgotten")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "gcscale: -dir is required")
		os.Exit(2)
	}
	if err := run(*dir, *nChunks, *vms, *rps, *diskChunks, *churn, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "gcscale:", err)
		os.Exit(1)
	}
}

func run(dir string, nChunks, vms, rps, diskChunks int, churn float64, keep int) error {
	ctx := context.Background()
	be, err := local.Create(dir)
	if err != nil {
		return err
	}
	r, err := repo.Init(ctx, be, repo.InitOptions{})
	if err != nil {
		return err
	}
	r.Close()
	start := time.Now()
	ids := make([]format.ID, nChunks)
	frame := []byte("gcscale stand-in")
	for i := range ids {
		rand.Read(ids[i][:])
		s := ids[i].String()
		if err := os.WriteFile(filepath.Join(dir, "chunks", s[:2], s), frame, 0o400); err != nil {
			return err
		}
	}
	fmt.Printf("%d chunk objects in %.0fs\n", nChunks, time.Since(start).Seconds())
	rng := mrand.New(mrand.NewPCG(1, 2))
	cs := int64(format.DefaultChunkSize)
	var forget []string
	when := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for v := range vms {
		disk := make([]format.ID, diskChunks)
		for i := range disk {
			disk[i] = ids[rng.IntN(len(ids))]
		}
		for p := range rps {
			for range int(churn * float64(diskChunks)) {
				disk[rng.IntN(diskChunks)] = ids[rng.IntN(len(ids))]
			}
			idx := &format.Index{DiskSize: int64(diskChunks) * cs, ChunkSize: cs, IDs: disk}
			b := idx.Marshal()
			idxID := format.Hash(b)
			if err := os.WriteFile(filepath.Join(dir, "index", idxID.String()), b, 0o400); err != nil {
				return err
			}
			m := &format.Manifest{Version: format.ManifestVersion, VM: fmt.Sprintf("vm%03d", v), Time: when.Add(time.Duration(p) * 24 * time.Hour),
				Source: "gcscale", Disks: []format.ManifestDisk{{Name: "disk0", Size: idx.DiskSize, ChunkSize: cs, Index: idxID.String(),
					Stats: format.DiskStats{Mode: "full"}}}}
			mb, err := m.Marshal()
			if err != nil {
				return err
			}
			id := format.Hash(mb)
			if err := os.WriteFile(filepath.Join(dir, "snapshots", id.String()), mb, 0o400); err != nil {
				return err
			}
			if p < rps-keep {
				forget = append(forget, id.String())
			}
		}
	}
	old := time.Now().Add(-48 * time.Hour) // older than any grace
	err = filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			err = os.Chtimes(path, old, old)
		}
		return err
	})
	if err != nil {
		return err
	}
	for _, id := range forget {
		if err := os.Remove(filepath.Join(dir, "snapshots", id)); err != nil {
			return err
		}
	}
	fmt.Printf("%d restore points (%d forgotten), %d index entries, in %.0fs\n", vms*rps, len(forget), vms*rps*diskChunks, time.Since(start).Seconds())
	return nil
}

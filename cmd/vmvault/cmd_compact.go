package main

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
)

type compactOptions struct {
	olderThan   string
	codec       string
	maxDuration string
	cpu         int
	asJSON      bool
	dryRun      bool
}

func newCompactCommand(g *cli.Global) *cobra.Command {
	var o compactOptions
	cmd := &cobra.Command{
		Use:   "compact",
		Short: "Recompress stored chunks with a denser codec",
		Long: `Recompress the chunks of packs older than --older-than with --codec, in place:
every chunk keeps its id, only its stored frame changes. Captures store
chunks with a cheap codec (fast in the backup window, fast to read when a
fresh restore point is booted); compaction makes what has sat for a while
dense.

Packs are rewritten in batches of four packs' worth (128 MiB with the
default pack size). Each batch is committed on
its own (new packs, a pack index naming them, a pack index saying the old
packs are gone, then their removal), so an interrupted or killed compaction
loses at most the batch it was working on, and the next run goes on where
it stopped. Captures, serve, mount and restores run on meanwhile (a reader
that finds a pack gone reads the chunk from its new pack); gc does not run
at the same time (both take the maintenance lock).

Packs compaction has made dense (or found nothing to do in) are recorded
and not read again. A chunk whose stored frame is damaged is copied as it
is and reported (exit code 3; run verify). --max-duration stops starting
new batches after that long; --cpu bounds the cores used.`,
		Example: `  vmvault compact --older-than 7d --codec zstd-best --max-duration 1h --cpu 1
  vmvault compact --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runCompact(cmd, g, &o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.olderThan, "older-than", "7d", "only packs written at least this long ago (e.g. 7d, 36h, 0 for all)")
	f.StringVar(&o.codec, "codec", format.CompressionZstdBest, "codec to recompress with: "+strings.Join(format.CompressionNames(), ", "))
	f.StringVar(&o.maxDuration, "max-duration", "0", "start no batch after this long (e.g. 1h; 0: no limit)")
	f.IntVar(&o.cpu, "cpu", 0, "cores to use (default: all)")
	f.BoolVar(&o.asJSON, "json", false, "print the report as JSON")
	f.BoolVarP(&o.dryRun, "dry-run", "n", false, "print what would be read, change nothing")
	return cmd
}

// compactJSON is compact's --json report.
type compactJSON struct {
	Codec            string  `json:"codec"`
	DryRun           bool    `json:"dry_run"`
	Packs            int     `json:"packs"`
	PacksRewritten   int     `json:"packs_rewritten"`
	PacksUnchanged   int     `json:"packs_unchanged"`
	PacksWritten     int     `json:"packs_written"`
	PacksKnown       int     `json:"packs_known"`
	PacksYoung       int     `json:"packs_young"`
	PacksProtected   int     `json:"packs_protected"`
	PacksLeft        int     `json:"packs_left"`
	Batches          int     `json:"batches"`
	Chunks           int     `json:"chunks"`
	DroppedChunks    int     `json:"dropped_chunks"`
	DamagedChunks    int     `json:"damaged_chunks"`
	BytesBefore      int64   `json:"bytes_before"`
	BytesAfter       int64   `json:"bytes_after"`
	PackBytesRead    int64   `json:"pack_bytes_read"`
	PackBytesRemoved int64   `json:"pack_bytes_removed"`
	PackBytesWritten int64   `json:"pack_bytes_written"`
	Stopped          bool    `json:"stopped"`
	IndexesMerged    int     `json:"indexes_merged"`
	Seconds          float64 `json:"seconds"`
	CPUSeconds       float64 `json:"cpu_seconds"`
}

func runCompact(cmd *cobra.Command, g *cli.Global, o *compactOptions) error {
	older, err := cli.ParseDuration(o.olderThan)
	if err != nil {
		return cli.Usagef("--older-than: %v", err)
	}
	maxDur, err := cli.ParseDuration(o.maxDuration)
	if err != nil {
		return cli.Usagef("--max-duration: %v", err)
	}
	if err := format.ValidCompression(o.codec); err != nil {
		return cli.Usagef("--codec: %v", err)
	}
	if o.cpu < 0 {
		return cli.Usagef("--cpu: %d cores", o.cpu)
	}
	if o.cpu > 0 {
		runtime.GOMAXPROCS(o.cpu) // before any encoder is made: they size their concurrency by it
	}
	ctx := cmd.Context()
	r, err := g.OpenRepo(ctx, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	cpu0 := cpuSeconds()
	p := &repo.Progress{}
	stop := cli.ShowProgress("compact", p, g.Quiet || o.asJSON)
	rep, err := r.Compact(ctx, repo.CompactOptions{Codec: o.codec, OlderThan: older, MaxDuration: maxDur, Workers: o.cpu,
		DryRun: o.dryRun, LockWait: g.LockWait, Progress: p})
	stop()
	if err != nil {
		return err
	}
	cpu := cpuSeconds() - cpu0
	if o.asJSON {
		if err := cli.PrintJSON(cmd.OutOrStdout(), compactJSON{Codec: rep.Codec, DryRun: rep.DryRun, Packs: rep.Packs,
			PacksRewritten: rep.PacksRewritten, PacksUnchanged: rep.PacksUnchanged, PacksWritten: rep.PacksWritten,
			PacksKnown: rep.PacksKnown, PacksYoung: rep.PacksYoung, PacksProtected: rep.PacksProtected, PacksLeft: rep.PacksLeft,
			Batches: rep.Batches, Chunks: rep.Chunks, DroppedChunks: rep.DroppedChunks, DamagedChunks: rep.DamagedChunks,
			BytesBefore: rep.BytesBefore, BytesAfter: rep.BytesAfter, PackBytesRead: rep.PackBytesRead,
			PackBytesRemoved: rep.PackBytesRemoved, PackBytesWritten: rep.PackBytesWritten, Stopped: rep.Stopped,
			IndexesMerged: rep.IndexesMerged, Seconds: rep.Seconds, CPUSeconds: cpu}); err != nil {
			return err
		}
	} else {
		printCompact(g.Summary(cmd.OutOrStdout()), rep, cpu)
	}
	if rep.DamagedChunks > 0 {
		return fmt.Errorf("%w: %d chunks do not match their ids; they were copied as they were: run 'vmvault verify'", cli.ErrDamage, rep.DamagedChunks)
	}
	return nil
}

func printCompact(w io.Writer, rep *repo.CompactReport, cpu float64) {
	skipped := fmt.Sprintf("%d recorded as done, %d younger, %d protected", rep.PacksKnown, rep.PacksYoung, rep.PacksProtected)
	if rep.DryRun {
		fmt.Fprintf(w, "would read %d packs (%s) and recompress their chunks with %s; skipped %s\n", rep.Packs, cli.Bytes(rep.PackBytesRead), rep.Codec, skipped)
		return
	}
	fmt.Fprintf(w, "read %d packs (%s) in %d batches: %d rewritten into %d new packs (%s → %s), %d had nothing to recompress; skipped %s\n",
		rep.PacksRewritten+rep.PacksUnchanged, cli.Bytes(rep.PackBytesRead), rep.Batches, rep.PacksRewritten, rep.PacksWritten,
		cli.Bytes(rep.PackBytesRemoved), cli.Bytes(rep.PackBytesWritten), rep.PacksUnchanged, skipped)
	fmt.Fprintf(w, "%d chunks with %s: %s → %s; %d old copies left behind; %.1f CPU-s in %s\n", rep.Chunks, rep.Codec,
		cli.Bytes(rep.BytesBefore), cli.Bytes(rep.BytesAfter), rep.DroppedChunks, cpu, (time.Duration(rep.Seconds * float64(time.Second))).Round(time.Millisecond))
	if rep.Stopped {
		fmt.Fprintf(w, "stopped after --max-duration with %d packs left for the next run\n", rep.PacksLeft)
	}
}

// cpuSeconds is the CPU time this process used so far (user + system).
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

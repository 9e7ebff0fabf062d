package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
)

type gcFlags struct {
	grace  time.Duration
	asJSON bool
}

func (f *gcFlags) addFlags(fs *pflag.FlagSet) {
	fs.DurationVar(&f.grace, "grace", repo.DefaultGCGrace, "keep unreferenced data younger than this (protects captures by older vmvault builds and ones that just crashed)")
}

func newGCCommand(g *cli.Global) *cobra.Command {
	var f gcFlags
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove data no restore point references",
		Long: `Mark every chunk and index that a restore point references or a running
reader or capture pins, then remove the others that are older than --grace
(mark and sweep). gc runs while VMs run from backups (serve, mount) and
while captures run: readers pin what they read, so a restore point
forgotten while it is being served keeps its data until the reader lets
go. Objects are only removed at a moment when no capture runs: gc waits up
to --lock-wait for one, and otherwise reports what it deferred to the next
run. Only one gc runs at a time.

gc refuses to remove anything while a manifest or index cannot be read, since
the chunks it references would then be unknown.`,
		Example: "  vmvault gc --dry-run\n  vmvault gc --grace 0",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := g.OpenRepo(cmd.Context(), repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			return runGC(cmd, r, f, dryRun, g.LockWait, nil)
		},
	}
	f.addFlags(cmd.Flags())
	cmd.Flags().BoolVarP(&dryRun, "dry-run", "n", false, "print what would be removed, remove nothing")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print the gc report as JSON")
	return cmd
}

// gcJSON is gc's --json report.
type gcJSON struct {
	DryRun            bool     `json:"dry_run"`
	RestorePoints     int      `json:"restore_points"`
	ReferencedIndexes int      `json:"referenced_indexes"`
	PinnedIndexes     int      `json:"pinned_indexes"`
	LiveChunks        int      `json:"live_chunks"`
	RemovedChunks     int      `json:"removed_chunks"`
	RemovedIndexes    int      `json:"removed_indexes"`
	RemovedBytes      int64    `json:"removed_bytes"`
	KeptYoung         int      `json:"kept_young"`
	KeptProtected     int      `json:"kept_protected"`
	GraceSeconds      float64  `json:"grace_seconds"`
	Deferred          bool     `json:"deferred"`
	Writers           []string `json:"writers,omitempty"`
	FilterBytes       int      `json:"filter_bytes"`
	MarkSeconds       float64  `json:"mark_seconds"`
	SweepSeconds      float64  `json:"sweep_seconds"`
}

func runGC(cmd *cobra.Command, r *repo.Repository, f gcFlags, dryRun bool, wait time.Duration, ignore []format.ID) error {
	rep, err := r.GC(cmd.Context(), repo.GCOptions{Grace: f.grace, DryRun: dryRun, LockWait: wait, Ignore: ignore})
	if err != nil {
		return err
	}
	if f.asJSON {
		return cli.PrintJSON(cmd.OutOrStdout(), toGCJSON(rep, f, dryRun))
	}
	printGC(cmd.OutOrStdout(), rep, f, dryRun)
	return nil
}

func toGCJSON(rep *repo.GCReport, f gcFlags, dryRun bool) gcJSON {
	return gcJSON{DryRun: dryRun, RestorePoints: rep.RestorePoints, ReferencedIndexes: rep.ReferencedIndexes,
		PinnedIndexes: rep.PinnedIndexes, LiveChunks: rep.LiveChunks, RemovedChunks: rep.RemovedChunks, RemovedIndexes: rep.RemovedIndexes,
		RemovedBytes: rep.RemovedBytes, KeptYoung: rep.KeptYoung, KeptProtected: rep.KeptProtected, GraceSeconds: f.grace.Seconds(), Deferred: rep.Deferred, Writers: rep.Writers,
		FilterBytes: rep.FilterBytes, MarkSeconds: rep.MarkSeconds, SweepSeconds: rep.SweepSeconds}
}

func printGC(w io.Writer, rep *repo.GCReport, f gcFlags, dryRun bool) {
	verb := "removed"
	switch {
	case dryRun:
		verb = "would remove"
	case rep.Deferred:
		verb = "deferred removing"
	}
	fmt.Fprintf(w, "%d restore points and %d pinned indexes keep %d chunks and %d indexes; %s %d chunks and %d indexes (%s); kept %d younger than %s\n",
		rep.RestorePoints, rep.PinnedIndexes, rep.LiveChunks, rep.ReferencedIndexes, verb, rep.RemovedChunks, rep.RemovedIndexes, cli.Bytes(rep.RemovedBytes), rep.KeptYoung, f.grace)
	if rep.KeptProtected > 0 {
		fmt.Fprintf(w, "kept %d unreferenced objects the object lock still protects (removed by a gc after their retention ends)\n", rep.KeptProtected)
	}
	if rep.Deferred {
		fmt.Fprintf(w, "captures kept running for all of --lock-wait; run gc again later (or with a longer --lock-wait):\n")
		for _, wr := range rep.Writers {
			fmt.Fprintf(w, "  %s\n", wr)
		}
	}
}

package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
)

type gcFlags struct {
	grace time.Duration
}

func (f *gcFlags) addFlags(fs *pflag.FlagSet) {
	fs.DurationVar(&f.grace, "grace", repo.DefaultGCGrace, "keep unreferenced data younger than this (protects captures still running)")
}

func newGCCommand(g *cli.Global) *cobra.Command {
	var f gcFlags
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove data no restore point references",
		Long: `Mark every chunk and index referenced by a restore point, then remove the
others that are older than --grace (mark and sweep, under an exclusive lock).
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
	return cmd
}

func runGC(cmd *cobra.Command, r *repo.Repository, f gcFlags, dryRun bool, wait time.Duration, ignore []format.ID) error {
	rep, err := r.GC(cmd.Context(), repo.GCOptions{Grace: f.grace, DryRun: dryRun, LockWait: wait, Ignore: ignore})
	if err != nil {
		return err
	}
	verb := "removed"
	if dryRun {
		verb = "would remove"
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%d restore points reference %d chunks and %d indexes; %s %d chunks and %d indexes (%s); kept %d younger than %s\n",
		rep.RestorePoints, rep.ReferencedChunks, rep.ReferencedIndexes, verb, rep.RemovedChunks, rep.RemovedIndexes, cli.Bytes(rep.RemovedBytes), rep.KeptYoung, f.grace)
	return nil
}

package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
)

func newStatsCommand(g *cli.Global) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Show repository size, deduplication and compression",
		Long: `Show how much data the restore points hold (logical), how much distinct data
that is (after deduplication and without zero chunks), and how much is stored
(after compression). Reads manifests and indexes only.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := g.OpenRepo(cmd.Context(), repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			s, err := r.Stats(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return cli.PrintJSON(cmd.OutOrStdout(), s)
			}
			w := cmd.OutOrStdout()
			layout := "one object per chunk"
			if s.PackSize > 0 {
				layout = fmt.Sprintf("%d packs of up to %s, %s", s.Packs, cli.Bytes(s.PackSize), cli.Bytes(s.PackBytes))
			}
			if s.Encrypted {
				layout += ", encrypted"
			}
			fmt.Fprintf(w, "repository:          %s (format %d, %s)\n", s.Location, s.FormatVersion, layout)
			fmt.Fprintf(w, "restore points:      %d (%d disks)\n", s.RestorePoints, s.Disks)
			fmt.Fprintf(w, "logical size:        %s (%s without zero chunks)\n", cli.Bytes(s.LogicalBytes), cli.Bytes(s.LogicalDataBytes))
			fmt.Fprintf(w, "unique data:         %s in %d chunks (dedup ratio %.2f)\n", cli.Bytes(s.UniqueBytes), s.UniqueChunks, s.DedupRatio)
			fmt.Fprintf(w, "stored chunks:       %s (compression ratio %.2f)\n", cli.Bytes(s.StoredChunkBytes), s.CompressionRatio)
			fmt.Fprintf(w, "metadata:            %s\n", cli.Bytes(s.MetadataBytes))
			fmt.Fprintf(w, "unreferenced:        %s in %d chunks (removed by gc)\n", cli.Bytes(s.UnreferencedBytes), s.UnreferencedChunks)
			fmt.Fprintf(w, "repository total:    %s (logical / stored = %.2f)\n", cli.Bytes(s.TotalStoredBytes), s.SpaceSavingsRatio)
			if s.DamagedChunks > 0 {
				fmt.Fprintf(w, "damaged chunks:      %d found by verify (captures store them again; see verify --help)\n", s.DamagedChunks)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

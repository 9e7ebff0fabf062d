package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
)

type initOptions struct {
	chunkSize   string
	compression string
}

func newInitCommand(g *cli.Global) *cobra.Command {
	var o initOptions
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a repository",
		Long: `Create a repository at the location given by --repo: a directory (created
if missing) given as a path or as local:PATH.

The chunk size (a power of two from 64 KiB to 8 MiB) is fixed for the
repository's lifetime: smaller chunks make incremental captures of scattered
small writes cheaper, larger ones cut per-object overhead. The default,
256 KiB, was chosen by measurement (see README).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := g.Location(); err != nil {
				return err
			}
			cs, err := cli.ParseSize(o.chunkSize)
			if err != nil {
				return cli.Usagef("--chunk-size: %v", err)
			}
			if err := format.ValidChunkSize(cs); err != nil {
				return cli.Usagef("--chunk-size: %v", err)
			}
			if err := format.ValidCompression(o.compression); err != nil {
				return cli.Usagef("--compression: %v", err)
			}
			be, err := g.CreateBackend(cmd.Context())
			if err != nil {
				return err
			}
			r, err := repo.Init(cmd.Context(), be, repo.InitOptions{ChunkSize: cs, Compression: o.compression})
			if err != nil {
				_ = be.Close()
				return err
			}
			defer r.Close()
			c := r.Config()
			fmt.Fprintf(g.Summary(cmd.OutOrStdout()), "created repository %s at %s (chunk size %s, %s, %s)\n", c.ID[:8], be.Location(), cli.Bytes(c.ChunkSize), c.Hash, c.Compression)
			return nil
		},
	}
	cmd.Flags().StringVar(&o.chunkSize, "chunk-size", "256KiB", "chunk size, a power of two from 64KiB to 8MiB")
	cmd.Flags().StringVar(&o.compression, "compression", format.CompressionZstdFastest, "chunk compression: zstd-fastest, zstd-default or none")
	return cmd
}

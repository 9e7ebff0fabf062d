package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
)

type initOptions struct {
	chunkSize   string
	compression string
	packSize    string
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
256 KiB, was chosen by measurement (see README).

Chunks are stored in packs of about --pack-size (32 MiB): a capture writes
one object per pack instead of one per chunk (object storage charges per
request), and a chunk is read with one ranged read. gc rewrites packs
whose chunks are mostly gone. --pack-size 0 stores one object per chunk,
as repositories before format version 2 do.

--compression is the codec captures use unless they name one: s2 (the
default) is cheap to write in the backup window and to read when a fresh
restore point is booted; 'vmvault compact' recompresses older packs with a
dense codec (zstd-best). Each chunk's frame records its codec, so
repositories mix them freely.`,
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
			ps, err := cli.ParseSize(o.packSize)
			if err != nil {
				return cli.Usagef("--pack-size: %v", err)
			}
			if ps == 0 {
				ps = -1 // one object per chunk
			} else if ps < format.MinPackSize || ps > format.MaxPackSizeConf {
				return cli.Usagef("--pack-size: %s is outside %s..%s (or 0 for one object per chunk)", o.packSize, cli.Bytes(format.MinPackSize), cli.Bytes(format.MaxPackSizeConf))
			}
			be, err := g.CreateBackend(cmd.Context())
			if err != nil {
				return err
			}
			r, err := repo.Init(cmd.Context(), be, repo.InitOptions{ChunkSize: cs, Compression: o.compression, PackSize: ps})
			if err != nil {
				_ = be.Close()
				return err
			}
			defer r.Close()
			c := r.Config()
			packs := "one object per chunk"
			if c.PackSize > 0 {
				packs = "packs of " + cli.Bytes(c.PackSize)
			}
			fmt.Fprintf(g.Summary(cmd.OutOrStdout()), "created repository %s at %s (chunk size %s, %s, %s, %s)\n", c.ID[:8], be.Location(), cli.Bytes(c.ChunkSize), c.Hash, c.Compression, packs)
			return nil
		},
	}
	cmd.Flags().StringVar(&o.chunkSize, "chunk-size", "256KiB", "chunk size, a power of two from 64KiB to 8MiB")
	cmd.Flags().StringVar(&o.compression, "compression", repo.DefaultCompression, "codec captures use unless they say otherwise: "+strings.Join(format.CompressionNames(), ", "))
	cmd.Flags().StringVar(&o.packSize, "pack-size", "32MiB", "store chunks in packs of about this size (1MiB to 1GiB); 0 stores one object per chunk (repository format 1)")
	return cmd
}

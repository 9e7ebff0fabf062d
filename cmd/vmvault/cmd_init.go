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
	packSize    string
	encrypt     bool
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

--encrypt encrypts and authenticates everything stored (AES-256-GCM; object
names are keyed hashes) under a random master key, wrapped by a key derived
from the password (argon2id, calibrated here). More passwords, and capture
keys that can add restore points but not read them, are added with
'vmvault key'. A lost password cannot be recovered.`,
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
			init := repo.InitOptions{ChunkSize: cs, Compression: o.compression, PackSize: ps}
			if o.encrypt {
				if ps < 0 {
					return cli.Usagef("--encrypt needs packs (a --pack-size other than 0)")
				}
				if init.Password, err = cli.NewPassword("", true); err != nil {
					return err
				}
			}
			r, err := repo.Init(cmd.Context(), be, init)
			if err != nil {
				_ = be.Close()
				return err
			}
			defer r.Close()
			c := r.Config()
			if c.Encryption != "" {
				defer fmt.Fprintf(g.Summary(cmd.OutOrStdout()), "encrypted (%s); keep the password safe: without it nothing can be read\n", c.Encryption)
			}
			packs := "one object per chunk"
			if c.PackSize > 0 {
				packs = "packs of " + cli.Bytes(c.PackSize)
			}
			fmt.Fprintf(g.Summary(cmd.OutOrStdout()), "created repository %s at %s (chunk size %s, %s, %s, %s)\n", c.ID[:8], be.Location(), cli.Bytes(c.ChunkSize), c.Hash, c.Compression, packs)
			return nil
		},
	}
	cmd.Flags().StringVar(&o.chunkSize, "chunk-size", "256KiB", "chunk size, a power of two from 64KiB to 8MiB")
	cmd.Flags().StringVar(&o.compression, "compression", format.CompressionZstdFastest, "chunk compression: zstd-fastest, zstd-default or none")
	cmd.Flags().BoolVar(&o.encrypt, "encrypt", false, "encrypt the repository; the password comes from VMVAULT_PASSWORD_FILE, VMVAULT_PASSWORD_COMMAND or the terminal")
	cmd.Flags().StringVar(&o.packSize, "pack-size", "32MiB", "store chunks in packs of about this size (1MiB to 1GiB); 0 stores one object per chunk (repository format 1)")
	return cmd
}

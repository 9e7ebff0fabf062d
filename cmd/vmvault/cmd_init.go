package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/format"
	"github.com/vmvault/vmvault/repo/keys"
)

type initOptions struct {
	chunkSize   string
	compression string
	packSize    string
	encrypt     bool
	like        string
	objectLock  string
	lockMode    string
}

func newInitCommand(g *cli.Global) *cobra.Command {
	var o initOptions
	var kdf func() keys.KDF
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
repositories mix them freely.

--encrypt encrypts and authenticates everything stored (AES-256-GCM; object
names are keyed hashes) under a random master key, wrapped by a key derived
from the password (argon2id, calibrated here). More passwords, and capture
keys that can add restore points but not read them, are added with
'vmvault key'. A lost password cannot be recovered.

--like SOURCE makes a twin of another repository for 'vmvault copy': its
chunk size and compression and, when it is encrypted, its keys (opened with
a full key's password from VMVAULT_FROM_PASSWORD_FILE or _COMMAND, else as
usual; the twin's own password as with --encrypt). Copies between twins move
chunks as they are stored, and restore points keep their ids.

--object-lock 30d gives every object but lock objects a retention of that
long on storage that enforces it (S3 Object Lock: the bucket is created with
it, or must have it): nobody can delete or overwrite restore points before
it ends, not even with stolen credentials. forget, prune and gc leave
protected restore points alone and say until when. --object-lock-mode
governance lets privileged users shorten it; compliance (the default)
lets nobody.`,
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
			init := repo.InitOptions{ChunkSize: cs, Compression: o.compression, PackSize: ps}
			if !cmd.Flags().Changed("chunk-size") {
				init.ChunkSize = 0 // the default, or the original's for a twin
			}
			if !cmd.Flags().Changed("compression") {
				init.Compression = ""
			}
			opts := map[string]string{}
			if o.objectLock != "" {
				d, err := cli.ParseDuration(o.objectLock)
				if err != nil || d < time.Hour {
					return cli.Usagef("--object-lock %q: want a period of an hour or more, e.g. 30d", o.objectLock)
				}
				if o.lockMode != "compliance" && o.lockMode != "governance" {
					return cli.Usagef("--object-lock-mode %q: want compliance or governance", o.lockMode)
				}
				init.ObjectLock, init.ObjectLockMode = d, o.lockMode
				opts[backend.OptionObjectLock] = strconv.FormatInt(int64(d/time.Hour), 10) + "h"
				opts[backend.OptionObjectLockMode] = o.lockMode
			}
			if o.like != "" {
				loc, err := g.LocationOf(o.like)
				if err != nil {
					return err
				}
				like, err := g.OpenRepoAt(cmd.Context(), loc, "FROM", repo.Options{})
				if err != nil {
					return fmt.Errorf("--like: %w", err)
				}
				defer like.Close()
				init.Like = like
				if enc, _ := like.Encrypted(); enc {
					o.encrypt = true
				}
			}
			be, err := g.CreateBackendWith(cmd.Context(), opts)
			if err != nil {
				return err
			}
			if o.encrypt {
				if ps < 0 {
					return cli.Usagef("--encrypt needs packs (a --pack-size other than 0)")
				}
				if init.Password, err = cli.NewPassword("", true); err != nil {
					return err
				}
				init.KDF = kdf()
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
	cmd.Flags().StringVar(&o.compression, "compression", repo.DefaultCompression, "codec captures use unless they say otherwise: "+strings.Join(format.CompressionNames(), ", "))
	cmd.Flags().BoolVar(&o.encrypt, "encrypt", false, "encrypt the repository; the password comes from VMVAULT_PASSWORD_FILE, VMVAULT_PASSWORD_COMMAND or the terminal")
	cmd.Flags().StringVar(&o.packSize, "pack-size", "32MiB", "store chunks in packs of about this size (1MiB to 1GiB); 0 stores one object per chunk (repository format 1)")
	cmd.Flags().StringVar(&o.like, "like", "", "make a twin of the repository at this location (its chunk size, compression and keys) for vmvault copy")
	cmd.Flags().StringVar(&o.objectLock, "object-lock", "", "keep every object immutable this long after it is written (S3 Object Lock), e.g. 30d")
	cmd.Flags().StringVar(&o.lockMode, "object-lock-mode", "compliance", "object lock mode: compliance (nobody can shorten it) or governance")
	kdf = cli.KDFFlag(cmd.Flags())
	return cmd
}

package main

import (
	"bufio"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/fs/bodyfile"
)

func newTimelineCommand(g *cli.Global) *cobra.Command {
	var prefix string
	b := newBrowser(g)
	cmd := &cobra.Command{
		Use:   "timeline RP:DISK/PARTITION[/PATH]",
		Short: "Write a Sleuth Kit bodyfile of a filesystem for mactime",
		Long: `Write a body file (The Sleuth Kit 3.x format, as fls -m writes it) for every
file in a filesystem of a restore point, or under PATH:

  MD5|name|inode|mode_as_string|UID|GID|size|atime|mtime|ctime|crtime

Times are Unix seconds, 0 where the filesystem keeps no such time; the MD5
column is 0. Feed it to mactime to get a timeline:

  vmvault timeline web01@latest:disk0/p2 > body.txt
  mactime -b body.txt -d 2026-11-01..2026-11-23 > timeline.csv

` + browseHelp,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			defer b.close()
			ctx := cmd.Context()
			l, err := b.locate(ctx, args[0], true)
			if err != nil {
				return err
			}
			ino, err := l.Resolve(ctx, false)
			if err != nil {
				return err
			}
			w := bufio.NewWriterSize(cmd.OutOrStdout(), 256<<10)
			defer w.Flush()
			if err := bodyfile.Write(ctx, w, l.FS, ino, l.Path, prefix, b.all); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v\n", err)
			}
			return w.Flush()
		},
	}
	b.addFlags(cmd.Flags())
	cmd.Flags().StringVar(&prefix, "prefix", "", "string put before every path (fls -m's mount point, e.g. C:)")
	cmd.Flags().BoolVarP(&b.all, "all", "a", false, "include filesystem metadata files (NTFS $MFT, …)")
	return cmd
}

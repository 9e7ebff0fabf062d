package main

import (
	"bufio"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/fs/restore"
)

func newCatCommand(g *cli.Global) *cobra.Command {
	b := newBrowser(g)
	cmd := &cobra.Command{
		Use:   "cat PATH...",
		Short: "Print files from inside a restore point's disk",
		Long: `Write the content of files inside a restore point's disks to stdout.
Symbolic links are followed inside the filesystem (never on this host).
A damaged chunk of the repository stops with an error naming the restore
point, disk and offset.

` + browseHelp,
		Example: "  vmvault cat web01@latest:disk0/p2/etc/hostname\n  vmvault cat --image disk.img p1/var/log/syslog | grep sshd",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			defer b.close()
			ctx := cmd.Context()
			// Smaller than CopyRange's blocks, so those go straight to
			// stdout (bufio copies a write that fits its free space).
			w := bufio.NewWriterSize(cmd.OutOrStdout(), 64<<10)
			defer w.Flush()
			for _, arg := range args {
				l, err := b.locate(ctx, arg, true)
				if err != nil {
					return err
				}
				ino, err := l.Resolve(ctx, true)
				if err != nil {
					return err
				}
				f, err := l.FS.Open(ctx, ino)
				if err != nil {
					return fmt.Errorf("%s%s: %w", l.Prefix(), l.Path, err)
				}
				if err := restore.CopyRange(ctx, w, f, 0, f.Size(), nil); err != nil {
					return fmt.Errorf("cat %s%s: %w", l.Prefix(), l.Path, err)
				}
			}
			return w.Flush()
		},
	}
	b.addFlags(cmd.Flags())
	return cmd
}

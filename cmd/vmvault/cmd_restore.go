package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/blockdev"
	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
)

type restoreOptions struct {
	disk      string
	to        string
	overwrite bool
	noSparse  bool
}

func newRestoreCommand(g *cli.Global) *cobra.Command {
	var o restoreOptions
	cmd := &cobra.Command{
		Use:   "restore RESTORE_POINT --disk NAME --to FILE",
		Short: "Restore a disk to an image file or block device",
		Long: `Restore one disk of a restore point as a raw image.

Every chunk is checked against its hash while restoring; a damaged chunk
stops the restore with an error naming the restore point, disk and offset
(exit code 3). A regular-file target is written sparse: all-zero chunks
become holes. A block-device target gets every byte written.

An existing file or block device is only replaced with --overwrite. A
block device that is mounted (or one of its partitions is), is used by
device-mapper, LVM, md or swap, or is opened exclusively by another
program is refused even then; it is held exclusively while restoring.`,
		Example: "  vmvault restore web01@latest --disk disk0 --to /tmp/web01.raw\n  vmvault restore 3fa4b2c1 --to /dev/vg0/restore --disk disk0 --overwrite",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.to == "" {
				return cli.Usagef("--to FILE is required")
			}
			ctx := cmd.Context()
			r, err := g.OpenRepo(ctx, repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			if err := cli.NeedReadKey(r, "restore"); err != nil {
				return err
			}
			rp, err := resolveOne(cmd, r, args[0])
			if err != nil {
				return err
			}
			lock, err := cli.ReadLock(ctx, r, "restore", g.LockWait, rp)
			if err != nil {
				return err
			}
			defer lock.Unlock()
			disk := o.disk
			if disk == "" {
				if len(rp.Disks) != 1 {
					return cli.Usagef("restore point %s has %d disks: choose one with --disk", rp.ID.Short(), len(rp.Disks))
				}
				disk = rp.Disks[0].Name
			}
			d, err := r.OpenDisk(ctx, rp, disk)
			if err != nil {
				return err
			}
			f, sparse, err := openTarget(o.to, o.overwrite, d.Size())
			if err != nil {
				return err
			}
			start := time.Now()
			p := &repo.Progress{}
			stop := cli.ShowProgress("restore", p, g.Quiet)
			err = d.Restore(ctx, cli.NewStreamFile(f, 64<<20), repo.RestoreOptions{Sparse: sparse && !o.noSparse, Progress: p})
			stop()
			if err == nil {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				if sparse {
					_ = os.Remove(o.to) // do not leave a half-restored image that looks complete
				}
				return fmt.Errorf("restore %s disk %s to %s: %w", rp.ID.Short(), disk, o.to, err)
			}
			el := time.Since(start)
			fmt.Fprintf(g.Summary(cmd.OutOrStdout()), "restored %s disk %s (%s) to %s in %.1fs (%s/s)\n", rp.ID.Short(), disk, cli.Bytes(d.Size()), o.to,
				el.Seconds(), cli.Bytes(int64(float64(d.Size())/max(el.Seconds(), 1e-3))))
			return nil
		},
	}
	cmd.Flags().StringVar(&o.disk, "disk", "", "disk to restore (may be left out when there is only one)")
	cmd.Flags().StringVar(&o.to, "to", "", "target image file or block device")
	cmd.Flags().BoolVar(&o.overwrite, "overwrite", false, "replace an existing target file or the content of a block device")
	cmd.Flags().BoolVar(&o.noSparse, "no-sparse", false, "write zero chunks instead of leaving holes")
	return cmd
}

// openTarget opens a restore target and reports whether holes read as
// zeros there (a new or truncated regular file).
func openTarget(path string, overwrite bool, size int64) (*os.File, bool, error) {
	fi, err := os.Stat(path)
	switch {
	case err == nil && fi.Mode()&os.ModeDevice != 0:
		if fi.Mode()&os.ModeCharDevice != 0 {
			return nil, false, fmt.Errorf("%s is a character device: restore to an image file or a block device", path)
		}
		if !overwrite {
			return nil, false, fmt.Errorf("%s is a block device: restoring replaces everything on it; use --overwrite", path)
		}
		f, devSize, err := blockdev.OpenExclusive(path)
		if err != nil {
			return nil, false, err
		}
		if devSize < size {
			f.Close()
			return nil, false, fmt.Errorf("block device %s holds %d bytes, the disk needs %d", path, devSize, size)
		}
		return f, false, nil
	case err == nil && !overwrite:
		return nil, false, fmt.Errorf("%s exists: use --overwrite to replace it", path)
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return nil, false, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, false, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, false, err
	}
	return f, true, nil
}

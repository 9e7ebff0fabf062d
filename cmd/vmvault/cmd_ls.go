package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/browse"
)

type lsOptions struct {
	long, recursive, json bool
}

func newLsCommand(g *cli.Global) *cobra.Command {
	var o lsOptions
	b := newBrowser(g)
	cmd := &cobra.Command{
		Use:   "ls PATH...",
		Short: "List files inside a restore point's disk (no FUSE needed)",
		Long: `List directories inside the filesystems of a restore point's disks.

A path that stops at the disk (RP:DISK, or nothing with --image) lists its
partitions. --json prints one JSON object per file with path, type, size,
mode, uid, gid, mtime, atime, ctime, crtime (RFC 3339, left out when the
filesystem has no such time), inode, nlink and a symlink's target.
NTFS metadata files ($MFT, …) are shown with --all; alternate data streams
of files and directories are listed as "file:stream" and "dir:stream".

` + browseHelp,
		Example: `  vmvault ls web01@latest:disk0/p2/etc
  vmvault ls -l web01@latest:disk0/p2/home/alice
  vmvault ls -R --json --image disk.img p1/etc`,
		Args: cobra.MinimumNArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				if b.image == "" {
					return cli.Usagef("name a path (RP:DISK/PARTITION/PATH) or use --image FILE")
				}
				args = []string{""}
			}
			defer b.close()
			w := bufio.NewWriterSize(cmd.OutOrStdout(), 256<<10)
			defer w.Flush()
			for _, arg := range args {
				if err := runLs(cmd.Context(), b, w, arg, o, len(args) > 1); err != nil {
					return err
				}
			}
			return nil
		},
	}
	b.addFlags(cmd.Flags())
	cmd.Flags().BoolVarP(&o.long, "long", "l", false, "long listing: mode, links, owner, size, mtime")
	cmd.Flags().BoolVarP(&o.recursive, "recursive", "R", false, "list subdirectories recursively")
	cmd.Flags().BoolVar(&o.json, "json", false, "print JSON lines")
	cmd.Flags().BoolVarP(&b.all, "all", "a", false, "include filesystem metadata files (NTFS $MFT, …)")
	return cmd
}

func runLs(ctx context.Context, b *browser, w io.Writer, arg string, o lsOptions, header bool) error {
	l, err := b.locate(ctx, arg, false)
	if err != nil {
		return err
	}
	if l.Part == nil {
		return printPartitions(w, l, o.json)
	}
	st, err := l.Stat(ctx)
	if err != nil {
		return err
	}
	ino := st.Ino
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	print := func(e browse.Entry, name string) error {
		switch {
		case o.json:
			return enc.Encode(e)
		case o.long:
			_, err := fmt.Fprintln(w, longLine(e, name))
			return err
		default:
			_, err := fmt.Fprintln(w, browse.QuoteName(name))
			return err
		}
	}
	if st.Type != fs.TypeDir {
		return print(browse.NewEntry(ctx, l.FS, l.Path, l.Path, st), l.Path)
	}
	if header && !o.json {
		fmt.Fprintf(w, "%s%s:\n", l.Prefix(), l.Path)
	}
	if !o.recursive {
		ents, err := browse.ReadDirStat(ctx, l.FS, ino, l.Path, b.all)
		for _, e := range ents {
			if perr := print(e, e.Name); perr != nil {
				return perr
			}
		}
		return err
	}
	// -R: JSON lines in walk order; text grouped per directory as ls -R.
	if o.json {
		return browse.Walk(ctx, l.FS, ino, l.Path, b.all, func(p, name string, st fs.Stat) error {
			return print(browse.NewEntry(ctx, l.FS, p, name, st), p)
		})
	}
	var dirs []string
	var cur string
	err = browse.Walk(ctx, l.FS, ino, l.Path, b.all, func(p, name string, st fs.Stat) error {
		dir := strings.TrimSuffix(p[:len(p)-len(name)], "/")
		if dir == "" {
			dir = "/"
		}
		if dir != cur {
			if cur != "" || len(dirs) > 0 {
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "%s:\n", browse.QuoteName(dir))
			cur = dir
			dirs = append(dirs, dir)
		}
		return print(browse.NewEntry(ctx, l.FS, p, name, st), name)
	})
	return err
}

func longLine(e browse.Entry, name string) string {
	t := "-"
	if e.Mtime != nil {
		t = e.Stat.Mtime.UTC().Format("2006-01-02 15:04:05")
	}
	size := strconv.FormatInt(e.Size, 10)
	if e.Stat.Type == fs.TypeCharDev || e.Stat.Type == fs.TypeBlockDev {
		r := e.Stat.Rdev
		size = fmt.Sprintf("%d, %d", (r>>8)&0xfff, (r&0xff)|((r>>12)&0xfff00))
	}
	s := fmt.Sprintf("%s %3d %5d %5d %12s %s %s", browse.ModeString(e.Stat), e.Nlink, e.UID, e.GID, size, t, browse.QuoteName(name))
	if e.Target != "" {
		s += " -> " + browse.QuoteName(e.Target)
	}
	return s
}

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/fs"
)

type lsOptions struct {
	long, recursive, json bool
}

func newLsCommand(g *cli.Global) *cobra.Command {
	var o lsOptions
	b := &browser{g: g}
	cmd := &cobra.Command{
		Use:   "ls PATH...",
		Short: "List files inside a restore point's disk (no FUSE needed)",
		Long: `List directories inside the filesystems of a restore point's disks.

A path that stops at the disk (RP:DISK, or nothing with --image) lists its
partitions. --json prints one JSON object per file with path, type, size,
mode, uid, gid, mtime, atime, ctime, crtime (RFC 3339, left out when the
filesystem has no such time), inode, nlink and a symlink's target.
NTFS metadata files ($MFT, …) are shown with --all; alternate data streams
are listed as "file:stream".

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
	if l.part == nil {
		return printPartitions(w, l, o.json)
	}
	st, err := l.stat(ctx)
	if err != nil {
		return err
	}
	ino := st.Ino
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	print := func(e entry, name string) error {
		switch {
		case o.json:
			return enc.Encode(e)
		case o.long:
			_, err := fmt.Fprintln(w, longLine(e, name))
			return err
		default:
			_, err := fmt.Fprintln(w, quoteName(name))
			return err
		}
	}
	if st.Type != fs.TypeDir {
		return print(makeEntry(ctx, l.fsys, l.path, l.path, st), l.path)
	}
	if header && !o.json {
		fmt.Fprintf(w, "%s%s:\n", l.prefix(), l.path)
	}
	if !o.recursive {
		ents, err := readDirStat(ctx, l.fsys, ino, l.path, b.all)
		for _, e := range ents {
			if perr := print(e, e.name); perr != nil {
				return perr
			}
		}
		return err
	}
	// -R: JSON lines in walk order; text grouped per directory as ls -R.
	if o.json {
		return walk(ctx, l.fsys, ino, l.path, b.all, map[fs.Ino]bool{}, func(p, name string, st fs.Stat) error {
			return print(makeEntry(ctx, l.fsys, p, name, st), p)
		})
	}
	var dirs []string
	var cur string
	err = walk(ctx, l.fsys, ino, l.path, b.all, map[fs.Ino]bool{}, func(p, name string, st fs.Stat) error {
		dir := strings.TrimSuffix(p[:len(p)-len(name)], "/")
		if dir == "" {
			dir = "/"
		}
		if dir != cur {
			if cur != "" || len(dirs) > 0 {
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "%s:\n", quoteName(dir))
			cur = dir
			dirs = append(dirs, dir)
		}
		return print(makeEntry(ctx, l.fsys, p, name, st), name)
	})
	return err
}

// readDirStat lists one directory with every entry stat'ed, sorted by name.
func readDirStat(ctx context.Context, fsys fs.FileSystem, dir fs.Ino, p string, all bool) ([]entry, error) {
	children, err := statDir(ctx, fsys, dir, p, all)
	out := make([]entry, len(children))
	for i, c := range children {
		out[i] = makeEntry(ctx, fsys, c.path, c.name, c.st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, err
}

func longLine(e entry, name string) string {
	t := "-"
	if e.Mtime != nil {
		t = e.st.Mtime.UTC().Format("2006-01-02 15:04:05")
	}
	size := strconv.FormatInt(e.Size, 10)
	if e.st.Type == fs.TypeCharDev || e.st.Type == fs.TypeBlockDev {
		r := e.st.Rdev
		size = fmt.Sprintf("%d, %d", (r>>8)&0xfff, (r&0xff)|((r>>12)&0xfff00))
	}
	s := fmt.Sprintf("%s %3d %5d %5d %12s %s %s", modeString(e.st), e.Nlink, e.UID, e.GID, size, t, quoteName(name))
	if e.Target != "" {
		s += " -> " + quoteName(e.Target)
	}
	return s
}

// quoteName makes a name from an image safe to print on a terminal:
// control characters and invalid UTF-8 are escaped, as ls -b does.
func quoteName(s string) string {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			q := strconv.Quote(s)
			return q[1 : len(q)-1]
		}
	}
	return s
}

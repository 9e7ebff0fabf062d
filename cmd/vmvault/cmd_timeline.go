package main

import (
	"bufio"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/fs"
)

func newTimelineCommand(g *cli.Global) *cobra.Command {
	var prefix string
	b := &browser{g: g}
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
			ino, err := l.resolve(ctx, false)
			if err != nil {
				return err
			}
			w := bufio.NewWriterSize(cmd.OutOrStdout(), 256<<10)
			defer w.Flush()
			base := strings.TrimSuffix(prefix, "/")
			err = walk(ctx, l.fsys, ino, l.path, b.all, map[fs.Ino]bool{}, func(p, name string, st fs.Stat) error {
				n := base + p
				if st.Type == fs.TypeSymlink {
					if t, err := l.fsys.Readlink(ctx, st.Ino); err == nil {
						n += " -> " + t
					}
				}
				_, err := fmt.Fprintf(w, "0|%s|%d|%s|%d|%d|%d|%d|%d|%d|%d\n", bodyName(n), st.Ino, bodyMode(st),
					st.UID, st.GID, st.Size, unixSec(st.Atime), unixSec(st.Mtime), unixSec(st.Ctime), unixSec(st.Crtime))
				return err
			})
			if err != nil {
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

func unixSec(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// bodyName keeps the bodyfile one record per line with '|'-separated
// fields: those characters are escaped in names.
func bodyName(s string) string {
	r := strings.NewReplacer("|", `\|`, "\n", `\n`, "\r", `\r`, "\x00", `\0`)
	return r.Replace(s)
}

// bodyMode renders Sleuth Kit's mode string, e.g. "r/rrw-r--r--": the
// name type, then the metadata type and permission bits.
func bodyMode(st fs.Stat) string {
	c := map[fs.Type]byte{fs.TypeRegular: 'r', fs.TypeDir: 'd', fs.TypeSymlink: 'l', fs.TypeFIFO: 'p',
		fs.TypeCharDev: 'c', fs.TypeBlockDev: 'b', fs.TypeSocket: 'h'}[st.Type]
	if c == 0 {
		c = '-'
	}
	m := []byte(modeString(st))
	m[0] = c
	return string(c) + "/" + string(m)
}

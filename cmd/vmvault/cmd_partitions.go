package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/fs/browse"
)

func newPartitionsCommand(g *cli.Global) *cobra.Command {
	var asJSON bool
	b := newBrowser(g)
	cmd := &cobra.Command{
		Use:   "partitions RP[:DISK]",
		Short: "Show the partition table of a restore point's disk",
		Long: `Show the partition table of a disk: table type, partition name (p1, …),
start and size in bytes, type id or GUID, the filesystem found in it, and its
label and UUID. Logical partitions of an MBR disk are p5 and up; the
extended partition that holds them is listed too. The logical volumes of
LVM2 physical volumes on the disk follow, named VG-LV as device-mapper names
them (a '-' inside a name doubled); one that cannot be read (on a physical
volume of another disk, a thin or RAID volume) is listed with the reason. A table entry that cannot
be used (it lies outside the disk, a broken chain of logical partitions) is
reported by name below the table (in --json: a line with "name" and
"error"); the other partitions are listed and readable as usual.

` + browseHelp,
		Example: "  vmvault partitions web01@latest:disk0\n  vmvault partitions --json --image disk.img",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			arg := ""
			if len(args) == 1 {
				arg = args[0]
			}
			if arg == "" && b.image == "" {
				return cli.Usagef("name a restore point and disk (RP:DISK) or use --image FILE")
			}
			defer b.close()
			l, err := b.locate(cmd.Context(), arg, false)
			if err != nil {
				return err
			}
			return printPartitions(cmd.OutOrStdout(), l, asJSON)
		},
	}
	b.addFlags(cmd.Flags())
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON lines")
	return cmd
}

func printPartitions(w io.Writer, l *browse.Location, asJSON bool) error {
	d := l.Disk
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		for _, p := range d.Partitions {
			if err := enc.Encode(p); err != nil {
				return err
			}
		}
		for _, e := range d.TableErrors {
			if err := enc.Encode(e); err != nil {
				return err
			}
		}
		return nil
	}
	fmt.Fprintf(w, "disk: %s, partition table: %s", cli.Bytes(d.Size()), d.Table)
	if d.ID != "" {
		fmt.Fprintf(w, " (id %s)", d.ID)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTART\tSIZE\tTYPE\tFS\tLABEL\tUUID")
	var notes []string
	for _, p := range d.Partitions {
		typ := p.Type
		if p.TypeName != "" {
			typ += " (" + p.TypeName + ")"
		}
		fsys := p.Filesystem
		if p.Extended {
			fsys = "(extended)"
		}
		if fsys == "" {
			fsys = "-"
		}
		start := fmt.Sprint(p.Start)
		if p.Error != "" {
			start, fsys = "-", "(unreadable)"
			notes = append(notes, p.Name+": "+p.Error)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, start, cli.Bytes(p.Size), typ, fsys, browse.QuoteName(p.Label), p.UUID)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
	for _, e := range d.TableErrors {
		fmt.Fprintf(w, "%s: bad table entry: %v\n", e.Name, e.Err)
	}
	return nil
}

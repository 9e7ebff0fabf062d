package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/browse"
	"github.com/vmvault/vmvault/repo"
)

type findOptions struct {
	name, iname string
	newer       string
	typ         string
	json        bool
}

type findHit struct {
	RP        string `json:"rp,omitempty"`
	VM        string `json:"vm,omitempty"`
	RPTime    string `json:"rp_time,omitempty"`
	Disk      string `json:"disk,omitempty"`
	Partition string `json:"partition"`
	browse.Entry
}

func newFindCommand(g *cli.Global) *cobra.Command {
	var o findOptions
	b := newBrowser(g)
	cmd := &cobra.Command{
		Use:   "find [RP...] [--name GLOB] [--newer TIME]",
		Short: "Search for files across restore points",
		Long: `Search the filesystems of restore points for files by name and time.

Each argument is a restore point (every disk and partition of it is
searched), RP:DISK, RP:DISK/PARTITION/PATH (that subtree), or VM@all (every
restore point of VM). Without arguments every restore point is searched.
Hits print as RP:DISK/PARTITION/PATH, ready for vmvault cat or cp; --json
adds the restore point's VM and time and the file's metadata.

--name and --iname match the file name with a shell glob (* ? [..]);
--newer keeps files modified after TIME (2026-11-01, 2026-11-01T10:00,
RFC 3339); --type is f, d, l, p, c, b or s.

` + browseHelp,
		Example: `  vmvault find web01@all --name 'authorized_keys'
  vmvault find web01@latest --name '*.php' --newer 2026-11-20 --json
  vmvault find --image disk.img --iname '*.exe'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			defer b.close()
			return runFind(cmd.Context(), b, cmd.OutOrStdout(), cmd.ErrOrStderr(), args, o)
		},
	}
	b.addFlags(cmd.Flags())
	f := cmd.Flags()
	f.StringVar(&o.name, "name", "", "file name glob (case-sensitive)")
	f.StringVar(&o.iname, "iname", "", "file name glob (case-insensitive)")
	f.StringVar(&o.newer, "newer", "", "only files modified after TIME")
	f.StringVar(&o.typ, "type", "", "only files of this type: f, d, l, p, c, b, s")
	f.BoolVar(&o.json, "json", false, "print JSON lines")
	f.BoolVarP(&b.all, "all", "a", false, "include filesystem metadata files (NTFS $MFT, …)")
	return cmd
}

func parseWhen(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return repo.ParseTime(s)
}

func runFind(ctx context.Context, b *browser, out, errOut io.Writer, args []string, o findOptions) error {
	q := browse.Query{Name: o.name, IName: o.iname}
	if o.newer != "" {
		t, err := parseWhen(o.newer)
		if err != nil {
			return cli.Usagef("--newer: %v", err)
		}
		q.Newer = t
	}
	if err := q.Check(); err != nil {
		return cli.Usagef("%v", err)
	}
	if o.typ != "" {
		var ok bool
		if q.Type, ok = browse.ParseType(o.typ); !ok {
			return cli.Usagef("--type must be one of f, d, l, p, c, b, s")
		}
	}
	w := bufio.NewWriterSize(out, 256<<10)
	defer w.Flush()
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)

	targets, err := findTargets(ctx, b, args)
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range targets {
		ino, err := l.Resolve(ctx, false)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rp := b.rp(l)
		err = browse.Find(ctx, l.FS, ino, l.Path, b.all, q, func(p, name string, st fs.Stat) error {
			if !o.json {
				_, err := fmt.Fprintf(w, "%s%s\n", l.Prefix(), browse.QuoteName(p))
				return err
			}
			h := findHit{Partition: l.Part.Name, Disk: l.DiskName, Entry: browse.NewEntry(ctx, l.FS, p, name, st)}
			if rp != nil {
				h.RP, h.VM, h.RPTime = rp.ID.String(), rp.VM, rp.Time.UTC().Format(time.RFC3339)
			}
			return enc.Encode(h)
		})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			errs = append(errs, err)
		}
	}
	w.Flush()
	for _, e := range errs {
		fmt.Fprintf(errOut, "warning: %v\n", e)
	}
	return nil
}

// findTargets expands find's arguments into filesystems (and subtrees) to
// search. Partitions without a readable filesystem are skipped silently
// when the argument did not name them.
func findTargets(ctx context.Context, b *browser, args []string) ([]*browse.Location, error) {
	var out []*browse.Location
	// addPath adds an argument naming a disk (all its partitions) or a
	// path inside a partition.
	addPath := func(a string) error {
		l, err := b.locate(ctx, a, false)
		if err != nil {
			return err
		}
		if l.Part == nil {
			out = append(out, b.paths.Filesystems(l)...)
		} else {
			out = append(out, l)
		}
		return nil
	}
	if b.image != "" {
		if len(args) == 0 {
			args = []string{""}
		}
		for _, a := range args {
			if err := addPath(a); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	_, rps, err := b.repository(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	if len(args) == 0 {
		for _, rp := range rps {
			names = append(names, rp.ID.String())
		}
	}
	for _, a := range args {
		if vm, ok := strings.CutSuffix(a, "@all"); ok {
			n := 0
			for _, rp := range rps {
				if rp.VM == vm {
					names = append(names, rp.ID.String())
					n++
				}
			}
			if n == 0 {
				return nil, cli.Usagef("no restore points of VM %q", vm)
			}
			continue
		}
		names = append(names, a)
	}
	for _, a := range names {
		rp, rest, err := repo.SplitRestorePoint(rps, a)
		if err != nil {
			return nil, cli.Usagef("%v", err)
		}
		if rest != "" {
			if err := addPath(a); err != nil {
				return nil, err
			}
			continue
		}
		src := b.rpSource(rp)
		for _, d := range rp.Disks {
			l, err := b.paths.OpenDisk(ctx, src, d.Name)
			if err != nil {
				return nil, err
			}
			out = append(out, b.paths.Filesystems(l)...)
		}
	}
	return out, nil
}

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/fs"
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
	entry
}

func newFindCommand(g *cli.Global) *cobra.Command {
	var o findOptions
	b := &browser{g: g}
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
	var newer time.Time
	if o.newer != "" {
		t, err := parseWhen(o.newer)
		if err != nil {
			return cli.Usagef("--newer: %v", err)
		}
		newer = t
	}
	for _, g := range []string{o.name, o.iname} {
		if _, err := path.Match(g, ""); err != nil {
			return cli.Usagef("bad glob %q: %v", g, err)
		}
	}
	var typ fs.Type
	if o.typ != "" {
		m := map[string]fs.Type{"f": fs.TypeRegular, "d": fs.TypeDir, "l": fs.TypeSymlink, "p": fs.TypeFIFO, "c": fs.TypeCharDev, "b": fs.TypeBlockDev, "s": fs.TypeSocket}
		var ok bool
		if typ, ok = m[o.typ]; !ok {
			return cli.Usagef("--type must be one of f, d, l, p, c, b, s")
		}
	}
	match := func(name string, st fs.Stat) bool {
		if o.name != "" {
			if ok, _ := path.Match(o.name, name); !ok {
				return false
			}
		}
		if o.iname != "" {
			if ok, _ := path.Match(strings.ToLower(o.iname), strings.ToLower(name)); !ok {
				return false
			}
		}
		if !newer.IsZero() && !st.Mtime.After(newer) {
			return false
		}
		return typ == fs.TypeUnknown || st.Type == typ
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
		ino, err := l.resolve(ctx, false)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = walk(ctx, l.fsys, ino, l.path, b.all, map[fs.Ino]bool{}, func(p, name string, st fs.Stat) error {
			if !match(name, st) {
				return nil
			}
			if !o.json {
				_, err := fmt.Fprintf(w, "%s%s\n", l.prefix(), quoteName(p))
				return err
			}
			h := findHit{Partition: l.part.Name, Disk: l.diskName, entry: makeEntry(ctx, l.fsys, p, name, st)}
			if l.rp != nil {
				h.RP, h.VM, h.RPTime = l.rp.ID.String(), l.rp.VM, l.rp.Time.UTC().Format(time.RFC3339)
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
func findTargets(ctx context.Context, b *browser, args []string) ([]*location, error) {
	var out []*location
	expand := func(l *location) {
		for i := range l.disk.Partitions {
			p := l.disk.Partitions[i]
			if p.Extended {
				continue
			}
			nl := &location{rp: l.rp, diskName: l.diskName, disk: l.disk, part: &p, path: "/"}
			if err := b.openFS(nl); err != nil {
				continue
			}
			out = append(out, nl)
		}
	}
	// addPath adds an argument naming a disk (all its partitions) or a
	// path inside a partition.
	addPath := func(a string) error {
		l, err := b.locate(ctx, a, false)
		if err != nil {
			return err
		}
		if l.part == nil {
			expand(l)
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
		rp, rest, err := splitRP(rps, a)
		if err != nil {
			return nil, cli.Usagef("%v", err)
		}
		if rest != "" {
			if err := addPath(a); err != nil {
				return nil, err
			}
			continue
		}
		for _, d := range rp.Disks {
			disk, err := b.openDisk(ctx, rp, d.Name)
			if err != nil {
				return nil, err
			}
			expand(&location{rp: rp, diskName: d.Name, disk: disk})
		}
	}
	return out, nil
}

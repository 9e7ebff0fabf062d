package main

import (
	"fmt"
	"os"
	"path"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/browse"
	"github.com/vmvault/vmvault/fs/restore"
	"github.com/vmvault/vmvault/repo"
)

type cpOptions struct {
	overwrite bool
}

func newCpCommand(g *cli.Global) *cobra.Command {
	var o cpOptions
	b := newBrowser(g)
	cmd := &cobra.Command{
		Use:   "cp SRC... DEST",
		Short: "Restore files and directory trees from inside a restore point's disk",
		Long: `Copy files and whole directory trees out of a restore point's disks.

Modes and modification/access times are kept (and owners when run as root);
symbolic links are copied as links, hard links inside one copy stay linked,
sparse files stay sparse, FIFOs are recreated and device nodes are made when
run as root. With several sources, or when DEST is an existing directory,
each source lands in DEST under its own name; otherwise DEST is the new name.

Every write happens beneath DEST: a name in the image that contains '/',
NUL, is "." or ".." is refused with an error and the rest of the copy goes
on; symbolic links are never followed out of DEST. Existing files are only
replaced with --overwrite. The exit code is 1 when any entry failed.

` + browseHelp,
		Example: `  vmvault cp web01@latest:disk0/p2/etc/nginx /tmp/restore/
  vmvault cp --image disk.img p1/home/alice/report.odt p1/home/alice/notes ./out`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			defer b.close()
			return runCp(cmd, b, args[:len(args)-1], args[len(args)-1], o)
		},
	}
	b.addFlags(cmd.Flags())
	cmd.Flags().BoolVar(&o.overwrite, "overwrite", false, "replace existing files in DEST")
	cmd.Flags().BoolVarP(&b.all, "all", "a", false, "include filesystem metadata files (NTFS $MFT, …)")
	return cmd
}

func runCp(cmd *cobra.Command, b *browser, srcs []string, dest string, o cpOptions) error {
	ctx := cmd.Context()
	into := len(srcs) > 1
	if fi, err := os.Stat(dest); err == nil && fi.IsDir() {
		into = true
	} else if into {
		if err := os.MkdirAll(dest, 0o755); err != nil {
			return err
		}
	}
	type job struct {
		l    *browse.Location
		name string
		st   fs.Stat
	}
	var jobs []job
	var total int64
	for _, src := range srcs {
		l, err := b.locate(ctx, src, true)
		if err != nil {
			return err
		}
		st, err := l.Stat(ctx)
		if err != nil {
			return err
		}
		name := path.Base(l.Path)
		if l.Path == "/" {
			name = l.Part.Name
		}
		jobs = append(jobs, job{l, name, st})
		total += restore.TreeSize(ctx, l.FS, st.Ino, st, b.all)
	}
	rootDir, target := dest, ""
	if !into {
		rootDir, target = path.Dir(dest), path.Base(dest)
	}
	p := &repo.Progress{}
	p.Total.Store(total)
	r, err := restore.Open(rootDir, restore.Options{Overwrite: o.overwrite, All: b.all, Privileged: os.Geteuid() == 0, Progress: &p.Done})
	if err != nil {
		return err
	}
	defer r.Close()
	stop := cli.ShowProgress("cp", p, b.g.Quiet)
	var errs []error
	for _, j := range jobs {
		rel := target
		if into {
			rel = j.name
		}
		errs = append(errs, r.Copy(ctx, j.l.FS, j.st.Ino, j.st, rel, j.l.Prefix()+j.l.Path)...)
		if ctx.Err() != nil {
			break
		}
	}
	stop()
	for _, e := range errs {
		fmt.Fprintf(cmd.ErrOrStderr(), "error: %v\n", e)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(errs) > 0 {
		for _, e := range errs {
			if repo.IsChunkError(e) {
				return fmt.Errorf("%d entries could not be copied: %w", len(errs), e)
			}
		}
		return fmt.Errorf("%d entries could not be copied", len(errs))
	}
	return nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/extent"
)

type cpOptions struct {
	overwrite bool
}

func newCpCommand(g *cli.Global) *cobra.Command {
	var o cpOptions
	b := &browser{g: g}
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

// copier copies one source tree beneath an os.Root, which confines every
// path (and every symlink it meets) to DEST.
type copier struct {
	ctx       context.Context
	fsys      fs.FileSystem
	root      *os.Root
	rootPath  string
	overwrite bool
	all       bool
	asRoot    bool
	links     map[fs.Ino]string // first destination of each multiply-linked file
	seen      map[fs.Ino]bool   // directories entered
	progress  *repo.Progress
	errs      []error
	dirTimes  []dirTime
}

type dirTime struct {
	rel string
	st  fs.Stat
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
		l    *location
		ino  fs.Ino
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
		st, err := l.stat(ctx)
		if err != nil {
			return err
		}
		name := path.Base(l.path)
		if l.path == "/" {
			name = l.part.Name
		}
		jobs = append(jobs, job{l, st.Ino, name, st})
		total += treeSize(ctx, l.fsys, st.Ino, st, b.all)
	}
	rootDir, target := dest, ""
	if !into {
		rootDir, target = path.Dir(dest), path.Base(dest)
	}
	root, err := os.OpenRoot(rootDir)
	if err != nil {
		return fmt.Errorf("open destination %s: %w", rootDir, err)
	}
	defer root.Close()
	p := &repo.Progress{}
	p.Total.Store(total)
	stop := cli.ShowProgress("cp", p, b.g.Quiet)
	var errs []error
	for _, j := range jobs {
		c := &copier{ctx: ctx, fsys: j.l.fsys, root: root, rootPath: rootDir, overwrite: o.overwrite, all: b.all,
			asRoot: os.Geteuid() == 0, links: map[fs.Ino]string{}, seen: map[fs.Ino]bool{}, progress: p}
		rel := target
		if into {
			rel = j.name
		}
		if !fs.SafeName(rel) {
			errs = append(errs, fmt.Errorf("%s%s: refusing to create %q: the name would leave the destination", j.l.prefix(), j.l.path, rel))
			continue
		}
		c.copy(j.ino, j.st, rel, j.l.prefix()+j.l.path)
		c.finishDirs()
		errs = append(errs, c.errs...)
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

// treeSize adds up the regular-file bytes under ino for the progress line.
func treeSize(ctx context.Context, fsys fs.FileSystem, ino fs.Ino, st fs.Stat, all bool) int64 {
	if st.Type != fs.TypeDir {
		if st.Type == fs.TypeRegular {
			return st.Size
		}
		return 0
	}
	var n int64
	_ = walk(ctx, fsys, ino, "/", all, map[fs.Ino]bool{}, func(_, _ string, st fs.Stat) error {
		if st.Type == fs.TypeRegular {
			n += st.Size
		}
		return nil
	})
	return n
}

func (c *copier) fail(src string, err error) {
	c.errs = append(c.errs, fmt.Errorf("%s: %w", src, err))
}

// copy copies one entry to rel (a path beneath the root, every component of
// which has passed fs.SafeName).
func (c *copier) copy(ino fs.Ino, st fs.Stat, rel, src string) {
	if c.ctx.Err() != nil {
		return
	}
	if st.Type != fs.TypeDir && st.Nlink > 1 {
		if first, ok := c.links[ino]; ok {
			if err := c.replace(rel); err != nil {
				c.fail(src, err)
				return
			}
			if err := c.root.Link(first, rel); err != nil {
				c.fail(src, fmt.Errorf("hard link: %w", err))
			}
			return
		}
		c.links[ino] = rel
	}
	var err error
	switch st.Type {
	case fs.TypeDir:
		c.copyDir(ino, st, rel, src)
		return
	case fs.TypeRegular:
		err = c.copyFile(ino, st, rel)
	case fs.TypeSymlink:
		err = c.copySymlink(ino, st, rel)
	case fs.TypeFIFO:
		err = c.mknod(rel, unix.S_IFIFO, st, 0)
	case fs.TypeCharDev, fs.TypeBlockDev:
		if !c.asRoot {
			err = errors.New("device node skipped: creating it needs root")
			break
		}
		mode := uint32(unix.S_IFCHR)
		if st.Type == fs.TypeBlockDev {
			mode = unix.S_IFBLK
		}
		err = c.mknod(rel, mode, st, int(st.Rdev))
	default:
		err = fmt.Errorf("%s files are not copied", st.Type)
	}
	if err != nil {
		c.fail(src, err)
	}
}

func (c *copier) copyDir(ino fs.Ino, st fs.Stat, rel, src string) {
	if c.seen[ino] {
		c.fail(src, fmt.Errorf("directory already copied (a cycle in the image): %w", fs.ErrCorrupt))
		return
	}
	c.seen[ino] = true
	if err := c.root.Mkdir(rel, 0o700); err != nil && !errors.Is(err, iofs.ErrExist) {
		c.fail(src, err)
		return
	} else if err != nil {
		fi, lerr := c.root.Lstat(rel)
		if lerr != nil || !fi.IsDir() {
			c.fail(src, fmt.Errorf("%s exists and is not a directory", rel))
			return
		}
	}
	ents, err := c.fsys.ReadDir(c.ctx, ino)
	if err != nil {
		c.fail(src, err)
	}
	hidden, _ := c.fsys.(fs.HiddenChecker)
	for _, e := range ents {
		if !c.all && hidden != nil && hidden.Hidden(ino, e.Name) {
			continue
		}
		childSrc := strings.TrimSuffix(src, "/") + "/" + e.Name
		if !fs.SafeName(e.Name) {
			c.fail(strings.TrimSuffix(src, "/")+"/"+quoteName(e.Name), errors.New("refusing a name that contains '/' or NUL or is '.' or '..': it would leave the destination"))
			continue
		}
		cst, err := c.fsys.Stat(c.ctx, e.Ino)
		if err != nil {
			c.fail(childSrc, err)
			continue
		}
		c.copy(e.Ino, cst, rel+"/"+e.Name, childSrc)
	}
	// Modes and times of directories are set after their content, deepest
	// first (writing into a directory changes its mtime).
	c.dirTimes = append(c.dirTimes, dirTime{rel, st})
}

func (c *copier) finishDirs() {
	for i := len(c.dirTimes) - 1; i >= 0; i-- {
		d := c.dirTimes[i]
		c.setMeta(d.rel, d.st, false)
	}
	c.dirTimes = nil
}

// replace makes room for rel: an error if something exists and overwrite
// is off, else the old entry is removed (never followed).
func (c *copier) replace(rel string) error {
	if _, err := c.root.Lstat(rel); err != nil {
		return nil
	}
	if !c.overwrite {
		return fmt.Errorf("%s exists (use --overwrite)", rel)
	}
	return c.root.Remove(rel)
}

func (c *copier) copyFile(ino fs.Ino, st fs.Stat, rel string) error {
	f, err := c.fsys.Open(c.ctx, ino)
	if err != nil {
		return err
	}
	if err := c.replace(rel); err != nil {
		return err
	}
	out, err := c.root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = c.writeContent(out, f)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = c.root.Remove(rel) // a half-written file must not look restored
		return err
	}
	c.setMeta(rel, st, false)
	return nil
}

// writeContent copies a file's data; sparse files get only their data
// extents written and keep their holes.
func (c *copier) writeContent(out *os.File, f fs.File) error {
	size := f.Size()
	extents := []extent.Range{{Offset: 0, Length: size}}
	if sf, ok := f.(fs.SparseFile); ok {
		if ex, err := sf.DataExtents(); err == nil {
			extents = ex
		}
	}
	for _, e := range extents {
		if _, err := out.Seek(e.Offset, io.SeekStart); err != nil {
			return err
		}
		if err := copyRange(c.ctx, out, f, e.Offset, e.Length, &c.progress.Done); err != nil {
			return err
		}
	}
	c.progress.Done.Add(size - extent.Sum(extents))
	return out.Truncate(size)
}

func (c *copier) copySymlink(ino fs.Ino, st fs.Stat, rel string) error {
	target, err := c.fsys.Readlink(c.ctx, ino)
	if err != nil {
		return err
	}
	if strings.IndexByte(target, 0) >= 0 {
		return errors.New("symlink target contains NUL")
	}
	if err := c.replace(rel); err != nil {
		return err
	}
	if err := c.root.Symlink(target, rel); err != nil {
		return err
	}
	c.setMeta(rel, st, true)
	return nil
}

func (c *copier) mknod(rel string, kind uint32, st fs.Stat, dev int) error {
	if err := c.replace(rel); err != nil {
		return err
	}
	// os.Root has no Mknod: create it through the parent opened beneath
	// the root, so the kernel resolves no symlink outside DEST.
	dir, name := path.Split(rel)
	parent := c.rootPath
	var pfd int
	if dir != "" {
		pf, err := c.root.Open(strings.TrimSuffix(dir, "/"))
		if err != nil {
			return err
		}
		defer pf.Close()
		pfd = int(pf.Fd())
	} else {
		pf, err := os.Open(parent)
		if err != nil {
			return err
		}
		defer pf.Close()
		pfd = int(pf.Fd())
	}
	if err := unix.Mknodat(pfd, name, kind|0o600, dev); err != nil {
		return fmt.Errorf("mknod %s: %w", rel, err)
	}
	c.setMeta(rel, st, false)
	return nil
}

// setMeta applies owner (as root), mode and times. Symlinks keep their
// own mode; their times are set without following them.
func (c *copier) setMeta(rel string, st fs.Stat, symlink bool) {
	if c.asRoot {
		_ = c.root.Lchown(rel, int(st.UID), int(st.GID))
	}
	if !symlink {
		if err := c.root.Chmod(rel, iofs.FileMode(st.Mode&0o777)|modeBits(st.Mode)); err != nil {
			c.errs = append(c.errs, fmt.Errorf("%s: chmod: %w", rel, err))
		}
		at, mt := st.Atime, st.Mtime
		if at.IsZero() {
			at = mt
		}
		if !mt.IsZero() {
			if err := c.root.Chtimes(rel, at, mt); err != nil {
				c.errs = append(c.errs, fmt.Errorf("%s: set times: %w", rel, err))
			}
		}
		return
	}
	c.lutimes(rel, st.Atime, st.Mtime)
}

func modeBits(m uint32) iofs.FileMode {
	var out iofs.FileMode
	if m&fs.ModeSetuid != 0 {
		out |= iofs.ModeSetuid
	}
	if m&fs.ModeSetgid != 0 {
		out |= iofs.ModeSetgid
	}
	if m&fs.ModeSticky != 0 {
		out |= iofs.ModeSticky
	}
	return out
}

// lutimes sets a symlink's own times through its parent directory opened
// beneath the root.
func (c *copier) lutimes(rel string, at, mt time.Time) {
	if mt.IsZero() {
		return
	}
	if at.IsZero() {
		at = mt
	}
	dir, name := path.Split(rel)
	var pf *os.File
	var err error
	if dir == "" {
		pf, err = os.Open(c.rootPath)
	} else {
		pf, err = c.root.Open(strings.TrimSuffix(dir, "/"))
	}
	if err != nil {
		return
	}
	defer pf.Close()
	ts := []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
	_ = unix.UtimesNanoAt(int(pf.Fd()), name, ts, unix.AT_SYMLINK_NOFOLLOW)
}

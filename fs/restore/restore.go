// Package restore copies files and directory trees out of an
// fs.FileSystem into a directory of the host (the engine of vmvault cp),
// keeping modes, times, owners (when privileged), symbolic links, hard
// links within one copy, sparse files, FIFOs and device nodes; and it has
// the ordered, read-ahead byte copy (CopyRange) that cp and cat share.
//
// Invariants:
//   - Every write of the restore engine happens beneath the destination
//     root. All paths go through one os.Root, so no name from the image and
//     no symlink (written by the copy or found in the destination) leads
//     outside it; the two calls os.Root lacks (mknod, times of a symlink)
//     are made relative to a directory opened through the root, without
//     following the last component.
//   - Names from the image are hostile: an entry whose name is not
//     fs.SafeName (contains '/' or NUL, is empty, "." or "..") is refused
//     with an error naming it, and the rest is copied.
//   - Symbolic links are written as links and never followed, in the image
//     or on the host. An existing entry is replaced only with Overwrite,
//     and then removed first (never written through); existing
//     directories are merged into.
//   - One failing entry never stops the copy: every error is collected and
//     returned. A file whose content could not be copied is removed, so it
//     does not look restored.
//   - Each directory is entered at most once per Copy, so directory cycles
//     in a hostile image end with an error wrapping fs.ErrCorrupt.
//   - Directory modes and times are set after their content, deepest
//     first, so the restored times are the image's.
package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/browse"
	"github.com/vmvault/vmvault/repo/extent"
)

// Options control a Restorer.
type Options struct {
	// Overwrite replaces existing entries in the destination; without it
	// they are errors.
	Overwrite bool
	// All includes hidden filesystem metadata (NTFS $MFT, …).
	All bool
	// Privileged sets owners and creates device nodes, which need root.
	Privileged bool
	// Progress, if not nil, counts the bytes of regular files done (holes
	// of sparse files included), as TreeSize counts them.
	Progress *atomic.Int64
}

// Restorer copies into one destination directory.
type Restorer struct {
	root *os.Root
	opts Options
}

// Open returns a Restorer writing beneath the directory dir.
func Open(dir string, opts Options) (*Restorer, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open destination %s: %w", dir, err)
	}
	return &Restorer{root: root, opts: opts}, nil
}

// Close releases the destination directory.
func (r *Restorer) Close() error { return r.root.Close() }

// Copy copies the file or tree at ino (with stat st) of fsys to rel, a
// name in the destination directory, and returns the error of every entry
// that could not be copied (names from the image that would leave the
// destination among them). src names the source in those errors, as the
// user wrote it (RP:DISK/PARTITION/PATH). Hard links are kept among the
// files of one Copy.
func (r *Restorer) Copy(ctx context.Context, fsys fs.FileSystem, ino fs.Ino, st fs.Stat, rel, src string) []error {
	if !fs.SafeName(rel) {
		return []error{fmt.Errorf("%s: refusing to create %q: the name would leave the destination", src, rel)}
	}
	c := &copier{Restorer: r, ctx: ctx, fsys: fsys, links: map[fs.Ino]string{}, seen: map[fs.Ino]bool{}}
	c.copy(ino, st, rel, src)
	c.finishDirs()
	return c.errs
}

// TreeSize adds up the regular-file bytes of the file or tree at ino (with
// stat st), counting a multiply-linked file once as Copy writes it once:
// the progress total of a Copy. Unreadable parts count as 0.
func TreeSize(ctx context.Context, fsys fs.FileSystem, ino fs.Ino, st fs.Stat, all bool) int64 {
	if st.Type != fs.TypeDir {
		if st.Type == fs.TypeRegular {
			return st.Size
		}
		return 0
	}
	var n int64
	linked := map[fs.Ino]bool{}
	_ = browse.Walk(ctx, fsys, ino, "/", all, func(_, _ string, st fs.Stat) error {
		if st.Type != fs.TypeRegular {
			return nil
		}
		if st.Nlink > 1 {
			if linked[st.Ino] {
				return nil
			}
			linked[st.Ino] = true
		}
		n += st.Size
		return nil
	})
	return n
}

// copier is the state of one Copy.
type copier struct {
	*Restorer
	ctx      context.Context
	fsys     fs.FileSystem
	links    map[fs.Ino]string // first destination of each multiply-linked file
	seen     map[fs.Ino]bool   // directories entered
	errs     []error
	dirTimes []dirTime
}

type dirTime struct {
	rel string
	st  fs.Stat
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
		if !c.opts.Privileged {
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
		if !c.opts.All && hidden != nil && hidden.Hidden(ino, e.Name) {
			continue
		}
		childSrc := strings.TrimSuffix(src, "/") + "/" + e.Name
		if !fs.SafeName(e.Name) {
			c.fail(strings.TrimSuffix(src, "/")+"/"+browse.QuoteName(e.Name), errors.New("refusing a name that contains '/' or NUL or is '.' or '..': it would leave the destination"))
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
	if !c.opts.Overwrite {
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
		if err := CopyRange(c.ctx, out, f, e.Offset, e.Length, c.opts.Progress); err != nil {
			return err
		}
	}
	if c.opts.Progress != nil {
		c.opts.Progress.Add(size - extent.Sum(extents))
	}
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

// parent opens the directory that holds rel, through the root, for the
// *at system calls os.Root has no method for; the kernel then resolves
// only the last component, which the caller does not follow.
func (c *copier) parent(rel string) (*os.File, string, error) {
	dir, name := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		dir = "."
	}
	pf, err := c.root.Open(dir)
	return pf, name, err
}

func (c *copier) mknod(rel string, kind uint32, st fs.Stat, dev int) error {
	if err := c.replace(rel); err != nil {
		return err
	}
	pf, name, err := c.parent(rel)
	if err != nil {
		return err
	}
	defer pf.Close()
	if err := unix.Mknodat(int(pf.Fd()), name, kind|0o600, dev); err != nil {
		return fmt.Errorf("mknod %s: %w", rel, err)
	}
	c.setMeta(rel, st, false)
	return nil
}

// setMeta applies owner (when privileged), mode and times. Symlinks keep
// their own mode; their times are set without following them.
func (c *copier) setMeta(rel string, st fs.Stat, symlink bool) {
	if c.opts.Privileged {
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

// modeBits converts setuid, setgid and sticky to io/fs mode bits.
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

// lutimes sets a symlink's own times (best effort: failures are ignored,
// as for owners).
func (c *copier) lutimes(rel string, at, mt time.Time) {
	if mt.IsZero() {
		return
	}
	if at.IsZero() {
		at = mt
	}
	pf, name, err := c.parent(rel)
	if err != nil {
		return
	}
	defer pf.Close()
	ts := []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
	_ = unix.UtimesNanoAt(int(pf.Fd()), name, ts, unix.AT_SYMLINK_NOFOLLOW)
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/pflag"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/fs/browse"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
)

// browseHelp explains the path syntax shared by partitions, ls, cat, cp,
// find and timeline.
const browseHelp = `Paths name a file inside a restore point as RP:DISK/PARTITION/PATH, e.g.
web01@latest:disk0/p2/etc/hostname. Partitions are p1, p2, … as Linux
numbers them (logical partitions from p5); a filesystem without a partition
table is p0. With --image FILE, a plain disk image takes the place of
RP:DISK and paths start at the partition: p1/etc/hostname.

Nothing is written to the repository or the image; no root and no FUSE
are needed.`

// browser connects the browsing commands to fs/browse: it opens the
// repository (or the --image file) on first use, hands restore points'
// disks to a browse.Browser as sources, and closes everything at the end
// of the command.
type browser struct {
	g     *cli.Global
	image string
	all   bool

	r       *repo.Repository
	lock    *repo.Lock // pins the restore points whose disks are read
	rps     []*repo.RestorePoint
	file    *os.File
	paths   *browse.Browser
	imgSrc  *browse.Source
	sources map[format.ID]*browse.Source
	rpOf    map[*browse.Source]*repo.RestorePoint
}

func (b *browser) addFlags(f *pflag.FlagSet) {
	f.StringVar(&b.image, "image", "", "read a plain disk image FILE instead of a restore point")
}

func (b *browser) close() {
	b.paths.ReportWarnings()
	_ = b.lock.Unlock()
	if b.r != nil {
		b.r.Close()
	}
	if b.file != nil {
		b.file.Close()
	}
}

func newBrowser(g *cli.Global) *browser {
	b := &browser{g: g}
	b.paths = &browse.Browser{
		Sources: b.source,
		Warn: func(l *browse.Location, w string) {
			fmt.Fprintf(os.Stderr, "warning: %s (%s): %s\n", l.Prefix(), l.FS.Type(), w)
		},
	}
	return b
}

// locate parses one path argument. needFS asks for a partition to be named.
func (b *browser) locate(ctx context.Context, arg string, needFS bool) (*browse.Location, error) {
	l, err := b.paths.Locate(ctx, arg, needFS)
	if errors.Is(err, browse.ErrNotNamed) {
		return nil, cli.Usagef("%v", err)
	}
	return l, err
}

// rp is the restore point a location is in (nil with --image).
func (b *browser) rp(l *browse.Location) *repo.RestorePoint { return b.rpOf[l.Source] }

// source splits an argument into its source (a restore point, or the
// --image file) and the path inside it.
func (b *browser) source(ctx context.Context, arg string) (*browse.Source, string, error) {
	if b.image != "" {
		return b.imageSource(), arg, nil
	}
	_, rps, err := b.repository(ctx)
	if err != nil {
		return nil, "", err
	}
	rp, rest, err := repo.SplitRestorePoint(rps, arg)
	if err != nil {
		return nil, "", cli.Usagef("%v", err)
	}
	return b.rpSource(rp), rest, nil
}

func (b *browser) imageSource() *browse.Source {
	if b.imgSrc == nil {
		b.imgSrc = &browse.Source{Name: b.image, Single: true, Open: func(ctx context.Context, _ string) (io.ReaderAt, int64, error) {
			return b.openImage()
		}}
	}
	return b.imgSrc
}

// openImage opens the --image file (or block device) and finds its size.
func (b *browser) openImage() (io.ReaderAt, int64, error) {
	f, err := os.Open(b.image)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	size := fi.Size()
	if fi.Mode()&os.ModeDevice != 0 {
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			f.Close()
			return nil, 0, fmt.Errorf("size of %s: %w", b.image, err)
		}
	}
	b.file = f
	return f, size, nil
}

// rpSource makes the disks of a restore point a source, once per
// restore point.
func (b *browser) rpSource(rp *repo.RestorePoint) *browse.Source {
	if s, ok := b.sources[rp.ID]; ok {
		return s
	}
	s := &browse.Source{Name: rp.ID.Short(), Open: func(ctx context.Context, name string) (io.ReaderAt, int64, error) {
		if err := b.lock.Pin(ctx, rp); err != nil {
			return nil, 0, err
		}
		d, err := b.r.OpenDisk(ctx, rp, name)
		if err != nil {
			return nil, 0, err
		}
		d.SetStreaming(true) // file content is read once; metadata stays cached
		return d, d.Size(), nil
	}}
	for _, d := range rp.Disks {
		s.Disks = append(s.Disks, d.Name)
	}
	if b.sources == nil {
		b.sources, b.rpOf = map[format.ID]*browse.Source{}, map[*browse.Source]*repo.RestorePoint{}
	}
	b.sources[rp.ID], b.rpOf[s] = s, rp
	return s
}

func (b *browser) repository(ctx context.Context) (*repo.Repository, []*repo.RestorePoint, error) {
	if b.r != nil {
		return b.r, b.rps, nil
	}
	r, err := b.g.OpenRepo(ctx, repo.Options{})
	if err != nil {
		return nil, nil, err
	}
	rps, bad, err := r.ListRestorePoints(ctx)
	if err != nil {
		r.Close()
		return nil, nil, err
	}
	if err := cli.NeedReadKey(r, "reading files"); err != nil {
		r.Close()
		return nil, nil, err
	}
	if b.lock, err = cli.ReadLock(ctx, r, "browse", b.g.LockWait); err != nil {
		r.Close()
		return nil, nil, err
	}
	for _, x := range bad {
		fmt.Fprintf(os.Stderr, "warning: restore point %s cannot be read: %v\n", x.Name, x.Err)
	}
	b.r, b.rps = r, rps
	return r, rps, nil
}

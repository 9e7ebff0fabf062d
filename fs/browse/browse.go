// Package browse names and walks the files inside disk images: it resolves
// DISK/PARTITION/PATH names to files of the filesystems on an image.Disk,
// walks directory trees, turns a file's fs.Stat into the record the
// browsing commands print (JSON lines, ls -l modes) and matches files as
// find does. The vmvault CLI (partitions, ls, cat, cp, find, timeline) is
// built on it, and so can anything else that reads files of a restore
// point.
//
// Where disks come from stays with the caller: a Source opens its disks
// through a function it is given (a repository restore point's disk, an
// image file), so this package never sees the repository.
//
// Invariants:
//   - Nothing here writes, to the disks or anywhere else.
//   - A Browser opens each disk of a Source and each filesystem on it at
//     most once and keeps them for its lifetime; each warning of a
//     filesystem is reported once: those it has when it is opened at once,
//     those it finds while being read (a bad checksum) by ReportWarnings.
//   - Walk enters every directory at most once, so a hostile image with
//     directory cycles terminates (with an error wrapping fs.ErrCorrupt);
//     hidden metadata files (fs.HiddenChecker) are left out unless asked
//     for. A file that cannot be stat'ed or a directory that cannot be read
//     is reported in the returned error and the walk goes on.
//   - Errors name the location they concern as the user writes it
//     (RP:DISK/PARTITION/PATH).
package browse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/image"
)

// ErrNotNamed marks a path that leaves out its disk or partition where
// there is more than one to choose from: the user has to name one.
var ErrNotNamed = errors.New("disk or partition not named")

// notNamedError is an ErrNotNamed with the message the user sees.
type notNamedError struct{ msg string }

func (e *notNamedError) Error() string        { return e.msg }
func (e *notNamedError) Is(target error) bool { return target == ErrNotNamed }

func notNamed(format string, args ...any) error {
	return &notNamedError{fmt.Sprintf(format, args...)}
}

// Source is a set of disks that paths are resolved in: the disks of one
// restore point, or a single disk image.
type Source struct {
	// Name names the source in messages and locations: a restore point's
	// short id, or the image file's name.
	Name string
	// Single marks a source that is one disk without a name (an image
	// file): its paths start at the partition ("p1/etc/hostname") and its
	// locations are written without a disk ("p1/etc/hostname").
	Single bool
	// Disks names the source's disks (unused when Single). A path that
	// names no disk means the only one, and is an error when there are
	// several.
	Disks []string
	// Open opens a disk by name ("" when Single) and returns its content
	// and size. The Browser calls it once per disk.
	Open func(ctx context.Context, disk string) (io.ReaderAt, int64, error)
}

// Browser resolves paths to locations, keeping every disk and filesystem
// it opens for the next path. Sources are told apart by pointer: pass the
// same *Source for the same disks. A Browser is not safe for concurrent
// use; the filesystems it hands out are.
type Browser struct {
	// Sources finds the source an argument starts in and returns the rest
	// of the argument, the path inside the source. Its errors are returned
	// by Locate unchanged.
	Sources func(ctx context.Context, arg string) (*Source, string, error)
	// Warn, when set, receives each warning of a filesystem
	// (fs.FileSystem.Warnings) when the filesystem is opened, and the
	// warnings found since at each ReportWarnings; l.FS is set.
	Warn func(l *Location, warning string)

	disks    map[diskKey]*image.Disk
	fss      map[fsKey]fs.FileSystem
	opened   []*Location // one location per filesystem, in opening order
	reported map[fs.FileSystem]int
}

type diskKey struct {
	src  *Source
	name string
}

type fsKey struct {
	disk *image.Disk
	part string
}

// Location is a resolved path: a disk of a source, and, unless the path
// stopped at the disk, a partition, its filesystem and a path in it.
type Location struct {
	Source   *Source
	DiskName string // "" for a Single source
	Disk     *image.Disk
	Part     *image.Partition // nil when the path stops at the disk
	FS       fs.FileSystem    // set with Part
	Path     string           // inside FS, in fs.Clean form ("/…")
}

// Prefix is how the location's partition is written in front of a path:
// "3fa4b2c1:disk0/p2" ("p2" for a Single source; without the partition
// when the location stops at the disk).
func (l *Location) Prefix() string {
	s := ""
	if !l.Source.Single {
		s = l.Source.Name + ":" + l.DiskName + "/"
	}
	if l.Part != nil {
		s += l.Part.Name
	}
	return s
}

// Resolve finds the inode the location's path names, following a final
// symlink when follow is set (always inside the filesystem); errors name
// the location.
func (l *Location) Resolve(ctx context.Context, follow bool) (fs.Ino, error) {
	ino, err := fs.Resolve(ctx, l.FS, l.Path, follow)
	if err != nil {
		return 0, fmt.Errorf("%s%s: %w", l.Prefix(), l.Path, err)
	}
	return ino, nil
}

// Stat resolves the location's path without following a final symlink
// and stats it.
func (l *Location) Stat(ctx context.Context) (fs.Stat, error) {
	ino, err := l.Resolve(ctx, false)
	if err != nil {
		return fs.Stat{}, err
	}
	st, err := l.FS.Stat(ctx, ino)
	if err != nil {
		return fs.Stat{}, fmt.Errorf("%s%s: %w", l.Prefix(), l.Path, err)
	}
	return st, nil
}

// Locate resolves one argument: SOURCE DISK/PARTITION/PATH (see Sources),
// where a Single source has no DISK. A path that stops at the disk is
// returned as such unless needFS is set; then the partition may be left
// out only when the disk has exactly one. Leaving out a disk or partition
// that must be named is an error wrapping ErrNotNamed.
func (b *Browser) Locate(ctx context.Context, arg string, needFS bool) (*Location, error) {
	src, rest, err := b.Sources(ctx, arg)
	if err != nil {
		return nil, err
	}
	disk := ""
	if !src.Single {
		name, tail, _ := strings.Cut(rest, "/")
		if name == "" {
			if len(src.Disks) != 1 {
				return nil, notNamed("%s has %d disks: name one as %s:DISK", src.Name, len(src.Disks), src.Name)
			}
			name = src.Disks[0]
		}
		disk, rest = name, tail
	}
	l, err := b.OpenDisk(ctx, src, disk)
	if err != nil {
		return nil, err
	}
	partName, p, _ := strings.Cut(strings.TrimPrefix(rest, "/"), "/")
	if partName == "" {
		if !needFS {
			return l, nil
		}
		if len(l.Disk.Partitions) != 1 {
			return nil, notNamed("name a partition (%s): %s", PartitionNames(l.Disk), arg)
		}
		partName = l.Disk.Partitions[0].Name
	}
	part, err := l.Disk.Partition(partName)
	if err != nil {
		return nil, err
	}
	l.Part = &part
	l.Path = fs.Clean(p)
	if err := b.openFS(l); err != nil {
		return nil, err
	}
	return l, nil
}

// OpenDisk opens a disk of src (once per Browser) and reads its partition
// table; the location stops at the disk.
func (b *Browser) OpenDisk(ctx context.Context, src *Source, name string) (*Location, error) {
	l := &Location{Source: src, DiskName: name}
	key := diskKey{src, name}
	if d, ok := b.disks[key]; ok {
		l.Disk = d
		return l, nil
	}
	ra, size, err := src.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	d, err := image.Open(ra, size)
	if err != nil {
		what := src.Name
		if !src.Single {
			what += ":" + name
		}
		return nil, fmt.Errorf("read partition table of %s: %w", what, err)
	}
	if b.disks == nil {
		b.disks = map[diskKey]*image.Disk{}
	}
	b.disks[key] = d
	l.Disk = d
	return l, nil
}

// Filesystems returns a location at the root of every partition of l's
// disk that holds a readable filesystem. Extended partitions and
// partitions whose filesystem cannot be read are left out.
func (b *Browser) Filesystems(l *Location) []*Location {
	var out []*Location
	for i := range l.Disk.Partitions {
		p := l.Disk.Partitions[i]
		if p.Extended {
			continue
		}
		nl := &Location{Source: l.Source, DiskName: l.DiskName, Disk: l.Disk, Part: &p, Path: "/"}
		if err := b.openFS(nl); err != nil {
			continue
		}
		out = append(out, nl)
	}
	return out
}

// openFS sets l.FS to the filesystem of l.Part, opening it on first use.
func (b *Browser) openFS(l *Location) error {
	key := fsKey{l.Disk, l.Part.Name}
	if f, ok := b.fss[key]; ok {
		l.FS = f
		return nil
	}
	f, err := l.Disk.OpenFS(*l.Part)
	if err != nil {
		return fmt.Errorf("%s: %w", l.Prefix(), err)
	}
	l.FS = f
	if b.fss == nil {
		b.fss = map[fsKey]fs.FileSystem{}
	}
	b.fss[key] = f
	root := *l
	root.Path = "/"
	b.opened = append(b.opened, &root)
	b.ReportWarnings()
	return nil
}

// ReportWarnings hands Warn the warnings each open filesystem found since
// the last report (readers add warnings as they meet damaged structures).
// Callers call it when they are done reading.
func (b *Browser) ReportWarnings() {
	if b.Warn == nil {
		return
	}
	if b.reported == nil {
		b.reported = map[fs.FileSystem]int{}
	}
	for _, l := range b.opened {
		ws := l.FS.Warnings()
		for _, w := range ws[min(b.reported[l.FS], len(ws)):] {
			b.Warn(l, w)
		}
		b.reported[l.FS] = len(ws)
	}
}

// PartitionNames lists a disk's partition names, comma-separated.
func PartitionNames(d *image.Disk) string {
	var names []string
	for _, p := range d.Partitions {
		names = append(names, p.Name)
	}
	return strings.Join(names, ", ")
}

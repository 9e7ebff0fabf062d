// Command fuseceiling serves one read-only file of a given size through
// FUSE with the mount options `vmvault mount` uses (1 MiB max_write and
// max_readahead, 64 background requests, no splice, FOPEN_KEEP_CACHE, bdi
// readahead raised to 4 MiB), answering every read from a single buffer
// in memory. scripts/bench-mount.sh reads it like vmvault's disk file: what
// it reaches is the ceiling this machine's FUSE and page cache put on any
// FUSE filesystem, before that filesystem does any work of its own.
//
//	fuseceiling MOUNTPOINT SIZE     (root; runs until unmounted)
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// span is how much distinct memory replies come from, so the copies read
// memory rather than one cache-resident block, like a chunk cache would.
const span = 256 << 20

type file struct {
	fs.Inode
	size int64
	data []byte
}

var (
	_ = (fs.NodeGetattrer)((*file)(nil))
	_ = (fs.NodeOpener)((*file)(nil))
	_ = (fs.NodeReader)((*file)(nil))
)

func (f *file) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = uint64(f.size)
	return 0
}

func (f *file) Open(context.Context, uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (f *file) Read(_ context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n := max(0, min(int64(len(dest)), f.size-off))
	at := off % span
	return fuse.ReadResultData(f.data[at : at+n]), 0
}

type root struct {
	fs.Inode
	f *file
}

func (r *root) OnAdd(ctx context.Context) {
	r.AddChild("disk.raw", r.NewPersistentInode(ctx, r.f, fs.StableAttr{Ino: 2}), false)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: fuseceiling MOUNTPOINT SIZE")
		os.Exit(2)
	}
	size, err := strconv.ParseInt(os.Args[2], 10, 64)
	if err != nil || size <= 0 {
		fmt.Fprintf(os.Stderr, "fuseceiling: size %q: want a positive number of bytes\n", os.Args[2])
		os.Exit(2)
	}
	data := make([]byte, span+(1<<20))
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	srv, err := fs.Mount(os.Args[1], &root{f: &file{size: size, data: data}}, &fs.Options{MountOptions: fuse.MountOptions{
		FsName: "fuseceiling", Name: "fuseceiling", DirectMount: true,
		MaxWrite: 1 << 20, MaxReadAhead: 1 << 20, MaxBackground: 64, DisableSplice: true,
		Options: []string{"ro"},
	}})
	if err != nil {
		fmt.Fprintf(os.Stderr, "fuseceiling: mount %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	var st unix.Stat_t
	if unix.Stat(os.Args[1], &st) == nil {
		p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
		_ = os.WriteFile(p, []byte("4096"), 0o644)
	}
	srv.Wait()
}

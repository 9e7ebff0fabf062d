package ext

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/vmvault/vmvault/fs"
)

const (
	xattrMagic = 0xEA020000
	// maxXattrValue bounds one value (the kernel's XATTR_SIZE_MAX).
	maxXattrValue = 64 << 10
)

var xattrPrefixes = map[uint8]string{
	1: "user.",
	2: "system.posix_acl_access",
	3: "system.posix_acl_default",
	4: "trusted.",
	6: "security.",
	7: "system.",
	8: "system.richacl",
}

type xattr struct {
	name  string
	value []byte
	inum  uint32 // value lives in this EA inode
	size  uint32
}

// parseXattrs decodes the entries in region; value offsets are relative to
// base (the entries' start for in-inode attributes, the block start for an
// xattr block).
func parseXattrs(region, base []byte) ([]xattr, error) {
	le := binary.LittleEndian
	var out []xattr
	for pos := 0; pos+4 <= len(region); {
		if le.Uint32(region[pos:]) == 0 {
			break
		}
		if pos+16 > len(region) {
			return nil, corrupt("xattr entry runs past its area")
		}
		e := region[pos:]
		nameLen := int(e[0])
		if pos+16+nameLen > len(region) {
			return nil, corrupt("xattr name runs past its area")
		}
		prefix, ok := xattrPrefixes[e[1]]
		if !ok {
			prefix = fmt.Sprintf("unknown%d.", e[1])
		}
		x := xattr{name: prefix + string(e[16:16+nameLen]), inum: le.Uint32(e[4:]), size: le.Uint32(e[8:])}
		if x.inum == 0 {
			off := int(le.Uint16(e[2:]))
			if x.size > maxXattrValue || off+int(x.size) > len(base) {
				return nil, corrupt("xattr %q value at %d+%d outside its area", x.name, off, x.size)
			}
			x.value = base[off : off+int(x.size)]
		}
		out = append(out, x)
		pos += (16 + nameLen + 3) &^ 3
	}
	return out, nil
}

// xattrs returns all extended attributes of an inode: in the inode body,
// then in its xattr block.
func (f *FS) xattrs(in *inode) ([]xattr, error) {
	var all []xattr
	if in.extra != nil {
		xs, err := parseXattrs(in.extra, in.extra)
		if err != nil {
			return nil, fmt.Errorf("inode %d: %w", in.ino, err)
		}
		all = append(all, xs...)
	}
	if in.fileACL != 0 {
		buf := make([]byte, f.blockSize)
		if err := f.readBlocks(buf, in.fileACL); err != nil {
			return nil, fmt.Errorf("inode %d xattr block: %w", in.ino, err)
		}
		if binary.LittleEndian.Uint32(buf) != xattrMagic {
			return nil, corrupt("inode %d: xattr block %d has no magic", in.ino, in.fileACL)
		}
		xs, err := parseXattrs(buf[32:], buf)
		if err != nil {
			return nil, fmt.Errorf("inode %d xattr block: %w", in.ino, err)
		}
		all = append(all, xs...)
	}
	return all, nil
}

// inodeXattrs reads inode ino and its extended attributes.
func (f *FS) inodeXattrs(ino fs.Ino) ([]xattr, error) {
	in, err := f.readInode(uint64(ino))
	if err != nil {
		return nil, err
	}
	return f.xattrs(in)
}

// ListXattr implements fs.FileSystem. system.data (the inline-data carrier)
// is an implementation detail and not listed.
func (f *FS) ListXattr(ctx context.Context, ino fs.Ino) ([]string, error) {
	xs, err := f.inodeXattrs(ino)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, x := range xs {
		if x.name != "system.data" {
			names = append(names, x.name)
		}
	}
	sort.Strings(names)
	return names, nil
}

// GetXattr implements fs.FileSystem.
func (f *FS) GetXattr(ctx context.Context, ino fs.Ino, name string) ([]byte, error) {
	xs, err := f.inodeXattrs(ino)
	if err != nil {
		return nil, err
	}
	for _, x := range xs {
		if x.name != name {
			continue
		}
		if x.inum == 0 {
			return append([]byte(nil), x.value...), nil
		}
		if x.size > maxXattrValue {
			return nil, corrupt("xattr %q: %d bytes", name, x.size)
		}
		ea, err := f.readInode(uint64(x.inum))
		if err != nil {
			return nil, fmt.Errorf("xattr %q value inode: %w", name, err)
		}
		if ea.flags&flagEAInode == 0 {
			return nil, corrupt("xattr %q: inode %d is not an EA inode", name, x.inum)
		}
		fl, err := f.openInode(ctx, ea)
		if err != nil {
			return nil, err
		}
		v := make([]byte, x.size)
		if _, err := fl.ReadAt(v, 0); err != nil && len(v) > 0 {
			return nil, fmt.Errorf("xattr %q value: %w", name, err)
		}
		return v, nil
	}
	return nil, fmt.Errorf("ext: inode %d: %s: %w", ino, name, fs.ErrNoAttr)
}

// inlineData returns the first 60 bytes of an inline-data inode followed by
// the continuation stored in its system.data attribute.
func (f *FS) inlineData(in *inode) ([]byte, error) {
	data := append([]byte(nil), in.block[:]...)
	if in.extra == nil {
		return data, nil
	}
	xs, err := parseXattrs(in.extra, in.extra)
	if err != nil {
		return nil, fmt.Errorf("inode %d inline data: %w", in.ino, err)
	}
	for _, x := range xs {
		if x.name == "system.data" && x.inum == 0 {
			data = append(data, x.value...)
		}
	}
	return data, nil
}

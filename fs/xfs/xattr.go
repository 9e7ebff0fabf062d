package xfs

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/vmvault/vmvault/fs"
)

const (
	attrLeafMagic  = 0xfbee
	attr3LeafMagic = 0x3bee
	daNodeMagic    = 0xfebe
	da3NodeMagic   = 0x3ebe
	attrRmtMagic   = 0x5841524d // "XARM"

	attrLocal      = 0x01
	attrRoot       = 0x02
	attrSecure     = 0x04
	attrParent     = 0x08
	attrIncomplete = 0x80

	// maxXattrValue bounds one value (the kernel's XATTR_SIZE_MAX).
	maxXattrValue = 64 << 10
	// maxDANodeDepth bounds the attribute btree's depth.
	maxDANodeDepth = 5
	// maxAttrBlocks bounds the leaf blocks one inode's attributes span.
	maxAttrBlocks = 1 << 16

	aclFile    = "SGI_ACL_FILE"
	aclDefault = "SGI_ACL_DEFAULT"
)

// xattr is one attribute: its full name and either its value or where a
// remote value lives in the attribute fork.
type xattr struct {
	name   string
	value  []byte
	remote bool
	blk    uint32
	length uint32
}

func attrPrefix(flags uint8) string {
	switch {
	case flags&attrRoot != 0:
		return "trusted."
	case flags&attrSecure != 0:
		return "security."
	}
	return "user."
}

// parseShortAttrs decodes a short-form attribute fork: total size, count,
// then packed entries of name and value.
func parseShortAttrs(b []byte, ino uint64) ([]xattr, error) {
	if len(b) < 4 {
		return nil, corrupt("inode %d: short-form attributes in %d bytes", ino, len(b))
	}
	total, count := int(be.Uint16(b)), int(b[2])
	if total < 4 || total > len(b) {
		return nil, corrupt("inode %d: short-form attributes of %d bytes in a %d-byte fork", ino, total, len(b))
	}
	b = b[:total]
	var out []xattr
	pos := 4
	for i := 0; i < count; i++ {
		if pos+3 > len(b) {
			return nil, corrupt("inode %d: short-form attribute %d runs past the fork", ino, i)
		}
		nl, vl, flags := int(b[pos]), int(b[pos+1]), b[pos+2]
		end := pos + 3 + nl + vl
		if nl == 0 || end > len(b) {
			return nil, corrupt("inode %d: short-form attribute %d runs past the fork", ino, i)
		}
		if flags&(attrIncomplete|attrParent) == 0 {
			out = append(out, xattr{name: attrPrefix(flags) + string(b[pos+3:pos+3+nl]), value: b[pos+3+nl : end]})
		}
		pos = end
	}
	return out, nil
}

// attrs lists an inode's attributes in on-disk form (remote values not
// read yet).
func (f *FS) attrs(ctx context.Context, in *inode) ([]xattr, *File, error) {
	if in.afork == nil {
		return nil, nil, nil
	}
	switch in.aformat {
	case fmtLocal:
		xs, err := parseShortAttrs(in.afork, in.ino)
		return xs, nil, err
	case fmtExtents, fmtBtree:
	default:
		return nil, nil, corrupt("inode %d: attribute fork format %d", in.ino, in.aformat)
	}
	if in.aformat == fmtExtents && in.anextents == 0 {
		return nil, nil, nil
	}
	fl, err := f.openFork(ctx, in, true, int64(1<<32)*f.blockSize)
	if err != nil {
		return nil, nil, err
	}
	ihdr, leafMagic, nodeMagic := 12, uint16(attrLeafMagic), uint16(daNodeMagic)
	if f.v5 {
		ihdr, leafMagic, nodeMagic = 56, attr3LeafMagic, da3NodeMagic
	}
	b := make([]byte, f.blockSize)
	read := func(blk uint32) error {
		if _, err := fl.ReadAt(b, int64(blk)*f.blockSize); err != nil {
			return fmt.Errorf("xfs: inode %d attribute block %d: %w", in.ino, blk, err)
		}
		if f.v5 {
			f.verify(b, 12, fmt.Sprintf("inode %d attribute block %d", in.ino, blk))
		}
		return nil
	}
	// descend from the root to the leftmost leaf
	blk := uint32(0)
	for depth := 0; ; depth++ {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		if err := read(blk); err != nil {
			return nil, nil, err
		}
		magic := be.Uint16(b[8:])
		if magic == leafMagic {
			break
		}
		if magic != nodeMagic || depth >= maxDANodeDepth {
			return nil, nil, corrupt("inode %d attribute block %d: magic %#x at depth %d", in.ino, blk, magic, depth)
		}
		if be.Uint16(b[ihdr:]) == 0 {
			return nil, nil, corrupt("inode %d attribute node block %d is empty", in.ino, blk)
		}
		// the first entry's "before" pointer
		if f.v5 {
			blk = be.Uint32(b[64+4:])
		} else {
			blk = be.Uint32(b[16+4:])
		}
	}
	var out []xattr
	seen := map[uint32]bool{}
	for n := 0; ; n++ {
		if n >= maxAttrBlocks || seen[blk] {
			return nil, nil, corrupt("inode %d: attribute leaf chain loops or exceeds %d blocks", in.ino, maxAttrBlocks)
		}
		seen[blk] = true
		xs, err := parseAttrLeaf(b, f.v5, in.ino, blk)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, xs...)
		next := be.Uint32(b) // forw sibling
		if next == 0 {
			break
		}
		blk = next
		if err := read(blk); err != nil {
			return nil, nil, err
		}
		if be.Uint16(b[8:]) != leafMagic {
			return nil, nil, corrupt("inode %d attribute block %d is not a leaf", in.ino, blk)
		}
	}
	return out, fl, nil
}

// parseAttrLeaf decodes the entries of one attribute leaf block.
func parseAttrLeaf(b []byte, v5 bool, ino uint64, blk uint32) ([]xattr, error) {
	hdr, countOff := 32, 12
	if v5 {
		hdr, countOff = 80, 56
	}
	if len(b) < hdr {
		return nil, corrupt("inode %d attribute leaf %d: %d bytes", ino, blk, len(b))
	}
	count := int(be.Uint16(b[countOff:]))
	if count > (len(b)-hdr)/8 {
		return nil, corrupt("inode %d attribute leaf %d: %d entries", ino, blk, count)
	}
	var out []xattr
	for i := 0; i < count; i++ {
		e := b[hdr+8*i:]
		idx, flags := int(be.Uint16(e[4:])), e[6]
		if flags&(attrIncomplete|attrParent) != 0 {
			continue
		}
		if idx < hdr || idx >= len(b) {
			return nil, corrupt("inode %d attribute leaf %d entry %d at %d", ino, blk, i, idx)
		}
		v := b[idx:]
		if flags&attrLocal != 0 {
			if len(v) < 3 {
				return nil, corrupt("inode %d attribute leaf %d entry %d runs past the block", ino, blk, i)
			}
			vl, nl := int(be.Uint16(v)), int(v[2])
			if nl == 0 || 3+nl+vl > len(v) {
				return nil, corrupt("inode %d attribute leaf %d entry %d runs past the block", ino, blk, i)
			}
			// copied: the caller reuses b for the next leaf
			out = append(out, xattr{name: attrPrefix(flags) + string(v[3:3+nl]), value: append([]byte{}, v[3+nl:3+nl+vl]...)})
			continue
		}
		if len(v) < 9 {
			return nil, corrupt("inode %d attribute leaf %d entry %d runs past the block", ino, blk, i)
		}
		vblk, vl, nl := be.Uint32(v), be.Uint32(v[4:]), int(v[8])
		if nl == 0 || 9+nl > len(v) || vl > maxXattrValue {
			return nil, corrupt("inode %d attribute leaf %d remote entry %d (%d-byte value)", ino, blk, i, vl)
		}
		out = append(out, xattr{name: attrPrefix(flags) + string(v[9:9+nl]), remote: true, blk: vblk, length: vl})
	}
	return out, nil
}

// remoteValue reads a value stored in attribute fork blocks; v5 blocks
// each start with a header naming the bytes they hold.
func (f *FS) remoteValue(fl *File, x xattr, ino uint64) ([]byte, error) {
	out := make([]byte, 0, x.length)
	if !f.v5 {
		out = out[:x.length]
		if _, err := fl.ReadAt(out, int64(x.blk)*f.blockSize); err != nil {
			return nil, fmt.Errorf("xfs: inode %d attribute %s value: %w", ino, x.name, err)
		}
		return out, nil
	}
	const hdr = 56
	b := make([]byte, f.blockSize)
	for blk := int64(x.blk); len(out) < int(x.length); blk++ {
		if _, err := fl.ReadAt(b, blk*f.blockSize); err != nil {
			return nil, fmt.Errorf("xfs: inode %d attribute %s value: %w", ino, x.name, err)
		}
		if be.Uint32(b) != attrRmtMagic {
			return nil, corrupt("inode %d attribute %s: value block %d has no magic number", ino, x.name, blk)
		}
		f.verify(b, 12, fmt.Sprintf("inode %d attribute %s value block %d", ino, x.name, blk))
		off, n := int(be.Uint32(b[4:])), int64(be.Uint32(b[8:]))
		if off != len(out) || n == 0 || n > f.blockSize-hdr || int64(off)+n > int64(x.length) || be.Uint64(b[32:]) != ino {
			return nil, corrupt("inode %d attribute %s: value block %d holds bytes %d+%d", ino, x.name, blk, off, n)
		}
		out = append(out, b[hdr:hdr+n]...)
	}
	return out, nil
}

// aclToXattr turns an XFS on-disk ACL (big-endian count, then tag, id,
// permissions) into the Linux posix_acl xattr form the kernel shows
// (version 2, little-endian tag, permissions, id).
func aclToXattr(b []byte) ([]byte, error) {
	if len(b) < 4 {
		return nil, corrupt("ACL of %d bytes", len(b))
	}
	n := int(be.Uint32(b))
	if n > (len(b)-4)/12 {
		return nil, corrupt("ACL of %d entries in %d bytes", n, len(b))
	}
	le := binary.LittleEndian
	out := make([]byte, 4+8*n)
	le.PutUint32(out, 2)
	for i := 0; i < n; i++ {
		e := b[4+12*i:]
		tag, id, perm := be.Uint32(e), be.Uint32(e[4:]), be.Uint16(e[8:])
		o := out[4+8*i:]
		le.PutUint16(o, uint16(tag))
		le.PutUint16(o[2:], perm)
		if tag != 0x02 && tag != 0x08 { // only ACL_USER and ACL_GROUP carry an id
			id = 0xffffffff
		}
		le.PutUint32(o[4:], id)
	}
	return out, nil
}

// aclName maps the stored ACL attribute names to the names the kernel
// also lists them under.
func aclName(name string) string {
	switch name {
	case "trusted." + aclFile:
		return "system.posix_acl_access"
	case "trusted." + aclDefault:
		return "system.posix_acl_default"
	}
	return ""
}

// ListXattr implements fs.FileSystem. POSIX ACLs appear twice, as the
// kernel lists them to root: as system.posix_acl_* and as the stored
// trusted.SGI_ACL_* attribute.
func (f *FS) ListXattr(ctx context.Context, ino fs.Ino) ([]string, error) {
	in, err := f.readInode(uint64(ino))
	if err != nil {
		return nil, err
	}
	xs, _, err := f.attrs(ctx, in)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, x := range xs {
		names = append(names, x.name)
		if a := aclName(x.name); a != "" {
			names = append(names, a)
		}
	}
	sort.Strings(names)
	return names, nil
}

// GetXattr implements fs.FileSystem.
func (f *FS) GetXattr(ctx context.Context, ino fs.Ino, name string) ([]byte, error) {
	in, err := f.readInode(uint64(ino))
	if err != nil {
		return nil, err
	}
	xs, fl, err := f.attrs(ctx, in)
	if err != nil {
		return nil, err
	}
	for _, x := range xs {
		acl := aclName(x.name)
		if x.name != name && acl != name {
			continue
		}
		v := x.value
		if x.remote {
			if v, err = f.remoteValue(fl, x, in.ino); err != nil {
				return nil, err
			}
		}
		if acl == name {
			return aclToXattr(v)
		}
		return append([]byte(nil), v...), nil
	}
	return nil, fmt.Errorf("xfs: inode %d: %s: %w", ino, name, fs.ErrNoAttr)
}

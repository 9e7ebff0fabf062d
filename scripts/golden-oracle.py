#!/usr/bin/env python3
"""golden-oracle.py — the oracles behind testdata/fs/golden, and the small
helpers scripts/make-golden-images.sh builds the images with.

Listings (printed as JSON on stdout) come only from tools that do not share
code with vmvault's readers:

  ext   MOUNT IMAGE   the kernel's ext4 driver (IMAGE loop-mounted read-only
                      at MOUNT): lstat for type, inode, size, mode, uid, gid,
                      nlink, rdev, atime/mtime/ctime; statx for the birth
                      time (crtime); readlink; llistxattr/lgetxattr; the file
                      bytes for sha256; lseek SEEK_DATA/SEEK_HOLE for the
                      data ranges of files with holes.
  ntfs  MOUNT IMAGE   ntfs-3g (IMAGE mounted read-only with
                      streams_interface=xattr at MOUNT): lstat for type,
                      inode (MFT record number), size and nlink; the
                      system.ntfs_times attribute for creation, modification,
                      access and MFT-change times (all four as stored, in 100 ns
                      units); system.ntfs_attrib_be for the read-only bit;
                      readlink; user.* attributes for the named data streams
                      (names, sizes, sha256). Where ntfs-3g cannot show
                      something, The Sleuth Kit reads the image: a stream over
                      64 KiB (the xattr size limit) is read with icat. An
                      absolute symlink or junction target, which ntfs-3g shows
                      as MOUNT/.NTFS-3G/C:/dir, is recorded as Windows stores
                      it (C:\\dir); a directory's size (ntfs-3g shows its index
                      allocation) and a translated symlink's size are left out.
  fat   IMAGE         mtools (MTOOLS_SKIP_CHECK=1, TZ=UTC): mcopy -s -p -m
                      copies the tree out for names, types, sizes, content and
                      mtime; mattrib for the read-only bit; mlabel for the
                      label. The Sleuth Kit's istat (-z UTC) for the creation
                      time (with its 10 ms part) and the access date.
The filesystem type, volume label and UUID come from blkid -p (libblkid).

Helpers for the build script: gen random|rotated|text SIZE SEED (deterministic
content on stdout), reparse symlink|junction PATH SUBSTITUTE PRINT [relative]
(writes an NTFS reparse point through ntfs-3g's system.ntfs_reparse_data),
ntfs-times PATH CRTIME MTIME ATIME (unix ns; ntfs-3g sets the MFT-change time
itself), ntfs-times-tree DIR CRTIME MTIME ATIME (every path under DIR).
"""

import ctypes
import datetime
import hashlib
import json
import os
import re
import stat
import struct
import subprocess
import sys
import tempfile

NT_EPOCH = 116444736000000000  # 100 ns units from 1601 to 1970


def ts(ns):
    """RFC 3339 UTC with nanoseconds; ns since the Unix epoch, may be < 0."""
    sec, frac = divmod(ns, 10**9)
    d = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=sec)
    return d.strftime("%Y-%m-%dT%H:%M:%S") + (".%09d" % frac).rstrip("0").rstrip(".") + "Z"


def sha256_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def blkid(image):
    out = subprocess.run(["blkid", "-p", "-o", "export", image], check=True,
                         capture_output=True, text=True).stdout
    kv = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    kind = kv["TYPE"]
    if kind == "vfat":
        kind = kv["VERSION"].lower()  # FAT12, FAT16, FAT32
    return kind, kv.get("LABEL", ""), kv.get("UUID", "")


TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
         stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev", stat.S_IFIFO: "fifo",
         stat.S_IFSOCK: "socket"}


class Statx(ctypes.Structure):
    _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32),
                ("attributes", ctypes.c_uint64), ("nlink", ctypes.c_uint32),
                ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
                ("mode", ctypes.c_uint16), ("_pad", ctypes.c_uint16),
                ("ino", ctypes.c_uint64), ("size", ctypes.c_uint64),
                ("blocks", ctypes.c_uint64), ("attributes_mask", ctypes.c_uint64),
                ("atime", ctypes.c_int64 * 2), ("btime", ctypes.c_int64 * 2),
                ("ctime", ctypes.c_int64 * 2), ("mtime", ctypes.c_int64 * 2),
                ("_rest", ctypes.c_uint64 * 20)]


_libc = ctypes.CDLL(None, use_errno=True)
AT_SYMLINK_NOFOLLOW = 0x100
STATX_BTIME = 0x800


def birth_ns(p):
    sx = Statx()
    if _libc.statx(-100, os.fsencode(p), AT_SYMLINK_NOFOLLOW, STATX_BTIME, ctypes.byref(sx)) != 0:
        raise OSError(ctypes.get_errno(), "statx " + p)
    if not sx.mask & STATX_BTIME:
        return None
    # struct statx_timestamp: s64 tv_sec, u32 tv_nsec, s32 pad
    return sx.btime[0] * 10**9 + (sx.btime[1] & 0xffffffff)


def data_ranges(p, size):
    """The byte ranges SEEK_DATA/SEEK_HOLE report, or None when the whole
    file is data."""
    out = []
    fd = os.open(p, os.O_RDONLY)
    try:
        off = 0
        while off < size:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break  # ENXIO: only a hole is left
            h = os.lseek(fd, d, os.SEEK_HOLE)
            out.append([d, h - d])
            off = h
    finally:
        os.close(fd)
    if out == [[0, size]] or (size == 0 and not out):
        return None
    return out


def walk(root):
    """Every path under root (not root itself), parents before children."""
    out = []

    def rec(d, rel):
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            out.append((p, rel + "/" + name))
            if stat.S_ISDIR(os.lstat(p).st_mode):
                rec(p, rel + "/" + name)
    rec(root, "")
    return out


def ext_listing(mnt, image):
    files = []
    for p, rel in walk(mnt):
        st = os.lstat(p)
        e = {"path": rel, "type": TYPES[stat.S_IFMT(st.st_mode)], "ino": st.st_ino,
             "size": st.st_size, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
             "gid": st.st_gid, "nlink": st.st_nlink, "atime": ts(st.st_atime_ns),
             "mtime": ts(st.st_mtime_ns), "ctime": ts(st.st_ctime_ns)}
        b = birth_ns(p)
        if b is not None:
            e["crtime"] = ts(b)
        if e["type"] in ("chardev", "blockdev"):
            e["rdev"] = "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
        if e["type"] == "symlink":
            e["target"] = os.readlink(p)
        if e["type"] == "file":
            # ranges first: once read, cached pages of unwritten extents
            # count as data
            r = data_ranges(p, st.st_size)
            if r is not None:
                e["data"] = r
            e["sha256"] = sha256_file(p)
        if e["type"] != "symlink":
            xs = []
            for name in sorted(os.listxattr(p, follow_symlinks=False)):
                v = os.getxattr(p, name, follow_symlinks=False)
                xs.append({"name": name, "size": len(v), "sha256": hashlib.sha256(v).hexdigest()})
            if xs:
                e["xattrs"] = xs
        files.append(e)
    return files


def icat_streams(image, ino):
    """stream name → attribute address (type-id) from istat."""
    out = subprocess.run(["istat", image, str(ino)], check=True, capture_output=True,
                         text=True).stdout
    return {m.group(2): m.group(1) for m in re.finditer(r"\$DATA \((\d+-\d+)\)\s+Name: (\S+)", out)}


def ntfs_listing(mnt, image):
    files = []
    for p, rel in walk(mnt):
        st = os.lstat(p)
        e = {"path": rel, "type": TYPES[stat.S_IFMT(st.st_mode)], "ino": st.st_ino,
             "nlink": st.st_nlink}
        if e["type"] != "dir":
            e["size"] = st.st_size
        t = struct.unpack("<4Q", os.getxattr(p, "system.ntfs_times", follow_symlinks=False))
        cr, mt, at, ct = [(x - NT_EPOCH) * 100 for x in t]
        e.update(crtime=ts(cr), mtime=ts(mt), atime=ts(at), ctime=ts(ct))
        if e["type"] != "symlink" and (mt != st.st_mtime_ns or at != st.st_atime_ns):
            sys.exit("%s: ntfs-3g's stat times differ from system.ntfs_times" % rel)
        if e["type"] in ("chardev", "blockdev"):
            e["rdev"] = "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
        attrib = struct.unpack(">I", os.getxattr(p, "system.ntfs_attrib_be", follow_symlinks=False))[0]
        e["readonly"] = bool(attrib & 1)
        if e["type"] == "symlink":
            tgt = os.readlink(p)
            m = re.match(re.escape(mnt) + r"/\.NTFS-3G/([A-Za-z]:)(/.*)?$", tgt)
            if m:
                tgt = m.group(1) + (m.group(2) or "/").replace("/", "\\")
                del e["size"]
            e["target"] = tgt
        if e["type"] == "file":
            e["sha256"] = sha256_file(p)
        if e["type"] in ("file", "dir"):
            streams = []
            icat = None
            for name in sorted(os.listxattr(p)):
                if not name.startswith("user."):
                    continue
                sname = name[len("user."):]
                try:
                    v = os.getxattr(p, name)
                except OSError as err:
                    if err.errno != 7:  # E2BIG: over the 64 KiB xattr limit
                        raise
                    if icat is None:
                        icat = icat_streams(image, st.st_ino)
                    v = subprocess.run(["icat", image, "%d-%s" % (st.st_ino, icat[sname])],
                                       check=True, capture_output=True).stdout
                streams.append({"name": sname, "size": len(v), "sha256": hashlib.sha256(v).hexdigest()})
            if streams:
                e["streams"] = streams
        files.append(e)
    return files


def fat_listing(image):
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", TZ="UTC")
    tmp = tempfile.mkdtemp()
    try:
        subprocess.run(["mcopy", "-s", "-p", "-m", "-n", "-i", image, "::/", tmp + "/"],
                       check=True, env=env)
        attrs = {}
        out = subprocess.run(["mattrib", "-/", "-i", image, "::/"], check=True, env=env,
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            # "  A  R    ::/dir/name": flags in the first columns
            flags, _, path = line.partition("::")
            attrs[path] = flags
        # istat for times: map paths to TSK addresses with fls
        fls = subprocess.run(["fls", "-r", "-p", image], check=True, capture_output=True,
                             text=True).stdout
        addr = {}
        for line in fls.splitlines():
            head, _, name = line.partition(":\t")
            f = head.split()
            if len(f) >= 2 and f[1] != "*":
                addr["/" + name] = f[-1]
        files = []
        root = os.path.join(tmp, "")
        for p, rel in walk(tmp):
            st = os.lstat(p)
            e = {"path": rel, "type": TYPES[stat.S_IFMT(st.st_mode)]}
            if e["type"] == "file":
                e["size"] = st.st_size
                e["sha256"] = sha256_file(p)
            e["mtime"] = ts(st.st_mtime_ns)
            e["readonly"] = "R" in attrs[rel]
            ist = subprocess.run(["istat", "-z", "UTC", image, addr[rel]], check=True,
                                 capture_output=True, text=True).stdout
            cr = re.search(r"Created:\s+(\S+ \S+)", ist).group(1)
            ac = re.search(r"Accessed:\s+(\S+ \S+)", ist).group(1)
            e["crtime"] = fat_time(cr)
            e["atime"] = fat_time(ac)
            wr = fat_time(re.search(r"Written:\s+(\S+ \S+)", ist).group(1))
            if wr != e["mtime"]:
                sys.exit("%s: mtools mtime %s, Sleuth Kit %s" % (rel, e["mtime"], wr))
            files.append(e)
        return files
    finally:
        subprocess.run(["rm", "-rf", tmp], check=True)


def fat_time(s):
    """istat's "2023-11-14 22:13:20[.120000000]" → RFC 3339."""
    d, _, frac = s.partition(".")
    dt = datetime.datetime.strptime(d, "%Y-%m-%d %H:%M:%S")
    return ts(int(dt.replace(tzinfo=datetime.timezone.utc).timestamp()) * 10**9 + int((frac or "0").ljust(9, "0")))


# Fields that most paths share are written once, under "defaults", and left
# out of the entries that have the default value.
DEFAULTABLE = ("nlink", "uid", "gid", "readonly", "crtime", "mtime", "atime", "ctime")


def emit(image, files, note):
    kind, label, uuid = blkid(image)
    defaults = {}
    for k in DEFAULTABLE:
        vals = [json.dumps(f[k]) for f in files if k in f]
        if vals:
            defaults[k] = json.loads(max(set(vals), key=vals.count))
    for f in files:
        for k, v in defaults.items():
            if k not in f:
                sys.exit("%s: the oracle gave no %s" % (f["path"], k))
            if f[k] == v:
                del f[k]
    doc = {"image": os.path.basename(image) + ".zst", "fs": kind, "label": label, "uuid": uuid,
           "oracle": note, "defaults": defaults}
    lines = ["{"]
    for k, v in doc.items():
        lines.append("  %s: %s," % (json.dumps(k), json.dumps(v, ensure_ascii=False)))
    lines.append('  "files": [')
    lines.append(",\n".join("    " + json.dumps(f, ensure_ascii=False) for f in sorted(files, key=lambda f: f["path"])))
    lines.append("  ]")
    lines.append("}")
    sys.stdout.write("\n".join(lines) + "\n")


def gen(kind, size, seed):
    out = sys.stdout.buffer
    if kind == "random":
        i = 0
        left = size
        while left > 0:
            b = hashlib.sha256(("%s/%d" % (seed, i)).encode()).digest()[:left]
            out.write(b)
            left -= len(b)
            i += 1
    elif kind == "rotated":
        # incompressible within any 4 KiB (LZNT1 compresses each 4 KiB
        # chunk on its own), compressible across chunks (zstd, for the repo)
        base = b"".join(hashlib.sha256(("%s/%d" % (seed, i)).encode()).digest() for i in range(128))
        buf = b"".join(base[(k * 264) % 4096:] + base[:(k * 264) % 4096] for k in range(size // 4096 + 1))
        out.write(buf[:size])
    else:
        buf = bytearray()
        i = 0
        while len(buf) < size:
            buf += ("%s line %08d of deterministic text\n" % (seed, i)).encode()
            i += 1
        out.write(bytes(buf[:size]))


def reparse(kind, path, sub, pr, relative=False):
    s, p = sub.encode("utf-16-le"), pr.encode("utf-16-le")
    if kind == "symlink":
        tag = 0xA000000C
        body = struct.pack("<HHHHI", 0, len(s), len(s), len(p), 1 if relative else 0) + s + p
    else:  # junction (mount point): both names NUL-terminated
        tag = 0xA0000003
        body = struct.pack("<HHHH", 0, len(s), len(s) + 2, len(p)) + s + b"\0\0" + p + b"\0\0"
    os.setxattr(path, "system.ntfs_reparse_data", struct.pack("<IHH", tag, len(body), 0) + body)


def ntfs_times(path, cr, mt, at):
    nt = [int(x) // 100 + NT_EPOCH for x in (cr, mt, at)]
    cur = struct.unpack("<4Q", os.getxattr(path, "system.ntfs_times", follow_symlinks=False))
    os.setxattr(path, "system.ntfs_times", struct.pack("<4Q", nt[0], nt[1], nt[2], cur[3]),
                follow_symlinks=False)


def main(argv):
    cmd = argv[1]
    if cmd == "ext":
        emit(argv[3], ext_listing(argv[2], argv[3]), "kernel ext4 driver (loop mount, ro)")
    elif cmd == "ntfs":
        emit(argv[3], ntfs_listing(argv[2], argv[3]),
             "ntfs-3g (ro, streams_interface=xattr; times from system.ntfs_times); Sleuth Kit icat for streams over 64 KiB")
    elif cmd == "fat":
        emit(argv[2], fat_listing(argv[2]), "mtools (mcopy -m, mattrib); Sleuth Kit istat for creation and access times")
    elif cmd == "gen":
        gen(argv[2], int(argv[3]), argv[4])
    elif cmd == "reparse":
        reparse(argv[2], argv[3], argv[4], argv[5], len(argv) > 6 and argv[6] == "relative")
    elif cmd == "ntfs-times":
        ntfs_times(argv[2], argv[3], argv[4], argv[5])
    elif cmd == "ntfs-times-tree":
        for p, _ in reversed(walk(argv[2])):
            ntfs_times(p, argv[3], argv[4], argv[5])
    else:
        sys.exit("usage: see the doc string")


if __name__ == "__main__":
    main(sys.argv)

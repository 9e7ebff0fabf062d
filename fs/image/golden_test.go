package image_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/fs"
	"github.com/vmvault/vmvault/fs/image"
)

// goldenDir holds the images and listings scripts/make-golden-images.sh
// builds; the listings come from the kernel, ntfs-3g, mtools and The Sleuth
// Kit, never from this repository's readers.
const goldenDir = "../../testdata/fs/golden"

// goldenListing is one NAME.json.
type goldenListing struct {
	Image    string        `json:"image"`
	FS       string        `json:"fs"`
	Label    string        `json:"label"`
	UUID     string        `json:"uuid"`
	Oracle   string        `json:"oracle"`
	Defaults goldenEntry   `json:"defaults"`
	Files    []goldenEntry `json:"files"`
}

// goldenEntry is one path; a nil field is one the oracle does not give for
// this filesystem (or, in Defaults, one no path has).
type goldenEntry struct {
	Path     string       `json:"path"`
	Type     string       `json:"type"`
	Ino      *uint64      `json:"ino"`
	Size     *int64       `json:"size"`
	Mode     *uint32      `json:"mode"`
	UID      *uint32      `json:"uid"`
	GID      *uint32      `json:"gid"`
	Nlink    *uint32      `json:"nlink"`
	Rdev     *string      `json:"rdev"`
	Readonly *bool        `json:"readonly"`
	Atime    *time.Time   `json:"atime"`
	Mtime    *time.Time   `json:"mtime"`
	Ctime    *time.Time   `json:"ctime"`
	Crtime   *time.Time   `json:"crtime"`
	Target   *string      `json:"target"`
	SHA256   *string      `json:"sha256"`
	Data     [][2]int64   `json:"data"`
	Xattrs   []goldenBlob `json:"xattrs"`
	Streams  []goldenBlob `json:"streams"`
}

// goldenBlob is an extended attribute (ext) or a named data stream (NTFS).
type goldenBlob struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// knownDivergences are the places where a reader is known to disagree with
// the oracle today, keyed "image path field" (field "present" for a path
// one side lacks), with the reason. The test logs them instead of failing,
// and fails when one of them no longer diverges, so the list stays true.
var knownDivergences = map[string]string{
	// intended: ntfs-3g shows the MFT record's link count, which counts a
	// DOS 8.3 name as a link of its own; ours counts the names listed
	"ntfs.img /A Rather Long File Name With Spaces, Commas and Mixed Case.txt nlink": "the DOS name is not counted as a link",
}

// TestGolden opens every image in testdata/fs/golden with this
// repository's readers, walks the whole tree and compares each path's type,
// inode, size, mode, owner, link count, device number, read-only bit, all
// times, symlink target, content hash, data ranges (ext), extended
// attributes (ext) and named streams (NTFS) with the listing the oracles
// wrote, and the volume's type, label and UUID.
func TestGolden(t *testing.T) {
	listings, err := filepath.Glob(filepath.Join(goldenDir, "*.json"))
	if err != nil || len(listings) == 0 {
		t.Fatalf("no golden listings in %s (%v)", goldenDir, err)
	}
	for _, path := range listings {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".json"), func(t *testing.T) {
			t.Parallel()
			checkGolden(t, path)
		})
	}
}

func readGolden(t *testing.T, path string) (goldenListing, []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var g goldenListing
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&g); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	z, err := os.ReadFile(filepath.Join(goldenDir, g.Image))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	img, err := zr.DecodeAll(z, nil)
	if err != nil {
		t.Fatalf("decompress %s: %v", g.Image, err)
	}
	return g, img
}

// fields renders the golden entry's fields, defaults applied, as strings
// keyed by field name: the set of fields the test compares for this path.
func (e goldenEntry) fields(d goldenEntry, fsType string) map[string]string {
	m := map[string]string{"type": e.Type}
	for _, f := range []field{
		fld("ino", e.Ino, d.Ino), fld("size", e.Size, d.Size), fld("mode", e.Mode, d.Mode),
		fld("uid", e.UID, d.UID), fld("gid", e.GID, d.GID), fld("nlink", e.Nlink, d.Nlink),
		fld("rdev", e.Rdev, d.Rdev), fld("readonly", e.Readonly, d.Readonly),
		fld("atime", e.Atime, d.Atime), fld("mtime", e.Mtime, d.Mtime),
		fld("ctime", e.Ctime, d.Ctime), fld("crtime", e.Crtime, d.Crtime),
		fld("target", e.Target, d.Target), fld("sha256", e.SHA256, d.SHA256),
	} {
		if f.ok {
			m[f.name] = f.s
		}
	}
	if strings.HasPrefix(fsType, "ext") {
		// the kernel lists every xattr (of all but symlinks) and gives
		// data ranges for every file: none listed means none
		if e.Type != "symlink" {
			m["xattrs"] = blobs(e.Xattrs)
		}
		if e.Type == "file" {
			data := e.Data
			if data == nil && e.Size != nil && *e.Size > 0 {
				data = [][2]int64{{0, *e.Size}}
			}
			m["data"] = fmt.Sprint(data)
		}
	}
	if fsType == "ntfs" && (e.Type == "file" || e.Type == "dir") {
		m["streams"] = blobs(e.Streams)
	}
	return m
}

// field is one golden field in its string form; ok is false when neither
// the entry nor the defaults have it.
type field struct {
	name, s string
	ok      bool
}

func fld[T any](name string, v, def *T) field {
	if v == nil {
		v = def
	}
	if v == nil {
		return field{name: name}
	}
	if t, ok := any(*v).(time.Time); ok {
		return field{name, t.UTC().Format(time.RFC3339Nano), true}
	}
	return field{name, fmt.Sprint(*v), true}
}

func blobs(bs []goldenBlob) string {
	s := make([]string, len(bs))
	for i, b := range bs {
		s[i] = fmt.Sprintf("%s(%d bytes, sha256 %s)", b.Name, b.Size, b.SHA256)
	}
	sort.Strings(s)
	return "[" + strings.Join(s, " ") + "]"
}

func hashReader(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return hex.EncodeToString(h.Sum(nil)), n, err
}

// ourEntry is what the reader says about one path, in the golden fields'
// string forms.
type ourEntry struct {
	ino     fs.Ino
	fields  map[string]string
	streams []goldenBlob // NTFS: from the "name:stream" entries
	xattrs  []goldenBlob // NTFS: streams as user.* attributes, Size -1 when over 64 KiB
}

// walkOurs lists every path of fsys (NTFS metadata files left out, as
// ntfs-3g hides them) with every field the golden listings can hold.
func walkOurs(t *testing.T, fsys fs.FileSystem) map[string]*ourEntry {
	t.Helper()
	ctx := context.Background()
	out := map[string]*ourEntry{}
	hidden, _ := fsys.(fs.HiddenChecker)
	streamer, _ := fsys.(fs.StreamChecker)
	var rec func(dir fs.Ino, p string, depth int)
	rec = func(dir fs.Ino, p string, depth int) {
		if depth > 64 {
			t.Fatalf("%s: deeper than 64 levels", p)
		}
		ents, err := fsys.ReadDir(ctx, dir)
		if err != nil {
			t.Errorf("%s: readdir: %v", p, err)
			return
		}
		var streams []fs.DirEntry
		for _, e := range ents {
			if hidden != nil && hidden.Hidden(dir, e.Name) {
				continue
			}
			if streamer != nil && streamer.IsStream(e.Ino) {
				streams = append(streams, e)
				continue
			}
			child := p + "/" + e.Name
			if _, dup := out[child]; dup {
				t.Errorf("%s: listed twice", child)
				continue
			}
			oe := ourStat(t, fsys, e.Ino, child)
			if oe == nil {
				continue
			}
			out[child] = oe
			if ino, err := fs.Resolve(ctx, fsys, child, false); err != nil || ino != e.Ino {
				t.Errorf("%s: Resolve gives inode %d (%v), ReadDir %d", child, ino, err, e.Ino)
			}
			if oe.fields["type"] == "dir" {
				rec(e.Ino, child, depth+1)
			}
		}
		for _, e := range streams {
			i := strings.LastIndexByte(e.Name, ':')
			base := out[p+"/"+e.Name[:i]]
			if base == nil {
				t.Errorf("%s/%s: stream of a file not listed", p, e.Name)
				continue
			}
			f, err := fsys.Open(ctx, e.Ino)
			if err != nil {
				t.Errorf("%s/%s: open: %v", p, e.Name, err)
				continue
			}
			sum, n, err := hashReader(io.NewSectionReader(f, 0, f.Size()))
			if err != nil || n != f.Size() {
				t.Errorf("%s/%s: read %d of %d bytes: %v", p, e.Name, n, f.Size(), err)
			}
			base.streams = append(base.streams, goldenBlob{Name: e.Name[i+1:], Size: f.Size(), SHA256: sum})
		}
	}
	rec(fsys.Root(), "", 0)
	for p, oe := range out {
		if _, ok := oe.fields["streams"]; ok {
			oe.fields["streams"] = blobs(oe.streams)
			checkStreamXattrs(t, p, oe)
		}
	}
	return out
}

// checkStreamXattrs checks that an NTFS path's user.* attributes are its
// named streams: the same names, and the same content where it fits an
// attribute value.
func checkStreamXattrs(t *testing.T, p string, oe *ourEntry) {
	t.Helper()
	byName := map[string]goldenBlob{}
	for _, s := range oe.streams {
		byName[s.Name] = s
	}
	if len(oe.xattrs) != len(oe.streams) {
		t.Errorf("%s: %d streams as user.* attributes, %d as entries", p, len(oe.xattrs), len(oe.streams))
	}
	for _, x := range oe.xattrs {
		s, ok := byName[x.Name]
		switch {
		case !ok:
			t.Errorf("%s: attribute user.%s has no stream entry", p, x.Name)
		case x.Size == -1 && s.Size <= 64<<10:
			t.Errorf("%s: user.%s refused as too big, the stream has %d bytes", p, x.Name, s.Size)
		case x.Size != -1 && x != s:
			t.Errorf("%s: user.%s is %+v, the stream entry %+v", p, x.Name, x, s)
		}
	}
}

func ourStat(t *testing.T, fsys fs.FileSystem, ino fs.Ino, p string) *ourEntry {
	t.Helper()
	ctx := context.Background()
	st, err := fsys.Stat(ctx, ino)
	if err != nil {
		t.Errorf("%s: stat: %v", p, err)
		return nil
	}
	tm := func(x time.Time) string { return x.UTC().Format(time.RFC3339Nano) }
	oe := &ourEntry{ino: ino}
	m := map[string]string{
		"type": st.Type.String(), "ino": fmt.Sprint(uint64(st.Ino)), "size": fmt.Sprint(st.Size),
		"mode": fmt.Sprint(st.Mode), "uid": fmt.Sprint(st.UID), "gid": fmt.Sprint(st.GID),
		"nlink": fmt.Sprint(st.Nlink), "readonly": fmt.Sprint(st.Mode&0o222 == 0),
		"atime": tm(st.Atime), "mtime": tm(st.Mtime), "ctime": tm(st.Ctime), "crtime": tm(st.Crtime),
	}
	if st.Type == fs.TypeCharDev || st.Type == fs.TypeBlockDev {
		m["rdev"] = fmt.Sprintf("%d:%d", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)))
	}
	if st.Type == fs.TypeSymlink {
		if m["target"], err = fsys.Readlink(ctx, ino); err != nil {
			m["target"] = "error: " + err.Error()
		}
	}
	if st.Type == fs.TypeRegular {
		m["sha256"], m["data"] = ourContent(fsys, ino)
	}
	if st.Type != fs.TypeSymlink {
		names, err := fsys.ListXattr(ctx, ino)
		if err != nil {
			t.Errorf("%s: listxattr: %v", p, err)
		}
		var xs []goldenBlob
		for _, n := range names {
			v, err := fsys.GetXattr(ctx, ino, n)
			if errors.Is(err, fs.ErrAttrTooBig) && fsys.Type() == "ntfs" {
				// a stream over 64 KiB: compared by name with the entries
				xs = append(xs, goldenBlob{Name: strings.TrimPrefix(n, "user."), Size: -1})
				continue
			}
			if err != nil {
				t.Errorf("%s: getxattr %s: %v", p, n, err)
			}
			s := sha256.Sum256(v)
			if fsys.Type() == "ntfs" { // streams: compared with the stream entries
				n = strings.TrimPrefix(n, "user.")
			}
			xs = append(xs, goldenBlob{Name: n, Size: int64(len(v)), SHA256: hex.EncodeToString(s[:])})
		}
		m["xattrs"] = blobs(xs)
		oe.xattrs = xs
	}
	if fsys.Type() == "ntfs" && (st.Type == fs.TypeRegular || st.Type == fs.TypeDir) {
		m["streams"] = blobs(nil) // filled in from the directory's stream entries
	}
	oe.fields = m
	return oe
}

// ourContent hashes a file and lists its data ranges.
func ourContent(fsys fs.FileSystem, ino fs.Ino) (sum, data string) {
	f, err := fsys.Open(context.Background(), ino)
	if err != nil {
		return "error: " + err.Error(), ""
	}
	sum, n, err := hashReader(io.NewSectionReader(f, 0, f.Size()))
	if err != nil || n != f.Size() {
		sum = fmt.Sprintf("error: read %d of %d bytes: %v", n, f.Size(), err)
	}
	ranges := [][2]int64{}
	if sf, ok := f.(fs.SparseFile); ok {
		ex, err := sf.DataExtents()
		if err != nil {
			return sum, "error: " + err.Error()
		}
		for _, e := range ex {
			ranges = append(ranges, [2]int64{e.Offset, e.Length})
		}
	} else if f.Size() > 0 {
		ranges = append(ranges, [2]int64{0, f.Size()})
	}
	if len(ranges) == 0 {
		return sum, fmt.Sprint([][2]int64(nil))
	}
	return sum, fmt.Sprint(ranges)
}

func checkGolden(t *testing.T, path string) {
	g, img := readGolden(t, path)
	if len(g.Files) == 0 {
		t.Fatal("golden listing has no files")
	}
	d, err := image.Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatalf("open %s: %v", g.Image, err)
	}
	p, err := d.Partition("p0")
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := d.OpenFS(p)
	if err != nil {
		t.Fatalf("%s: %v", g.Image, err)
	}
	name := strings.TrimSuffix(g.Image, ".zst")
	seen := map[string]bool{}
	check := func(where, field, got, want string) {
		key := name + " " + where + " " + field
		why, known := knownDivergences[key]
		seen[key] = true
		switch {
		case got == want && known:
			t.Errorf("%s %s: now agrees with the oracle (%q); remove the known divergence %q", where, field, got, why)
		case got != want && known:
			t.Logf("known divergence %s %s (%s): ours %q, oracle %q", where, field, why, got, want)
		case got != want:
			t.Errorf("%s %s: ours %q, oracle %q", where, field, got, want)
		}
	}
	check("volume", "fs", fsys.Type(), g.FS)
	check("volume", "label", fsys.Label(), g.Label)
	check("volume", "uuid", strings.ToLower(fsys.UUID()), strings.ToLower(g.UUID))

	ours := walkOurs(t, fsys)
	if w := fsys.Warnings(); len(w) > 0 { // the images are clean (fsck)
		t.Errorf("warnings on a clean image: %q", w)
	}
	compared := 0
	for _, e := range g.Files {
		want := e.fields(g.Defaults, g.FS)
		if e.Type == "file" && want["sha256"] == "" {
			t.Errorf("%s: golden listing has no sha256 for a file", e.Path)
		}
		o, ok := ours[e.Path]
		if !ok {
			check(e.Path, "present", "missing", "present")
			continue
		}
		check(e.Path, "present", "present", "present")
		delete(ours, e.Path)
		for _, f := range sortedKeys(want) {
			got, ok := o.fields[f]
			if !ok {
				got = "(not given)"
			}
			check(e.Path, f, got, want[f])
			compared++
		}
	}
	for _, p := range sortedKeys(ours) {
		check(p, "present", "extra", "absent")
	}
	for key, why := range knownDivergences {
		if strings.HasPrefix(key, name+" ") && !seen[key] {
			t.Errorf("known divergence %q (%s) was never checked", key, why)
		}
	}
	t.Logf("%s: %d paths, %d fields compared", g.Image, len(g.Files), compared)
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

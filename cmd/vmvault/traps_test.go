package main

// Tests of the traps a new user ran into (issue 17): each checks the
// behaviour the user expected, through the built binaries.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/fs/fstest"
	"github.com/vmvault/vmvault/nbd/overlay"
	"github.com/vmvault/vmvault/repo/extent"
	"github.com/vmvault/vmvault/repo/format"
)

// flipChunk flips one byte of the stored chunk whose content is data.
func (e *env) flipChunk(data []byte) {
	e.t.Helper()
	flipChunkByte(e.t, e.repo, format.Hash(data), format.ChunkHeaderSize+100)
}

// TestCatDamagedStreamsGoodPrefix damages the chunk that holds the middle
// of a file: cat writes every byte in front of the damaged chunk, then
// fails with exit 3 naming the restore point, disk and offset.
func TestCatDamagedStreamsGoodPrefix(t *testing.T) {
	fstest.NeedTools(t, "mke2fs")
	e := newEnv(t, "--chunk-size", "64KiB")
	src := filepath.Join(e.dir, "src")
	os.Mkdir(src, 0o755)
	content := make([]byte, 300<<10)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range content {
		content[i] = byte(rng.Uint32())
	}
	os.WriteFile(filepath.Join(src, "f.bin"), content, 0o644)
	img := filepath.Join(e.dir, "disk.img")
	if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", src, img, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v\n%s", err, out)
	}
	id := e.capture("--vm", "web01", "--disk", "disk0="+img).ID
	image, _ := os.ReadFile(img)

	// where each 4 KiB block of the file lies in the image
	const chunk = 64 << 10
	phys := func(fileOff int) int {
		i := bytes.Index(image, content[fileOff:fileOff+4096])
		if i < 0 {
			t.Fatalf("file block at %d not found in the image", fileOff)
		}
		return i
	}
	bad := phys(150<<10) / chunk // the chunk holding the file's middle
	good := -1                   // the first file offset inside the bad chunk
	for off := 0; off < len(content); off += 4096 {
		if phys(off)/chunk == bad {
			good = off
			break
		}
	}
	if good <= 0 {
		t.Fatalf("the file starts in chunk %d: no good prefix to test", bad)
	}
	e.flipChunk(image[bad*chunk : (bad+1)*chunk])

	out, errs, code := e.run("vmvault", "cat", "web01@latest:disk0/p0/f.bin")
	if code != 3 {
		t.Errorf("exit %d, want 3: %s", code, errs)
	}
	if len(out) != good || out != string(content[:good]) {
		t.Errorf("cat wrote %d bytes (a prefix of the file: %v), want the %d bytes in front of the damaged chunk",
			len(out), strings.HasPrefix(string(content), out), good)
	}
	for _, want := range []string{id[:8], "disk disk0", "offset"} {
		if !strings.Contains(errs, want) {
			t.Errorf("error does not name %q: %s", want, errs)
		}
	}
}

// splitShell splits a documented command line into words: single quotes
// group, a '#' word starts a comment.
func splitShell(line string) []string {
	var words []string
	var cur strings.Builder
	in, have := false, false
	for _, r := range line {
		switch {
		case r == '\'':
			in, have = !in, true
		case !in && (r == ' ' || r == '\t'):
			if have {
				words = append(words, cur.String())
				cur.Reset()
				have = false
			}
		case !in && r == '#' && !have:
			return words
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		words = append(words, cur.String())
	}
	return words
}

// serveExamples returns every 'vmvault serve' command with --export in
// the README and in 'serve --help' (its examples, its pattern table and the
// flag's own examples), as argument lists after "serve".
func serveExamples(t *testing.T, help string) [][]string {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var out [][]string
	for _, line := range strings.Split(help+"\n"+string(readme), "\n") {
		w := splitShell(line)
		if len(w) > 2 && w[0] == "vmvault" && w[1] == "serve" && slices.Contains(w, "--export") {
			out = append(out, w[2:])
		}
	}
	table := help[strings.Index(help, "--export restricts"):strings.Index(help, "A pattern that matches nothing")]
	for _, line := range strings.Split(table, "\n") {
		if strings.HasPrefix(line, "  ") {
			out = append(out, []string{"--export", splitShell(line)[0]})
		}
	}
	for _, line := range strings.Split(help, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "--export" {
			q := strings.Split(line, "'")
			for i := 1; i < len(q); i += 2 {
				out = append(out, []string{"--export", q[i]})
			}
		}
	}
	return out
}

// TestServeExportExamples runs every documented --export example against
// a repository of web01 (two restore points, one with two disks) and db01
// and checks what nbdinfo --list shows; with --writable, listing (INFO on
// every export) creates no overlay.
func TestServeExportExamples(t *testing.T) {
	needTools(t, "nbdinfo")
	e := newEnv(t, "--chunk-size", "64KiB")
	img := filepath.Join(e.dir, "d.img")
	makeImage(t, img, 300_000, 1)
	w1 := e.capture("--vm", "web01", "--disk", "disk0="+img, "--disk", "disk1="+img).ID
	makeImage(t, img, 300_000, 2)
	w2 := e.capture("--vm", "web01", "--disk", "disk0="+img).ID
	db := e.capture("--vm", "db01", "--disk", "disk0="+img).ID
	byID := func(vm, id string, disks ...string) []string {
		var out []string
		for _, d := range disks {
			out = append(out, vm+"/"+id+"/"+d)
		}
		return out
	}
	web01ByID := slices.Concat(byID("web01", w1, "disk0", "disk1"), byID("web01", w2, "disk0"))
	want := map[string][]string{ // by the patterns given, space-separated
		"web01":               append(slices.Clone(web01ByID), "web01@latest/disk0"),
		"web01/*":             web01ByID,
		"web01/3fa4b2c1":      byID("web01", w1, "disk0", "disk1"),
		"web01@latest/*":      {"web01@latest/disk0"},
		"*/*/disk0":           slices.Concat(byID("db01", db, "disk0"), byID("web01", w1, "disk0"), byID("web01", w2, "disk0")),
		"web01 db01@latest/*": append(slices.Clone(web01ByID), "web01@latest/disk0", "db01@latest/disk0"),
	}
	help := e.ok("vmvault", "serve", "--help")
	examples := serveExamples(t, help)
	if len(examples) < 8 {
		t.Fatalf("found only %d examples: %q", len(examples), examples)
	}
	tried := map[string]bool{}
	for _, ex := range examples {
		var args, patterns []string
		writable := false
		for i := 0; i < len(ex); i++ {
			switch ex[i] {
			case "--socket":
				i++ // the test's own socket
			case "--export":
				i++
				patterns = append(patterns, ex[i])
				args = append(args, "--export", strings.ReplaceAll(ex[i], "3fa4b2c1", w1[:8]))
			case "--writable":
				writable = true
				args = append(args, ex[i])
			default:
				args = append(args, ex[i])
			}
		}
		key := strings.Join(patterns, " ")
		if tried[key+fmt.Sprint(writable)] {
			continue
		}
		tried[key+fmt.Sprint(writable)] = true
		exp, ok := want[key]
		if !ok {
			t.Errorf("documented example %q: add what it serves to this test", ex)
			continue
		}
		t.Run(strings.Join(ex, " "), func(t *testing.T) {
			ovDir := filepath.Join(t.TempDir(), "overlays")
			if writable {
				args = append(args, "--overlay-dir", ovDir)
			}
			s := e.serve(args...)
			defer s.stop()
			var l struct {
				Exports []struct {
					URI      string `json:"uri"` // the name listed (export-name is the canonical one)
					ReadOnly bool   `json:"is_read_only"`
				} `json:"exports"`
			}
			out := sh(t, "nbdinfo", "--list", "--json", s.uri(""))
			if err := json.Unmarshal([]byte(out), &l); err != nil {
				t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
			}
			var got []string
			for _, x := range l.Exports {
				u, err := url.Parse(x.URI)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, strings.TrimPrefix(u.Path, "/"))
				if x.ReadOnly == writable {
					t.Errorf("%s: read-only %v", x.URI, x.ReadOnly)
				}
			}
			slices.Sort(got)
			w := slices.Clone(exp)
			slices.Sort(w)
			if !slices.Equal(got, w) {
				t.Errorf("serves %q\nwant %q", got, w)
			}
			if ents, _ := os.ReadDir(ovDir); len(ents) != 0 {
				t.Errorf("listing the exports created overlays: %v", ents)
			}
		})
	}
}

// zeroBase is an all-zero overlay base of a given size.
type zeroBase int64

func (b zeroBase) Size() int64 { return int64(b) }
func (b zeroBase) ReadAt(_ context.Context, p []byte, _ int64) error {
	clear(p)
	return nil
}
func (b zeroBase) Extents(_ context.Context, off, length int64) ([]extent.Extent, error) {
	return []extent.Extent{{Offset: off, Length: length}}, nil
}

// makeOverlay writes 4 KiB into a new overlay of (vm, id, disk), as a
// client of 'serve --writable' would.
func makeOverlay(t *testing.T, root, vm, id, disk string, size int64) {
	t.Helper()
	o, err := overlay.Open(overlay.Path(root, id, disk), overlay.Meta{VM: vm, RestorePoint: id, Disk: disk}, zeroBase(size))
	if err != nil {
		t.Fatal(err)
	}
	if err := o.WriteAt(context.Background(), bytes.Repeat([]byte{7}, 4096), 8192); err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestOverlayNames: commit and discard take the same names — an id
// prefix, VM@latest, the export names VM/ID and VM/ID/DISK — and a name
// whose VM is not the restore point's is refused.
func TestOverlayNames(t *testing.T) {
	e := newEnv(t, "--chunk-size", "64KiB")
	img := filepath.Join(e.dir, "d.img")
	const size = 200_000
	makeImage(t, img, size, 1)
	old := e.capture("--vm", "web01", "--disk", "disk0="+img, "--disk", "disk1="+img).ID
	id := e.capture("--vm", "web01", "--disk", "disk0="+img, "--disk", "disk1="+img).ID
	root := filepath.Join(e.dir, "overlays")
	overlays := func() []string {
		var out []string
		for _, f := range must(overlay.List(root)) {
			out = append(out, f.Meta.RestorePoint[:8]+"/"+f.Meta.Disk)
		}
		slices.Sort(out)
		return out
	}
	reset := func() {
		os.RemoveAll(root)
		for _, rp := range []string{old, id} {
			makeOverlay(t, root, "web01", rp, "disk0", size)
			makeOverlay(t, root, "web01", rp, "disk1", size)
		}
	}
	all := []string{old[:8] + "/disk0", old[:8] + "/disk1", id[:8] + "/disk0", id[:8] + "/disk1"}
	sorted := func(s ...string) []string { return slices.Sorted(slices.Values(s)) }
	for _, tc := range []struct {
		name string
		left []string // overlays left after discard
	}{
		{id[:8], sorted(all[0], all[1])},
		{"web01/" + id[:8], sorted(all[0], all[1])}, // the form of the issue: "no such restore point"
		{"web01/" + id, sorted(all[0], all[1])},
		{"web01/" + id[:8] + "/disk1", sorted(all[0], all[1], all[2])},
		{"web01@latest", sorted(all[0], all[1])},
		{"web01@latest/disk0", sorted(all[0], all[1], all[3])},
		{"web01/" + old[:8] + "/disk0", sorted(all[1], all[2], all[3])},
	} {
		reset()
		e.ok("vmvault", "overlay", "discard", tc.name, "--overlay-dir", root)
		if got := overlays(); !slices.Equal(got, tc.left) {
			t.Errorf("discard %s left %v, want %v", tc.name, got, tc.left)
		}
	}
	reset()
	for _, name := range []string{"db01/" + id[:8], "web01/" + id[:8] + "/disk0/x", "web01//disk0"} {
		if _, errs, code := e.run("vmvault", "overlay", "discard", name, "--overlay-dir", root); code == 0 {
			t.Errorf("discard %s succeeded", name)
		} else if !strings.Contains(errs, name) {
			t.Errorf("discard %s: error does not name it: %s", name, errs)
		}
		if _, _, code := e.run("vmvault", "overlay", "commit", name, "--overlay-dir", root); code == 0 {
			t.Errorf("commit %s succeeded", name)
		}
	}
	if got := overlays(); !slices.Equal(got, sorted(all...)) {
		t.Errorf("refused names removed overlays: %v", got)
	}
	// commit takes the same names (@latest first: a commit becomes the
	// newest restore point)
	for _, name := range []string{"web01@latest", "web01/" + old[:8], "web01/" + old[:8] + "/disk1", old[:8]} {
		var res struct {
			Parent  string
			Changed int64 `json:"changed_bytes"`
		}
		if err := json.Unmarshal([]byte(e.ok("vmvault", "overlay", "commit", name, "--overlay-dir", root, "--json", "-q")), &res); err != nil {
			t.Fatal(err)
		}
		if want := map[bool]string{true: old, false: id}[strings.Contains(name, old[:8])]; res.Parent != want {
			t.Errorf("commit %s committed %.8s, want %.8s", name, res.Parent, want)
		}
		if res.Changed != 2*4096 {
			t.Errorf("commit %s stored %d changed bytes, want both disks' 8192", name, res.Changed)
		}
	}
}

func must[T any](v T, _ []error, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// loopDevice attaches a new loop device (with partition scanning) to a
// file of size bytes and detaches it at the end of the test.
func loopDevice(t *testing.T, dir string, size int64) (dev, backing string) {
	t.Helper()
	needRoot(t)
	needTools(t, "losetup")
	backing = filepath.Join(dir, "loop.img")
	if err := os.WriteFile(backing, bytes.Repeat([]byte{0xa5}, int(size)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "-P", "--show", backing).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v\n%s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev, backing
}

// TestRestoreToBlockDevice: a block device is only overwritten with
// --overwrite, and never while it or a partition of it is mounted, it has
// a holder (device-mapper) or another program holds it exclusively.
func TestRestoreToBlockDevice(t *testing.T) {
	needTools(t, "sfdisk", "mkfs.ext4")
	e := newEnv(t, "--chunk-size", "64KiB")
	img := filepath.Join(e.dir, "d.img")
	data := makeImage(t, img, 2<<20, 5)
	id := e.capture("--vm", "web01", "--disk", "disk0="+img).ID
	dev, backing := loopDevice(t, e.dir, 4<<20)
	restore := func(args ...string) (string, int) {
		_, errs, code := e.run("vmvault", append([]string{"restore", id[:8], "--to", dev}, args...)...)
		return errs, code
	}
	// Between the partition table and the partition, the restore would
	// write and nothing else does.
	untouched := func(when string) {
		t.Helper()
		b, _ := os.ReadFile(backing)
		if !bytes.Equal(b[512:1<<20], bytes.Repeat([]byte{0xa5}, 1<<20-512)) {
			t.Fatalf("%s: the device was written", when)
		}
	}

	if errs, code := restore(); code != 1 || !strings.Contains(errs, "block device") || !strings.Contains(errs, "--overwrite") {
		t.Errorf("without --overwrite: exit %d: %s", code, errs)
	}
	untouched("without --overwrite")

	// a mounted partition of the device
	part := strings.NewReader("start=2048, size=4096, type=83\n")
	cmd := exec.Command("sfdisk", "-q", dev)
	cmd.Stdin = part
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	exec.Command("partx", "-u", dev).Run()
	p1 := dev + "p1"
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(p1); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	sh(t, "mkfs.ext4", "-q", "-F", p1)
	mnt := t.TempDir()
	sh(t, "mount", p1, mnt)
	errs, code := restore("--overwrite")
	if code != 1 || !strings.Contains(errs, "in use") || !strings.Contains(errs, "mounted") || !strings.Contains(errs, mnt) {
		t.Errorf("partition mounted: exit %d: %s", code, errs)
	}
	sh(t, "umount", mnt)
	untouched("a partition mounted")

	// a device-mapper device on top of it (when the kernel has
	// device-mapper; blockdev's TestCheckUnused covers holders without)
	dm := "vmvault-test-" + filepath.Base(dev)
	table := fmt.Sprintf("0 %d linear %s 0", (4<<20)/512, dev)
	if out, err := exec.Command("dmsetup", "create", "--noudevsync", dm, "--table", table).CombinedOutput(); err != nil { // also when dmsetup is missing
		t.Logf("no device-mapper here, holder case not run: %v: %s", err, out)
	} else {
		errs, code = restore("--overwrite")
		sh(t, "dmsetup", "remove", "--noudevsync", dm)
		if code != 1 || !strings.Contains(errs, "held by dm-") {
			t.Errorf("device-mapper on top: exit %d: %s", code, errs)
		}
	}

	// another program holds it exclusively
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	errs, code = restore("--overwrite")
	f.Close()
	if code != 1 || !strings.Contains(errs, "in use") || !strings.Contains(errs, "exclusive") {
		t.Errorf("opened exclusively elsewhere: exit %d: %s", code, errs)
	}
	untouched("in use")

	if errs, code := restore("--overwrite"); code != 0 {
		t.Fatalf("restore --overwrite: exit %d: %s", code, errs)
	}
	if after, _ := os.ReadFile(backing); !bytes.Equal(after[:len(data)], data) {
		t.Error("the device does not hold the restored disk")
	}
}

// TestResolveHintsCLI: a VM name where a restore point belongs says what
// to write (repo.Resolve's hint reaches every command).
func TestResolveHintsCLI(t *testing.T) {
	e := newEnv(t)
	img := filepath.Join(e.dir, "d.img")
	makeImage(t, img, 100_000, 1)
	id := e.capture("--vm", "web01", "--disk", "disk0="+img).ID
	for _, args := range [][]string{{"show", "web01"}, {"restore", "web01", "--to", filepath.Join(e.dir, "x")}, {"ls", "web01:disk0"}} {
		_, errs, code := e.run("vmvault", args...)
		if code == 0 || !strings.Contains(errs, "web01 is a VM") || !strings.Contains(errs, "web01@latest") || !strings.Contains(errs, id[:8]) {
			t.Errorf("%v: exit %d: %s", args, code, errs)
		}
	}
}

// TestMountpointErrors: mount says what is wrong with the mount point
// before FUSE is asked.
func TestMountpointErrors(t *testing.T) {
	e := newEnv(t)
	file := filepath.Join(e.dir, "file")
	os.WriteFile(file, []byte("x"), 0o600)
	for _, c := range []struct {
		dir, want string
		code      int
	}{
		{filepath.Join(e.dir, "nonexistent"), "does not exist: create it first", 2},
		{file, "is not a directory", 2},
	} {
		_, errs, code := e.run("vmvault", "mount", c.dir)
		if code != c.code || !strings.Contains(errs, c.dir) || !strings.Contains(errs, c.want) {
			t.Errorf("mount %s: exit %d: %s", c.dir, code, errs)
		}
	}
}

// TestMountpointMounted: a mount point that holds a running vmvault mount,
// or one whose process was killed, is named as such (and not mounted over).
func TestMountpointMounted(t *testing.T) {
	e := newEnv(t)
	m := e.mount(t)
	mountAgain := func() (string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "vmvault"), "mount", m.dir)
		cmd.Env = append(os.Environ(), "VMVAULT_REPOSITORY="+e.repo)
		out, _ := cmd.CombinedOutput()
		if ctx.Err() != nil {
			exec.Command("umount", "-l", m.dir).Run()
			t.Fatalf("vmvault mount %s mounted over the existing mount", m.dir)
		}
		return string(out), cmd.ProcessState.ExitCode()
	}
	if out, code := mountAgain(); code != 1 || !strings.Contains(out, "a vmvault mount is already there") {
		t.Errorf("mount on a running mount: exit %d: %s", code, out)
	}
	m.cmd.Process.Kill()
	m.cmd.Wait()
	defer exec.Command("umount", "-l", m.dir).Run()
	if out, code := mountAgain(); code != 1 || !strings.Contains(out, "process is gone") || !strings.Contains(out, "umount -l "+m.dir) {
		t.Errorf("mount on a dead mount: exit %d: %s", code, out)
	}
}

// TestCaptureUsage: required flags are asked for in a sensible order, and
// a changed-extents file that does not exist is an error on a first
// capture too.
func TestCaptureUsage(t *testing.T) {
	e := newEnv(t)
	img := filepath.Join(e.dir, "d.img")
	makeImage(t, img, 100_000, 1)
	missing := filepath.Join(e.dir, "nonexist.tsv")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"file", "--vm", "web01", "--disk", "d=" + img, "--changed-extents", "d=" + missing}, 1, missing},
		{[]string{"file", "--vm", "web01", "--disk", "d=" + img, "--changed-extents", missing}, 1, missing},
		{[]string{"vsphere", "web01"}, 2, "--url is required"},
		{[]string{"vsphere", "--transport", "nbd", "web01"}, 2, "--url is required"},
		{[]string{"vsphere", "--url", "https://vc.invalid/sdk", "web01"}, 2, "--datastore-map"},
		{[]string{"vsphere", "--url", "https://vc.invalid/sdk", "--transport", "nbd", "web01"}, 2, "--nbd-command"},
	} {
		_, errs, code := e.run("vmvault-capture", c.args...)
		if code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, want %d and %q: %s", c.args, code, c.code, c.want, errs)
		}
	}
	if out := e.ok("vmvault", "snapshots", "--json"); strings.Contains(out, "web01") {
		t.Errorf("a failed capture left a restore point:\n%s", out)
	}
}

// TestQuiet: -q leaves out summaries and progress, not errors, listings or
// --json.
func TestQuiet(t *testing.T) {
	e := newEnv(t)
	img := filepath.Join(e.dir, "d.img")
	makeImage(t, img, 100_000, 1)
	r2 := filepath.Join(e.dir, "repo2")
	for _, c := range []struct {
		bin  string
		args []string
	}{
		{"vmvault", []string{"init", "-q", "--repo", r2}},
		{"vmvault-capture", []string{"file", "-q", "--vm", "web01", "--disk", "d=" + img}},
		{"vmvault-capture", []string{"file", "--quiet", "--vm", "web01", "--disk", "d=" + img}},
		{"vmvault", []string{"restore", "-q", "web01@latest", "--to", filepath.Join(e.dir, "r.img")}},
	} {
		out, errs, code := e.run(c.bin, c.args...)
		if code != 0 || out != "" || errs != "" {
			t.Errorf("%s %v: exit %d, stdout %q, stderr %q", c.bin, c.args, code, out, errs)
		}
	}
	var j captureJSON
	if out := e.ok("vmvault-capture", "file", "-q", "--json", "--vm", "web01", "--disk", "d="+img); json.Unmarshal([]byte(out), &j) != nil || j.ID == "" {
		t.Errorf("-q --json: %q", out)
	}
	if out := e.ok("vmvault", "snapshots", "-q"); strings.Count(out, "web01") != 3 {
		t.Errorf("-q snapshots:\n%s", out)
	}
	if _, errs, code := e.run("vmvault-capture", "file", "-q", "--vm", "web01", "--disk", "d=/nonexistent"); code == 0 || !strings.Contains(errs, "/nonexistent") {
		t.Errorf("-q hides an error: exit %d, %q", code, errs)
	}
}

// TestSnapshotsAdded: snapshots shows what each restore point added (its
// capture's stored bytes), in the table and in --json.
func TestSnapshotsAdded(t *testing.T) {
	e := newEnv(t, "--chunk-size", "64KiB")
	a, b := filepath.Join(e.dir, "a.img"), filepath.Join(e.dir, "b.img")
	makeImage(t, a, 1<<20, 1)
	makeImage(t, b, 300_000, 2)
	var want []int64
	for _, args := range [][]string{{"--disk", "d0=" + a, "--disk", "d1=" + b}, {"--disk", "d0=" + a, "--disk", "d1=" + a}} {
		c := e.capture(append([]string{"--vm", "web01"}, args...)...)
		var n int64
		for _, d := range c.Disks {
			n += d.BytesStored
		}
		want = append(want, n)
	}
	if want[0] == 0 || want[1] != 0 {
		t.Fatalf("captures stored %v bytes; the test needs new data, then none", want)
	}
	var list []struct {
		Added int64 `json:"added_bytes"`
	}
	if err := json.Unmarshal([]byte(e.ok("vmvault", "snapshots", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Added != want[0] || list[1].Added != want[1] {
		t.Errorf("added_bytes %+v, want %v", list, want)
	}
	lines := strings.Split(e.ok("vmvault", "snapshots"), "\n")
	if !strings.Contains(lines[0], "ADDED") || !strings.Contains(lines[1], cli.Bytes(want[0])) || !strings.Contains(lines[2], " 0 B ") {
		t.Errorf("snapshots table:\n%s", strings.Join(lines, "\n"))
	}
}

// TestVersion: both binaries print their version, the commit the build
// info records and the repository format versions.
func TestVersion(t *testing.T) {
	e := &env{t: t, dir: t.TempDir()}
	for _, bin := range []string{"vmvault", "vmvault-capture"} {
		info, err := exec.Command("go", "version", "-m", filepath.Join(binDir, bin)).Output()
		if err != nil {
			t.Fatal(err)
		}
		commit := "commit unknown"
		for _, line := range strings.Split(string(info), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "build" && strings.HasPrefix(f[1], "vcs.revision=") {
				commit = "commit " + strings.TrimPrefix(f[1], "vcs.revision=")
			}
		}
		out := e.ok(bin, "--version")
		for _, want := range []string{bin + " ", commit, fmt.Sprintf("repository format: config %d, index %d, manifest %d, chunk frame %d",
			format.ConfigVersion, format.IndexVersion, format.ManifestVersion, format.ChunkVersion)} {
			if !strings.Contains(out, want) {
				t.Errorf("%s --version lacks %q:\n%s", bin, want, out)
			}
		}
		if bin == "vmvault" && !strings.Contains(out, fmt.Sprintf("overlay format %d", overlay.Version)) {
			t.Errorf("vmvault --version lacks the overlay format:\n%s", out)
		}
	}
}

// TestGarbageLockFile: files in locks/ that are no lock (content that does
// not parse, or a name vmvault never writes) are warned about by the
// commands that check locks, listed by unlock --list, and removed by
// unlock --remove-all.
func TestGarbageLockFile(t *testing.T) {
	for _, c := range []struct{ name, content string }{
		{"00112233445566778899aabbccddeeff", "{not json"},
		{"garbage.txt", "left here by hand"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			img := filepath.Join(e.dir, "d.img")
			makeImage(t, img, 100_000, 1)
			e.capture("--vm", "web01", "--disk", "d="+img)
			if err := os.WriteFile(filepath.Join(e.repo, "locks", c.name), []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, args := range [][]string{{"gc", "--grace", "0s"}, {"prune", "--keep-last", "1"}, {"unlock", "--list"}} {
				out, errs, code := e.run("vmvault", args...)
				if code != 0 || !strings.Contains(out+errs, c.name[:8]) {
					t.Errorf("%v: exit %d, does not mention %s:\n%s%s", args, code, c.name, out, errs)
				}
			}
			e.ok("vmvault", "unlock", "--remove-all")
			if _, err := os.Stat(filepath.Join(e.repo, "locks", c.name)); err == nil {
				t.Errorf("unlock --remove-all left locks/%s", c.name)
			}
		})
	}
}

// TestMountTimesAndModes: through a real FUSE mount, the root, a VM's
// directory and its latest link carry the newest restore point's time, and
// permission bits 0 in an ext4 image stay 0.
func TestMountTimesAndModes(t *testing.T) {
	fstest.NeedTools(t, "mke2fs")
	e := newEnv(t)
	src := filepath.Join(e.dir, "src")
	os.MkdirAll(filepath.Join(src, "locked"), 0o755)
	for name, mode := range map[string]os.FileMode{"secret": 0, "normal": 0o640} {
		os.WriteFile(filepath.Join(src, name), []byte(name), 0o600)
		os.Chmod(filepath.Join(src, name), mode)
	}
	os.Chmod(filepath.Join(src, "locked"), 0)
	img := filepath.Join(e.dir, "disk.img")
	if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-d", src, img, "4M").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v\n%s", err, out)
	}
	e.capture("--vm", "web01", "--disk", "disk0="+img)
	e.capture("--vm", "db01", "--disk", "disk0="+img)
	newest := e.capture("--vm", "web01", "--disk", "disk0="+img).ID
	var list []struct{ ID, Time string }
	json.Unmarshal([]byte(e.ok("vmvault", "snapshots", "--json")), &list)
	var want time.Time
	for _, rp := range list {
		if rp.ID == newest {
			want, _ = time.Parse(time.RFC3339Nano, rp.Time)
		}
	}
	m := e.mount(t)
	for _, p := range []string{"", "web01", "web01/latest"} {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(m.dir, p), &st); err != nil {
			t.Fatal(err)
		}
		if got := time.Unix(st.Mtim.Unix()); !got.Equal(want) {
			t.Errorf("/%s: mtime %v, want the newest restore point's %v", p, got.UTC(), want)
		}
	}
	for name, mode := range map[string]uint32{"secret": 0, "locked": 0, "normal": 0o640} {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(m.dir, "web01/latest/disk0/p0", name), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&0o7777 != mode {
			t.Errorf("%s: mode %04o through the mount, %04o in the image", name, st.Mode&0o7777, mode)
		}
	}
}

// TestBadPartitionEntry: one bad MBR entry costs only that partition: the
// others are listed and readable (partitions, cat, the mount), the bad one
// is reported by name (partitions, ls, vmvault-error.txt in its directory
// of the mount); a disk whose table cannot be read at all holds
// vmvault-error.txt in the mount.
func TestBadPartitionEntry(t *testing.T) {
	imgs := fstest.Images(t)
	e := newEnv(t)
	mbrImg, err := os.ReadFile(filepath.Join(imgs, "mbr.img"))
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint32(mbrImg[446+12:], 1<<30) // p1: 2^30 sectors
	badMBR := filepath.Join(e.dir, "mbr.img")
	os.WriteFile(badMBR, mbrImg, 0o600)
	gptImg := fstest.Seed(t, "gpt.img")
	binary.LittleEndian.PutUint32(gptImg[512+0x50:], 1<<30) // entry count
	badGPT := filepath.Join(e.dir, "gpt.img")
	os.WriteFile(badGPT, gptImg, 0o600)
	e.capture("--vm", "web01", "--disk", "disk0="+badMBR, "--disk", "disk1="+badGPT)

	var names []string
	badLine := ""
	for _, l := range jsonLines[struct{ Name, Error string }](t, e.ok("vmvault", "partitions", "--json", "web01@latest:disk0")) {
		if l.Error != "" {
			badLine = l.Name + ": " + l.Error
			continue
		}
		names = append(names, l.Name)
	}
	if strings.Join(names, " ") != "p2 p5 p6" || !strings.HasPrefix(badLine, "p1: MBR partition 1 (sector 2048, 1073741824 sectors) lies outside") {
		t.Errorf("partitions --json: %v, bad %q", names, badLine)
	}
	if out := e.ok("vmvault", "partitions", "web01@latest:disk0"); !strings.Contains(out, "p1: bad table entry: MBR partition 1") || !strings.Contains(out, "p6 ") {
		t.Errorf("partitions:\n%s", out)
	}
	if out := e.ok("vmvault", "cat", "web01@latest:disk0/p6/hostname"); out != "web01\n" {
		t.Errorf("cat p6/hostname = %q", out)
	}
	if _, errs, code := e.run("vmvault", "ls", "web01@latest:disk0/p1/"); code == 0 || !strings.Contains(errs, "partition p1: MBR partition 1") {
		t.Errorf("ls p1: exit %d: %s", code, errs)
	}

	m := e.mount(t)
	disk0 := filepath.Join(m.dir, "web01/latest/disk0")
	ents, err := os.ReadDir(disk0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range ents {
		got = append(got, d.Name())
	}
	slices.Sort(got)
	if strings.Join(got, " ") != "p1 p5 p6" {
		t.Errorf("mount disk0/: %v", got)
	}
	if b, err := os.ReadFile(filepath.Join(disk0, "p1", "vmvault-error.txt")); err != nil || !strings.Contains(string(b), "lies outside") {
		t.Errorf("p1/vmvault-error.txt: %v %q", err, b)
	}
	if b, err := os.ReadFile(filepath.Join(disk0, "p6", "hostname")); err != nil || string(b) != "web01\n" {
		t.Errorf("p6/hostname through the mount: %v %q", err, b)
	}
	if b, err := os.ReadFile(filepath.Join(m.dir, "web01/latest/disk1/vmvault-error.txt")); err != nil || !strings.Contains(string(b), "GPT header") {
		t.Errorf("disk1/vmvault-error.txt: %v %q", err, b)
	}
}

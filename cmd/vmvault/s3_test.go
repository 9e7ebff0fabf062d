package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/vmvault/vmvault/repo/backend/s3/s3test"
)

// newS3Env is an env whose repository is in a new bucket of srv, used
// with the root credentials from the environment.
func newS3Env(t *testing.T, srv *s3test.Server, lock bool) (*env, string) {
	t.Helper()
	bucket := srv.NewBucket(t, s3test.BucketOptions{ObjectLock: lock})
	dir := t.TempDir()
	return &env{t: t, dir: dir, repo: "s3:" + srv.URL() + "/" + bucket + "/vmvault",
		extra: []string{"AWS_ACCESS_KEY_ID=" + s3test.RootUser, "AWS_SECRET_ACCESS_KEY=" + s3test.RootPassword,
			"VMVAULT_REPO_PATH_STYLE=true", "VMVAULT_CACHE_DIR=" + filepath.Join(dir, "cache")}}, bucket
}

// TestS3CLI runs the CLI against a real MinIO: a round trip, hosts sharing
// the repository, the server killed mid-capture, and an object-locked
// repository.
func TestS3CLI(t *testing.T) {
	srv := s3test.Start(t)

	t.Run("round trip", func(t *testing.T) {
		e, _ := newS3Env(t, srv, false)
		e.ok("vmvault", "init", "--chunk-size", "64KiB", "--pack-size", "1MiB", "-q")
		img := filepath.Join(e.dir, "disk.img")
		v1 := makeImage(t, img, 12<<20, 3)
		c1 := e.capture("--vm", "web01", "--disk", "disk0="+img)
		v2 := changeImage(t, img, 0.02, 3)
		c2 := e.capture("--vm", "web01", "--disk", "disk0="+img)
		if c2.Disks[0].Mode != "dedup" || c2.Disks[0].NewChunks == 0 || c2.Disks[0].NewChunks > 8 {
			t.Fatalf("second capture: %+v", c2.Disks[0])
		}
		// An extents incremental: one 4 KiB write at 1 MiB.
		v3 := bytes.Clone(v2)
		copy(v3[1<<20:], bytes.Repeat([]byte("x"), 4096))
		if err := os.WriteFile(img, v3, 0o600); err != nil {
			t.Fatal(err)
		}
		ext := filepath.Join(e.dir, "changed.tsv")
		if err := os.WriteFile(ext, []byte("1048576\t4096\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c3 := e.capture("--vm", "web01", "--disk", "disk0="+img, "--changed-extents", "disk0="+ext)
		if c3.Disks[0].Mode != "extents" || c3.Disks[0].NewChunks != 1 {
			t.Fatalf("extents capture: %+v", c3.Disks[0])
		}
		if e.restoreSHA(c1.ID, "disk0") != sha(v1) || e.restoreSHA(c2.ID, "disk0") != sha(v2) || e.restoreSHA(c3.ID, "disk0") != sha(v3) {
			t.Fatal("restore from S3 differs")
		}
		// serve + nbdcopy, cold cache then warm; mount + sha256.
		needTools(t, "nbdcopy")
		srvNBD := e.serve()
		for _, pass := range []string{"cold", "warm"} {
			out := filepath.Join(e.dir, "nbd-"+pass+".img")
			sh(t, "nbdcopy", srvNBD.uri("web01@latest/disk0"), out)
			if fileSHA(t, out) != sha(v3) {
				t.Fatalf("nbdcopy (%s cache) from S3 differs", pass)
			}
		}
		srvNBD.stop()
		if os.Getuid() == 0 {
			m := e.mount(t)
			latest, err := os.Readlink(filepath.Join(m.dir, "web01", "latest"))
			if err != nil {
				t.Fatal(err)
			}
			if got, err := shaFile(t, filepath.Join(m.dir, "web01", latest, "disks", "disk0.raw")); err != nil || got != sha(v3) {
				t.Fatalf("the disk through the mount: %v", err)
			}
			m.stop(t)
		}
		// forget + gc keep what the rest needs.
		e.ok("vmvault", "forget", c1.ID, "-q")
		e.ok("vmvault", "gc", "--grace", "0s", "-q")
		if e.restoreSHA(c2.ID, "disk0") != sha(v2) || e.restoreSHA(c3.ID, "disk0") != sha(v3) {
			t.Fatal("restore after forget and gc differs")
		}
		out := e.ok("vmvault", "stats", "--json")
		var st struct {
			Location      string `json:"location"`
			FormatVersion int    `json:"format_version"`
			Packs         int    `json:"packs"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil || !strings.HasPrefix(st.Location, "s3:") || st.FormatVersion != 2 || st.Packs < 2 {
			t.Fatalf("stats: %v %+v", err, st)
		}
		e.ok("vmvault", "verify", "-q")
		// The disk cache serves a second restore: identical bytes.
		if e.restoreSHA(c2.ID, "disk0") != sha(v2) {
			t.Fatal("restore through the disk cache differs")
		}
		// A missing bucket is "no repository".
		other := &env{t: t, dir: e.dir, repo: "s3:" + srv.URL() + "/no-such-bucket/x", extra: e.extra}
		if _, errs, code := other.run("vmvault", "snapshots"); code != 10 || !strings.Contains(errs, "no-such-bucket") {
			t.Fatalf("missing bucket: exit %d: %s", code, errs)
		}
	})

	t.Run("copy local to S3 to local", func(t *testing.T) {
		src := newEnv(t, "--chunk-size", "64KiB")
		img := filepath.Join(src.dir, "disk.img")
		v1 := makeImage(t, img, 16<<20, 5)
		c1 := src.capture("--vm", "db", "--disk", "sda="+img)
		mid, _ := newS3Env(t, srv, false)
		mid.ok("vmvault", "init", "--like", src.repo, "--pack-size", "4MiB", "-q")
		r, code := src.copyJSON(mid.extra, "--to", mid.repo)
		if code != 0 || r.Mode != "frames" || len(r.Copied) != 1 {
			t.Fatalf("push to S3: exit %d %+v", code, r)
		}
		v2 := changeImage(t, img, 0.01, 5)
		c2 := src.capture("--vm", "db", "--disk", "sda="+img)
		r, code = src.copyJSON(mid.extra, "--to", mid.repo, "--since", "1h")
		if code != 0 || len(r.Copied) != 1 || float64(r.BytesSent) > 1.1*float64(c2.Disks[0].BytesStored) {
			t.Fatalf("incremental push: exit %d %+v; the capture stored %d bytes", code, r, c2.Disks[0].BytesStored)
		}
		dst := &env{t: t, dir: src.dir, repo: filepath.Join(src.dir, "dr")}
		dst.okEnv(mid.extra, "vmvault", "init", "--like", mid.repo, "-q")
		r, code = dst.copyJSON(mid.extra, "--from", mid.repo)
		if code != 0 || len(r.Copied) != 2 {
			t.Fatalf("pull from S3: exit %d %+v", code, r)
		}
		if dst.restoreSHA(c1.ID, "sda") != sha(v1) || dst.restoreSHA(c2.ID, "sda") != sha(v2) {
			t.Fatal("the copy of the copy restores different bytes")
		}
		dst.ok("vmvault", "verify", "-q")
	})

	t.Run("hosts sharing a repository", func(t *testing.T) {
		needTools(t, "nbdcopy")
		e, _ := newS3Env(t, srv, false)
		e.ok("vmvault", "init", "--chunk-size", "64KiB", "--pack-size", "1MiB", "-q")
		var imgs, shas []string
		for i := range 4 {
			p := filepath.Join(e.dir, fmt.Sprintf("vm%d.img", i))
			shas = append(shas, sha(makeImage(t, p, 6<<20, uint64(10+i))))
			imgs = append(imgs, p)
		}
		old := e.capture("--vm", "old", "--disk", "d="+imgs[3])
		served := e.capture("--vm", "served", "--disk", "d="+imgs[0])
		e.ok("vmvault", "forget", old.ID, "-q") // garbage for the gc below
		// Two NBD readers on their own hosts read "served" while three
		// hosts capture and a fourth runs gc.
		var readers []*server
		for i := range 2 {
			r := &env{t: t, dir: e.dir, repo: e.repo, extra: append(slices.Clone(e.extra), fmt.Sprintf("VMVAULT_HOSTNAME=reader%d", i),
				"VMVAULT_CACHE_DIR="+filepath.Join(e.dir, fmt.Sprintf("cache-reader%d", i)))}
			readers = append(readers, r.serve())
		}
		var wg sync.WaitGroup
		ids := make([]string, 3)
		errs := make([]string, 6)
		for i := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, stderr, code := e.runEnv([]string{fmt.Sprintf("VMVAULT_HOSTNAME=host%d", i)}, "vmvault-capture", "file", "--json",
					"--vm", fmt.Sprintf("vm%d", i), "--disk", "d="+imgs[i])
				var c captureJSON
				if code != 0 || json.Unmarshal([]byte(out), &c) != nil {
					errs[i] = stderr
					return
				}
				ids[i] = c.ID
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, stderr, code := e.runEnv([]string{"VMVAULT_HOSTNAME=hostgc"}, "vmvault", "gc", "--grace", "0s", "--lock-wait", "1m", "-q"); code != 0 {
				errs[3] = stderr
			}
		}()
		for i, r := range readers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out := filepath.Join(e.dir, fmt.Sprintf("reader%d.img", i))
				if b, err := exec.Command("nbdcopy", r.uri("served@latest/d"), out).CombinedOutput(); err != nil {
					errs[4+i] = string(b)
				} else if fileSHA(t, out) != shas[0] {
					errs[4+i] = "nbdcopy read different bytes"
				}
			}()
		}
		wg.Wait()
		for i, s := range errs {
			if s != "" {
				t.Fatalf("participant %d failed: %s", i, s)
			}
		}
		for _, r := range readers {
			r.stop()
		}
		for i := range 3 {
			if e.restoreSHA(ids[i], "d") != shas[i] {
				t.Fatalf("vm%d restores different bytes", i)
			}
		}
		if e.restoreSHA(served.ID, "d") != shas[0] {
			t.Fatal("the served restore point restores different bytes")
		}
		e.ok("vmvault", "verify", "-q")
		var locks []any
		if out := e.ok("vmvault", "unlock", "--list", "--json"); json.Unmarshal([]byte(out), &locks) != nil || len(locks) != 0 {
			t.Fatalf("locks left behind: %s", out)
		}
	})

	t.Run("drive removed while serving, 20 ms latency", func(t *testing.T) {
		needTools(t, "nbdcopy")
		e, _ := newS3Env(t, srv, false)
		proxy := s3test.NewProxy(t, srv.Addr)
		proxy.SetLatency(20 * time.Millisecond)
		e.repo = strings.Replace(e.repo, srv.Addr, proxy.Addr, 1)
		e.ok("vmvault", "init", "--chunk-size", "64KiB", "--pack-size", "1MiB", "-q")
		img := filepath.Join(e.dir, "disk.img")
		v := makeImage(t, img, 8<<20, 51)
		c := e.capture("--vm", "a", "--disk", "d="+img)
		s := e.serve()
		if err := srv.RemoveDrive(1); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(e.dir, "out.img")
		sh(t, "nbdcopy", s.uri("a@latest/d"), out)
		if fileSHA(t, out) != sha(v) {
			t.Fatal("nbdcopy with a drive gone differs")
		}
		s.stop()
		if e.restoreSHA(c.ID, "d") != sha(v) {
			t.Fatal("restore with a drive gone differs")
		}
		e.ok("vmvault", "verify", "-q")
		if proxy.Requests() == 0 {
			t.Fatal("nothing went through the latency proxy")
		}
		// The server heals the drive once restarted; later tests use it.
		srv.Kill()
		if err := srv.Restart(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("server killed mid-capture", func(t *testing.T) {
		e, _ := newS3Env(t, srv, false)
		e.ok("vmvault", "init", "--chunk-size", "64KiB", "--pack-size", "1MiB", "-q")
		img := filepath.Join(e.dir, "disk.img")
		v1 := makeImage(t, img, 8<<20, 21)
		c1 := e.capture("--vm", "a", "--disk", "d="+img)
		v2 := makeImage(t, img, 24<<20, 22)
		// Through a proxy adding 50 ms to every request, the capture
		// takes seconds: long enough to lose its server in the middle.
		proxy := s3test.NewProxy(t, srv.Addr)
		proxy.SetLatency(50 * time.Millisecond)
		slow := strings.Replace(e.repo, srv.Addr, proxy.Addr, 1)
		cmd := exec.Command(filepath.Join(binDir, "vmvault-capture"), "file", "--json", "--vm", "a", "--disk", "d="+img)
		cmd.Env = append(append(os.Environ(), "VMVAULT_REPOSITORY="+slow), e.extra...)
		var out strings.Builder
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		started := time.Now()
		time.Sleep(1500 * time.Millisecond)
		srv.Kill()
		time.Sleep(3 * time.Second)
		if err := srv.Restart(); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		if took := time.Since(started); took < 4*time.Second {
			t.Fatalf("the capture took %s: it ended before the server came back, which tests nothing", took)
		}
		var c2 captureJSON
		if err != nil || json.Unmarshal([]byte(out.String()), &c2) != nil {
			t.Fatalf("capture through a MinIO restart: %v %q (the retry budget covers a few seconds' outage)", err, out.String())
		}
		if e.restoreSHA(c1.ID, "d") != sha(v1) || e.restoreSHA(c2.ID, "d") != sha(v2) {
			t.Fatal("restores after the restart differ")
		}
		e.ok("vmvault", "verify", "-q")
	})

	t.Run("object lock", func(t *testing.T) {
		e, bucket := newS3Env(t, srv, true)
		e.ok("vmvault", "init", "--chunk-size", "64KiB", "--pack-size", "1MiB", "--object-lock", "1h", "-q")
		img := filepath.Join(e.dir, "disk.img")
		v1 := makeImage(t, img, 4<<20, 31)
		c1 := e.capture("--vm", "a", "--disk", "d="+img)
		out, errs, code := e.run("vmvault", "forget", c1.ID)
		if code != 1 || !strings.Contains(out, "protected by the object lock until") {
			t.Fatalf("forget of a locked restore point: exit %d\n%s%s", code, out, errs)
		}
		e.ok("vmvault", "gc", "--grace", "0s", "-q")
		if e.restoreSHA(c1.ID, "d") != sha(v1) {
			t.Fatal("restore after forget and gc differs")
		}
		// The storage refuses a raw delete too (a stolen key with delete
		// permission): every version of every pack stays.
		c := srv.Client(t)
		ctx := context.Background()
		n := 0
		for obj := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: "vmvault/packs/", Recursive: true, WithVersions: true}) {
			if obj.Err != nil {
				t.Fatal(obj.Err)
			}
			n++
			if err := c.RemoveObject(ctx, bucket, obj.Key, minio.RemoveObjectOptions{VersionID: obj.VersionID}); err == nil {
				t.Fatalf("a raw delete of %s version %s succeeded", obj.Key, obj.VersionID)
			}
		}
		if n == 0 {
			t.Fatal("no packs listed")
		}
		e.ok("vmvault", "verify", "-q")
	})
}

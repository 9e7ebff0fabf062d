package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/vmvault/vmvault/repo/backend/s3/s3test"
)

// s3Env is a repository in a bucket of a MinIO of the test's own, used
// through the CLI with credentials from the environment.
type s3Env struct {
	*env
	srv    *s3test.Server
	bucket string
	extra  []string
}

func newS3Env(t *testing.T, srv *s3test.Server, lock bool) *s3Env {
	t.Helper()
	bucket := srv.NewBucket(t, s3test.BucketOptions{ObjectLock: lock})
	dir := t.TempDir()
	return &s3Env{
		env: &env{t: t, dir: dir, repo: "s3:" + srv.URL() + "/" + bucket + "/vmvault"},
		srv: srv, bucket: bucket,
		extra: []string{"AWS_ACCESS_KEY_ID=" + s3test.RootUser, "AWS_SECRET_ACCESS_KEY=" + s3test.RootPassword,
			"VMVAULT_REPO_PATH_STYLE=true", "VMVAULT_CACHE_DIR=" + filepath.Join(dir, "cache")},
	}
}

func (e *s3Env) ok(bin string, args ...string) string {
	e.t.Helper()
	return e.okEnv(e.extra, bin, args...)
}
func (e *s3Env) run(bin string, args ...string) (string, string, int) {
	e.t.Helper()
	return e.runEnv(e.extra, bin, args...)
}

func (e *s3Env) capture(args ...string) captureJSON {
	e.t.Helper()
	var c captureJSON
	out := e.ok("vmvault-capture", append([]string{"file", "--json"}, args...)...)
	if err := json.Unmarshal([]byte(out), &c); err != nil {
		e.t.Fatalf("capture JSON %q: %v", out, err)
	}
	return c
}

func (e *s3Env) restoreSHA(rp, disk string) string {
	e.t.Helper()
	out := filepath.Join(e.dir, "restored-"+rp[:8]+"-"+disk)
	e.ok("vmvault", "restore", rp, "--disk", disk, "--to", out, "--overwrite")
	return fileSHA(e.t, out)
}

// TestS3CLI runs the CLI against a real MinIO: a round trip, hosts sharing
// the repository, the server killed mid-capture, and an object-locked
// repository.
func TestS3CLI(t *testing.T) {
	srv := s3test.Start(t)

	t.Run("round trip", func(t *testing.T) {
		e := newS3Env(t, srv, false)
		e.ok("vmvault", "init", "--chunk-size", "64KiB", "--pack-size", "1MiB", "-q")
		img := filepath.Join(e.dir, "disk.img")
		v1 := makeImage(t, img, 12<<20, 3)
		c1 := e.capture("--vm", "web01", "--disk", "disk0="+img)
		v2 := changeImage(t, img, 0.02, 3)
		c2 := e.capture("--vm", "web01", "--disk", "disk0="+img)
		if c2.Disks[0].Mode != "dedup" || c2.Disks[0].NewChunks == 0 || c2.Disks[0].NewChunks > 8 {
			t.Fatalf("second capture: %+v", c2.Disks[0])
		}
		if e.restoreSHA(c1.ID, "disk0") != sha(v1) || e.restoreSHA(c2.ID, "disk0") != sha(v2) {
			t.Fatal("restore from S3 differs")
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
		other := &s3Env{env: &env{t: t, dir: e.dir, repo: "s3:" + srv.URL() + "/no-such-bucket/x"}, extra: e.extra}
		if _, errs, code := other.run("vmvault", "snapshots"); code != 10 || !strings.Contains(errs, "no-such-bucket") {
			t.Fatalf("missing bucket: exit %d: %s", code, errs)
		}
	})

	t.Run("copy local to S3 to local", func(t *testing.T) {
		src := newEnv(t, "--chunk-size", "64KiB")
		img := filepath.Join(src.dir, "disk.img")
		v1 := makeImage(t, img, 16<<20, 5)
		c1 := src.capture("--vm", "db", "--disk", "sda="+img)
		mid := newS3Env(t, srv, false)
		mid.okEnv(mid.extra, "vmvault", "init", "--like", src.repo, "--pack-size", "4MiB", "-q")
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
		e := newS3Env(t, srv, false)
		e.ok("vmvault", "init", "--chunk-size", "64KiB", "--pack-size", "1MiB", "-q")
		var imgs []string
		var shas []string
		for i := range 3 {
			p := filepath.Join(e.dir, "vm"+string(rune('a'+i))+".img")
			shas = append(shas, sha(makeImage(t, p, 6<<20, uint64(10+i))))
			imgs = append(imgs, p)
		}
		old := e.capture("--vm", "old", "--disk", "d="+imgs[2])
		e.ok("vmvault", "forget", old.ID, "-q") // garbage for the gc below
		var wg sync.WaitGroup
		ids := make([]string, 2)
		errs := make([]string, 3)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, stderr, code := e.runEnv(append(e.extra, "VMVAULT_HOSTNAME=host"+string(rune('a'+i))), "vmvault-capture", "file", "--json",
					"--vm", "vm"+string(rune('a'+i)), "--disk", "d="+imgs[i])
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
			if _, stderr, code := e.runEnv(append(e.extra, "VMVAULT_HOSTNAME=hostgc"), "vmvault", "gc", "--grace", "0s", "--lock-wait", "1m", "-q"); code != 0 {
				errs[2] = stderr
			}
		}()
		wg.Wait()
		for i, s := range errs {
			if s != "" {
				t.Fatalf("host %d failed: %s", i, s)
			}
		}
		for i := range 2 {
			if e.restoreSHA(ids[i], "d") != shas[i] {
				t.Fatalf("vm %d restores different bytes", i)
			}
		}
		e.ok("vmvault", "verify", "-q")
		out := e.ok("vmvault", "unlock", "--list", "--json")
		if strings.Contains(out, "host") && !strings.Contains(out, "[]") {
			t.Fatalf("locks left behind: %s", out)
		}
	})

	t.Run("server killed mid-capture", func(t *testing.T) {
		e := newS3Env(t, srv, false)
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
		cmd.Env = append(append(cmd.Environ(), "VMVAULT_REPOSITORY="+slow), e.extra...)
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
		e := newS3Env(t, srv, true)
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
		for obj := range c.ListObjects(ctx, e.bucket, minio.ListObjectsOptions{Prefix: "vmvault/packs/", Recursive: true, WithVersions: true}) {
			if obj.Err != nil {
				t.Fatal(obj.Err)
			}
			n++
			if err := c.RemoveObject(ctx, e.bucket, obj.Key, minio.RemoveObjectOptions{VersionID: obj.VersionID}); err == nil {
				t.Fatalf("a raw delete of %s version %s succeeded", obj.Key, obj.VersionID)
			}
		}
		if n == 0 {
			t.Fatal("no packs listed")
		}
		e.ok("vmvault", "verify", "-q")
	})
}

package s3_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/vmvault/vmvault/repo/backend"
	"github.com/vmvault/vmvault/repo/backend/s3"
	"github.com/vmvault/vmvault/repo/backend/s3/s3test"
)

// versionsOf lists the versions (delete markers included) of key.
func versionsOf(t *testing.T, c *minio.Client, bucket, key string) []minio.ObjectInfo {
	t.Helper()
	var vs []minio.ObjectInfo
	for o := range c.ListObjectsIter(ctx, bucket, minio.ListObjectsOptions{Prefix: key, WithVersions: true, Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		if o.Key == key {
			vs = append(vs, o)
		}
	}
	return vs
}

func getVersion(c *minio.Client, bucket, key, version string) ([]byte, error) {
	o, err := c.GetObject(ctx, bucket, key, minio.GetObjectOptions{VersionID: version})
	if err != nil {
		return nil, err
	}
	defer o.Close()
	return io.ReadAll(o)
}

func lockConfig(srv *s3test.Server, mode minio.RetentionMode, period time.Duration) s3.Config {
	cfg := s3test.Config(srv.Addr, fmt.Sprintf("t-lock-%d", time.Now().UnixNano()), "repo")
	cfg.Lock = s3.Retention{Mode: mode, Period: period}
	return cfg
}

// TestObjectLock: with a retention every object but locks is written
// retained; neither the backend nor a raw client holding the same
// delete-capable key can delete it or replace its data, while lock
// objects are removed, versions and all.
func TestObjectLock(t *testing.T) {
	srv := s3test.Shared(t)
	cfg := lockConfig(srv, minio.Compliance, time.Hour)
	be, err := s3.Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	c := srv.Client(t)
	if enabled, _, _, _, err := c.GetObjectLockConfig(ctx, cfg.Bucket); err != nil || enabled != "Enabled" {
		t.Fatalf("create made bucket %s without Object Lock: %q, %v", cfg.Bucket, enabled, err)
	}
	snap := backend.Handle{Type: backend.SnapshotFile, Name: name(1)}
	lock := backend.Handle{Type: backend.LockFile, Name: name(2)}
	data := []byte("restore point manifest")
	before := time.Now()
	for _, h := range []backend.Handle{snap, lock} {
		if err := be.Save(ctx, h, data); err != nil {
			t.Fatalf("save %v: %v", h, err)
		}
	}
	fi, err := be.Stat(ctx, snap)
	if err != nil || fi.RetainUntil.Before(before.Add(time.Hour)) || fi.RetainUntil.After(before.Add(time.Hour+time.Minute)) {
		t.Fatalf("stat %v: %+v, %v; want retained about an hour", snap, fi, err)
	}
	if mode, _, err := c.GetObjectRetention(ctx, cfg.Bucket, "repo/snapshots/"+snap.Name, ""); err != nil || mode == nil || *mode != minio.Compliance {
		t.Errorf("retention mode of %v: %v, %v", snap, mode, err)
	}
	if fi, err := be.Stat(ctx, lock); err != nil || !fi.RetainUntil.IsZero() {
		t.Errorf("stat of a lock object: %+v, %v; want no retention", fi, err)
	}

	// The backend refuses to remove, saying until when; nothing changes.
	err = be.Remove(ctx, snap)
	var re *backend.RetainedError
	if !errors.Is(err, backend.ErrRetained) || !backend.IsPermanent(err) || !errors.As(err, &re) ||
		!re.Until.Equal(fi.RetainUntil) || re.Mode != "COMPLIANCE" || !strings.Contains(err.Error(), fi.RetainUntil.UTC().Format(time.RFC3339)) {
		t.Fatalf("remove of a retained object: %v; want ErrRetained until %v", err, fi.RetainUntil)
	}
	if got, err := be.Load(ctx, snap, 0, -1); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("retained object after the refused remove: %q, %v", got, err)
	}
	key := "repo/snapshots/" + snap.Name
	if vs := versionsOf(t, c, cfg.Bucket, key); len(vs) != 1 || vs[0].IsDeleteMarker {
		t.Fatalf("the refused remove left versions %+v; want the one version, no delete marker", vs)
	}

	// A lock object is removed for good: no version, no delete marker.
	if err := be.Remove(ctx, lock); err != nil {
		t.Fatalf("remove of a lock object: %v", err)
	}
	if _, err := be.Stat(ctx, lock); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("stat of the removed lock: %v", err)
	}
	if vs := versionsOf(t, c, cfg.Bucket, "repo/locks/"+lock.Name); len(vs) != 0 {
		t.Errorf("removed lock left %d versions", len(vs))
	}

	// A thief with the same key, talking S3 directly.
	orig := versionsOf(t, c, cfg.Bucket, key)[0].VersionID
	if err := c.RemoveObject(ctx, cfg.Bucket, key, minio.RemoveObjectOptions{VersionID: orig}); err == nil {
		t.Error("raw delete of the retained version succeeded")
	}
	if err := c.RemoveObject(ctx, cfg.Bucket, key, minio.RemoveObjectOptions{VersionID: orig, GovernanceBypass: true}); err == nil {
		t.Error("raw delete of a COMPLIANCE version with the governance bypass succeeded")
	}
	if _, err := c.PutObject(ctx, cfg.Bucket, key, bytes.NewReader([]byte("ransom")), 6, minio.PutObjectOptions{}); err != nil {
		t.Fatalf("raw overwrite: %v", err)
	}
	if err := c.RemoveObject(ctx, cfg.Bucket, key, minio.RemoveObjectOptions{}); err != nil {
		t.Fatalf("raw delete marker: %v", err)
	}
	for _, v := range versionsOf(t, c, cfg.Bucket, key) {
		if v.VersionID != orig {
			_ = c.RemoveObject(ctx, cfg.Bucket, key, minio.RemoveObjectOptions{VersionID: v.VersionID})
		}
	}
	if got, err := getVersion(c, cfg.Bucket, key, orig); err != nil || !bytes.Equal(got, data) {
		t.Errorf("the original version after overwrite and deletes: %q, %v", got, err)
	}
	if got, err := be.Load(ctx, snap, 0, -1); err != nil || !bytes.Equal(got, data) {
		t.Errorf("the backend's view after the thief cleaned up his own versions: %q, %v", got, err)
	}
}

// TestObjectLockGovernance: GOVERNANCE retention also stops the backend
// (it never bypasses), and says so.
func TestObjectLockGovernance(t *testing.T) {
	srv := s3test.Shared(t)
	cfg := lockConfig(srv, minio.Governance, time.Hour)
	be, err := s3.Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	h := backend.Handle{Type: backend.PackFile, Name: name(7)}
	if err := be.Save(ctx, h, []byte("pack")); err != nil {
		t.Fatal(err)
	}
	var re *backend.RetainedError
	if err := be.Remove(ctx, h); !errors.As(err, &re) || re.Mode != "GOVERNANCE" {
		t.Fatalf("remove under governance retention: %v", err)
	}
	c := srv.Client(t)
	v := versionsOf(t, c, cfg.Bucket, "repo/packs/"+h.Name)[0].VersionID
	if err := c.RemoveObject(ctx, cfg.Bucket, "repo/packs/"+h.Name, minio.RemoveObjectOptions{VersionID: v}); err == nil {
		t.Error("raw delete without the governance bypass succeeded")
	}
}

// TestObjectLockExpires: once its retention has passed an object is
// removed with every version, so gc frees the space.
func TestObjectLockExpires(t *testing.T) {
	srv := s3test.Shared(t)
	cfg := lockConfig(srv, "", 2*time.Second)
	be, err := s3.Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	h := backend.Handle{Type: backend.PackFile, Name: name(3)}
	for i := 0; i < 2; i++ { // two versions
		if err := be.Save(ctx, h, []byte("pack")); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := be.Stat(ctx, h)
	if err != nil || fi.RetainUntil.IsZero() {
		t.Fatalf("stat: %+v, %v", fi, err)
	}
	if err := be.Remove(ctx, h); !errors.Is(err, backend.ErrRetained) {
		t.Fatalf("remove before the retention ends: %v", err)
	}
	time.Sleep(time.Until(fi.RetainUntil) + 1500*time.Millisecond)
	if err := be.Remove(ctx, h); err != nil {
		t.Fatalf("remove after the retention ended: %v", err)
	}
	if vs := versionsOf(t, srv.Client(t), cfg.Bucket, "repo/packs/"+h.Name); len(vs) != 0 {
		t.Errorf("%d versions left after remove", len(vs))
	}
}

// TestObjectLockBucketChecks: a retention needs a bucket with Object
// Lock, which an existing bucket cannot gain.
func TestObjectLockBucketChecks(t *testing.T) {
	srv := s3test.Shared(t)
	plain := srv.NewBucket(t, s3test.BucketOptions{})
	cfg := s3test.Config(srv.Addr, plain, "r")
	cfg.Lock.Period = time.Hour
	if _, err := s3.Create(ctx, cfg); err == nil || !strings.Contains(err.Error(), "does not have Object Lock") || !backend.IsPermanent(err) {
		t.Errorf("create with retention in a bucket without Object Lock: %v", err)
	}
	cfg.Lock.Period = 0
	be := open(t, cfg)
	if err := be.SetRetention(ctx, s3.Retention{Period: time.Hour}); err == nil || !strings.Contains(err.Error(), "does not have Object Lock") {
		t.Errorf("SetRetention on a bucket without Object Lock: %v", err)
	}
	locked := srv.NewBucket(t, s3test.BucketOptions{ObjectLock: true})
	be = open(t, s3test.Config(srv.Addr, locked, "r"))
	if err := be.SetRetention(ctx, s3.Retention{Period: time.Hour}); err != nil {
		t.Fatal(err)
	}
	h := backend.Handle{Type: backend.IndexFile, Name: name(5)}
	if err := be.Save(ctx, h, []byte("index")); err != nil {
		t.Fatal(err)
	}
	if fi, err := be.Stat(ctx, h); err != nil || fi.RetainUntil.IsZero() {
		t.Errorf("save after SetRetention: %+v, %v; want a retention", fi, err)
	}
	// Through the registry, the option turns it on.
	loc := srv.Location(locked, "r2")
	loc.Options[backend.OptionObjectLock] = "1d"
	t.Setenv("AWS_ACCESS_KEY_ID", s3test.RootUser)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3test.RootPassword)
	rb, err := backend.Open(ctx, loc)
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	if err := rb.Save(ctx, h, []byte("index")); err != nil {
		t.Fatal(err)
	}
	if fi, err := rb.Stat(ctx, h); err != nil || fi.RetainUntil.Before(time.Now().Add(23*time.Hour)) {
		t.Errorf("save with object-lock=1d: %+v, %v", fi, err)
	}
	if err := rb.Remove(ctx, h); !errors.Is(err, backend.ErrRetained) {
		t.Errorf("remove through the registry's retry wrapper: %v", err)
	}
	if got := rb.Location(); got != "s3:"+srv.URL()+"/"+locked+"/r2" {
		t.Errorf("Location() = %q", got)
	}
}

package main

// End-to-end tests of 'vmvault serve' and 'vmvault overlay' with real NBD
// clients: nbdinfo, nbdcopy, nbdfuse (libnbd-bin), qemu-img, qemu-io and,
// in boot_test.go, qemu-system-x86_64.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// needTools skips (outside CI) or fails (in CI) when a tool is missing.
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required in CI (.ci/run installs it): %v", tool, err)
			}
			t.Skipf("skipping: %s not installed (apt-get install libnbd-bin qemu-utils nbdkit fuse3)", tool)
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; this test needs it")
		}
		t.Skip("skipping: needs root (loop devices, mount)")
	}
}

// server is a running 'vmvault serve'.
type server struct {
	t    *testing.T
	cmd  *exec.Cmd
	log  *bytes.Buffer
	sock string
	addr string
}

// serve starts 'vmvault serve' with args on a unix socket (and TCP when
// args contain --listen) and waits until it accepts connections.
func (e *env) serve(args ...string) *server {
	e.t.Helper()
	s := &server{t: e.t, log: &bytes.Buffer{}, sock: filepath.Join(e.dir, fmt.Sprintf("nbd%d.sock", time.Now().UnixNano()%100000))}
	args = append([]string{"serve", "--socket", s.sock}, args...)
	for i, a := range args {
		if a == "--listen" {
			s.addr = args[i+1]
		}
	}
	s.cmd = exec.Command(filepath.Join(binDir, "vmvault"), args...)
	s.cmd.Env = e.environ()
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			s.cmd.Process.Kill()
			s.cmd.Wait()
		}
	})
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", s.sock); err == nil {
			c.Close()
			return s
		}
		if i == 200 {
			e.t.Fatalf("server did not start:\n%s", s.log)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// stop sends SIGTERM and expects a clean exit 0 with the socket removed.
func (s *server) stop() {
	s.t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	if err := s.cmd.Wait(); err != nil {
		s.t.Fatalf("server exit: %v\n%s", err, s.log)
	}
	if _, err := os.Stat(s.sock); !os.IsNotExist(err) {
		s.t.Fatalf("socket left behind: %v", err)
	}
}

func (s *server) uri(export string) string {
	return "nbd+unix:///" + export + "?socket=" + s.sock
}

// sh runs a command and returns its combined output, failing the test on error.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// zeroImage writes an image of size bytes where chunks (of cs bytes)
// listed in zero are all zero and the rest random; it returns the data.
func zeroImage(t *testing.T, path string, size, cs int, zero map[int]bool) []byte {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	for c := range zero {
		clear(b[c*cs : min((c+1)*cs, size)])
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestServeNBDClients(t *testing.T) {
	needTools(t, "nbdinfo", "nbdcopy", "qemu-img", "qemu-io")
	e := newEnv(t, "--chunk-size", "64KiB")
	const cs = 64 << 10
	src := filepath.Join(e.dir, "disk.raw")
	zero := map[int]bool{0: true, 5: true, 6: true, 7: true, 40: true, 99: true}
	img := zeroImage(t, src, 100*cs+777, cs, zero)
	id := e.capture("--vm", "web01", "--disk", "disk0="+src).ID
	s := e.serve()
	export := "web01/" + id + "/disk0"

	list := sh(t, "nbdinfo", "--list", "--json", s.uri(""))
	var l struct {
		Exports []struct {
			Name        string `json:"export-name"`
			Description string `json:"description"`
			Size        int64  `json:"export-size"`
			ReadOnly    bool   `json:"is_read_only"`
			Contexts    []string
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(list), &l); err != nil {
		t.Fatalf("nbdinfo --list --json: %v\n%s", err, list)
	}
	if len(l.Exports) != 2 || l.Exports[0].Name != export || l.Exports[0].Size != int64(len(img)) || !l.Exports[0].ReadOnly ||
		!strings.Contains(l.Exports[0].Description, "web01") || !strings.Contains(l.Exports[0].Description, "disk0") {
		t.Fatalf("nbdinfo --list:\n%s", list)
	}

	// --map: holes exactly where the zero chunks are.
	var want []string
	for c := 0; c*cs < len(img); {
		z := zero[c]
		start := c
		for c*cs < len(img) && zero[c] == z {
			c++
		}
		end := min(c*cs, len(img))
		typ := 0
		if z {
			typ = 3
		}
		want = append(want, fmt.Sprintf("%d %d %d", start*cs, end-start*cs, typ))
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(sh(t, "nbdinfo", "--map", s.uri(export))), "\n") {
		f := strings.Fields(line)
		got = append(got, strings.Join(f[:3], " "))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("nbdinfo --map:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// nbdcopy of the export equals vmvault restore's output and the source.
	copied := filepath.Join(e.dir, "copied.raw")
	sh(t, "nbdcopy", s.uri("web01@latest/disk0"), copied)
	if fileSHA(t, copied) != e.restoreSHA(id, "disk0") || fileSHA(t, copied) != sha(img) {
		t.Fatal("nbdcopy output differs from the restore / the source")
	}
	if out := sh(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", s.uri(export), src); !strings.Contains(out, "identical") {
		t.Fatalf("qemu-img compare: %s", out)
	}
	// qemu-io reads: a zero chunk, and data at an unaligned offset.
	sh(t, "qemu-io", "-r", "-f", "raw", s.uri(export), "-c", fmt.Sprintf("read -P 0 %d %d", 5*cs, 3*cs))
	if err := exec.Command("qemu-io", "-f", "raw", s.uri(export), "-c", "write -P 1 0 512").Run(); err == nil {
		t.Fatal("qemu-io wrote to a read-only export")
	}
	s.stop()
	if !strings.Contains(s.log.String(), "connection closed") || !strings.Contains(s.log.String(), "bytes_read=") {
		t.Fatalf("no per-connection log lines:\n%s", s.log)
	}
}

func TestServeWritableOverlayAndCommit(t *testing.T) {
	needTools(t, "nbdcopy", "qemu-img", "qemu-io")
	e := newEnv(t, "--chunk-size", "64KiB")
	const cs = 64 << 10
	src := filepath.Join(e.dir, "disk.raw")
	img := zeroImage(t, src, 64*cs+100, cs, map[int]bool{3: true, 10: true})
	id := e.capture("--vm", "web01", "--disk", "disk0="+src).ID
	ovDir := filepath.Join(e.dir, "overlays")
	export := "web01/" + id + "/disk0"

	s := e.serve("--writable", "--overlay-dir", ovDir)
	sh(t, "qemu-io", "-f", "raw", s.uri(export),
		"-c", "write -P 0x5a 1000 5000",
		"-c", fmt.Sprintf("write -P 0x33 %d %d", 3*cs+512, 4096),
		"-c", fmt.Sprintf("discard %d %d", 20*cs, 2*cs),
		"-c", fmt.Sprintf("write -z %d %d", 30*cs+10, 100),
		"-c", "flush")
	sh(t, "qemu-io", "-r", "-f", "raw", s.uri(export),
		"-c", "read -P 0x5a 1000 5000",
		"-c", fmt.Sprintf("read -P 0x33 %d 4096", 3*cs+512),
		"-c", fmt.Sprintf("read -P 0 %d %d", 20*cs, 2*cs),
		"-c", fmt.Sprintf("read -P 0 %d 100", 30*cs+10))
	s.stop()

	// The restore point is unchanged and verifies.
	if e.restoreSHA(id, "disk0") != sha(img) {
		t.Fatal("restore point changed by overlay writes")
	}
	e.ok("vmvault", "verify")
	var ovs []struct {
		RestorePoint string `json:"restore_point"`
		Allocated    int64  `json:"allocated"`
		InUse        bool   `json:"in_use"`
	}
	if err := json.Unmarshal([]byte(e.ok("vmvault", "overlay", "list", "--json", "--overlay-dir", ovDir)), &ovs); err != nil {
		t.Fatal(err)
	}
	if len(ovs) != 1 || ovs[0].RestorePoint != id || ovs[0].Allocated < 2*cs || ovs[0].InUse {
		t.Fatalf("overlay list: %+v", ovs)
	}

	// A restarted server serves the same overlay; what the client sees is
	// what commit stores.
	s = e.serve("--writable", "--overlay-dir", ovDir)
	sh(t, "qemu-io", "-r", "-f", "raw", s.uri(export), "-c", "read -P 0x5a 1000 5000")
	seen := filepath.Join(e.dir, "seen.raw")
	sh(t, "nbdcopy", s.uri(export), seen)
	// While a client is connected the overlay is open and cannot be committed.
	qio := exec.Command("qemu-io", "-f", "raw", s.uri(export))
	stdin, err := qio.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := qio.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(stdin, "read 0 512")
	for i := 0; !strings.Contains(e.ok("vmvault", "overlay", "list", "--overlay-dir", ovDir), "yes"); i++ {
		if i == 200 {
			t.Fatal("overlay never shown in use while a client is connected")
		}
		time.Sleep(25 * time.Millisecond)
	}
	if _, errOut, code := e.run("vmvault", "overlay", "commit", id, "--overlay-dir", ovDir); code == 0 || !strings.Contains(errOut, "in use") {
		t.Fatalf("commit of an overlay in use: exit %d, %s", code, errOut)
	}
	stdin.Close()
	qio.Wait()
	s.stop()
	var res struct {
		ID, Parent string
		Changed    int64 `json:"changed_bytes"`
	}
	if err := json.Unmarshal([]byte(e.ok("vmvault", "overlay", "commit", export, "--overlay-dir", ovDir, "--tag", "recovered", "--json", "-q")), &res); err != nil {
		t.Fatal(err)
	}
	if res.Parent != id || res.Changed == 0 {
		t.Fatalf("commit: %+v", res)
	}
	if e.restoreSHA(res.ID, "disk0") != fileSHA(t, seen) {
		t.Fatal("committed restore point differs from what the client saw")
	}
	show := e.ok("vmvault", "show", res.ID)
	if !strings.Contains(show, "parent:       "+id[:8]) || !strings.Contains(show, "recovered") || !strings.Contains(show, "extents") {
		t.Fatalf("show of the committed restore point:\n%s", show)
	}
	e.ok("vmvault", "overlay", "discard", id[:8], "--overlay-dir", ovDir)
	if out := e.ok("vmvault", "overlay", "list", "--overlay-dir", ovDir); !strings.Contains(out, "no overlays") {
		t.Fatalf("after discard: %s", out)
	}
	e.ok("vmvault", "verify")
}

// writeCerts makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, in the file names both libnbd and QEMU expect.
func writeCerts(t *testing.T, dir string) {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	caKey := key()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vmvault test CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	write("ca-cert.pem", "CERTIFICATE", caDER)
	for i, role := range []string{"server", "client"} {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: role}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment}
		if role == "server" {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
			tmpl.DNSNames = []string{"localhost"}
		} else {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		write(role+"-cert.pem", "CERTIFICATE", der)
		kb, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		write(role+"-key.pem", "EC PRIVATE KEY", kb)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

func TestServeTLS(t *testing.T) {
	needTools(t, "nbdinfo", "nbdcopy", "qemu-img")
	e := newEnv(t)
	src := filepath.Join(e.dir, "disk.raw")
	img := makeImage(t, src, 3<<20+5, 11)
	e.capture("--vm", "web01", "--disk", "disk0="+src)
	certs := filepath.Join(e.dir, "certs")
	os.Mkdir(certs, 0o700)
	writeCerts(t, certs)
	port := freePort(t)
	s := e.serve("--listen", "127.0.0.1:"+port, "--tls=require", "--tls-cert", certs+"/server-cert.pem",
		"--tls-key", certs+"/server-key.pem", "--tls-client-ca", certs+"/ca-cert.pem")
	uri := "nbds://127.0.0.1:" + port + "/web01@latest/disk0?tls-certificates=" + certs
	if out := sh(t, "nbdinfo", uri); !strings.Contains(out, "TLS") {
		t.Fatalf("nbdinfo over TLS:\n%s", out)
	}
	copied := filepath.Join(e.dir, "copied.raw")
	sh(t, "nbdcopy", uri, copied)
	if fileSHA(t, copied) != sha(img) {
		t.Fatal("nbdcopy over TLS: data differs")
	}
	// qemu with tls-creds-x509.
	out := sh(t, "qemu-img", "compare", "--object", "tls-creds-x509,id=tls0,dir="+certs+",endpoint=client",
		"--image-opts", "driver=raw,file.driver=nbd,file.host=127.0.0.1,file.port="+port+",file.export=web01@latest/disk0,file.tls-creds=tls0",
		"--image-opts", "driver=raw,file.driver=file,file.filename="+src)
	if !strings.Contains(out, "identical") {
		t.Fatalf("qemu-img compare over TLS: %s", out)
	}
	// Plain clients are refused.
	if out, err := exec.Command("nbdinfo", "nbd://127.0.0.1:"+port+"/web01@latest/disk0").CombinedOutput(); err == nil {
		t.Fatalf("plain client accepted by --tls=require:\n%s", out)
	}
	// A client without a certificate is refused by --tls-client-ca.
	nocert := filepath.Join(e.dir, "nocert")
	os.Mkdir(nocert, 0o700)
	caPEM, _ := os.ReadFile(filepath.Join(certs, "ca-cert.pem"))
	os.WriteFile(filepath.Join(nocert, "ca-cert.pem"), caPEM, 0o600)
	if out, err := exec.Command("nbdinfo", "nbds://127.0.0.1:"+port+"/web01@latest/disk0?tls-certificates="+nocert).CombinedOutput(); err == nil {
		t.Fatalf("client without certificate accepted:\n%s", out)
	}
	s.stop()
}

// The kernel path without /dev/nbd*: nbdfuse exposes the export as a file,
// a loop device maps its partition, the kernel mounts it read-only.
func TestServeNbdfuseLoopMount(t *testing.T) {
	needTools(t, "nbdfuse", "fusermount3", "sfdisk", "mke2fs", "losetup")
	needRoot(t)
	e := newEnv(t)
	stage := filepath.Join(e.dir, "stage")
	os.MkdirAll(filepath.Join(stage, "etc"), 0o755)
	os.WriteFile(filepath.Join(stage, "etc", "hostname"), []byte("web01\n"), 0o644)
	big := make([]byte, 3<<20)
	rand.Read(big)
	os.WriteFile(filepath.Join(stage, "big.bin"), big, 0o644)
	src := filepath.Join(e.dir, "disk.raw")
	if err := os.WriteFile(src, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(src, 64<<20)
	sfd := exec.Command("sfdisk", "-q", src)
	sfd.Stdin = strings.NewReader("label: dos\nstart=2048, type=83\n")
	if out, err := sfd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	sh(t, "mke2fs", "-q", "-F", "-t", "ext4", "-d", stage, "-E", "offset=1048576", src, "60M")
	e.capture("--vm", "web01", "--disk", "disk0="+src)
	s := e.serve()

	mnt := filepath.Join(e.dir, "fuse")
	os.Mkdir(mnt, 0o755)
	pidfile := filepath.Join(e.dir, "nbdfuse.pid")
	fuse := exec.Command("nbdfuse", "-r", "-P", pidfile, mnt+"/disk", s.uri("web01@latest/disk0"))
	var flog bytes.Buffer
	fuse.Stdout, fuse.Stderr = &flog, &flog
	if err := fuse.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		exec.Command("fusermount3", "-u", mnt).Run()
		fuse.Wait()
	}()
	for i := 0; ; i++ {
		if _, err := os.Stat(pidfile); err == nil {
			break
		}
		if i == 200 {
			t.Fatalf("nbdfuse did not come up:\n%s", flog.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
	loop := strings.TrimSpace(sh(t, "losetup", "-r", "-o", "1048576", "--sizelimit", strconv.Itoa(60<<20), "--show", "-f", mnt+"/disk"))
	defer exec.Command("losetup", "-d", loop).Run()
	fsmnt := filepath.Join(e.dir, "mnt")
	os.Mkdir(fsmnt, 0o755)
	sh(t, "mount", "-t", "ext4", "-o", "ro,noload", loop, fsmnt)
	defer exec.Command("umount", fsmnt).Run()
	if b, err := os.ReadFile(filepath.Join(fsmnt, "etc", "hostname")); err != nil || string(b) != "web01\n" {
		t.Fatalf("etc/hostname through nbdfuse+loop: %q %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(fsmnt, "big.bin")); err != nil || !bytes.Equal(b, big) {
		t.Fatalf("big.bin through nbdfuse+loop differs: %v", err)
	}
	sh(t, "umount", fsmnt)
	sh(t, "losetup", "-d", loop)
	sh(t, "fusermount3", "-u", mnt)
	fuse.Wait()
	s.stop()
}

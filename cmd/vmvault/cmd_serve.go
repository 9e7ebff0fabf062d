package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/nbd"
	"github.com/vmvault/vmvault/repo"
)

type serveOptions struct {
	listen      string
	socket      string
	exports     []string
	writable    bool
	overlayDir  string
	cacheSize   string
	tlsMode     string
	tlsCert     string
	tlsKey      string
	tlsClientCA string
	readAhead   string
}

func newServeCommand(g *cli.Global) *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve restore point disks as NBD exports (instant recovery)",
		Long: `Serve every disk of every restore point over the Network Block Device
protocol, for qemu, qemu-img, nbdcopy, nbdinfo, nbdfuse and nbd-client.

Exports are named VM/RESTOREPOINT-ID/DISK (the full id; a unique prefix of
8+ hex digits also opens) and VM@latest/DISK. 'nbdinfo --list' shows them
with VM, time, disk and size. New restore points are served without a
restart.

--export restricts what is served (repeatable). A pattern is a glob
compared with export names part by part ('/' separated); one that matches
the leading parts of a name covers it, so a pattern naming a VM or a
restore point covers all of its disks:
  web01              every export of web01, web01@latest/DISK included
  'web01/*'          every restore point of web01, by id
  web01/3fa4b2c1     one restore point (an id prefix as 'snapshots' shows it)
  'web01@latest/*'   the disks of web01's newest restore point
  '*/*/disk0'        disk0 of every restore point
A pattern that matches nothing when the server starts is logged.

Read-only by default: the repository is never written. With --writable each
export gets a copy-on-write overlay (a sparse file plus an allocation
bitmap below --overlay-dir, one per restore point and disk, kept across
restarts), made by the first write to the export: listing, INFO and
reading clients create none, and an existing overlay is opened (shown in
use by 'vmvault overlay list') while a client has its export open.
'vmvault overlay' lists, discards or commits overlays as new restore
points. Boot writable exports by id, not @latest: an overlay belongs to
one restore point.

Listens on 127.0.0.1:10809 unless told otherwise (--listen, or --socket for
a unix socket). TLS: --tls-cert/--tls-key offer STARTTLS; --tls=require
refuses clients that do not use it; --tls-client-ca also demands client
certificates signed by that CA.

SIGINT/SIGTERM stops accepting, finishes in-flight requests, flushes the
overlays and exits 0. One log line per connection goes to stderr.`,
		Example: `  vmvault serve
  nbdinfo --list nbd://127.0.0.1
  qemu-system-x86_64 -drive file=nbd://127.0.0.1/web01@latest/disk0,format=raw,snapshot=on ...
  vmvault serve --socket /run/vmvault.sock --writable --export 'web01/*'
  qemu-img convert nbd+unix:///web01@latest/disk0?socket=/run/vmvault.sock web01.qcow2 -O qcow2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd, g, &o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:10809", "TCP address to listen on (\"\" for none when --socket is given)")
	f.StringVar(&o.socket, "socket", "", "unix socket to listen on (instead of TCP unless --listen is also given)")
	f.StringArrayVar(&o.exports, "export", nil, "serve only exports this pattern covers (repeatable): a VM 'web01', 'web01/*', 'web01@latest/*', a restore point 'web01/3fa4b2c1'")
	f.BoolVar(&o.writable, "writable", false, "accept writes into per-export copy-on-write overlays")
	f.StringVar(&o.overlayDir, "overlay-dir", os.Getenv("VMVAULT_OVERLAY_DIR"), "where overlays live (env VMVAULT_OVERLAY_DIR; default ~/.local/state/vmvault/overlays/REPO-ID)")
	f.StringVar(&o.cacheSize, "memory-cache", "256MiB", "decoded chunk cache in memory shared by all connections")
	f.StringVar(&o.readAhead, "read-ahead", "8MiB", "prefetch window for sequential readers (0 disables)")
	f.StringVar(&o.tlsMode, "tls", "", "off, on (offer STARTTLS) or require; default on when --tls-cert is given")
	f.StringVar(&o.tlsCert, "tls-cert", "", "server certificate (PEM)")
	f.StringVar(&o.tlsKey, "tls-key", "", "server private key (PEM)")
	f.StringVar(&o.tlsClientCA, "tls-client-ca", "", "require client certificates signed by this CA (PEM)")
	return cmd
}

// defaultOverlayDir is below the user's state directory, keyed by
// repository id so two repositories never share overlays.
func defaultOverlayDir(repoID string) (string, error) {
	base := os.Getenv("XDG_STATE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no --overlay-dir and no home directory: %w", err)
		}
		base = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(base, "vmvault", "overlays", repoID), nil
}

func serveTLS(o *serveOptions) (*tls.Config, bool, error) {
	mode := o.tlsMode
	if mode == "" {
		mode = "off"
		if o.tlsCert != "" {
			mode = "on"
		}
	}
	switch mode {
	case "off":
		if o.tlsCert != "" || o.tlsClientCA != "" {
			return nil, false, cli.Usagef("--tls=off with certificates given")
		}
		return nil, false, nil
	case "on", "require":
	default:
		return nil, false, cli.Usagef("--tls must be off, on or require, not %q", mode)
	}
	if o.tlsCert == "" || o.tlsKey == "" {
		return nil, false, cli.Usagef("--tls=%s needs --tls-cert and --tls-key", mode)
	}
	cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
	if err != nil {
		return nil, false, fmt.Errorf("load TLS certificate: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if o.tlsClientCA != "" {
		pem, err := os.ReadFile(o.tlsClientCA)
		if err != nil {
			return nil, false, fmt.Errorf("read client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, false, fmt.Errorf("client CA %s: no PEM certificate", o.tlsClientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, mode == "require", nil
}

func runServe(cmd *cobra.Command, g *cli.Global, o *serveOptions) error {
	cacheSize, err := cli.ParseSize(o.cacheSize)
	if err != nil || cacheSize < 1<<20 {
		return cli.Usagef("--memory-cache %q: need a size of at least 1MiB", o.cacheSize)
	}
	readAhead, err := cli.ParseSize(o.readAhead)
	if err != nil {
		return cli.Usagef("--read-ahead %q: %v", o.readAhead, err)
	}
	if readAhead == 0 {
		readAhead = -1
	}
	for _, p := range o.exports {
		if err := nbd.CheckPattern(p); err != nil {
			return cli.Usagef("--export: %v", err)
		}
	}
	tlsCfg, requireTLS, err := serveTLS(o)
	if err != nil {
		return err
	}
	if !cmd.Flags().Changed("listen") && o.socket != "" {
		o.listen = ""
	}
	if o.listen == "" && o.socket == "" {
		return cli.Usagef("nothing to listen on: give --listen or --socket")
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		// Hold RSS near the cache plus in-flight requests (32 MiB budget) and
		// the runtime; tighter limits make the GC thrash (measured).
		debug.SetMemoryLimit(cacheSize + 60<<20)
	}

	ctx := cmd.Context()
	r, err := g.OpenRepo(ctx, repo.Options{CacheSize: cacheSize})
	if err != nil {
		return err
	}
	defer r.Close()
	// The server's reader lock pins the restore point of every open
	// export: gc keeps their data while clients read them.
	if err := cli.NeedReadKey(r, "serve"); err != nil {
		return err
	}
	lock, err := cli.ReadLock(ctx, r, "serve", g.LockWait)
	if err != nil {
		return err
	}
	defer lock.Unlock()

	log := slog.Default()
	cat := &nbd.RepoCatalog{Repo: r, Patterns: o.exports, Log: log, Lock: lock}
	if unmatched, err := cat.UnmatchedPatterns(ctx); err != nil {
		return err
	} else if len(unmatched) > 0 {
		log.Warn("--export patterns match no export yet (see --help for their form)", "patterns", unmatched)
	}
	if o.writable {
		dir := o.overlayDir
		if dir == "" {
			if dir, err = defaultOverlayDir(r.Config().ID); err != nil {
				return err
			}
		}
		cat.OverlayDir = dir
		log.Info("writes go to overlays", "dir", dir)
	}
	srv := &nbd.Server{Catalog: cat, TLSConfig: tlsCfg, RequireTLS: requireTLS, Logger: log,
		BufferBudget: 32 << 20, ReadAhead: readAhead}

	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	if o.listen != "" {
		ln, err := net.Listen("tcp", o.listen)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", o.listen, err)
		}
		if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() && tlsCfg == nil {
			log.Warn("serving without TLS on a non-loopback address: anyone who can reach it can read these disks", "addr", ln.Addr().String())
		}
		lns = append(lns, ln)
	}
	if o.socket != "" {
		if fi, err := os.Lstat(o.socket); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if c, err := net.Dial("unix", o.socket); err == nil {
				c.Close()
				closeAll()
				return fmt.Errorf("listen on %s: another server is using this socket", o.socket)
			}
			os.Remove(o.socket) // stale socket of a crashed server
		}
		ln, err := net.Listen("unix", o.socket)
		if err != nil {
			closeAll()
			return fmt.Errorf("listen on %s: %w", o.socket, err)
		}
		if err := os.Chmod(o.socket, 0o600); err != nil {
			ln.Close()
			closeAll()
			return fmt.Errorf("chmod %s: %w", o.socket, err)
		}
		lns = append(lns, ln)
	}
	tlsState := "off"
	if requireTLS {
		tlsState = "require"
	} else if tlsCfg != nil {
		tlsState = "on"
	}
	for _, ln := range lns {
		log.Info("serving NBD", "addr", ln.Addr().String(), "repo", r.Backend().Location(), "writable", o.writable, "tls", tlsState)
	}

	errc := make(chan error, len(lns))
	var wg sync.WaitGroup
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, nbd.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down: finishing in-flight requests")
	case serveErr = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown timed out; connections closed", "err", err)
	}
	wg.Wait()
	if o.socket != "" {
		os.Remove(o.socket)
	}
	return serveErr
}

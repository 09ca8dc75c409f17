package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/damselfly-io/damselfly/daemon"
	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/internal/pki"
	"github.com/damselfly-io/damselfly/scheduler"
)

// devNode is one daemon of a dev cluster.
type devNode struct {
	name string
	cfg  daemon.Config
	d    *daemon.Daemon
}

// devPorts gives node i (0 is the seed peer) its ports from base: peer,
// upload, proxy, metrics. base 0 lets the system pick every port.
func devPorts(base, i int) (peer, upload, proxy, metrics int) {
	if base == 0 {
		return 0, 0, 0, -1
	}
	p := base + 10*(i+1)
	return p, p + 1, p + 2, p + 3
}

func runDevCluster(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("dev-cluster", `Start a scheduler, a seed peer and N daemons in one process on loopback, for
trying Damselfly with several nodes on one machine (no root needed). Each
daemon has its own ports, socket and data directory; the command prints how
to use each. Ctrl-C stops them all.

Usage: damselfly dev-cluster [flags] N`, stderr)
	dir := fs.String("dir", filepath.Join(os.TempDir(), "damselfly-dev"), "directory for every node's data and socket")
	base := fs.Int("base-port", 40000, "first port: scheduler base+1, node i (0 = seed peer) base+10(i+1)+{0 peer, 1 upload, 2 proxy, 3 metrics}; 0 picks free ports (no metrics)")
	upstream := fs.String("registry-mirror", "https://index.docker.io", "default upstream registry of every daemon's mirror")
	logLevel := fs.String("log-level", "warn", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "damselfly dev-cluster: want the number of daemons, e.g. damselfly dev-cluster 3")
		return 2
	}
	n, err := strconv.Atoi(fs.Arg(0))
	if err != nil || n < 1 || n > 50 {
		fmt.Fprintf(stderr, "damselfly dev-cluster: %q: want a number of daemons from 1 to 50\n", fs.Arg(0))
		return 2
	}
	if *base != 0 && (*base < 1024 || *base+10*(n+1)+3 > 65535) {
		fmt.Fprintf(stderr, "damselfly dev-cluster: --base-port %d: the ports of %d nodes must fit in 1024..65535\n", *base, n+1)
		return 2
	}
	log, err := obs.NewLogger(stderr, *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly dev-cluster:", err)
		return 2
	}
	scfg := scheduler.DefaultConfig()
	schedAddr := "127.0.0.1:0"
	if *base != 0 {
		schedAddr = "127.0.0.1:" + strconv.Itoa(*base+1)
	}
	lis, err := net.Listen("tcp", schedAddr)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly dev-cluster: scheduler listen:", err)
		return 1
	}
	defer lis.Close()
	scfg.Listen = lis.Addr().String()
	s, err := scheduler.New(scfg, log.With("component", "scheduler"), obs.NewRegistry())
	if err != nil {
		fmt.Fprintln(stderr, "damselfly dev-cluster:", err)
		return 1
	}
	// Mutual TLS as in a real cluster: a CA kept under the cluster's
	// directory issues every component's certificate.
	ca, _, err := pki.LoadOrCreateCA(filepath.Join(*dir, "ca"), "damselfly dev-cluster CA")
	if err != nil {
		fmt.Fprintln(stderr, "damselfly dev-cluster: CA:", err)
		return 1
	}
	issue := func(name string, role identity.Role) (pki.Config, error) {
		tdir := filepath.Join(*dir, "tls", name)
		if err := ca.IssueFiles(tdir, identity.Identity{Role: role, HostID: "dev-" + name}, 365*24*time.Hour); err != nil {
			return pki.Config{}, fmt.Errorf("certificate for %s: %w", name, err)
		}
		return pki.Config{Cert: filepath.Join(tdir, pki.CertFile), Key: filepath.Join(tdir, pki.KeyFile), CA: filepath.Join(tdir, pki.TrustFile)}, nil
	}
	schedTLS, err := issue("scheduler", identity.RoleScheduler)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly dev-cluster:", err)
		return 1
	}
	schedCreds, err := schedTLS.LoadFiles()
	if err != nil {
		fmt.Fprintln(stderr, "damselfly dev-cluster:", err)
		return 1
	}
	var nodes []*devNode
	for i := 0; i <= n; i++ {
		name := "seed"
		if i > 0 {
			name = "node" + strconv.Itoa(i)
		}
		c := daemon.DefaultConfig()
		c.Scheduler = lis.Addr().String()
		c.Seed = i == 0
		c.DataDir = filepath.Join(*dir, name)
		c.Sock = filepath.Join(*dir, name, "daemon.sock")
		c.AdvertiseIP, c.ListenIP = "127.0.0.1", "127.0.0.1"
		c.Hostname = "dev-" + name
		// Every node shares this machine: a link test would measure
		// the loopback.
		c.LinkTest.Enabled = false
		c.PeerPort, c.UploadPort, c.ProxyPort, c.MetricsPort = devPorts(*base, i)
		c.Proxy.RegistryMirror = *upstream
		c.LogLevel = *logLevel
		if c.Seed {
			c.ProxyPort = -1
		}
		role := identity.RolePeer
		if c.Seed {
			role = identity.RoleSeed
		}
		if c.TLS, err = issue(name, role); err != nil {
			fmt.Fprintln(stderr, "damselfly dev-cluster:", err)
			return 1
		}
		if err := c.Validate(); err != nil {
			fmt.Fprintf(stderr, "damselfly dev-cluster: %s: %v\n", name, err)
			return 2
		}
		d, err := daemon.New(c, log.With("component", name), obs.NewRegistry())
		if err != nil {
			fmt.Fprintf(stderr, "damselfly dev-cluster: %s: %v\n", name, err)
			return 1
		}
		nodes = append(nodes, &devNode{name: name, cfg: c, d: d})
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.Serve(gctx, lis, pki.ServerOptions(schedCreds)...) })
	for _, nd := range nodes {
		g.Go(func() error {
			if err := nd.d.Run(gctx); err != nil {
				return fmt.Errorf("%s: %w", nd.name, err)
			}
			return nil
		})
	}
	// Print how to use the nodes once every one listens.
	g.Go(func() error {
		for _, nd := range nodes {
			select {
			case <-nd.d.Ready():
			case <-gctx.Done():
				return nil
			}
		}
		fmt.Fprintf(stdout, "dev cluster: scheduler %s, %d daemons and a seed peer on 127.0.0.1, data under %s\n", lis.Addr(), n, *dir)
		for _, nd := range nodes {
			h := nd.d.Host()
			fmt.Fprintf(stdout, "  %-6s peer %d  upload %d", nd.name, h.GetPeerPort(), h.GetUploadPort())
			if p := nd.d.ProxyAddr(); p != "" {
				fmt.Fprintf(stdout, "  mirror http://%s", p)
			}
			if nd.cfg.MetricsPort > 0 {
				fmt.Fprintf(stdout, "  metrics http://127.0.0.1:%d/metrics", nd.cfg.MetricsPort)
			}
			fmt.Fprintf(stdout, "\n         dfget --sock %s URL -O FILE\n", nd.cfg.Sock)
		}
		fmt.Fprintln(stdout, "Download the same URL on two nodes: the second fetches it from the first. Ctrl-C stops the cluster.")
		return nil
	})
	if err := g.Wait(); err != nil && ctx.Err() == nil {
		fmt.Fprintln(stderr, "damselfly dev-cluster:", err)
		return 1
	}
	return 0
}

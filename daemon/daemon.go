// Package daemon is the node: it downloads tasks piece by piece from parents
// the scheduler names (or from the origin when told to, or when P2P fails),
// keeps them in its cache, serves pieces to other peers while still
// downloading, and answers dfget on a unix socket. It never trusts a piece
// digest that did not come from the scheduler or from its own origin fetch.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/linktest"
	"github.com/damselfly-io/damselfly/daemon/piece"
	"github.com/damselfly-io/damselfly/daemon/store"
	"github.com/damselfly-io/damselfly/internal/fdpass"
	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/internal/pki"
	"github.com/damselfly-io/damselfly/source"
)

// Daemon is one node of the swarm.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	reg     prometheus.Registerer
	gather  prometheus.Gatherer
	metrics *metrics

	store   *store.Store
	src     source.Source
	httpSrc *source.HTTP // for the proxy's pass-through
	pieces  *piece.Client
	pm      *piece.Metrics
	dl, ul  *rate.Limiter
	// inflight counts downloads in progress (upload pacing, and the
	// active-tasks gauge).
	inflight atomic.Int64
	// advisedBudget is the upload budget in bytes/s that a scheduler last
	// sent this host (schedulerv1.UploadBudget), 0 none; used only when
	// the host declares no link rates.
	advisedBudget atomic.Int64
	// links: what the link tests measured (links.go); linkUsable the
	// upload budget they give on a link much slower up than down (0:
	// none).
	links      *links
	linkUsable atomic.Int64

	scheds schedSet
	// inv announces the complete public tasks of the cache (inventory.go);
	// nil until Run starts the schedulers.
	inv *inventory

	// fds holds the files local clients pass for their next call.
	fds *fdpass.Registry

	peerMu    sync.Mutex
	peerConns map[string]*grpc.ClientConn
	// creds are the daemon's TLS credentials (nil in insecure mode), set
	// in Run before any gRPC connection is made.
	creds *pki.Creds

	mu         sync.Mutex
	conductors map[string]*conductor
	host       *schedulerv1.Host
	proxyAddr  string
	ready      chan struct{}

	// runCtx lives as long as Run; conductors run under it, not under the
	// request that started them, so a client hanging up does not waste a fetch.
	runCtx context.Context

	// Limits that a config reload changes in place (see Reload).
	originSlots *piece.Slots
	up          *piece.Server
	limitsMu    sync.Mutex
	limits      reloadable

	// keys of private tasks, from their schedulers (PieceAccess): they
	// check the piece tokens children present on the upload port.
	keysMu sync.RWMutex
	keys   map[string][]byte
}

// uploadBudget is how the upload server finds its pacing budget (nil: no
// pacing), and the fixed budget when the host declared its links. Much
// slower up than down (core.UsableUplink), the declared uplink less what
// the download's ACKs need, while anything downloads. Nothing declared:
// the same from the links the link tests measured (links.go), else the
// budget a scheduler advised (schedulerv1.UploadBudget), while anything
// downloads. A symmetric declared host is not paced.
func (d *Daemon) uploadBudget(up, down int64) (func() int64, int64) {
	var usable int64 // declared: fixed; 0: the advice
	if up > 0 {
		if usable = core.UsableUplink(up, down); usable >= up {
			return nil, 0
		}
	}
	return func() int64 {
		switch {
		case d.inflight.Load() == 0:
			return 0
		case usable > 0:
			return usable
		}
		if u := d.linkUsable.Load(); u > 0 {
			return u // measured links (links.go)
		}
		return d.advisedBudget.Load()
	}, usable
}

// downloadEnded counts a download out. The last one to end drops a
// scheduler's upload budget: it was measured for those downloads, and a
// scheduler that went away since would leave the host paced for good; the
// next download's scheduler advises again when its meter finds the uplink
// slow.
func (d *Daemon) downloadEnded() {
	if d.inflight.Add(-1) == 0 && d.advisedBudget.Swap(0) > 0 {
		d.log.Info("upload pacing advice dropped: no download in progress")
	}
}

// adviseUploadBudget takes the upload budget a scheduler measured for this
// host (bytes/s, 0 withdraws it).
func (d *Daemon) adviseUploadBudget(bps int64) {
	bps = max(bps, 0)
	if old := d.advisedBudget.Swap(bps); old != bps {
		if bps > 0 {
			d.log.Info("uploads paced while downloading: the scheduler measured the uplink much slower than the downlink", "paced_bps", bps)
		} else {
			d.log.Info("upload pacing withdrawn by the scheduler")
		}
	}
}

// taskKey returns the key a scheduler shared for the private task id.
func (d *Daemon) taskKey(id string) []byte {
	d.keysMu.RLock()
	defer d.keysMu.RUnlock()
	return d.keys[id]
}

func (d *Daemon) setTaskKey(id string, key []byte) {
	d.keysMu.Lock()
	defer d.keysMu.Unlock()
	if d.keys == nil {
		d.keys = map[string][]byte{}
	}
	d.keys[id] = key
}

type metrics struct {
	downloads   *prometheus.CounterVec
	activeTasks prometheus.GaugeFunc // reads Daemon.inflight
	originBytes prometheus.Counter
	cacheBytes  prometheus.Counter
	backSource  *prometheus.CounterVec
	schedulerUp prometheus.Gauge // nil when the daemon does not use schedulers
	// the registry mirror / proxy's, by route
	proxyRequests, proxyBytes *prometheus.CounterVec
	cache                     *cacheMetrics
}

// New builds a daemon whose metrics live in reg (nil: no metrics port); Run
// starts it.
func New(cfg Config, log *slog.Logger, reg *prometheus.Registry) (*Daemon, error) {
	if reg == nil {
		return NewWithMetrics(cfg, log, nil, nil)
	}
	return NewWithMetrics(cfg, log, reg, reg)
}

// NewWithMetrics builds a daemon that registers its metrics on reg and
// serves gather on its metrics port (either may be nil: no metrics, no
// port). Several daemons in one process share a registry through
// prometheus.WrapRegistererWith and a label that tells them apart.
func NewWithMetrics(cfg Config, log *slog.Logger, reg prometheus.Registerer, gather prometheus.Gatherer) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("daemon config: %w", err)
	}
	if err := cfg.TLS.Require(); err != nil {
		return nil, err
	}
	srcCfg := source.DefaultConfig()
	srcCfg.Timeout = cfg.OriginTimeout.D()
	srcCfg.Retries = cfg.OriginRetries
	srcCfg.Hosts = map[string]source.HostConfig{}
	srcCfg.S3 = cfg.Source.S3
	if err := srcCfg.S3.CheckSecrets(); err != nil {
		return nil, fmt.Errorf("daemon config: %w", err)
	}
	for _, r := range cfg.Proxy.Registries {
		srcCfg.Hosts[r.Host] = source.HostConfig{Insecure: r.Insecure, CAFile: r.CAFile, Username: r.Username, Password: r.Password}
	}
	httpSrc, err := source.NewHTTP(srcCfg)
	if err != nil {
		return nil, fmt.Errorf("origin client: %w", err)
	}
	src := source.NewRegistry(httpSrc)
	// Local files are read only through a descriptor the local caller
	// opened (taskRequest.localFile), never by path with the daemon's rights.
	src.Register("file", noLocalFiles{})
	d := &Daemon{
		cfg:        cfg,
		log:        log,
		src:        src,
		httpSrc:    httpSrc,
		conductors: map[string]*conductor{},
		dl:         piece.NewHostLimiter(int64(cfg.Download.RateLimit)),
		ul:         piece.NewHostLimiter(int64(cfg.Upload.RateLimit)),
		ready:      make(chan struct{}),
		fds:        fdpass.NewRegistry(0),

		originSlots: piece.NewSlots(cfg.Download.MaxConcurrentOrigin),
		limits:      reloadableOf(cfg),
	}
	r := reg
	d.reg, d.gather = reg, gather
	d.pm = piece.NewMetrics(r)
	d.pieces = piece.NewClient(d.pm)
	d.metrics = &metrics{
		downloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "damselfly_daemon_downloads_total",
			Help: "Finished downloads by outcome (success, failure), failure reason (empty on success) and where most bytes came from (peer, origin, cache; none for a failure before any byte)."},
			[]string{"outcome", "reason", "source"}),
		activeTasks: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "damselfly_daemon_active_tasks", Help: "Tasks being downloaded."},
			func() float64 { return float64(d.inflight.Load()) }),
		originBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "damselfly_daemon_origin_bytes_total", Help: "Bytes fetched from origins."}),
		cacheBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "damselfly_daemon_cache_bytes_total", Help: "Bytes served to local clients straight from the cache."}),
		backSource: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "damselfly_daemon_back_to_source_total", Help: "Tasks fetched from the origin, by reason."}, []string{"reason"}),
	}
	if d.p2p() {
		d.metrics.schedulerUp = prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "damselfly_daemon_scheduler_up",
			Help: "1 when at least one of the daemon's schedulers is reachable, 0 when none is (downloads then go to the origin)."})
	}
	d.metrics.proxyRequests, d.metrics.proxyBytes = newProxyMetrics()
	if r != nil {
		r.MustRegister(d.metrics.downloads, d.metrics.activeTasks, d.metrics.originBytes, d.metrics.cacheBytes, d.metrics.backSource)
		if cfg.ProxyPort >= 0 {
			r.MustRegister(d.metrics.proxyRequests, d.metrics.proxyBytes)
		}
		if d.metrics.schedulerUp != nil {
			r.MustRegister(d.metrics.schedulerUp)
		}
	}
	d.links = newLinks(r)
	d.links.receiver.OnResult = d.linkReceived
	d.links.receiver.Busy = d.transferring
	d.metrics.cache = newCacheMetrics(r)
	d.metrics.cache.setLimits(d.limits)
	if r != nil && cfg.Metrics.DragonflyCompat {
		r.MustRegister(d.dragonflyAliases()...)
	}
	return d, nil
}

// dragonflyAliases are the Dragonfly (dfdaemon) names of the daemon's
// metrics, for dashboards built for Dragonfly (metrics.dragonfly_compat).
func (d *Daemon) dragonflyAliases() []prometheus.Collector {
	traffic := map[string]string{"peer": "remote_peer", "origin": "back_to_source"}
	return []prometheus.Collector{
		&obs.Alias{Name: "dragonfly_dfdaemon_proxy_request_total",
			Help: "Proxy requests (Dragonfly name; from damselfly_proxy_requests_total, routes summed).", Src: d.metrics.proxyRequests,
			Map: func(map[string]string) (map[string]string, bool) { return nil, true }},
		&obs.Alias{Name: "dragonfly_dfdaemon_download_task_total", Help: "Downloads finished (Dragonfly name; from damselfly_daemon_downloads_total).",
			Labels: []string{"type"}, Src: d.metrics.downloads,
			Map: func(map[string]string) (map[string]string, bool) { return map[string]string{"type": "standard"}, true }},
		&obs.Alias{Name: "dragonfly_dfdaemon_download_traffic_total", Help: "Bytes downloaded by type: remote_peer, back_to_source (Dragonfly name; from damselfly_daemon_download_bytes_total).",
			Labels: []string{"type"}, Src: d.pm.DownloadBytes,
			Map: func(in map[string]string) (map[string]string, bool) {
				t, ok := traffic[in["source"]]
				return map[string]string{"type": t}, ok
			}},
		&obs.Alias{Name: "dragonfly_dfdaemon_upload_traffic_total", Help: "Piece bytes uploaded to other peers (Dragonfly name; from damselfly_daemon_upload_bytes_total).",
			Src: d.pm.UploadBytes},
	}
}

// inventory returns the daemon's inventory, nil without schedulers.
func (d *Daemon) inventory() *inventory {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.inv
}

// Ready is closed once every port listens.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// Host returns the host record advertised to the scheduler (after Ready).
func (d *Daemon) Host() *schedulerv1.Host {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.host
}

// ProxyAddr is the registry mirror / proxy address (after Ready; "" when disabled).
func (d *Daemon) ProxyAddr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.proxyAddr
}

// Store exposes the cache (for tests and the local API).
func (d *Daemon) Store() *store.Store { return d.store }

// Run serves until ctx is done.
func (d *Daemon) Run(ctx context.Context) error {
	unlock, err := lockDataDir(d.cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := store.Open(ctx, d.cfg.DataDir, d.log)
	if err != nil {
		return err
	}
	d.store = st
	defer st.Close()

	lc := net.ListenConfig{}
	peerLis, err := lc.Listen(ctx, "tcp", net.JoinHostPort(d.cfg.ListenIP, strconv.Itoa(d.cfg.PeerPort)))
	if err != nil {
		return fmt.Errorf("listen peer port: %w", err)
	}
	upLis, err := lc.Listen(ctx, "tcp", net.JoinHostPort(d.cfg.ListenIP, strconv.Itoa(d.cfg.UploadPort)))
	if err != nil {
		peerLis.Close()
		return fmt.Errorf("listen upload port: %w", err)
	}
	acc, err := resolveSockGroup(d.cfg.SockGroup, d.log)
	if err != nil {
		peerLis.Close()
		upLis.Close()
		return err
	}
	rawSock, err := listenSock(ctx, d.cfg.Sock, acc)
	if err != nil {
		peerLis.Close()
		upLis.Close()
		return err
	}
	// The local API acts with its caller's rights: files come as
	// descriptors the caller opened (internal/fdpass), never as paths.
	sockLis := fdpass.NewListener(rawSock, d.fds, d.log)
	defer d.fds.Close()
	var proxyLis net.Listener
	var prx *proxy
	if d.cfg.ProxyPort >= 0 {
		if prx, err = newProxy(d); err != nil {
			return err
		}
		proxyLis, err = lc.Listen(ctx, "tcp", net.JoinHostPort(d.cfg.Proxy.ListenIP, strconv.Itoa(d.cfg.ProxyPort)))
		if err != nil {
			return fmt.Errorf("listen proxy port: %w", err)
		}
	}
	var metricsLis net.Listener
	if d.cfg.MetricsPort >= 0 && d.gather != nil {
		mip := d.cfg.MetricsIP
		if mip == "" {
			mip = d.cfg.ListenIP
		}
		metricsLis, err = lc.Listen(ctx, "tcp", net.JoinHostPort(mip, strconv.Itoa(d.cfg.MetricsPort)))
		if err != nil {
			return fmt.Errorf("listen metrics port: %w", err)
		}
	}
	pprofLis, err := d.cfg.Obs.ListenPprof(ctx)
	if err != nil {
		return err
	}

	ip := d.cfg.AdvertiseIP
	if ip == "" {
		ip = core.LocalIPv4()
	}
	hostname := d.cfg.Hostname
	if hostname == "" {
		hostname = core.Hostname()
	}
	peerPort := peerLis.Addr().(*net.TCPAddr).Port
	hostID, err := d.setupTLS(ctx, core.HostID(hostname, net.JoinHostPort(ip, strconv.Itoa(peerPort))))
	if err != nil {
		for _, l := range []net.Listener{peerLis, upLis, sockLis, proxyLis, metricsLis} {
			if l != nil {
				l.Close()
			}
		}
		return err
	}
	up, down := d.cfg.DeclaredCapacity()
	host := &schedulerv1.Host{
		UploadBps:   up,
		DownloadBps: down,
		Id:          hostID,
		Hostname:    hostname,
		Ip:          ip,
		PeerPort:    int32(peerPort),
		UploadPort:  int32(upLis.Addr().(*net.TCPAddr).Port),
		Idc:         d.cfg.IDC,
		Location:    d.cfg.Location,
		Seed:        d.cfg.Seed,
		UploadSlots: int32(d.cfg.Upload.Slots),
	}
	d.mu.Lock()
	d.host = host
	d.runCtx = ctx
	d.mu.Unlock()

	peerSrv := grpc.NewServer(append(pki.ServerOptions(d.creds),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}))...)
	peerv1.RegisterPeerServer(peerSrv, &peerService{d: d})
	apiSrv := grpc.NewServer(grpc.Creds(fdpass.Creds()))
	daemonv1.RegisterDaemonServer(apiSrv, &apiService{d: d})
	upSrv := piece.NewServer(st, d.cfg.Upload.MaxConcurrent, d.ul, d.pm, d.log)
	upSrv.SetKeys(d.taskKey)
	d.limitsMu.Lock()
	d.up = upSrv
	upSrv.SetLimits(d.limits.uploadMaxConcurrent, d.limits.uploadPeerRate)
	d.limitsMu.Unlock()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return obs.ServeGRPC(gctx, peerSrv, peerLis, 2*time.Second) })
	g.Go(func() error { return obs.ServeGRPC(gctx, apiSrv, sockLis, 2*time.Second) })
	if budget, usable := d.uploadBudget(up, down); budget != nil {
		upSrv.SetPacing(budget)
		if usable > 0 {
			d.log.Info("uploads paced while downloading: the uplink is much slower than the downlink", "upload_bps", up, "download_bps", down, "paced_bps", usable)
		}
	}
	upHandler := upSrv.Handler()
	if d.linkTesting() {
		mux := http.NewServeMux()
		mux.Handle("/", upHandler)
		mux.Handle(linktest.Path, &d.links.receiver)
		upHandler = mux
	}
	upHTTP := d.cfg.Obs.Server(upHandler)
	upHTTP.ConnContext = upSrv.ConnContext
	g.Go(func() error { return obs.ServeServer(gctx, upHTTP, upLis) })
	if metricsLis != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /healthy", obs.HealthHandler(d.Health))
		mux.Handle("/", obs.Handler(d.gather, nil))
		g.Go(func() error { return d.cfg.Obs.Serve(gctx, metricsLis, mux) })
	}
	if pprofLis != nil {
		g.Go(func() error { return d.cfg.Obs.ServePprof(gctx, pprofLis) })
	}
	proxyAddr := ""
	if proxyLis != nil {
		proxyAddr = proxyLis.Addr().String()
		d.mu.Lock()
		d.proxyAddr = proxyAddr
		d.mu.Unlock()
		g.Go(func() error { return d.cfg.Obs.Serve(gctx, proxyLis, prx) })
	}
	// Schedulers: the static one, or the manager's list (seed peers also
	// register with the manager and open their SeedTasks streams here).
	if d.p2p() && d.cfg.Inventory {
		inv := newInventory(d, d.Host().GetHostname())
		d.mu.Lock()
		d.inv = inv
		d.mu.Unlock()
	}
	refresh, err := d.startSchedulers(gctx)
	if err != nil {
		return err
	}
	defer d.closeSchedulers()
	if d.p2p() {
		d.startWatching(gctx)
	}
	if inv := d.inventory(); inv != nil {
		g.Go(func() error { inv.run(gctx); return nil })
	}
	if refresh != nil {
		g.Go(func() error { refresh(gctx); return nil })
	}
	if d.linkTesting() {
		g.Go(func() error { d.linkTestLoop(gctx); return nil })
		g.Go(func() error { d.downlinkWatch(gctx); return nil })
	}
	g.Go(func() error { d.gcLoop(gctx); return nil })
	// Tasks complete in the cache become parents again: public ones in
	// the host's inventory, the others on their own Announce streams.
	for _, t := range st.List() {
		if inv := d.inventory(); inv != nil && inventoried(t) {
			inv.add(t)
			continue
		}
		if t.Complete() {
			m := t.Meta()
			// A private task was fetched with credentials the origin
			// accepted; it serves peers that show theirs (verified).
			if _, err := d.startConductor(taskRequest{spec: cachedSpec(m), fromCache: true, verified: m.Private}); err != nil {
				d.log.Warn("cannot announce cached task", "task_id", t.ID(), "err", err)
			}
		}
	}
	d.log.Info("daemon ready", "peer_addr", peerLis.Addr().String(), "upload_addr", upLis.Addr().String(),
		"advertise_ip", ip, "sock", d.cfg.Sock, "sock_mode", acc.mode.String(), "sock_gid", acc.gid, "proxy_addr", proxyAddr, "seed", d.cfg.Seed, "scheduler", d.cfg.Scheduler, "manager", d.cfg.Manager)
	close(d.ready)
	err = g.Wait()
	d.mu.Lock()
	cs := make([]*conductor, 0, len(d.conductors))
	for _, c := range d.conductors {
		cs = append(cs, c)
	}
	d.mu.Unlock()
	for _, c := range cs {
		<-c.exited
	}
	_ = os.Remove(d.cfg.Sock)
	return err
}

// seedLoop holds the SeedTasks stream open and starts every task the
// scheduler pushes. It reconnects with backoff until ctx ends.
func (d *Daemon) seedLoop(ctx context.Context, sched schedulerv1.SchedulerClient) {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		stream, err := sched.SeedTasks(ctx, &schedulerv1.SeedTasksRequest{Host: d.Host()})
		if err == nil {
			for {
				t, rerr := stream.Recv()
				if rerr != nil {
					err = rerr
					break
				}
				backoff = 200 * time.Millisecond
				if t.GetTask() == nil || t.GetTask().GetTaskId() == "" || t.GetTask().GetUrl() == "" {
					continue
				}
				// Fetch only what the task says, from a scheme the swarm
				// fetches: never a file of this host, never under another
				// task's ID.
				if err := checkSwarmSpec(t.GetTask()); err != nil {
					d.log.Warn("seed task refused", "task_id", t.GetTask().GetTaskId(), "err", err)
					continue
				}
				verified := false
				if t.GetTask().GetPrivate() {
					// Fetched with credentials elsewhere: this seed takes
					// part only if the origin grants its own (an object
					// store bucket in its configuration).
					if verified = d.seedGranted(ctx, t.GetTask()); !verified {
						d.log.Info("private seed task refused: no credentials of this seed's own for it", "task_id", t.GetTask().GetTaskId())
						continue
					}
				}
				d.log.Info("seed task", "task_id", t.GetTask().GetTaskId())
				if _, err := d.startConductor(taskRequest{spec: t.GetTask(), seed: true, verified: verified}); err != nil {
					d.log.Warn("cannot start seed task", "task_id", t.GetTask().GetTaskId(), "err", err)
				}
			}
		}
		if ctx.Err() != nil {
			return
		}
		d.log.Warn("seed stream to scheduler ended; reconnecting", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// taskRequest is what starts a conductor.
type taskRequest struct {
	spec *schedulerv1.TaskSpec
	// originHeaders go only to this daemon's own origin requests: a client's
	// credentials live here, never in spec (which the scheduler and other
	// peers see).
	originHeaders     http.Header
	disableBackSource bool
	seed              bool
	// verified: this daemon showed, with the caller's credentials, that the
	// origin grants the content (a private task's peers must).
	verified  bool
	fromCache bool
	rateLimit int64
	streaming bool
	// localFile is a file:// URL's file as the local caller opened it: the
	// only way the daemon reads a local file (see localSource). The
	// conductor that uses it closes it; one that joins a running task
	// closes it at once.
	localFile *os.File
	// priority is the request's Dragonfly level, passed to the scheduler.
	priority schedulerv1.Priority
	// preheat: the manager asked for the task (with seed, what makes the
	// daemon's fetches trusted: source.Request.Trusted).
	preheat bool
}

// startConductor returns the conductor of the task, starting one if none
// runs. The task exists in the store when it returns.
func (d *Daemon) startConductor(r taskRequest) (*conductor, error) {
	hostname := d.Host().GetHostname()
	d.mu.Lock()
	defer d.mu.Unlock()
	id := r.spec.GetTaskId()
	cur, _ := d.store.Get(id)
	if c, ok := d.conductors[id]; ok && (cur == nil || cur == c.task) {
		select {
		case <-c.exited:
		default:
			if r.streaming {
				c.streaming.Store(true)
			}
			if r.localFile != nil {
				r.localFile.Close()
			}
			return c, nil
		}
	}
	s := r.spec
	t, _, err := d.store.GetOrCreate(store.Meta{
		TaskID: id, URL: s.GetUrl(), Tag: s.GetTag(), Application: s.GetApplication(),
		FilteredQuery: s.GetFilteredQuery(), Digest: s.GetDigest(), ContentLength: -1, Private: s.GetPrivate(),
		Version: core.SpecVersion(s.GetUrl(), s.GetHeaders()),
	})
	if err != nil {
		if r.localFile != nil {
			r.localFile.Close()
		}
		return nil, fmt.Errorf("cache task %s: %w", id, err)
	}
	if s.GetPrivate() {
		if err := t.SetPrivate(); err != nil {
			return nil, fmt.Errorf("cache task %s: %w", id, err)
		}
	}
	c := newConductor(d, r, hostname)
	c.task = t
	c.streaming.Store(r.streaming)
	d.conductors[id] = c
	go func() {
		c.run(d.runCtx)
		if r.localFile != nil {
			r.localFile.Close()
		}
		d.mu.Lock()
		if d.conductors[id] == c {
			delete(d.conductors, id)
		}
		d.mu.Unlock()
	}()
	return c, nil
}

var errClosed = errors.New("daemon shutting down")

// checkSwarmSpec checks a task this daemon is asked to fetch for the swarm
// (a seed task, a preheat): a URL of a swarm scheme (core.CheckSwarmURL) and
// a task ID that follows from the spec (core.CheckTaskID).
func checkSwarmSpec(s *schedulerv1.TaskSpec) error {
	return core.CheckSpec(s.GetTaskId(), s.GetUrl(), s.GetDigest(), s.GetTag(), s.GetApplication(), s.GetFilteredQuery(), s.GetHeaders())
}

// noLocalFiles refuses file:// URLs that come without the caller's
// descriptor (e.g. a task the scheduler pushes to a seed peer).
type noLocalFiles struct{}

func (noLocalFiles) Fetch(_ context.Context, req source.Request) (*source.Response, error) {
	return nil, fmt.Errorf("fetch %s: the daemon reads local files only through a local caller's own descriptor: %w", req.URL, core.ErrInvalid)
}

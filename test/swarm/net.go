package swarm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Prefix starts the name of every namespace the harness creates, so that
// Cleanup can find leftovers of aborted runs and parallel runs do not clash.
const Prefix = "dfsw-"

// Role says what a host does in a run.
type Role string

// Host roles.
const (
	RoleOrigin    Role = "origin"
	RoleScheduler Role = "scheduler"
	RoleSeed      Role = "seed"
	RolePeer      Role = "peer"
)

// Host is one emulated machine: a network namespace with one interface,
// eth0, whose other end is a port on its rack's bridge.
type Host struct {
	Name string     `json:"name"`
	Role Role       `json:"role"`
	NS   string     `json:"netns"`
	IP   netip.Addr `json:"ip"`
	Rack int        `json:"rack"`
	Up   Rate       `json:"uplink_bps"`
	Down Rate       `json:"downlink_bps"`
	// On names the host whose namespace, address and link this one shares
	// (the seed peer on the origin's host); empty for a host of its own.
	On   string `json:"on,omitempty"`
	port string // the bridge-side veth end, in the switch namespace
}

// Network is the emulated network of one run: a switch namespace holding
// one bridge per rack, a router namespace joining racks (racks scenario),
// and one namespace per host. Only 10.77.0.0/16 addresses are used.
type Network struct {
	RunID     string
	Hosts     []*Host
	Netem     bool // whether the kernel has sch_netem
	switchNS  string
	routerNS  string
	racks     int
	shape     shaping
	log       *slog.Logger
	created   []string // namespaces, in creation order
	interRack Rate
}

type shaping struct {
	burst   int64 // bytes; 0 picks one from the rate
	latency time.Duration
	delay   time.Duration
	loss    float64
}

// Subnet of rack r (1-based) is 10.77.r.0/24; its router address is .1.
func rackAddr(rack, host int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 77, byte(rack), byte(host)})
}

func (n *Network) ns(suffix string) string { return Prefix + n.RunID + "-" + suffix }

// Origin, Scheduler and Seed return the hosts with those roles.
func (n *Network) Origin() *Host    { return n.role(RoleOrigin)[0] }
func (n *Network) Scheduler() *Host { return n.role(RoleScheduler)[0] }
func (n *Network) Seed() *Host      { return n.role(RoleSeed)[0] }

// Peers are the N downloading hosts.
func (n *Network) Peers() []*Host { return n.role(RolePeer) }

func (n *Network) role(r Role) []*Host { return hostsOf(n.Hosts, r) }

// run runs ip/tc/sysctl-style commands and returns their output.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// tbfArgs shapes egress of dev to rate. burst is what tbf may send at line
// speed after idling. It must hold a whole GSO packet as tbf counts it — up
// to 64 KiB of payload plus the headers of each of its ~45 segments, about
// 68 KiB — or tbf splits every such packet into MTU-sized ones, and that
// splitting, not the systems under test, becomes what limits the machine.
// Much more than a few ms of traffic makes the shaped rate bursty. latency
// bounds the queue: rate×latency bytes wait at most.
func (s shaping) tbfArgs(ns, dev string, rate Rate) []string {
	burst := s.burstFor(rate)
	return []string{"-n", ns, "qdisc", "replace", "dev", dev, "root", "handle", "1:", "tbf",
		"rate", rate.String(), "burst", fmt.Sprint(burst), "latency", fmt.Sprintf("%dms", s.latency.Milliseconds())}
}

// minBurst holds one GSO packet of 64 KiB with its segments' headers
// (tbfArgs), with room to spare.
const minBurst = 128 << 10

// burstFor is the tbf burst for a link of rate.
func (s shaping) burstFor(rate Rate) int64 {
	if s.burst > 0 {
		return s.burst
	}
	return max(minBurst, int64(rate.BytesPerSec()*0.004)) // 4 ms of traffic
}

// netemArgs adds delay/loss under the tbf of dev.
func (s shaping) netemArgs(ns, dev string) []string {
	args := []string{"-n", ns, "qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:", "netem", "limit", "100000"}
	if s.delay > 0 {
		args = append(args, "delay", fmt.Sprintf("%dus", s.delay.Microseconds()))
	}
	if s.loss > 0 {
		args = append(args, "loss", fmt.Sprintf("%g%%", s.loss*100))
	}
	return args
}

// probeNetem tells whether tc can attach a netem qdisc, on a throwaway veth
// pair inside the switch namespace.
func (n *Network) probeNetem(ctx context.Context) bool {
	_, _ = run(ctx, "modprobe", "sch_netem") // absent modprobe or module: the add below says
	if _, err := run(ctx, "ip", "-n", n.switchNS, "link", "add", "nmprobe0", "type", "veth", "peer", "name", "nmprobe1"); err != nil {
		return false
	}
	defer func() { _, _ = run(context.WithoutCancel(ctx), "ip", "-n", n.switchNS, "link", "del", "nmprobe0") }()
	_, err := run(ctx, "tc", "-n", n.switchNS, "qdisc", "add", "dev", "nmprobe0", "root", "netem", "delay", "1ms")
	return err == nil
}

// buildNetwork creates namespaces, bridges, veths, addresses and shaping.
// On error, what was created is torn down before returning.
func buildNetwork(ctx context.Context, log *slog.Logger, runID string, racks int, interRack Rate, hosts []*Host, sh shaping) (_ *Network, err error) {
	n := &Network{RunID: runID, Hosts: hosts, racks: racks, shape: sh, log: log, interRack: interRack}
	n.switchNS = n.ns("sw")
	defer func() {
		if err != nil {
			n.Teardown(context.WithoutCancel(ctx))
		}
	}()
	if err := n.addNS(ctx, n.switchNS); err != nil {
		return nil, err
	}
	n.Netem = n.probeNetem(ctx)
	if !n.Netem {
		log.Warn("netem unavailable: delay/loss not emulated")
	}
	for r := 1; r <= racks; r++ {
		br := fmt.Sprintf("br%d", r)
		if err := n.ip(ctx, "-n", n.switchNS, "link", "add", br, "type", "bridge", "stp_state", "0", "forward_delay", "0"); err != nil {
			return nil, err
		}
		if err := n.ip(ctx, "-n", n.switchNS, "link", "set", br, "up"); err != nil {
			return nil, err
		}
	}
	if racks > 1 {
		n.routerNS = n.ns("rt")
		if err := n.addNS(ctx, n.routerNS); err != nil {
			return nil, err
		}
		if _, err := run(ctx, "ip", "netns", "exec", n.routerNS, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
			return nil, fmt.Errorf("enable forwarding in router: %w", err)
		}
		for r := 1; r <= racks; r++ {
			dev, port := fmt.Sprintf("r%d", r), fmt.Sprintf("rt%d", r)
			if err := n.link(ctx, n.routerNS, dev, port, r, netip.PrefixFrom(rackAddr(r, 1), 24)); err != nil {
				return nil, err
			}
			// Shape the router's egress into each rack: the inter-rack link,
			// both directions, at interRack.
			if _, err := run(ctx, "tc", sh.tbfArgs(n.routerNS, dev, interRack)...); err != nil {
				return nil, fmt.Errorf("shape inter-rack link: %w", err)
			}
		}
	}
	for i, h := range hosts {
		if h.On != "" {
			continue // shares another host's namespace: set up below
		}
		h.NS = n.ns(h.Name)
		h.port = fmt.Sprintf("p%d", i)
		if err := n.addNS(ctx, h.NS); err != nil {
			return nil, err
		}
		if err := n.link(ctx, h.NS, "eth0", h.port, h.Rack, netip.PrefixFrom(h.IP, 24)); err != nil {
			return nil, err
		}
		if racks > 1 {
			if err := n.ip(ctx, "-n", h.NS, "route", "add", "10.77.0.0/16", "via", rackAddr(h.Rack, 1).String()); err != nil {
				return nil, err
			}
		}
		// Uplink: egress of the host's end. Downlink: egress of the bridge port.
		if _, err := run(ctx, "tc", sh.tbfArgs(h.NS, "eth0", h.Up)...); err != nil {
			return nil, fmt.Errorf("shape uplink of %s: %w", h.Name, err)
		}
		if _, err := run(ctx, "tc", sh.tbfArgs(n.switchNS, h.port, h.Down)...); err != nil {
			return nil, fmt.Errorf("shape downlink of %s: %w", h.Name, err)
		}
		if n.Netem && (sh.delay > 0 || sh.loss > 0) {
			if _, err := run(ctx, "tc", sh.netemArgs(h.NS, "eth0")...); err != nil {
				return nil, fmt.Errorf("netem on %s: %w", h.Name, err)
			}
		}
	}
	for _, h := range hosts {
		if h.On == "" {
			continue
		}
		i := slices.IndexFunc(hosts, func(o *Host) bool { return o.Name == h.On && o.On == "" })
		if i < 0 {
			return nil, fmt.Errorf("host %s shares host %q, which does not exist", h.Name, h.On)
		}
		o := hosts[i]
		h.NS, h.IP, h.Rack, h.Up, h.Down, h.port = o.NS, o.IP, o.Rack, o.Up, o.Down, o.port
	}
	return n, nil
}

func (n *Network) ip(ctx context.Context, args ...string) error {
	_, err := run(ctx, "ip", args...)
	return err
}

// addNS creates a namespace with loopback up and IPv6 off (no DAD or router
// solicitation noise in the byte counters).
func (n *Network) addNS(ctx context.Context, ns string) error {
	if err := n.ip(ctx, "netns", "add", ns); err != nil {
		return fmt.Errorf("create namespace: %w", err)
	}
	n.created = append(n.created, ns)
	if err := n.ip(ctx, "-n", ns, "link", "set", "lo", "up"); err != nil {
		return err
	}
	if _, err := run(ctx, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
		n.log.Debug("disable ipv6", "netns", ns, "err", err)
	}
	return nil
}

// link creates a veth pair from dev in ns to port on rack's bridge, with
// addr on dev. The pair is created directly in the two namespaces, so the
// root namespace never sees it.
func (n *Network) link(ctx context.Context, ns, dev, port string, rack int, addr netip.Prefix) error {
	if err := n.ip(ctx, "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", port, "netns", n.switchNS); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"-n", n.switchNS, "link", "set", port, "master", fmt.Sprintf("br%d", rack)},
		{"-n", n.switchNS, "link", "set", port, "up"},
		{"-n", ns, "addr", "add", addr.String(), "dev", dev},
		{"-n", ns, "link", "set", dev, "up"},
	} {
		if err := n.ip(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// Teardown deletes every namespace of the network; veths and bridges go
// with them. Processes must have been ended first.
func (n *Network) Teardown(ctx context.Context) {
	for i := len(n.created) - 1; i >= 0; i-- {
		if err := n.ip(ctx, "netns", "del", n.created[i]); err != nil {
			n.log.Warn("delete namespace", "netns", n.created[i], "err", err)
		}
	}
	n.created = nil
}

// ipLink is one interface as `ip -j -s link show` describes it.
type ipLink struct {
	Name    string `json:"ifname"`
	Stats64 struct {
		RX struct {
			Bytes int64 `json:"bytes"`
		} `json:"rx"`
		TX struct {
			Bytes int64 `json:"bytes"`
		} `json:"tx"`
	} `json:"stats64"`
}

// linkStats returns the tx and rx byte counters of dev in ns.
func linkStats(ctx context.Context, ns, dev string) (tx, rx int64, err error) {
	out, err := run(ctx, "ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev)
	if err != nil {
		return 0, 0, err
	}
	var links []ipLink
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return 0, 0, fmt.Errorf("parse stats of %s in %s: %v", dev, ns, err)
	}
	return links[0].Stats64.TX.Bytes, links[0].Stats64.RX.Bytes, nil
}

// originTx is the origin host's interface transmit counter.
func (n *Network) originTx(ctx context.Context) (int64, error) {
	tx, _, err := linkStats(ctx, n.Origin().NS, "eth0")
	return tx, err
}

// interRackBytes is what the router forwarded between racks (both ways).
func (n *Network) interRackBytes(ctx context.Context) (int64, error) {
	if n.routerNS == "" {
		return 0, nil
	}
	var sum int64
	for r := 1; r <= n.racks; r++ {
		tx, _, err := linkStats(ctx, n.routerNS, fmt.Sprintf("r%d", r))
		if err != nil {
			return 0, err
		}
		sum += tx
	}
	return sum, nil
}

// runIDOf extracts the run id from a name "dfsw-<runid>-<rest>".
func runIDOf(name string) string {
	id, _, _ := strings.Cut(strings.TrimPrefix(name, Prefix), "-")
	return id
}

// harnessPIDFile, in a run's scratch directory, holds the harness's pid, so
// that Cleanup leaves runs in progress alone.
const harnessPIDFile = "harness.pid"

// Cleanup removes leftovers of earlier runs: it kills the processes inside
// every namespace named with Prefix (each by its pid), deletes those
// namespaces, and removes the runs' scratch directories under workDir ("" is
// os.TempDir()). An empty runID means every run. Runs whose harness is still
// alive (its pid file is in a scratch directory under workDir) are skipped.
func Cleanup(ctx context.Context, log *slog.Logger, runID, workDir string) error {
	if workDir == "" {
		workDir = os.TempDir()
	}
	live := map[string]bool{}
	dirs, _ := filepath.Glob(filepath.Join(workDir, Prefix+runID+"*"))
	for _, d := range dirs {
		if data, err := os.ReadFile(filepath.Join(d, harnessPIDFile)); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && pid != os.Getpid() && processAlive(pid) {
				live[runIDOf(filepath.Base(d))] = true
				log.Info("run in progress, left alone", "run_id", runIDOf(filepath.Base(d)), "pid", pid)
				continue
			}
		}
		if err := os.RemoveAll(d); err != nil {
			log.Warn("remove leftover scratch directory", "dir", d, "err", err)
			continue
		}
		log.Info("removed leftover scratch directory", "dir", d)
	}
	out, err := run(ctx, "ip", "netns", "list")
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	want := Prefix + runID
	if runID != "" {
		want += "-"
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], want) || live[runIDOf(f[0])] {
			continue
		}
		ns := f[0]
		if pids, err := run(ctx, "ip", "netns", "pids", ns); err == nil {
			for _, p := range strings.Fields(string(pids)) {
				pid, err := strconv.Atoi(p)
				if err != nil {
					continue
				}
				log.Info("kill leftover process", "netns", ns, "pid", pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if _, err := run(ctx, "ip", "netns", "del", ns); err != nil {
			log.Warn("delete leftover namespace", "netns", ns, "err", err)
			continue
		}
		log.Info("deleted leftover namespace", "netns", ns)
	}
	return nil
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...; comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(data), ')')
	return i >= 0 && i+2 < len(data) && data[i+2] != 'Z' && data[i+2] != 'X'
}

// NewNetwork builds the network cfg describes (its hosts, racks and
// shaping) without running any system, for tests that bring their own
// servers and clients (test/mirror). The caller must end its processes and
// then call Teardown.
func NewNetwork(ctx context.Context, cfg Config) (*Network, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("network namespaces need root")
	}
	return buildNetwork(ctx, cfg.Logger.With("run_id", cfg.RunID), cfg.RunID, cfg.racks(), cfg.InterRackRate, cfg.hosts(),
		shaping{burst: cfg.Burst, latency: cfg.Latency, delay: cfg.Delay, loss: cfg.Loss})
}

// TxBytes is host h's eth0 transmit counter.
func (n *Network) TxBytes(ctx context.Context, h *Host) (int64, error) {
	tx, _, err := linkStats(ctx, h.NS, "eth0")
	return tx, err
}

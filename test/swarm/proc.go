package swarm

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/damselfly-io/damselfly/test/netns"
	"github.com/damselfly-io/damselfly/test/oci"
)

// Proc is one process the harness started inside a host's network namespace.
// It runs in its own process group, so Kill ends it and anything it spawned,
// and it gets SIGKILL if the harness dies.
type Proc struct {
	Name  string
	Log   string // where its output goes
	cmd   *exec.Cmd
	gate  io.WriteCloser // non-nil for a gated process: it waits for a line on stdin
	done  chan struct{}
	end   time.Time
	err   error
	start time.Time
}

// procSet tracks every process of a run so that teardown can end them all.
type procSet struct {
	mu    sync.Mutex
	procs []*Proc
}

// startIn starts argv inside network namespace ns with output to logPath. A
// gated process is started but blocks (in sh's read) until Release, so that
// many downloads can start at one instant.
func (ps *procSet) startIn(ns, name, logPath string, env []string, gated bool, argv ...string) (*Proc, error) {
	args := []string{"netns", "exec", ns}
	if gated {
		args = append(args, "sh", "-c", `read _ && exec "$@"`, "sh")
	}
	args = append(args, argv...)
	cmd := exec.Command("ip", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Without proxy settings: the hosts reach only each other (their
	// namespaces have no route elsewhere), and a proxy variable would send
	// curl, aria2c or a daemon's origin fetch to it.
	cmd.Env = append(oci.CleanEnv(), env...)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s in %s: open log: %w", name, ns, err)
	}
	defer logf.Close() // the child has its own copy
	cmd.Stdout = logf
	cmd.Stderr = logf
	p := &Proc{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	if gated {
		w, err := cmd.StdinPipe()
		if err != nil {
			return nil, fmt.Errorf("start %s in %s: %w", name, ns, err)
		}
		p.gate = w
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, ns, err)
	}
	p.start = time.Now()
	ps.mu.Lock()
	ps.procs = append(ps.procs, p)
	ps.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.end = time.Now()
		p.err = err
		close(p.done)
	}()
	return p, nil
}

// lastLine is the last non-empty line of the process's log, for errors.
func (p *Proc) lastLine() string {
	f, err := os.Open(p.Log)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	buf := make([]byte, min(st.Size(), 2048))
	if _, err := f.ReadAt(buf, st.Size()-int64(len(buf))); err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(buf)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// Release lets a gated process go.
func (p *Proc) Release() error {
	if p.gate == nil {
		return nil
	}
	_, err := p.gate.Write([]byte("go\n"))
	p.gate.Close()
	if err != nil {
		return fmt.Errorf("release %s: %w", p.Name, err)
	}
	return nil
}

// PID is the process id (the command itself: ip netns exec execs it).
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, when, and with what error.
func (p *Proc) Exited() (bool, time.Time, error) {
	select {
	case <-p.done:
		return true, p.end, p.err
	default:
		return false, time.Time{}, nil
	}
}

// Kill sends SIGTERM to the process group, and SIGKILL after grace.
func (p *Proc) Kill(grace time.Duration) {
	if done, _, _ := p.Exited(); done {
		return
	}
	oci.StopGroup(p.cmd.Process.Pid, p.done, grace)
}

// killAll ends every process of the set, in parallel, each by its id, and
// returns the CPU time they used (user + system, from wait4's rusage).
func (ps *procSet) killAll(grace time.Duration) time.Duration {
	ps.mu.Lock()
	procs := ps.procs
	ps.procs = nil
	ps.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() { p.Kill(grace) })
	}
	wg.Wait()
	var cpu time.Duration
	for _, p := range procs {
		if st := p.cmd.ProcessState; st != nil {
			cpu += st.UserTime() + st.SystemTime()
		}
	}
	return cpu
}

// nsDialer returns a DialContext that opens its socket inside network
// namespace ns, so the harness (which stays in the root namespace, with no
// route to 10.77.0.0/16) can talk to servers on the emulated network.
func nsDialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return netns.Dialer(ns)
}

// nsHTTPClient is an HTTP client whose connections live in namespace ns.
func nsHTTPClient(ns string, timeout time.Duration) *http.Client {
	return netns.HTTPClient(ns, timeout)
}

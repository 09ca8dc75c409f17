// Package oci starts the real parts a registry-mirror test needs and drives
// them: Debian's docker-registry with no auth, htpasswd basic auth or a
// bearer-token realm (a token server in Go), generated multi-layer images
// written as OCI layouts, containerd with ctr, and skopeo. Every process it
// starts runs in its own process group, optionally inside a network
// namespace, dies with the test (PDEATHSIG) and is stopped by its PID.
//
// It does not import the swarm harness (the harness imports it), and it
// never contacts anything but the addresses its callers give it.
package oci

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Command builds argv to run inside network namespace ns ("" runs it
// where the caller is). Proxy variables are dropped from the environment:
// a proxy would send registry traffic off the machine.
func Command(ctx context.Context, ns string, argv ...string) *exec.Cmd {
	if ns != "" {
		argv = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = CleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Kill the whole group on cancellation (ip netns exec execs, but the
	// tools may spawn helpers).
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// CleanEnv is this process's environment without proxy variables.
func CleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasSuffix(strings.ToLower(k), "_proxy") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// Output runs argv in ns and returns its standard output; the error
// carries standard error.
func Output(ctx context.Context, ns string, argv ...string) ([]byte, error) {
	cmd := Command(ctx, ns, argv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, tail(errb.String(), 4000))
	}
	return out.Bytes(), nil
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// Proc is a long-running process started by Start.
type Proc struct {
	Name string
	Log  string // stdout and stderr
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start runs argv in ns in the background with its output appended to
// logPath.
func Start(ns, name, logPath string, argv ...string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer f.Close() // the child has its own descriptor
	cmd := Command(context.Background(), ns, argv...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// PID is the process's id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM to the process group and SIGKILL after grace; it
// returns once the process is gone (or 5 s after SIGKILL).
func (p *Proc) Stop(grace time.Duration) {
	if done, _ := p.Exited(); done {
		return
	}
	StopGroup(p.cmd.Process.Pid, p.done, grace)
}

// StopGroup sends SIGTERM to process group pgid and SIGKILL after grace
// (at once when grace is 0); it returns once done is closed (the group's
// leader was reaped) or 5 s after SIGKILL.
func StopGroup(pgid int, done <-chan struct{}, grace time.Duration) {
	if grace > 0 {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-done:
			return
		case <-time.After(grace):
		}
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}

// LogTail is the end of the process's log, for failure messages.
func (p *Proc) LogTail(n int) string {
	b, _ := os.ReadFile(p.Log)
	return tail(string(b), n)
}

// WaitFor polls check every 100 ms until it succeeds, p (when not nil)
// exits, or timeout passes.
func WaitFor(ctx context.Context, p *Proc, timeout time.Duration, what string, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		if p != nil {
			if done, err := p.Exited(); done {
				return fmt.Errorf("wait for %s: %s exited (%v): %s", what, p.Name, err, p.LogTail(2000))
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

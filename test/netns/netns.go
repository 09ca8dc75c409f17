// Package netns opens sockets inside named network namespaces
// (/var/run/netns/<name>, as `ip netns add` makes them) from a process that
// stays in its own namespace, so a test or harness can talk to, and serve,
// hosts of an emulated network. A socket keeps the namespace it was created
// in; only the creating thread switches, and switches back.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// Path is where `ip netns` keeps namespace name.
func Path(name string) string { return "/var/run/netns/" + name }

// Do runs fn on a thread switched into namespace name ("" runs fn as is).
// If the thread cannot be switched back, it stays locked and the runtime
// discards it when the goroutine ends.
func Do(name string, fn func() error) error {
	if name == "" {
		return fn()
	}
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("enter netns %s: %w", name, err)
			return
		}
		defer orig.Close()
		target, err := os.Open(Path(name))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("enter netns %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("enter netns %s: setns: %w", name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- errors.Join(ferr, fmt.Errorf("leave netns %s: %w", name, err))
			return // thread stays locked: discarded
		}
		runtime.UnlockOSThread()
		ch <- ferr
	}()
	return <-ch
}

// Dialer returns a DialContext whose sockets live in namespace name.
func Dialer(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := Do(name, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		if err != nil && c != nil {
			c.Close()
			c = nil
		}
		return c, err
	}
}

// Listen opens a listener inside namespace name.
func Listen(name, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := Do(name, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil && ln != nil {
		ln.Close()
		ln = nil
	}
	return ln, err
}

// HTTPClient is an HTTP client whose connections live in namespace name,
// with no proxy and no connection reuse.
func HTTPClient(name string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:       Dialer(name),
			DisableKeepAlives: true,
			Proxy:             nil,
		},
	}
}

// Command dfget downloads one URL through the local Damselfly daemon, falling
// back to a direct download from the origin when no daemon answers. See
// docs/dfget.md and `dfget --help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/cli"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version string

// Exit codes, documented in the usage text and docs/dfget.md.
const (
	exitOK          = 0
	exitFailed      = 1
	exitUsage       = 2
	exitNotFound    = 3
	exitDigest      = 4
	exitTimeout     = 5
	exitNoDaemon    = 6
	exitDenied      = 7
	exitInterrupted = 130
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal, restore the default handling so that a
		// second Ctrl-C kills at once if cleaning up hangs.
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is dfget without the process around it: it parses args, downloads,
// and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, code, done := cli.Begin("dfget", usage, version, args, stdout, stderr, parseArgs)
	if done {
		return code
	}
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	if isS3(o.url) {
		h, anonymous, err := s3Headers(ctx, o.s3PathStyle)
		if err != nil {
			fmt.Fprintf(stderr, "dfget: %v\n", err)
			return exitUsage
		}
		for k, vs := range h {
			if o.header.Get(k) == "" {
				o.header[k] = vs
			}
		}
		if anonymous && !o.quiet {
			fmt.Fprintln(stderr, "dfget: no AWS credentials found: reading the bucket anonymously")
		}
	}
	if isOCI(o.url) {
		return runOCI(ctx, o, stderr)
	}
	if o.recursive {
		return runRecursive(ctx, o, stderr)
	}
	d := &downloader{opts: o, stdout: stdout, stderr: stderr, tty: isTerminal(stderr)}
	res, err := d.download(ctx)
	if err != nil {
		code := exitCode(ctx, err, o.disableBackSource)
		what := fmt.Sprintf("download %s to %s", redactURL(o.url), o.output)
		switch {
		case code == exitTimeout && errors.Is(ctx.Err(), context.DeadlineExceeded):
			fmt.Fprintf(stderr, "dfget: %s: timed out after %s: %v\n", what, o.timeout, err)
		case code == exitInterrupted:
			fmt.Fprintf(stderr, "dfget: %s: interrupted\n", what)
		default:
			fmt.Fprintf(stderr, "dfget: %s: %v\n", what, err)
		}
		return code
	}
	if !o.quiet && !d.barShown {
		fmt.Fprintln(stderr, res.summary(o.output))
	}
	if w := res.warning(); w != "" && !o.quiet {
		fmt.Fprintln(stderr, w)
	}
	return exitOK
}

// exitCode maps a download error to the documented exit codes.
func exitCode(ctx context.Context, err error, disableBackSource bool) int {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return exitTimeout
	case ctx.Err() != nil, errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.Is(err, core.ErrNotFound):
		return exitNotFound
	case errors.Is(err, core.ErrDenied):
		return exitDenied
	case errors.Is(err, core.ErrDigestMismatch):
		return exitDigest
	case errors.Is(err, core.ErrUnavailable) && disableBackSource:
		return exitNoDaemon
	case errors.Is(err, core.ErrInvalid):
		return exitUsage
	}
	return exitFailed
}

// isS3 reports whether raw is an s3:// URL.
func isS3(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && strings.EqualFold(u.Scheme, "s3")
}

// WantsHelp, WantsVersion and Validate are what cli.Begin asks of the
// parsed arguments.
func (o *options) WantsHelp() bool    { return o.help }
func (o *options) WantsVersion() bool { return o.version }
func (o *options) Validate() error    { return o.validate() }

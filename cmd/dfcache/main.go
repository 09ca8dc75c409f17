// Command dfcache puts local files into the Damselfly swarm under an ID and
// gets them out again on any node, through the local daemon: import, export,
// stat and delete. See docs/dfcache.md and `dfcache --help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/cli"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version string

// Exit codes, documented in the usage text and docs/dfcache.md; the ones
// dfget also has mean the same there.
const (
	exitOK          = 0
	exitFailed      = 1
	exitUsage       = 2
	exitNotFound    = 3
	exitTimeout     = 5
	exitNoDaemon    = 6
	exitExists      = 7
	exitNoSpace     = 8
	exitInterrupted = 130
)

const defaultTimeout = 2 * time.Hour

const usage = `Usage: dfcache COMMAND [flags]

Put files into the Damselfly swarm under an ID and get them out on any node,
through the local daemon. There is no origin: the daemon that imported an
entry (and every daemon that exported it since) serves it to the others.

Commands:
  import FILE --id ID     put FILE into this node's cache as entry ID and
                          announce it to the swarm
  export --id ID -O FILE  write entry ID to FILE, from this node's cache or
                          from the peers that hold it; FILE appears only
                          once complete and verified; "-" streams to stdout
  stat --id ID            show what this node's cache holds of entry ID
  delete --id ID          remove entry ID from this node's cache (other
                          nodes keep their copies)

Flags (all commands; flags may come before or after FILE):
  -i, --id ID            the entry's ID: 1-255 letters, digits and . _ - : / @ +
      --tag TAG          a tag: the same ID under another tag is another entry
      --sock PATH        the daemon's unix socket (default ` + client.DefaultSock + `)
      --timeout DURATION give up after this long, e.g. 30m, 2h, 90 (seconds);
                         0 means never (default 2h)
  -q, --quiet            print errors only
      --version          print the version and exit
  -h, --help             print this help and exit
import only:
      --ttl DURATION     evict the entry from this node's cache when unused for
                         this long, e.g. 72h (default 0: the daemon's
                         cache.task_ttl; other nodes use their own)
export only:
  -O, --output FILE      where to write the entry (required)
      --local            only this node's cache: do not ask the swarm
      --no-progress      no progress bar

Progress: export shows a bar on stderr when stderr is a terminal; otherwise
one summary line at the end (none with -q).

Exit codes:
  0    success
  1    failed
  2    usage error or invalid argument
  3    no such entry (not in this cache; for export: no peer holds it)
  5    timeout (--timeout)
  6    daemon unavailable
  7    import: the entry already exists in this node's cache
  8    the daemon's cache is out of disk space
  130  interrupted (Ctrl-C / SIGTERM)
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills at once
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options is the parsed command line.
type options struct {
	cmd        string
	id, tag    string
	file       string // import: the input; export: the output (absolute after validate, or "-")
	sock       string
	timeout    time.Duration
	local      bool
	ttl        time.Duration // import: the entry's own TTL (0: the daemon's)
	noProgress bool
	quiet      bool
	version    bool
	help       bool
}

// run is dfcache without the process around it: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, code, done := cli.Begin("dfcache", usage, version, args, stdout, stderr, parseArgs)
	if done {
		return code
	}
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	c, err := client.Dial(ctx, o.sock)
	if err == nil {
		defer c.Close()
		switch o.cmd {
		case "import":
			err = runImport(ctx, c, o, stderr)
		case "export":
			err = runExport(ctx, c, o, stdout, stderr)
		case "stat":
			err = runStat(ctx, c, o, stdout)
		case "delete":
			err = runDelete(ctx, c, o, stderr)
		}
	}
	if err == nil {
		return exitOK
	}
	code = exitCode(ctx, err)
	what := o.cmd + " " + strconv.Quote(o.id)
	switch {
	case code == exitTimeout && errors.Is(ctx.Err(), context.DeadlineExceeded):
		fmt.Fprintf(stderr, "dfcache: %s: timed out after %s: %v\n", what, o.timeout, err)
	case code == exitInterrupted:
		fmt.Fprintf(stderr, "dfcache: %s: interrupted\n", what)
	default:
		fmt.Fprintf(stderr, "dfcache: %s: %v\n", what, err)
	}
	return code
}

// exitCode maps an error to the documented exit codes.
func exitCode(ctx context.Context, err error) int {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return exitTimeout
	case ctx.Err() != nil, errors.Is(err, context.Canceled):
		return exitInterrupted
	case status.Code(err) == codes.AlreadyExists:
		return exitExists
	case errors.Is(err, core.ErrNotFound):
		return exitNotFound
	case errors.Is(err, core.ErrNoSpace):
		return exitNoSpace
	case errors.Is(err, core.ErrUnavailable):
		return exitNoDaemon
	case errors.Is(err, core.ErrInvalid):
		return exitUsage
	}
	return exitFailed
}

// parseArgs parses COMMAND and its flags; flags may follow the FILE
// argument (parsing resumes after each argument); after "--" everything is
// an argument.
func parseArgs(args []string) (*options, error) {
	o := &options{timeout: defaultTimeout, sock: client.DefaultSock}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		o.cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("dfcache", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	var output string
	for _, n := range []string{"i", "id"} {
		fs.StringVar(&o.id, n, "", "")
	}
	for _, n := range []string{"O", "output"} {
		fs.StringVar(&output, n, "", "")
	}
	fs.StringVar(&o.tag, "tag", "", "")
	fs.StringVar(&o.sock, "sock", client.DefaultSock, "")
	fs.Var(cli.Duration{D: &o.timeout}, "timeout", "")
	fs.BoolVar(&o.local, "local", false, "")
	ttlSet := false
	fs.Func("ttl", "", func(v string) error {
		ttlSet = true
		return cli.Duration{D: &o.ttl}.Set(v)
	})
	fs.BoolVar(&o.noProgress, "no-progress", false, "")
	for _, n := range []string{"q", "quiet"} {
		fs.BoolVar(&o.quiet, n, false, "")
	}
	fs.BoolVar(&o.version, "version", false, "")
	for _, n := range []string{"h", "help"} {
		fs.BoolVar(&o.help, n, false, "")
	}
	positional, err := cli.ParseInterleaved(fs, args)
	if err != nil {
		return nil, err
	}
	if o.help || o.version {
		return o, nil
	}
	switch o.cmd {
	case "import":
		if len(positional) != 1 {
			return nil, fmt.Errorf("import takes one FILE, got %d arguments", len(positional))
		}
		if output != "" {
			return nil, errors.New("-O/--output is for export")
		}
		o.file = positional[0]
	case "export", "stat", "delete":
		if len(positional) > 0 {
			return nil, fmt.Errorf("%s takes no arguments, got %q", o.cmd, positional[0])
		}
		if output != "" && o.cmd != "export" {
			return nil, errors.New("-O/--output is for export")
		}
		o.file = output
	case "":
		return nil, errors.New("no command: want import, export, stat or delete")
	default:
		return nil, fmt.Errorf("unknown command %q: want import, export, stat or delete", o.cmd)
	}
	if o.local && o.cmd != "export" {
		return nil, errors.New("--local is for export")
	}
	if ttlSet && o.cmd != "import" {
		return nil, errors.New("--ttl is for import")
	}
	if ttlSet && o.ttl > 0 && o.ttl < time.Second {
		return nil, fmt.Errorf("--ttl %s: at least 1s (or 0 for the daemon's TTL)", o.ttl)
	}
	return o, nil
}

// validate checks the options and makes paths absolute (the daemon resolves
// nothing against the caller's working directory).
func (o *options) validate() error {
	if o.id == "" {
		return errors.New("--id is required")
	}
	if err := core.ValidateCacheID(o.id); err != nil {
		return err
	}
	if o.cmd == "export" && o.file == "" {
		return errors.New("-O/--output is required (\"-\" for standard output)")
	}
	if o.file != "" && o.file != "-" {
		abs, err := absPath(o.file)
		if err != nil {
			return err
		}
		o.file = abs
	}
	return nil
}

// WantsHelp, WantsVersion and Validate are what cli.Begin asks of the
// parsed arguments.
func (o *options) WantsHelp() bool    { return o.help }
func (o *options) WantsVersion() bool { return o.version }
func (o *options) Validate() error    { return o.validate() }

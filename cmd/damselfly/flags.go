package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/damselfly-io/damselfly/internal/config"
	"github.com/damselfly-io/damselfly/internal/obs"
)

// configFlag finds --config FILE in args before the real parse, so that the
// file's values become the flags' defaults: defaults < file < flags.
func configFlag(args []string) string {
	for i, a := range args {
		a = strings.TrimLeft(a, "-")
		if v, ok := strings.CutPrefix(a, "config="); ok {
			return v
		}
		if a == "config" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// loadConfig loads the --config file (if any) into cfg.
func loadConfig(args []string, cfg any) error {
	if p := configFlag(args); p != "" {
		return config.LoadFile(p, cfg)
	}
	return nil
}

// newFlagSet returns a flag set whose usage lists the flags and the
// config-file note.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: damselfly %s [flags]\n\n%s\n\nEvery setting can also be given in a YAML file (--config); flags override the file.\n--print-config shows the effective configuration.\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	fs.String("config", "", "YAML config file")
	return fs
}

func printConfig(w io.Writer, cfg any) int {
	b, err := config.Render(cfg)
	if err != nil {
		fmt.Fprintln(w, "render config:", err)
		return 1
	}
	_, _ = w.Write(b)
	return 0
}

// obsFlags binds the profiler and HTTP timeout flags every component shares.
func obsFlags(fs *flag.FlagSet, c *obs.Config) {
	fs.BoolVar(&c.Pprof, "pprof", c.Pprof, "serve the Go profiler (/debug/pprof/) on --pprof-listen")
	fs.StringVar(&c.PprofListen, "pprof-listen", c.PprofListen, "address of the profiler when --pprof is set (keep it on loopback)")
	fs.Var(&c.ReadHeaderTimeout, "http-read-header-timeout", "HTTP servers: cut a client that has not sent its request headers after this long")
	fs.Var(&c.IdleTimeout, "http-idle-timeout", "HTTP servers: close a keep-alive connection idle this long")
	fs.Var(&c.WriteStallTimeout, "http-write-stall-timeout", "HTTP servers: cut a response whose bytes make no progress this long")
}

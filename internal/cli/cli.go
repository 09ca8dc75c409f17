// Package cli holds what the client commands (dfget, dfcache) share in
// reading their command lines: flags that may follow arguments, a duration
// flag, the version string, and the steps before a command's work (Begin).
package cli

import (
	"flag"
	"fmt"
	"io"
	"math"
	"runtime/debug"
	"strconv"
	"time"
)

// ParseInterleaved parses args with fs, letting flags follow arguments: Go's
// flag package stops at the first non-flag argument, so parsing resumes after
// each one; after "--" everything is an argument. It returns the arguments.
func ParseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for rest := args; len(rest) > 0; {
		if err := fs.Parse(rest); err != nil {
			return nil, err
		}
		left := fs.Args()
		if consumed := len(rest) - len(left); consumed > 0 && rest[consumed-1] == "--" {
			positional = append(positional, left...)
			break
		}
		if len(left) == 0 {
			break
		}
		positional = append(positional, left[0])
		rest = left[1:]
	}
	return positional, nil
}

// Duration is a flag.Value taking a Go duration ("90s", "2h") or a plain
// number of seconds; negative values are refused.
type Duration struct{ D *time.Duration }

func (f Duration) String() string { return "" }

// Set parses v into *f.D.
func (f Duration) Set(v string) error {
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs < 0 || math.IsNaN(secs) || secs > math.MaxInt64/float64(time.Second) {
			return fmt.Errorf("bad duration %q", v)
		}
		*f.D = time.Duration(secs * float64(time.Second))
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return fmt.Errorf("bad duration %q (want e.g. 30m, 2h, 90s)", v)
	}
	*f.D = d
	return nil
}

// Version returns the version set at build time (ldflags), else the main
// module's version, else "dev".
func Version(set string) string {
	if set != "" {
		return set
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// Command is what a client command's parsed arguments tell Begin.
type Command interface {
	WantsHelp() bool
	WantsVersion() bool
	Validate() error
}

// Exit codes every client command shares.
const (
	ExitOK    = 0
	ExitUsage = 2
)

// Begin does what every client command does before its work: usage when
// there are no arguments, parse and validation errors with a pointer to
// --help (exit 2), --help and --version (exit 0). When done is true the
// command exits with code; otherwise it goes on with the parsed arguments.
func Begin[T Command](name, usage, version string, args []string, stdout, stderr io.Writer, parse func([]string) (T, error)) (o T, code int, done bool) {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return o, ExitUsage, true
	}
	o, err := parse(args)
	if err != nil {
		fmt.Fprintf(stderr, "%s: parse arguments: %v\nRun '%s --help' for usage.\n", name, err, name)
		return o, ExitUsage, true
	}
	switch {
	case o.WantsHelp():
		fmt.Fprint(stdout, usage)
		return o, ExitOK, true
	case o.WantsVersion():
		fmt.Fprintf(stdout, "%s %s\n", name, Version(version))
		return o, ExitOK, true
	}
	if err := o.Validate(); err != nil {
		fmt.Fprintf(stderr, "%s: check arguments: %v\nRun '%s --help' for usage.\n", name, err, name)
		return o, ExitUsage, true
	}
	return o, ExitOK, false
}

package cli

import (
	"errors"
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseInterleaved(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	v := fs.Bool("v", false, "")
	o := fs.String("O", "", "")
	args, err := ParseInterleaved(fs, []string{"a", "-O", "out", "b", "-v", "--", "-c", "d"})
	if err != nil || !*v || *o != "out" || !slices.Equal(args, []string{"a", "b", "-c", "d"}) {
		t.Fatalf("args %v, v %v, O %q, err %v", args, *v, *o, err)
	}
	if _, err := ParseInterleaved(fs, []string{"a", "-nope"}); err == nil {
		t.Fatal("unknown flag accepted")
	}
}

func TestDuration(t *testing.T) {
	var d time.Duration
	for in, want := range map[string]time.Duration{"90": 90 * time.Second, "1.5": 1500 * time.Millisecond, "2h": 2 * time.Hour} {
		if err := (Duration{&d}).Set(in); err != nil || d != want {
			t.Errorf("Set(%q) = %v, %v; want %v", in, d, err, want)
		}
	}
	for _, bad := range []string{"-1", "-1s", "NaN", "1e300", "soon"} {
		if err := (Duration{&d}).Set(bad); err == nil {
			t.Errorf("Set(%q) accepted: %v", bad, d)
		}
	}
}

func TestVersion(t *testing.T) {
	if Version("v1.2.3") != "v1.2.3" || Version("") == "" {
		t.Fatal("version")
	}
}

type fakeArgs struct {
	help, version bool
	invalid       error
}

func (f *fakeArgs) WantsHelp() bool    { return f.help }
func (f *fakeArgs) WantsVersion() bool { return f.version }
func (f *fakeArgs) Validate() error    { return f.invalid }

// Begin: no arguments print the usage (exit 2), parse and validation errors
// name the command and point to --help (exit 2), --help and --version end
// with 0 on stdout, and valid arguments go on.
func TestBegin(t *testing.T) {
	parse := func(args []string) (*fakeArgs, error) {
		switch args[0] {
		case "bad":
			return nil, errors.New("unknown flag -x")
		case "help":
			return &fakeArgs{help: true}, nil
		case "version":
			return &fakeArgs{version: true}, nil
		case "invalid":
			return &fakeArgs{invalid: errors.New("-O is required")}, nil
		}
		return &fakeArgs{}, nil
	}
	for _, c := range []struct {
		args           []string
		code           int
		done           bool
		stdout, stderr string
	}{
		{nil, ExitUsage, true, "", "USAGE"},
		{[]string{"bad"}, ExitUsage, true, "", "tool: parse arguments: unknown flag -x\nRun 'tool --help' for usage.\n"},
		{[]string{"help"}, ExitOK, true, "USAGE", ""},
		{[]string{"version"}, ExitOK, true, "tool 1.2.3\n", ""},
		{[]string{"invalid"}, ExitUsage, true, "", "tool: check arguments: -O is required\nRun 'tool --help' for usage.\n"},
		{[]string{"ok"}, ExitOK, false, "", ""},
	} {
		var out, errOut strings.Builder
		o, code, done := Begin("tool", "USAGE", "1.2.3", c.args, &out, &errOut, parse)
		if code != c.code || done != c.done || out.String() != c.stdout || errOut.String() != c.stderr {
			t.Errorf("%v: code %d done %v stdout %q stderr %q", c.args, code, done, out.String(), errOut.String())
		}
		if !done && o == nil {
			t.Errorf("%v: no arguments returned to go on with", c.args)
		}
	}
}

package cli

import (
	"flag"
	"io"
	"slices"
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

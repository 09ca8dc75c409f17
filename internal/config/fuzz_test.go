package config

import (
	"testing"
)

// FuzzParseByteSize: an accepted size is never negative, survives its own
// rendering, and the huge or odd spellings are refused instead of turning
// into a garbage number.
func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{"0", "1", "512K", "100MiB", "1G", "1.5G", "1048576", "1T", "8191T", "8192T", "9999999999999999999",
		"NaN", "Inf", "-1", "1e30", "0x10", "1_000", "1i", "KiB", "", " 5 M ", "1..5K", ".", "1.", ".5K"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseByteSize(s)
		if err != nil {
			return
		}
		if b < 0 {
			t.Fatalf("ParseByteSize(%q) = %d", s, int64(b))
		}
		again, err := ParseByteSize(b.String())
		if err != nil || again != b {
			t.Fatalf("ParseByteSize(%q) = %d renders %q which parses as %d (%v)", s, int64(b), b.String(), int64(again), err)
		}
	})
}

package scenario

import (
	"fmt"
	"strconv"
	"strings"
)

// Rate is a link rate in bits per second, written the way tc writes it
// (100mbit, 1gbit, 500kbit; decimal multiples).
type Rate int64

// ParseRate parses "100mbit", "1gbit", "250kbit", "1000000bit" or a plain
// number of bits per second.
func ParseRate(s string) (Rate, error) {
	f, ok := parseUnit(strings.ToLower(strings.TrimSpace(s)), rateUnits)
	if !ok {
		return 0, fmt.Errorf("parse rate %q: want e.g. 100mbit", s)
	}
	return Rate(f), nil
}

// String renders the rate in tc syntax.
func (r Rate) String() string {
	switch {
	case r >= 1e9 && r%1e9 == 0:
		return fmt.Sprintf("%dgbit", r/1e9)
	case r >= 1e6 && r%1e6 == 0:
		return fmt.Sprintf("%dmbit", r/1e6)
	case r >= 1e3 && r%1e3 == 0:
		return fmt.Sprintf("%dkbit", r/1e3)
	}
	return fmt.Sprintf("%dbit", int64(r))
}

// BytesPerSec is the rate in bytes per second.
func (r Rate) BytesPerSec() float64 { return float64(r) / 8 }

// ParseSize parses "128MiB", "4MB", "1GiB", "512KiB" or a byte count.
func ParseSize(s string) (int64, error) {
	f, ok := parseUnit(strings.TrimSpace(s), sizeUnits)
	if !ok {
		return 0, fmt.Errorf("parse size %q: want e.g. 128MiB", s)
	}
	return int64(f), nil
}

// unit is a suffix and the multiple it stands for.
type unit struct {
	suffix string
	mult   int64
}

var (
	rateUnits = []unit{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}}
	sizeUnits = []unit{
		{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
		{"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"kB", 1e3},
		{"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1},
	}
)

// parseUnit parses a positive number with the first of units whose suffix
// t ends in (none: the number as it is), and returns it times the unit.
func parseUnit(t string, units []unit) (float64, bool) {
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t = strings.TrimSuffix(t, u.suffix)
			mult = u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f <= 0 {
		return 0, false
	}
	return f * float64(mult), true
}

// FormatSize renders a byte count with a binary unit.
func FormatSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// Package config holds the pieces every component's YAML config shares:
// durations and byte sizes written the way people write them ("30s",
// "100MiB"), and loading a file strictly (unknown keys are errors).
package config

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Duration is a time.Duration that reads and writes as "1m30s".
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: duration %q: %w", n.Line, n.Value, err)
	}
	*d = Duration(v)
	return nil
}

// String implements flag.Value and fmt.Stringer.
func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalText parses a Go duration string such as "1m30s".
func (d *Duration) UnmarshalText(b []byte) error { return d.Set(string(b)) }

// Set implements flag.Value.
func (d *Duration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// ByteSize is a count of bytes that reads "512K", "100MiB", "1G" or "1048576".
// Suffixes are binary (K = 1024).
type ByteSize int64

// ParseByteSize parses a byte size.
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("empty byte size")
	}
	bad := fmt.Errorf("byte size %q: want a number with an optional K, M, G or T suffix", s)
	u := strings.ToUpper(t)
	u = strings.TrimSuffix(u, "B")
	iSuffix := strings.HasSuffix(u, "I")
	u = strings.TrimSuffix(u, "I")
	mult := int64(1)
	if u != "" {
		switch u[len(u)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			u = u[:len(u)-1]
		}
	}
	u = strings.TrimSpace(u)
	// Plain decimal only: ParseFloat would also take "NaN", "Inf", "0x1p4",
	// "1e30" and "1_0", and a float beyond int64 converts to garbage.
	if (iSuffix && mult == 1) || u == "" || strings.Trim(u, "0123456789.") != "" || strings.Count(u, ".") > 1 || u == "." {
		return 0, bad
	}
	f, err := strconv.ParseFloat(u, 64)
	if err != nil || f < 0 {
		return 0, bad
	}
	v := f * float64(mult)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("byte size %q: too large", s)
	}
	return ByteSize(v), nil
}

// String renders the size with the largest exact binary suffix.
func (b ByteSize) String() string {
	v := int64(b)
	for _, s := range []struct {
		suf string
		n   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if v != 0 && v%s.n == 0 {
			return strconv.FormatInt(v/s.n, 10) + s.suf
		}
	}
	return strconv.FormatInt(v, 10)
}

// Set implements flag.Value.
func (b *ByteSize) Set(s string) error {
	v, err := ParseByteSize(s)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (b ByteSize) MarshalYAML() (any, error) { return b.String(), nil }

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// LoadFile decodes the YAML file at path into v (which holds the defaults);
// keys that v does not know are errors, so typos do not pass silently.
func LoadFile(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && err.Error() != "EOF" {
		return fmt.Errorf("parse config %s: %w", path, err)
	}
	return nil
}

// Render returns v as YAML (for --print-config and golden files).
func Render(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

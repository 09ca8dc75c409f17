package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/cli"
)

// defaultTimeout bounds a whole download, like Dragonfly's dfget: long
// enough for tens of GB on a slow link, short enough that a stuck run ends.
const defaultTimeout = 2 * time.Hour

const usage = `Usage: dfget [flags] URL -O FILE
       dfget --recursive URL -O DIR
       dfget oci://REGISTRY/REPO:TAG -O DIR|FILE

Download URL to FILE through the local Damselfly daemon (peer-to-peer), or
straight from the origin when no daemon answers. FILE appears only once the
content is complete (and verified when --digest is given). Flags may come
before or after the URL. URL schemes: http, https, s3, file, and oci for an
OCI artifact's layers.

s3://BUCKET/KEY reads credentials, region and endpoint from the standard
AWS environment and files (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL, AWS_PROFILE, ~/.aws/config
and ~/.aws/credentials); they stay on this node. Without credentials the
bucket is read anonymously.

oci://REGISTRY/REPO:TAG (or @sha256:...) writes every layer of the artifact
into the directory -O under its org.opencontainers.image.title, or to -O
itself when there is one layer and -O is not a directory. Registry
credentials: -H 'Authorization: ...' or DAMSELFLY_REGISTRY_USERNAME and
DAMSELFLY_REGISTRY_PASSWORD.

Flags:
  -O, --output FILE          where to write the content (required; its
                             directory must exist). "-" streams the content
                             to standard output in order as pieces arrive
                             (a --digest mismatch is then reported at the
                             end, exit 4, after the bytes were written)
  -u, --url URL              the URL, instead of the positional argument
      --digest ALGO:HEX      expected digest of the content, e.g. sha256:3b7f...
  -H, --header 'K: V'        request header for the origin (repeatable)
      --filter 'a&b'         query parameters left out of the task ID, so the
                             same object under other signatures is one task;
                             separate with & or , (repeatable)
      --tag TAG              tag the task (different tags are different tasks)
      --application NAME     the calling application (part of the task ID)
      --timeout DURATION     give up after this long, e.g. 30m, 2h, 90 (seconds);
                             0 means never (default 2h)
      --rate-limit RATE      bytes per second for this download, e.g. 100M,
                             512K, 1.5GiB, 1048576; K/M/G/T are powers of 1024
                             with or without "iB"/"B"; 0 means no limit
                             (alias --ratelimit)
      --disable-back-source  never fetch from the origin directly: fail when
                             the daemon cannot serve the download
      --priority LEVEL       LEVEL0..LEVEL6 (Dragonfly's levels): LEVEL1 the
                             download is refused; LEVEL2 a first download
                             may come from peers only, never the origin;
                             LEVEL3 this peer fetches a first download from
                             the origin itself instead of a seed peer;
                             LEVEL0 and LEVEL4-6 (default) a seed peer does
      --recursive            URL is a directory: an HTTP directory listing
                             (nginx/Apache autoindex) or an s3:// prefix;
                             every file below it is downloaded, each its own
                             task, into the directory -O
      --include GLOB         with --recursive (and oci://): only files whose
                             relative path or name matches (repeatable)
      --exclude GLOB         skip files whose relative path or name matches
                             (repeatable; wins over --include)
      --parallel N           files fetched at once by --recursive and oci://
                             (default 4, at most 64)
      --platform OS/ARCH     oci:// from an index: the platform's manifest
                             (default linux/amd64)
      --s3-path-style        address buckets as ENDPOINT/BUCKET/KEY (most
                             S3-compatible servers); also AWS_S3_FORCE_PATH_STYLE
      --sock PATH            the daemon's unix socket (alias --daemon-sock;
                             default ` + client.DefaultSock + `)
      --direct               skip the daemon and download from the origin
      --no-progress          no progress bar
  -q, --quiet                print errors only
      --version              print the version and exit
  -h, --help                 print this help and exit

Progress: a bar on stderr when stderr is a terminal; otherwise one summary
line at the end (none with -q).

Exit codes:
  0    success
  1    download failed
  2    usage error or invalid argument
  3    not found at the origin (404/410)
  4    digest mismatch
  5    timeout (--timeout)
  6    daemon unavailable and --disable-back-source set
  7    the origin refused the credentials (HTTP 401/403, S3 AccessDenied,
       SignatureDoesNotMatch, no credentials for a private bucket)

With --recursive and oci://, a summary lists the files that failed; the
exit code is the one they all share, else 1.
  130  interrupted (Ctrl-C / SIGTERM)
`

// options is the parsed command line.
type options struct {
	url               string
	output            string // absolute after validate
	digest            string
	header            http.Header
	filter            []string
	tag               string
	application       string
	timeout           time.Duration
	rateLimit         int64
	disableBackSource bool
	s3PathStyle       bool
	priority          int32
	recursive         bool
	include           []string
	exclude           []string
	parallel          int
	platform          string
	sock              string
	direct            bool
	noProgress        bool
	quiet             bool
	version           bool
	help              bool
}

// headerFlag collects -H values.
type headerFlag struct{ h http.Header }

func (f *headerFlag) String() string { return "" }

func (f *headerFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, ":")
	k = strings.TrimSpace(k)
	if !ok || !validToken(k) {
		return fmt.Errorf("want 'Name: value', got %q", v)
	}
	val = strings.TrimSpace(val)
	if strings.ContainsAny(val, "\r\n\x00") {
		return fmt.Errorf("header %s: value has a line break or NUL", k)
	}
	f.h.Add(k, val)
	return nil
}

// filterFlag collects --filter values split at & and ,.
type filterFlag struct{ list *[]string }

func (f filterFlag) String() string { return "" }

func (f filterFlag) Set(v string) error {
	for _, p := range strings.FieldsFunc(v, func(r rune) bool { return r == '&' || r == ',' }) {
		if p = strings.TrimSpace(p); p != "" {
			*f.list = append(*f.list, p)
		}
	}
	return nil
}

type rateFlag struct{ n *int64 }

func (f rateFlag) String() string { return "" }

func (f rateFlag) Set(v string) error {
	n, err := parseRate(v)
	if err != nil {
		return err
	}
	*f.n = n
	return nil
}

// parseArgs parses the command line. Flags may follow the URL: Go's flag
// package stops at the first non-flag argument, so parsing resumes after
// each one; after "--" everything is an argument.
func parseArgs(args []string) (*options, error) {
	o := &options{header: http.Header{}, timeout: defaultTimeout, sock: client.DefaultSock}
	fs := flag.NewFlagSet("dfget", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	for _, n := range []string{"O", "output"} {
		fs.StringVar(&o.output, n, "", "")
	}
	for _, n := range []string{"u", "url"} {
		fs.StringVar(&o.url, n, "", "")
	}
	fs.StringVar(&o.digest, "digest", "", "")
	hf := &headerFlag{o.header}
	fs.Var(hf, "H", "")
	fs.Var(hf, "header", "")
	fs.Var(filterFlag{&o.filter}, "filter", "")
	fs.StringVar(&o.tag, "tag", "", "")
	fs.StringVar(&o.application, "application", "", "")
	fs.Var(cli.Duration{D: &o.timeout}, "timeout", "")
	fs.Var(rateFlag{&o.rateLimit}, "rate-limit", "")
	fs.Var(rateFlag{&o.rateLimit}, "ratelimit", "")
	fs.BoolVar(&o.disableBackSource, "disable-back-source", false, "")
	fs.BoolVar(&o.s3PathStyle, "s3-path-style", false, "")
	fs.Var(priorityFlag{&o.priority}, "priority", "")
	fs.BoolVar(&o.recursive, "recursive", false, "")
	fs.Var(listFlag{&o.include}, "include", "")
	fs.Var(listFlag{&o.exclude}, "exclude", "")
	fs.IntVar(&o.parallel, "parallel", defaultParallel, "")
	fs.StringVar(&o.platform, "platform", "", "")
	fs.StringVar(&o.sock, "sock", client.DefaultSock, "")
	fs.StringVar(&o.sock, "daemon-sock", client.DefaultSock, "")
	fs.BoolVar(&o.direct, "direct", false, "")
	fs.BoolVar(&o.noProgress, "no-progress", false, "")
	fs.BoolVar(&o.quiet, "q", false, "")
	fs.BoolVar(&o.quiet, "quiet", false, "")
	fs.BoolVar(&o.version, "version", false, "")
	fs.BoolVar(&o.help, "h", false, "")
	fs.BoolVar(&o.help, "help", false, "")

	positional, err := cli.ParseInterleaved(fs, args)
	if err != nil {
		return nil, err
	}
	if o.help || o.version {
		return o, nil
	}
	switch {
	case len(positional) > 1:
		return nil, fmt.Errorf("one URL expected, got %d: %s", len(positional), strings.Join(positional, " "))
	case len(positional) == 1 && o.url != "" && o.url != positional[0]:
		return nil, errors.New("URL given both as an argument and with --url")
	case len(positional) == 1:
		o.url = positional[0]
	}
	return o, nil
}

// validToken reports whether s is an HTTP token (RFC 9110), as header names must be.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
		if !ok {
			return false
		}
	}
	return true
}

// validate checks what can be checked before any I/O beyond stat.
func (o *options) validate() error {
	if o.url == "" {
		return errors.New("no URL given")
	}
	if isOCI(o.url) {
		return o.validateOCI()
	}
	if o.recursive {
		return o.validateRecursive()
	}
	if err := validateURL(o.url); err != nil {
		return err
	}
	if o.output == "" {
		return errors.New("no output file given (-O FILE)")
	}
	if o.digest != "" {
		if _, _, err := core.ParseDigest(o.digest); err != nil {
			return err
		}
	}
	if o.direct && o.disableBackSource {
		return errors.New("--direct and --disable-back-source exclude each other")
	}
	if o.sock == "" {
		return errors.New("--sock is empty")
	}
	if o.output == "-" {
		return nil // standard output
	}
	out, err := filepath.Abs(o.output)
	if err != nil {
		return fmt.Errorf("output %s: %w", o.output, err)
	}
	if strings.HasSuffix(o.output, string(filepath.Separator)) {
		return fmt.Errorf("output %s: is a directory, want a file path", o.output)
	}
	if st, err := os.Stat(out); err == nil && st.IsDir() {
		return fmt.Errorf("output %s: is a directory, want a file path", out)
	}
	dir := filepath.Dir(out)
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("output directory %s: not a directory", dir)
	}
	o.output = out
	return nil
}

func validateURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("URL %q: %w", raw, err)
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
		if u.Host == "" {
			return fmt.Errorf("URL %q: no host", raw)
		}
	case "file":
		if u.Opaque != "" || !filepath.IsAbs(u.Path) || (u.Host != "" && u.Host != "localhost") {
			return fmt.Errorf("URL %q: want file:///absolute/path", raw)
		}
	case "s3":
		if u.Host == "" || u.User != nil {
			return fmt.Errorf("URL %q: want s3://bucket/key", raw)
		}
	case "":
		return fmt.Errorf("URL %q: no scheme (want http, https, s3 or file)", raw)
	default:
		return fmt.Errorf("URL %q: unsupported scheme %q (want http, https, s3 or file)", raw, u.Scheme)
	}
	return nil
}

// parseRate parses a rate in bytes per second: a number with an optional
// unit K, M, G or T (powers of 1024), with or without "iB" or "B", and an
// optional "/s". "" and "0" mean no limit.
func parseRate(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "/s")
	if t == "" {
		return 0, nil
	}
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
		"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
		"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
		"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
	}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("rate %q: unknown unit %q (want K, M, G or T, optionally with iB)", s, unit)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" {
		return 0, fmt.Errorf("rate %q: want a number of bytes per second such as 100M", s)
	}
	v := f * mult
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("rate %q: too large", s)
	}
	if v > 0 && v < 1 {
		return 1, nil
	}
	return int64(v), nil
}

// priorityFlag parses Dragonfly's priority levels: LEVEL0..LEVEL6 (any case)
// or 0..6.
type priorityFlag struct{ p *int32 }

func (f priorityFlag) String() string { return "" }

func (f priorityFlag) Set(v string) error {
	t := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(v)), "LEVEL")
	n, err := strconv.Atoi(t)
	if err != nil || n < 0 || n > 6 {
		return fmt.Errorf("priority %q: want LEVEL0..LEVEL6", v)
	}
	*f.p = int32(n)
	return nil
}

// listFlag collects repeatable string values.
type listFlag struct{ list *[]string }

func (f listFlag) String() string { return "" }

func (f listFlag) Set(v string) error {
	*f.list = append(*f.list, v)
	return nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/damselfly-io/damselfly/internal/progress"
	"github.com/damselfly-io/damselfly/source"
)

// defaultParallel is how many files of a recursive download are fetched at
// once unless --parallel says otherwise.
const defaultParallel = 4

// validateRecursive checks a --recursive command line: the URL names a
// directory (an HTTP listing or an S3 prefix) and -O a directory.
func (o *options) validateRecursive() error {
	u, err := url.Parse(o.url)
	if err != nil {
		return fmt.Errorf("URL %q: %w", o.url, err)
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https", "s3":
		if u.Host == "" {
			return fmt.Errorf("URL %q: no host", o.url)
		}
	default:
		return fmt.Errorf("URL %q: --recursive takes an http(s) directory listing or an s3:// prefix", o.url)
	}
	switch {
	case o.output == "":
		return errors.New("no output directory given (-O DIR)")
	case o.output == "-":
		return errors.New("--recursive writes files: -O - is not possible")
	case o.digest != "":
		return errors.New("--digest names one content; it does not go with --recursive")
	case o.parallel < 1 || o.parallel > 64:
		return fmt.Errorf("--parallel %d: want 1..64", o.parallel)
	case o.direct && o.disableBackSource:
		return errors.New("--direct and --disable-back-source exclude each other")
	}
	for _, g := range append(append([]string{}, o.include...), o.exclude...) {
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("glob %q: %w", g, err)
		}
	}
	out, err := filepath.Abs(o.output)
	if err != nil {
		return fmt.Errorf("output %s: %w", o.output, err)
	}
	if st, err := os.Stat(out); err == nil && !st.IsDir() {
		return fmt.Errorf("output %s: not a directory", out)
	} else if err != nil {
		if st, perr := os.Stat(filepath.Dir(out)); perr != nil || !st.IsDir() {
			return fmt.Errorf("output %s: its parent directory does not exist", out)
		}
	}
	o.output = out
	return nil
}

// selected reports whether a file's relative path passes --include and
// --exclude. A glob matches the whole relative path or the file's base
// name; with includes given, a file must match one; excludes always win.
func (o *options) selected(rel string) bool {
	match := func(globs []string) bool {
		for _, g := range globs {
			if ok, _ := path.Match(g, rel); ok {
				return true
			}
			if ok, _ := path.Match(g, path.Base(rel)); ok {
				return true
			}
		}
		return false
	}
	if len(o.include) > 0 && !match(o.include) {
		return false
	}
	return !match(o.exclude)
}

// list finds the files under the URL: an S3 prefix's objects or an HTTP
// directory listing's links.
func (o *options) list(ctx context.Context) ([]source.Entry, error) {
	reg, err := source.New(source.DefaultConfig())
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(o.url)
	if !strings.EqualFold(u.Scheme, "s3") {
		h, _ := reg.Lookup("http")
		return h.(*source.HTTP).ListDir(ctx, o.url, o.header)
	}
	obj, err := source.ParseS3URL(o.url)
	if err != nil {
		return nil, err
	}
	prefix := obj.Key
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	s, _ := reg.Lookup("s3")
	objs, err := s.(*source.S3).List(ctx, source.Request{URL: source.S3Object{Bucket: obj.Bucket, Key: prefix}.URL(), Header: o.header}, source.MaxListEntries+1)
	if err != nil {
		return nil, err
	}
	if len(objs) > source.MaxListEntries {
		return nil, fmt.Errorf("list %s: more than %d objects", o.url, source.MaxListEntries)
	}
	out := make([]source.Entry, 0, len(objs))
	for _, ob := range objs {
		out = append(out, source.Entry{URL: source.S3Object{Bucket: obj.Bucket, Key: ob.Key}.URL(), Path: strings.TrimPrefix(ob.Key, prefix), Size: ob.Size})
	}
	return out, nil
}

// fileResult is how one file of a recursive download went.
type fileResult struct {
	entry source.Entry
	bytes int64
	err   error
	code  int
}

// setBar is one progress bar for the whole set: the sum of every file's
// progress over the sum of their sizes (when the listing gave them all).
type setBar struct {
	mu    sync.Mutex
	bar   *bar
	done  []int64
	total int64
}

func (s *setBar) update(i int, done int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.done[i] = done
	var sum int64
	for _, d := range s.done {
		sum += d
	}
	s.bar.Update(sum, s.total)
}

// runRecursive downloads every selected file under o.url into o.output,
// o.parallel at a time, each file its own task, and prints a summary. It
// returns the exit code: 0 when every file arrived, otherwise the code all
// failures share, or 1.
func runRecursive(ctx context.Context, o *options, stderr io.Writer) int {
	start := time.Now()
	entries, err := o.list(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "dfget: list %s: %v\n", redactURL(o.url), err)
		return exitCode(ctx, err, o.disableBackSource)
	}
	return o.runSet(ctx, entries, start, stderr)
}

// runSet downloads entries into o.output (the recursive mode's and an OCI
// artifact's files), o.parallel at a time, and prints a summary.
func (o *options) runSet(ctx context.Context, entries []source.Entry, start time.Time, stderr io.Writer) int {
	var picked []source.Entry
	skipped := 0
	for _, e := range entries {
		if !source.SafeRelPath(e.Path) {
			skipped++
			continue
		}
		if o.selected(e.Path) {
			picked = append(picked, e)
		}
	}
	if skipped > 0 && !o.quiet {
		fmt.Fprintf(stderr, "dfget: skipped %d entries whose names would leave %s\n", skipped, o.output)
	}
	if err := os.MkdirAll(o.output, 0o755); err != nil {
		fmt.Fprintf(stderr, "dfget: create %s: %v\n", o.output, err)
		return exitFailed
	}
	sb := &setBar{bar: &bar{}, done: make([]int64, len(picked)), total: 0}
	for _, e := range picked {
		if e.Size < 0 {
			sb.total = -1
			break
		}
		sb.total += e.Size
	}
	tty := isTerminal(stderr) && !o.quiet && !o.noProgress
	if tty && len(picked) > 0 {
		sb.bar = progress.New(ctx, stderr, fmt.Sprintf("%d files", len(picked)))
	}
	results := make([]fileResult, len(picked))
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(o.parallel, max(len(picked), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				results[i] = o.fetchOne(ctx, picked[i], func(done, _ int64) { sb.update(i, done) })
			}
		}()
	}
	for i := range picked {
		if ctx.Err() != nil {
			results[i] = fileResult{entry: picked[i], err: ctx.Err(), code: exitCode(ctx, ctx.Err(), o.disableBackSource)}
			continue
		}
		work <- i
	}
	close(work)
	wg.Wait()

	var failed []fileResult
	var total int64
	for _, r := range results {
		if r.err != nil {
			failed = append(failed, r)
			continue
		}
		total += r.bytes
	}
	if len(failed) == 0 {
		sb.bar.Update(total, total) // the last updates may have been throttled
	}
	sb.bar.Finish(len(failed) == 0)
	if !o.quiet || len(failed) > 0 {
		fmt.Fprintf(stderr, "dfget: downloaded %d of %d files (%s) from %s to %s in %s\n", len(picked)-len(failed), len(picked),
			size(total), redactURL(o.url), o.output, time.Since(start).Round(time.Millisecond))
	}
	if len(failed) == 0 {
		return exitOK
	}
	fmt.Fprintf(stderr, "dfget: %d files failed:\n", len(failed))
	code := failed[0].code
	for i, r := range failed {
		if r.code != code {
			code = exitFailed
		}
		if i < 50 {
			fmt.Fprintf(stderr, "  %s: %v\n", r.entry.Path, r.err)
		}
	}
	if len(failed) > 50 {
		fmt.Fprintf(stderr, "  … and %d more\n", len(failed)-50)
	}
	return code
}

// fetchOne downloads one file of the set like a single dfget would.
func (o *options) fetchOne(ctx context.Context, e source.Entry, onProgress func(done, total int64)) fileResult {
	out := filepath.Join(o.output, filepath.FromSlash(e.Path))
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fileResult{entry: e, err: err, code: exitFailed}
	}
	sub := *o
	sub.url, sub.output, sub.recursive, sub.digest = e.URL, out, false, e.Digest
	sub.quiet, sub.noProgress = true, true
	d := &downloader{opts: &sub, stdout: io.Discard, stderr: io.Discard, onProgress: onProgress}
	res, err := d.download(ctx)
	if err != nil {
		return fileResult{entry: e, err: err, code: exitCode(ctx, err, o.disableBackSource)}
	}
	return fileResult{entry: e, bytes: res.bytes}
}

package main

import (
	"context"
	"io"
	"path/filepath"

	"github.com/damselfly-io/damselfly/internal/progress"
)

func isTerminal(w io.Writer) bool { return progress.IsTerminal(w) }

// bar is the shared progress bar (internal/progress).
type bar = progress.Bar

// newBar returns a live bar when stderr is a terminal and progress is
// wanted; otherwise a bar whose methods do nothing.
func (d *downloader) newBar(ctx context.Context) *bar {
	if !d.tty || d.opts.quiet || d.opts.noProgress {
		return &bar{}
	}
	d.barShown = true
	return progress.New(ctx, d.stderr, filepath.Base(d.opts.output))
}

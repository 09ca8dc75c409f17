package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/progress"
)

// runExport asks the daemon to write the entry to o.file, or to stream it
// when o.file is "-".
func runExport(ctx context.Context, c *client.Client, o *options, stdout, stderr io.Writer) error {
	req := &daemonv1.ExportCacheRequest{
		Id: o.id, Tag: o.tag, Output: o.file, LocalOnly: o.local,
	}
	stream := o.file == "-"
	if stream {
		req.Output, req.Stream = "", true
	}
	bar := &progress.Bar{}
	barShown := progress.IsTerminal(stderr) && !o.quiet && !o.noProgress
	if barShown {
		name := filepath.Base(o.file)
		if stream {
			name = o.id
		}
		bar = progress.New(ctx, stderr, name)
	}
	start := time.Now()
	var written int64
	var werr error
	final, err := c.ExportCache(ctx, req, func(p *daemonv1.DownloadProgress) {
		if stream && len(p.GetData()) > 0 && werr == nil {
			if p.GetOffset() != written {
				werr = fmt.Errorf("daemon sent bytes at %d, want %d", p.GetOffset(), written)
				return
			}
			n, err := stdout.Write(p.GetData())
			written += int64(n)
			if err != nil {
				werr = fmt.Errorf("write standard output: %w", err)
			}
		}
		bar.Update(p.GetCompletedLength(), p.GetContentLength())
	})
	if err == nil && werr != nil {
		err = werr
	}
	if err == nil && stream && written != final.GetContentLength() {
		err = fmt.Errorf("daemon streamed %d of %d bytes: %w", written, final.GetContentLength(), core.ErrUnavailable)
	}
	bar.Finish(err == nil)
	if err != nil {
		return err
	}
	if !o.quiet && !barShown {
		how := "from the swarm"
		if final.GetFromCache() {
			how = "from this node's cache"
		}
		el := time.Since(start)
		fmt.Fprintf(stderr, "dfcache: exported %q to %s: %s in %s, %s\n", o.id, o.file, progress.Size(final.GetContentLength()), el.Round(time.Millisecond), how)
	}
	return nil
}

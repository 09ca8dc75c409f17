package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/internal/progress"
)

func absPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("path %s: %w", p, err)
	}
	return abs, nil
}

// runImport asks the daemon to import o.file. The file is opened here, with
// our own rights, and the daemon reads it through that descriptor.
func runImport(ctx context.Context, c *client.Client, o *options, stderr io.Writer) error {
	st, err := os.Stat(o.file)
	if err != nil {
		return fmt.Errorf("import %s: %w", o.file, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("import %s: not a regular file", o.file)
	}
	resp, err := c.ImportCache(ctx, &daemonv1.ImportCacheRequest{Id: o.id, Tag: o.tag, Path: o.file, TtlSeconds: int64(o.ttl / time.Second)})
	if err != nil {
		return err
	}
	if !o.quiet {
		fmt.Fprintf(stderr, "dfcache: imported %s (%s) as %q%s, task %s\n", o.file, progress.Size(resp.GetContentLength()), o.id, tagNote(o.tag), resp.GetTaskId())
	}
	return nil
}

func tagNote(tag string) string {
	if tag == "" {
		return ""
	}
	return fmt.Sprintf(" tag %q", tag)
}

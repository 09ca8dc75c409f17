package main

import (
	"context"
	"fmt"
	"io"

	"github.com/damselfly-io/damselfly/client"
)

// runDelete removes the entry from the local cache.
func runDelete(ctx context.Context, c *client.Client, o *options, stderr io.Writer) error {
	r, err := c.DeleteCache(ctx, o.id, o.tag)
	if err != nil {
		return err
	}
	if !o.quiet {
		fmt.Fprintf(stderr, "dfcache: deleted %q%s (task %s) from this node's cache\n", o.id, tagNote(o.tag), r.GetTaskId())
	}
	return nil
}

package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/internal/progress"
)

// runStat prints what the local cache holds of the entry, one "key: value"
// per line (stable keys, for scripts).
func runStat(ctx context.Context, c *client.Client, o *options, stdout io.Writer) error {
	r, err := c.StatCache(ctx, o.id, o.tag)
	if err != nil {
		return err
	}
	state := "partial"
	if r.GetComplete() {
		state = "complete"
	}
	ttl := "default"
	if s := r.GetTtlSeconds(); s > 0 {
		ttl = (time.Duration(s) * time.Second).String()
	}
	fmt.Fprintf(stdout, "id: %s\ntag: %s\ntask_id: %s\nstate: %s\nsize: %d (%s)\npiece_size: %d\npieces: %d/%d\nttl: %s\n",
		o.id, o.tag, r.GetTaskId(), state, r.GetContentLength(), progress.Size(max(r.GetContentLength(), 0)),
		r.GetPieceSize(), r.GetPiecesDone(), r.GetPieceCount(), ttl)
	return nil
}

package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"testing"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/fetch"
	"github.com/damselfly-io/damselfly/daemon/piece"
)

// A transfer's error reaches the download core as the kind its rules act
// on: a stall is a stalled parent, a digest mismatch a lying one, a full
// disk nobody's fault but ours.
func TestFailureKind(t *testing.T) {
	for err, want := range map[error]fetch.Kind{
		fmt.Errorf("fetch piece 1 from x: no progress for 3s: %w", piece.ErrStalled): fetch.KindTimeout,
		fmt.Errorf("piece 1 from x: %w", piece.ErrCorrupt):                           fetch.KindCorrupt,
		fmt.Errorf("fetch piece 1 from x: %w", core.ErrNotFound):                     fetch.KindNotFound,
		fmt.Errorf("write piece: %w", core.ErrNoSpace):                               fetch.KindNoSpace,
		fmt.Errorf("fetch piece 1 from x: %w", context.Canceled):                     fetch.KindError,
		errors.New("status 500"):                                                     fetch.KindError,
		fmt.Errorf("after 100 bytes: %w", io.ErrUnexpectedEOF):                       fetch.KindConnLost,
		fmt.Errorf("dial: %w", syscall.ECONNREFUSED):                                 fetch.KindConnLost,
	} {
		if got := failureKind(err); got != want {
			t.Errorf("%v: %v, want %v", err, got, want)
		}
	}
}

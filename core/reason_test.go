package core

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"testing"
)

type timeoutErr struct{}

func (timeoutErr) Error() string { return "i/o timeout" }
func (timeoutErr) Timeout() bool { return true }

func TestFailureReason(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("task x: fetch: %w", err) }
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{wrap(ErrNotFound), ReasonNotFound},
		{wrap(ErrDigestMismatch), ReasonDigestMismatch},
		{wrap(ErrOrigin), ReasonOriginError},
		{wrap(ErrNoSpace), ReasonNoSpace},
		{wrap(ErrUnavailable), ReasonP2PUnavailable},
		{wrap(ErrInvalid), ReasonInvalid},
		{wrap(context.Canceled), ReasonCanceled},
		{wrap(context.DeadlineExceeded), ReasonTimeout},
		{wrap(&net.OpError{Op: "read", Err: timeoutErr{}}), ReasonTimeout},
		{wrap(os.ErrDeadlineExceeded), ReasonTimeout},
		{wrap(errors.New("disk on fire")), ReasonOther},
		// A canceled transfer that the origin client also called an origin
		// error is a cancellation, not the origin's fault.
		{fmt.Errorf("read: %w: %w", ErrOrigin, context.Canceled), ReasonCanceled},
		// A digest mismatch found while the origin misbehaved is still a mismatch.
		{fmt.Errorf("%w: %w", ErrDigestMismatch, ErrOrigin), ReasonDigestMismatch},
	} {
		got := FailureReason(c.err)
		if got != c.want {
			t.Errorf("FailureReason(%v) = %q, want %q", c.err, got, c.want)
		}
		if got != "" && !slices.Contains(Reasons, got) {
			t.Errorf("FailureReason(%v) = %q, not in Reasons", c.err, got)
		}
	}
}

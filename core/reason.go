package core

import (
	"context"
	"errors"
)

// Failure reasons: the fixed set of values a metric's `reason` label takes
// for a failed download. Keep it small: every value is a time series.
const (
	ReasonNotFound       = "not_found"       // the origin (or the swarm, for dfcache entries) has no such content
	ReasonDigestMismatch = "digest_mismatch" // the content is not what the user's digest names
	ReasonOriginError    = "origin_error"    // the origin answered badly (5xx, short body, changed content)
	ReasonTimeout        = "timeout"         // a deadline passed
	ReasonNoSpace        = "no_space"        // the cache's file system is full
	ReasonCanceled       = "canceled"        // the request or the daemon was stopped
	ReasonP2PUnavailable = "p2p_unavailable" // the swarm could not serve it and back-to-source was not allowed
	ReasonInvalid        = "invalid"         // a bad request (URL, range, digest syntax)
	ReasonOther          = "other"           // anything else (local I/O errors and the like)
)

// Reasons lists every value FailureReason returns, for documentation and
// for pre-creating label values.
var Reasons = []string{ReasonNotFound, ReasonDigestMismatch, ReasonOriginError, ReasonTimeout, ReasonNoSpace,
	ReasonCanceled, ReasonP2PUnavailable, ReasonInvalid, ReasonOther}

// FailureReason maps an error to its failure reason: the one mapping from
// error kinds to the `reason` label. nil maps to "".
func FailureReason(err error) string {
	var te interface{ Timeout() bool }
	switch {
	case err == nil:
		return ""
	// A cause the user chose or the daemon's shutdown first: an error that
	// also carries an origin error came from cutting the transfer short.
	case errors.Is(err, context.Canceled):
		return ReasonCanceled
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &te) && te.Timeout():
		return ReasonTimeout
	case errors.Is(err, ErrNoSpace):
		return ReasonNoSpace
	case errors.Is(err, ErrDigestMismatch):
		return ReasonDigestMismatch
	case errors.Is(err, ErrNotFound):
		return ReasonNotFound
	case errors.Is(err, ErrInvalid):
		return ReasonInvalid
	case errors.Is(err, ErrUnavailable):
		return ReasonP2PUnavailable
	case errors.Is(err, ErrOrigin):
		return ReasonOriginError
	}
	return ReasonOther
}

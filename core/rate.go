package core

// Rate is a transfer rate averaged over recent samples: exponentially
// weighted moving averages of bytes and of time, kept apart and divided.
// Averaging per-sample rates instead lets many short samples (pieces that
// completed together) outweigh the long one that really carried the time.
type Rate struct {
	bytes, ns float64
}

// Observe folds in one sample of n bytes over ns nanoseconds with weight
// alpha in (0,1]; samples without bytes or time are ignored.
func (r *Rate) Observe(n int64, ns int64, alpha float64) {
	if n <= 0 || ns <= 0 {
		return
	}
	if r.ns == 0 {
		r.bytes, r.ns = float64(n), float64(ns)
		return
	}
	r.bytes = alpha*float64(n) + (1-alpha)*r.bytes
	r.ns = alpha*float64(ns) + (1-alpha)*r.ns
}

// BytesPerSec returns the rate, 0 before any sample.
func (r *Rate) BytesPerSec() float64 {
	if r.ns == 0 {
		return 0
	}
	return r.bytes / r.ns * 1e9
}

package scheduler

import (
	"errors"
	"fmt"
	"time"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/config"
	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/scheduler/policy"
)

// Config configures a Scheduler. Load order: DefaultConfig, then the YAML
// file, then flags, then Validate.
type Config struct {
	// Listen is the gRPC address the scheduler serves on (default ":8002").
	// Serve takes a listener; Listen is for the caller that opens it.
	Listen string `yaml:"listen"`
	// MaxParents is how many parents a peer is given at most (default 1;
	// see MaxChildren).
	MaxParents int `yaml:"max_parents"`
	// MaxChildren is how many children one peer serves in one task; 0 leaves
	// only the host's upload slots as the bound (default 1). With one parent
	// and one child per peer the swarm forms a pipeline below the seed: every
	// uplink carries the whole content once, at full rate, which is what the
	// lower bound needs when links are alike (docs/benchmarks.md).
	MaxChildren int `yaml:"max_children"`
	// CapacityAware sizes each host's children by its upload capacity over
	// the task's target rate when the capacity is known (declared by the
	// host, or measured slow), hangs slow uplinks at leaves, and keeps a
	// seed host to one child unless it declares more capacity (default
	// true; docs/architecture.md).
	CapacityAware bool `yaml:"capacity_aware"`
	// PacedShares: with CapacityAware, a receiver that finds no parent with
	// a full-rate slot gets several parents instead of a share of one full
	// uplink: each gives it part of its spare capacity (its uplink less what
	// its children are assigned at the task's fluid rate), and the child
	// paces its requests to that part (PeerInfo.share_bps) so the parent's
	// other children keep their rate (default true; docs/architecture.md).
	PacedShares bool `yaml:"paced_shares"`
	// PipelineParents makes a downloading peer a candidate parent before it
	// holds a piece: it relays pieces as they arrive (default true).
	PipelineParents bool `yaml:"pipeline_parents"`
	// SlowParentRatio: a parent whose host uploads at less than this share of
	// what it receives itself (its own parents' measured throughput; the
	// task's median parent throughput for peers fetching from the origin) is
	// replaced (default 0.3; 0 keeps slow parents).
	SlowParentRatio float64 `yaml:"slow_parent_ratio"`
	// SlowParentSamples is how many pieces a host must have served before it
	// can be called slow (default 8).
	SlowParentSamples int `yaml:"slow_parent_samples"`
	// MaxBackToSource bounds the peers of one task fetching from the origin at
	// once (default 1). A triggered seed peer counts too.
	MaxBackToSource int `yaml:"max_back_to_source"`
	// SeedTriggerTimeout: when a triggered seed peer has not registered for
	// the task by then, waiting peers may go back to source (default 10s).
	SeedTriggerTimeout Duration `yaml:"seed_trigger_timeout"`
	// WaitTimeout: a peer left waiting this long gets Fail, which tells it to
	// go to the origin itself if it may (default 30s).
	WaitTimeout Duration `yaml:"wait_timeout"`
	// RefreshInterval is how often peers with fewer than MaxParents parents
	// get new ones and waiting peers are re-evaluated (default 1s).
	RefreshInterval Duration `yaml:"refresh_interval"`
	// TaskTTL: a task (and a host) with no peers is forgotten after this
	// (default 2m).
	TaskTTL Duration `yaml:"task_ttl"`
	// GCInterval is how often forgotten tasks and hosts are collected
	// (default 30s).
	GCInterval Duration `yaml:"gc_interval"`
	// DefaultUploadSlots is used for a host that reports 0 upload slots
	// (default 16).
	DefaultUploadSlots int `yaml:"default_upload_slots"`
	// CandidateLimit bounds how many candidate parents are scored per
	// decision: a random sample of the task's peers with data is taken when
	// there are more, which keeps a decision cheap in a swarm of 10,000
	// (default 64).
	CandidateLimit int `yaml:"candidate_limit"`
	// SendBuffer is the number of messages queued per stream; a peer that
	// falls this far behind is dropped with ResourceExhausted rather than
	// slowing down everyone else (default 1024).
	SendBuffer int `yaml:"send_buffer"`
	// PieceTokenTTL is how long a piece token for a private task lives; the
	// scheduler renews it for every peer still in the task when half of it
	// is left (default 5m).
	PieceTokenTTL Duration `yaml:"piece_token_ttl"`
	// BanTTL is how long a host whose piece digests were proven wrong (a
	// fresh fetch from the origin disagreed with them) is neither a parent
	// nor a fetcher for any task, and how long the reports of a host whose
	// corruption claim was proven false are ignored (default 1h).
	BanTTL Duration `yaml:"ban_ttl"`
	// Weights weigh parent scoring, including the seed penalty (defaults in
	// policy.DefaultWeights).
	Weights policy.Weights `yaml:"weights"`
	// Metrics: dragonfly_compat also exposes Dragonfly's metric names.
	Metrics obs.MetricsConfig `yaml:"metrics"`
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Listen:             ":8002",
		MaxParents:         1,
		MaxChildren:        1,
		PipelineParents:    true,
		CapacityAware:      true,
		PacedShares:        true,
		SlowParentRatio:    0.3,
		SlowParentSamples:  8,
		MaxBackToSource:    1,
		SeedTriggerTimeout: Duration(10 * time.Second),
		WaitTimeout:        Duration(30 * time.Second),
		RefreshInterval:    Duration(time.Second),
		TaskTTL:            Duration(2 * time.Minute),
		GCInterval:         Duration(30 * time.Second),
		DefaultUploadSlots: 16,
		CandidateLimit:     64,
		SendBuffer:         1024,
		PieceTokenTTL:      Duration(5 * time.Minute),
		BanTTL:             Duration(time.Hour),
		Weights:            policy.DefaultWeights(),
	}
}

// Validate reports every invalid field at once, each wrapping core.ErrInvalid.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("scheduler config: "+format+": %w", append(args, core.ErrInvalid)...))
	}
	if c.Listen == "" {
		bad("listen is empty")
	}
	if c.MaxParents < 1 {
		bad("max_parents %d < 1", c.MaxParents)
	}
	if c.SlowParentRatio < 0 || c.SlowParentRatio >= 1 {
		bad("slow_parent_ratio %v outside [0,1)", c.SlowParentRatio)
	}
	if c.SlowParentSamples < 1 {
		bad("slow_parent_samples %d < 1", c.SlowParentSamples)
	}
	if c.MaxChildren < 0 {
		bad("max_children %d < 0", c.MaxChildren)
	}
	if c.MaxBackToSource < 0 {
		bad("max_back_to_source %d < 0", c.MaxBackToSource)
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{
		{"seed_trigger_timeout", c.SeedTriggerTimeout},
		{"wait_timeout", c.WaitTimeout},
		{"refresh_interval", c.RefreshInterval},
		{"task_ttl", c.TaskTTL},
		{"gc_interval", c.GCInterval},
		{"piece_token_ttl", c.PieceTokenTTL},
		{"ban_ttl", c.BanTTL},
	} {
		if d.v <= 0 {
			bad("%s %s must be positive", d.name, d.v)
		}
	}
	if c.DefaultUploadSlots < 1 {
		bad("default_upload_slots %d < 1", c.DefaultUploadSlots)
	}
	if c.CandidateLimit < c.MaxParents {
		bad("candidate_limit %d < max_parents %d", c.CandidateLimit, c.MaxParents)
	}
	if c.SendBuffer < 1 {
		bad("send_buffer %d < 1", c.SendBuffer)
	}
	w := c.Weights
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"progress", w.Progress}, {"free_slots", w.FreeSlots}, {"success", w.Success},
		{"throughput", w.Throughput}, {"locality", w.Locality},
	} {
		if !(f.v >= 0) { // also rejects NaN
			bad("weights.%s %v < 0", f.name, f.v)
		}
	}
	if !(w.Progress+w.FreeSlots+w.Success+w.Throughput+w.Locality > 0) {
		bad("weights are all zero")
	}
	if !(w.SeedPenalty >= 0 && w.SeedPenalty <= 1) {
		bad("weights.seed_penalty %v outside [0,1]", w.SeedPenalty)
	}
	return errors.Join(errs...)
}

// Duration is the shared config duration: written in YAML as a Go duration
// string ("10s", "2m") rather than integer nanoseconds.
type Duration = config.Duration

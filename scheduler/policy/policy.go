// Package policy holds the scheduler's parent selection as pure functions:
// scoring one candidate parent for one child and picking the best k of many.
//
// It owns the scoring formula and its tie-breaking; it must not hold state,
// do I/O, log, or know about gRPC, tasks or locks. Everything it needs comes
// in through Candidate, Child and Weights, so the swarm benchmark can tune the
// weights and the unit benchmarks can measure it in isolation.
package policy

import (
	"math/rand/v2"
	"strings"
)

// CorruptFactor multiplies the score of a candidate whose host was reported
// to serve corrupt pieces: it stays selectable only when nothing else is.
const CorruptFactor = 0.01

// maxStackK is the largest k SelectParents serves without a heap scratch.
const maxStackK = 16

// Weights weigh the parts of a candidate's score. They are relative: only
// their ratios matter. The defaults are a starting point for the swarm
// benchmark, not the result of one.
type Weights struct {
	// Progress weighs how much of the content the candidate holds.
	Progress float64 `yaml:"progress"`
	// FreeSlots weighs the share of the candidate host's upload slots that
	// are free. It is what spreads children across parents: a parent that
	// already serves many children loses to an idle one.
	FreeSlots float64 `yaml:"free_slots"`
	// Success weighs the candidate host's observed upload success rate.
	Success float64 `yaml:"success"`
	// Throughput weighs the host's observed upload throughput relative to the
	// fastest candidate.
	Throughput float64 `yaml:"throughput"`
	// Locality weighs the shared IDC and location path with the child.
	Locality float64 `yaml:"locality"`
	// SeedPenalty multiplies a seed peer's score once any non-seed candidate
	// holds data: a seed's uplink is as scarce as anyone's, so peers should
	// trade with each other and use the seed as a source of last resort.
	SeedPenalty float64 `yaml:"seed_penalty"`
}

// DefaultWeights returns the default weights.
func DefaultWeights() Weights {
	return Weights{
		Progress:    0.25,
		FreeSlots:   0.4,
		Success:     0.1,
		Throughput:  0.15,
		Locality:    0.1,
		SeedPenalty: 0.5,
	}
}

// Candidate is one possible parent as seen by the scheduler.
type Candidate struct {
	// Progress is pieces held / total pieces in [0,1]; 1 when done; 0.5 for a
	// peer fetching from the origin while the total is unknown.
	Progress float64
	// FreeSlots is the free share of the host's upload slots in [0,1].
	FreeSlots float64
	// SuccessRate is the host's upload success rate; see SuccessRate.
	SuccessRate float64
	// Throughput is the host's upload throughput relative to the fastest
	// candidate, in [0,1]; see NormalizeThroughput.
	Throughput float64
	// IDC and Location are the host's locality labels; Location is a
	// "|"-separated path such as "region|zone|rack".
	IDC      string
	Location string
	// Seed marks a seed peer.
	Seed bool
	// Corrupt marks a host reported to have served corrupt pieces.
	Corrupt bool
}

// Child is the peer parents are chosen for.
type Child struct {
	IDC      string
	Location string
}

// SuccessRate returns the smoothed success rate (s+1)/(s+f+2): an unknown
// host starts at 0.5 and one failure does not condemn it.
func SuccessRate(successes, failures uint64) float64 {
	return float64(successes+1) / float64(successes+failures+2)
}

// NormalizeThroughput returns bps relative to fastest in [0,1]; 0 when
// fastest is 0 (no host has been measured yet).
func NormalizeThroughput(bps, fastest float64) float64 {
	if fastest <= 0 || bps <= 0 {
		return 0
	}
	if bps >= fastest {
		return 1
	}
	return bps / fastest
}

// Locality returns how close a candidate is to the child in [0,1]: half for
// the same (non-empty) IDC, half for the shared fraction of the location path.
func Locality(c Candidate, child Child) float64 {
	l := 0.0
	if c.IDC != "" && c.IDC == child.IDC {
		l += 0.5
	}
	return l + 0.5*sharedPrefix(c.Location, child.Location)
}

// sharedPrefix returns the count of leading equal "|"-separated elements of a
// and b divided by the longer path's element count, without allocating.
func sharedPrefix(a, b string) float64 {
	if a == "" || b == "" {
		return 0
	}
	na, nb := strings.Count(a, "|")+1, strings.Count(b, "|")+1
	shared := 0
	for {
		ea, ra, moreA := strings.Cut(a, "|")
		eb, rb, moreB := strings.Cut(b, "|")
		if ea != eb {
			break
		}
		shared++
		if !moreA || !moreB {
			break
		}
		a, b = ra, rb
	}
	return float64(shared) / float64(max(na, nb))
}

// Score returns the candidate's score for child, before the seed penalty
// (which depends on the other candidates and is applied by SelectParents).
// Higher is better; a corrupt-reported host is multiplied by CorruptFactor.
func Score(c Candidate, child Child, w Weights) float64 {
	s := w.Progress*clamp01(c.Progress) +
		w.FreeSlots*clamp01(c.FreeSlots) +
		w.Success*clamp01(c.SuccessRate) +
		w.Throughput*clamp01(c.Throughput) +
		w.Locality*Locality(c, child)
	if c.Corrupt {
		s *= CorruptFactor
	}
	return s
}

func clamp01(v float64) float64 {
	switch {
	case v < 0:
		return 0
	case v > 1:
		return 1
	default:
		return v // also passes NaN through as NaN; callers never build one
	}
}

// SelectParents returns the indices of the best k candidates for child, best
// first. Seeds are multiplied by w.SeedPenalty when any non-seed candidate
// holds data. Equal scores are ordered by a random key drawn from rnd (or the
// global source when rnd is nil), so no candidate wins ties by position.
// It allocates only the result for k <= 16.
func SelectParents(cands []Candidate, child Child, w Weights, k int, rnd *rand.Rand) []int {
	if k <= 0 || len(cands) == 0 {
		return nil
	}
	k = min(k, len(cands))

	peersHaveData := false
	for i := range cands {
		if !cands[i].Seed && cands[i].Progress > 0 {
			peersHaveData = true
			break
		}
	}

	// Top-k by insertion into small arrays: k is a handful and the candidate
	// list is bounded by the scheduler's candidate limit.
	var (
		stackIdx   [maxStackK]int
		stackScore [maxStackK]float64
		stackKey   [maxStackK]uint64
	)
	idx, score, key := stackIdx[:0], stackScore[:0], stackKey[:0]
	if k > maxStackK {
		idx, score, key = make([]int, 0, k), make([]float64, 0, k), make([]uint64, 0, k)
	}
	for i := range cands {
		s := Score(cands[i], child, w)
		if cands[i].Seed && peersHaveData {
			s *= w.SeedPenalty
		}
		var r uint64
		if rnd != nil {
			r = rnd.Uint64()
		} else {
			r = rand.Uint64()
		}
		if len(idx) == k && !better(s, r, score[k-1], key[k-1]) {
			continue
		}
		// Find the insertion point and shift the tail down.
		j := len(idx)
		if j < k {
			idx, score, key = append(idx, 0), append(score, 0), append(key, 0)
		} else {
			j = k - 1
		}
		for j > 0 && better(s, r, score[j-1], key[j-1]) {
			idx[j], score[j], key[j] = idx[j-1], score[j-1], key[j-1]
			j--
		}
		idx[j], score[j], key[j] = i, s, r
	}
	out := make([]int, len(idx))
	copy(out, idx)
	return out
}

// better orders by score, then by the random tie-break key.
func better(s1 float64, k1 uint64, s2 float64, k2 uint64) bool {
	if s1 != s2 {
		return s1 > s2
	}
	return k1 > k2
}

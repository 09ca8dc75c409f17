package policy

import (
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
)

func TestSuccessRate(t *testing.T) {
	cases := []struct {
		s, f uint64
		want float64
	}{
		{0, 0, 0.5},
		{1, 0, 2.0 / 3},
		{0, 1, 1.0 / 3},
		{98, 0, 0.99},
	}
	for _, c := range cases {
		if got := SuccessRate(c.s, c.f); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("SuccessRate(%d,%d)=%v want %v", c.s, c.f, got, c.want)
		}
	}
}

func TestNormalizeThroughput(t *testing.T) {
	cases := []struct{ bps, fastest, want float64 }{
		{0, 0, 0},
		{10, 0, 0},
		{5, 10, 0.5},
		{10, 10, 1},
		{20, 10, 1},
		{-1, 10, 0},
	}
	for _, c := range cases {
		if got := NormalizeThroughput(c.bps, c.fastest); got != c.want {
			t.Errorf("NormalizeThroughput(%v,%v)=%v want %v", c.bps, c.fastest, got, c.want)
		}
	}
}

func TestLocality(t *testing.T) {
	cases := []struct {
		name             string
		idc, loc         string
		childIDC, childL string
		want             float64
	}{
		{"nothing known", "", "", "", "", 0},
		{"empty idc never matches", "", "a|b", "", "c|d", 0},
		{"same idc only", "dc1", "", "dc1", "", 0.5},
		{"other idc", "dc1", "", "dc2", "", 0},
		{"full path", "", "r|z|k", "", "r|z|k", 0.5},
		{"two of three", "", "r|z|k1", "", "r|z|k2", 0.5 * 2 / 3},
		{"shorter path", "", "r|z", "", "r|z|k", 0.5 * 2 / 3},
		{"first differs", "", "r1|z|k", "", "r2|z|k", 0},
		{"idc and path", "dc", "r|z", "dc", "r|z", 1},
		{"single element", "", "r", "", "r", 0.5},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Locality(Candidate{IDC: c.idc, Location: c.loc}, Child{IDC: c.childIDC, Location: c.childL})
			if math.Abs(got-c.want) > 1e-12 {
				t.Fatalf("got %v want %v", got, c.want)
			}
		})
	}
}

func TestScore(t *testing.T) {
	w := Weights{Progress: 1, FreeSlots: 2, Success: 3, Throughput: 4, Locality: 5, SeedPenalty: 0.5}
	child := Child{IDC: "dc", Location: "r|z"}
	cases := []struct {
		name string
		c    Candidate
		want float64
	}{
		{"zero", Candidate{}, 0},
		{"progress", Candidate{Progress: 0.5}, 0.5},
		{"free slots", Candidate{FreeSlots: 1}, 2},
		{"success", Candidate{SuccessRate: 0.5}, 1.5},
		{"throughput", Candidate{Throughput: 0.25}, 1},
		{"locality", Candidate{IDC: "dc", Location: "r|z"}, 5},
		{"clamped", Candidate{Progress: 3, FreeSlots: -1}, 1},
		{"all", Candidate{Progress: 1, FreeSlots: 1, SuccessRate: 1, Throughput: 1, IDC: "dc", Location: "r|z"}, 15},
		{"corrupt", Candidate{Progress: 1, FreeSlots: 1, SuccessRate: 1, Throughput: 1, IDC: "dc", Location: "r|z", Corrupt: true}, 15 * CorruptFactor},
		// The seed penalty depends on the other candidates: Score leaves it out.
		{"seed", Candidate{Progress: 1, Seed: true}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Score(c.c, child, w); math.Abs(got-c.want) > 1e-12 {
				t.Fatalf("got %v want %v", got, c.want)
			}
		})
	}
}

func TestSelectParents(t *testing.T) {
	w := DefaultWeights()
	child := Child{}
	cases := []struct {
		name  string
		cands []Candidate
		k     int
		want  []int
	}{
		{"none", nil, 3, nil},
		{"k zero", []Candidate{{Progress: 1}}, 0, nil},
		{"best first", []Candidate{{Progress: 0.1}, {Progress: 0.9}, {Progress: 0.5}}, 2, []int{1, 2}},
		{"k larger than candidates", []Candidate{{Progress: 0.1}, {Progress: 0.9}}, 5, []int{1, 0}},
		{"free slots spread load", []Candidate{{Progress: 1, FreeSlots: 0.1}, {Progress: 1, FreeSlots: 0.9}}, 1, []int{1}},
		{
			"seed penalised when peers hold data",
			[]Candidate{{Progress: 1, FreeSlots: 1, Seed: true}, {Progress: 0.6, FreeSlots: 0.8}},
			1, []int{1},
		},
		{
			"seed wins when no peer holds data",
			[]Candidate{{Progress: 0, FreeSlots: 1}, {Progress: 1, FreeSlots: 1, Seed: true}},
			1, []int{1},
		},
		{
			"corrupt host only as last resort",
			[]Candidate{{Progress: 1, FreeSlots: 1, Corrupt: true}, {Progress: 0.1, FreeSlots: 0.1}},
			2, []int{1, 0},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := SelectParents(c.cands, child, w, c.k, rand.New(rand.NewPCG(1, 2)))
			if !slices.Equal(got, c.want) {
				t.Fatalf("got %v want %v", got, c.want)
			}
		})
	}
}

func TestSelectParentsSortedAndDistinct(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	w := DefaultWeights()
	for round := range 200 {
		n := 1 + rnd.IntN(80)
		cands := make([]Candidate, n)
		for i := range cands {
			cands[i] = Candidate{
				Progress:    float64(rnd.IntN(4)) / 4,
				FreeSlots:   float64(rnd.IntN(3)) / 2,
				SuccessRate: 0.5,
				Seed:        rnd.IntN(10) == 0,
			}
		}
		k := 1 + rnd.IntN(20)
		got := SelectParents(cands, Child{}, w, k, rnd)
		if len(got) != min(k, n) {
			t.Fatalf("round %d: %d results for k=%d n=%d", round, len(got), k, n)
		}
		seen := map[int]bool{}
		for _, i := range got {
			if seen[i] {
				t.Fatalf("round %d: index %d twice in %v", round, i, got)
			}
			seen[i] = true
		}
		// Every chosen candidate scores at least as well as every other one.
		eff := func(i int) float64 {
			s := Score(cands[i], Child{}, w)
			if cands[i].Seed && slices.ContainsFunc(cands, func(c Candidate) bool { return !c.Seed && c.Progress > 0 }) {
				s *= w.SeedPenalty
			}
			return s
		}
		for j := 1; j < len(got); j++ {
			if eff(got[j-1]) < eff(got[j]) {
				t.Fatalf("round %d: not best first: %v", round, got)
			}
		}
		worst := eff(got[len(got)-1])
		for i := range cands {
			if !seen[i] && eff(i) > worst {
				t.Fatalf("round %d: left out %d scoring %v > %v", round, i, eff(i), worst)
			}
		}
	}
}

// Kraken broke ties in a fixed order and every peer asked for the same thing;
// equal candidates must each win some of the time.
func TestSelectParentsBreaksTiesRandomly(t *testing.T) {
	cands := make([]Candidate, 8)
	for i := range cands {
		cands[i] = Candidate{Progress: 1, FreeSlots: 1}
	}
	rnd := rand.New(rand.NewPCG(5, 6))
	wins := make([]int, len(cands))
	for range 4000 {
		wins[SelectParents(cands, Child{}, DefaultWeights(), 1, rnd)[0]]++
	}
	for i, n := range wins {
		if n < 300 || n > 700 { // expected 500 each
			t.Fatalf("candidate %d won %d of 4000 ties: %v", i, n, wins)
		}
	}
	// The global source works too.
	if got := SelectParents(cands, Child{}, DefaultWeights(), 2, nil); len(got) != 2 {
		t.Fatalf("nil rnd: %v", got)
	}
}

func TestSelectParentsLargeK(t *testing.T) {
	cands := make([]Candidate, 40)
	for i := range cands {
		cands[i] = Candidate{Progress: float64(i) / 40}
	}
	got := SelectParents(cands, Child{}, DefaultWeights(), 30, rand.New(rand.NewPCG(1, 1)))
	for j, i := range got {
		if i != 39-j {
			t.Fatalf("got %v", got)
		}
	}
}

func TestSelectParentsAllocs(t *testing.T) {
	cands := benchCandidates(64)
	rnd := rand.New(rand.NewPCG(7, 8))
	child := Child{IDC: "dc1", Location: "r1|z1|k1"}
	w := DefaultWeights()
	allocs := testing.AllocsPerRun(200, func() {
		_ = SelectParents(cands, child, w, 4, rnd)
	})
	if allocs > 1 {
		t.Fatalf("SelectParents allocates %v times per call, want at most 1 (the result)", allocs)
	}
	allocs = testing.AllocsPerRun(200, func() {
		_ = Score(cands[3], child, w)
	})
	if allocs != 0 {
		t.Fatalf("Score allocates %v times per call", allocs)
	}
}

func benchCandidates(n int) []Candidate {
	rnd := rand.New(rand.NewPCG(9, 10))
	idcs := []string{"dc1", "dc2"}
	locs := []string{"r1|z1|k1", "r1|z1|k2", "r1|z2|k1", "r2|z1|k1"}
	cands := make([]Candidate, n)
	for i := range cands {
		cands[i] = Candidate{
			Progress:    rnd.Float64(),
			FreeSlots:   rnd.Float64(),
			SuccessRate: SuccessRate(uint64(rnd.IntN(100)), uint64(rnd.IntN(5))),
			Throughput:  rnd.Float64(),
			IDC:         idcs[rnd.IntN(len(idcs))],
			Location:    locs[rnd.IntN(len(locs))],
			Seed:        i%16 == 0,
		}
	}
	return cands
}

func BenchmarkSelectParents(b *testing.B) {
	for _, n := range []int{8, 64, 1024} {
		b.Run("candidates="+strconv.Itoa(n), func(b *testing.B) {
			cands := benchCandidates(n)
			rnd := rand.New(rand.NewPCG(11, 12))
			child := Child{IDC: "dc1", Location: "r1|z1|k1"}
			w := DefaultWeights()
			b.ReportAllocs()
			for b.Loop() {
				_ = SelectParents(cands, child, w, 4, rnd)
			}
		})
	}
}

func BenchmarkScore(b *testing.B) {
	cands := benchCandidates(64)
	child := Child{IDC: "dc1", Location: "r1|z1|k1"}
	w := DefaultWeights()
	b.ReportAllocs()
	var sink float64
	i := 0
	for b.Loop() {
		sink += Score(cands[i&63], child, w)
		i++
	}
	_ = sink
}

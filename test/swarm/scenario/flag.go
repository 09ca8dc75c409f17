package scenario

import "flag"

// RateVar defines a flag for a link rate in tc syntax (100mbit, 1gbit).
func RateVar(fs *flag.FlagSet, p *Rate, name, usage string) {
	fs.Var(rateFlag{p}, name, usage)
}

// SizeVar defines a flag for a byte count (128MiB, 4MB, 512).
func SizeVar(fs *flag.FlagSet, p *int64, name, usage string) {
	fs.Var(sizeFlag{p}, name, usage)
}

type rateFlag struct{ r *Rate }

func (f rateFlag) String() string {
	if f.r == nil || *f.r == 0 {
		return ""
	}
	return f.r.String()
}

func (f rateFlag) Set(s string) error {
	r, err := ParseRate(s)
	if err == nil {
		*f.r = r
	}
	return err
}

type sizeFlag struct{ n *int64 }

func (f sizeFlag) String() string {
	if f.n == nil {
		return ""
	}
	return FormatSize(*f.n)
}

func (f sizeFlag) Set(s string) error {
	n, err := ParseSize(s)
	if err == nil {
		*f.n = n
	}
	return err
}

// AddFlags defines on fs the flags both tools take for the spec's fields,
// with s's values as their defaults.
func (s *Spec) AddFlags(fs *flag.FlagSet) {
	fs.IntVar(&s.Hosts, "n", s.Hosts, "number of downloading peer hosts (N)")
	SizeVar(fs, &s.Size, "size", "file size F (e.g. 128MiB)")
	RateVar(fs, &s.Rate, "rate", "every peer's uplink (tc syntax, e.g. 100mbit)")
	RateVar(fs, &s.DownRate, "down-rate", "every peer's downlink (default: -rate)")
	RateVar(fs, &s.OriginRate, "origin-rate", "the origin host's uplink")
	RateVar(fs, &s.SeedRate, "seed-rate", "the seed peer host's uplink (default: -rate)")
	fs.StringVar(&s.Scenario, "scenario", s.Scenario, "uniform, mixed, racks, churn or spread")
	fs.Float64Var(&s.SlowFrac, "slow-frac", s.SlowFrac, "mixed: fraction of peers with slow uplinks")
	fs.Float64Var(&s.SlowFactor, "slow-factor", s.SlowFactor, "mixed: how many times slower their uplinks are")
	fs.BoolVar(&s.MixedDown, "mixed-down", s.MixedDown, "give -slow-frac of the peers downlinks -slow-factor times slower than -down-rate")
	RateVar(fs, &s.SpreadMin, "spread-min", "spread: lowest peer uplink")
	RateVar(fs, &s.SpreadMax, "spread-max", "spread: highest peer uplink")
	fs.Uint64Var(&s.SpreadSeed, "spread-seed", s.SpreadSeed, "spread: seed of the uplink draw (the same seed draws the same rates)")
	RateVar(fs, &s.InterRackRate, "inter-rack-rate", "racks: rate of the router's link into each rack (default: -rate)")
	fs.Float64Var(&s.ChurnFrac, "churn-frac", s.ChurnFrac, "churn: fraction of peers killed at -churn-at")
	fs.DurationVar(&s.ChurnAt, "churn-at", s.ChurnAt, "churn: when to kill them (default: T*/2)")
	fs.BoolVar(&s.SeedOnOrigin, "seed-on-origin", s.SeedOnOrigin, "run the seed peer on the origin's host, sharing its uplink")
	fs.BoolVar(&s.Declare, "declare", s.Declare, "every Damselfly daemon declares its link rates to the scheduler (upload_bps/download_bps) instead of the scheduler measuring them")
	fs.BoolVar(&s.NoLinkTest, "no-link-test", s.NoLinkTest, "every Damselfly daemon skips its link tests (--link-test=false): the scheduler knows a host that declares nothing only from its transfers")
}

#!/usr/bin/env python3
"""Runs the simulator over random settings, to find the swarms its fixed suite
(suite.sh) does not cover: N, the scenario and its parameters, link rates,
file size, the seed on the origin's host, declared or measured capacities,
and the join order are drawn from a seeded generator, so a sweep is repeated
exactly by its seed.

    test/sim/sweep.py NEW_SIM [--base BASE_SIM] [--seed S] [--count K]

With one binary it prints every configuration below the targets of the
robust-swarm issue (T*/T_median >= 0.85, T*/T_last >= 0.8, origin <= 1.05 F);
with --base, the configurations where the two binaries differ by more than
0.01 (base -> new) and the mean of each column. The origin is never faster
than the peers, and peers join within a tenth of T*: a faster origin or
joins spread over longer make the bound T* (which counts the origin's whole
uplink from t = 0) unreachable with the content sent once.
"""
import argparse
import json
import random
import subprocess


def draw(rng):
    n = rng.choice([8, 12, 16, 24, 32, 48])
    sc = rng.choice(["uniform", "mixed", "mixed", "spread", "spread", "churn"])
    rate = rng.choice([10, 25, 50, 100])
    size = rng.choice([32, 64, 128])
    a = ["-n", str(n), "-scenario", sc, "-rate", "%dmbit" % rate, "-size", "%dMiB" % size,
         "-payload-frac", "0.956", "-seed", str(rng.randint(1, 99)),
         "-origin-rate", "%dmbit" % rng.choice([rate, rate, rate // 2])]
    if rng.random() < 0.3:
        a.append("-seed-on-origin")
    if sc == "mixed":
        a += ["-slow-frac", str(rng.choice([0.125, 0.25, 0.25, 0.5])),
              "-slow-factor", str(rng.choice([4, 10, 10, 20]))]
        if rng.random() < 0.2:
            a.append("-mixed-down")
    elif sc == "spread":
        lo = rng.choice([0.1, 0.2, 0.5])
        a += ["-spread-min", "%dkbit" % int(rate * 1000 * lo), "-spread-max", "%dmbit" % rate,
              "-spread-seed", str(rng.randint(1, 99))]
    elif sc == "churn":
        a += ["-churn-frac", str(rng.choice([0.125, 0.25, 0.5]))]
    r = rng.random()
    if r < 0.4:
        a += ["-join-spacing", "%dms" % rng.choice([5, 10, 25])]
    elif r < 0.7:
        a.append("-shuffle-joins")
    if rng.random() < 0.3:
        a.append("-declare")
    return a


def run(sim, args):
    out = subprocess.run([sim] + args, capture_output=True, text=True, check=True).stdout
    d = json.loads(out.strip().splitlines()[-1])
    spacing = 0.0
    if "-join-spacing" in args:
        spacing = int(args[args.index("-join-spacing") + 1][:-2]) / 1000 * d["n"]
    return (d["t_star_s"] / d["t_median_s"], d["t_star_s"] / d["t_last_s"],
            d["origin_bytes_over_f"], spacing < 0.1 * d["t_star_s"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sim")
    ap.add_argument("--base")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=100)
    o = ap.parse_args()
    rng = random.Random(o.seed)
    sums, n = [0.0] * 4, 0
    for _ in range(o.count):
        args = draw(rng)
        new = run(o.sim, args)
        if not new[3]:
            continue  # joins spread over too much of T*
        n += 1
        cfg = " ".join(args)
        if not o.base:
            if new[0] < 0.85 or new[1] < 0.8 or new[2] > 1.05:
                print("%.3f %.3f %.2f  %s" % (new[0], new[1], new[2], cfg), flush=True)
            continue
        base = run(o.base, args)
        for i in range(2):
            sums[i] += base[i]
            sums[2 + i] += new[i]
        if any(abs(new[i] - base[i]) > 0.01 for i in range(2)) or abs(new[2] - base[2]) > 0.005:
            print("%.3f/%.3f/%.2f -> %.3f/%.3f/%.2f  %s" % (base[:3] + new[:3] + (cfg,)), flush=True)
    if o.base and n:
        print("%d configurations: T*/T_median %.3f -> %.3f, T*/T_last %.3f -> %.3f (means)"
              % (n, sums[0] / n, sums[2] / n, sums[1] / n, sums[3] / n))


if __name__ == "__main__":
    main()

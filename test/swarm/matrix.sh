#!/usr/bin/env bash
# Runs the robust-swarm benchmark matrix: for each run and each scenario
# (uniform, mixed, spread, churn, seed-on-origin, mixed-seed-on-origin, racks) one harness invocation
# with Damselfly and BitTorrent, then prints the medians as a markdown table.
# Scenarios alternate within a run so a drift of the machine spreads over all.
#
#   test/swarm/matrix.sh -n 16 -size 64MiB -rate 100mbit [-runs 3] [-scenarios "uniform mixed"] [-- extra harness flags]
#
# Needs root (the harness makes network namespaces). Results go to
# test/swarm/results/matrix-<timestamp>/ (one directory per invocation).
set -euo pipefail
cd "$(dirname "$0")/../.."

n=16 size=64MiB rate=100mbit runs=3 scenarios="uniform mixed spread churn seed-on-origin" extra=()
while [[ $# -gt 0 ]]; do
	case "$1" in
	-n) n=$2; shift 2 ;;
	-size) size=$2; shift 2 ;;
	-rate) rate=$2; shift 2 ;;
	-runs) runs=$2; shift 2 ;;
	-scenarios) scenarios=$2; shift 2 ;;
	--) shift; extra=("$@"); break ;;
	*) echo "matrix.sh: unknown flag $1" >&2; exit 2 ;;
	esac
done

go build -o bin/ ./cmd/damselfly ./cmd/dfget
./test/swarm/install-deps.sh
go build -o bin/swarm ./test/swarm/cmd/swarm
# cdf.png comes from bin/cdfplot (tools/cdfplot, its own Go module): without
# it the runs go on and only the chart is missing.
(cd tools/cdfplot && go build -o ../../bin/cdfplot .) || echo "${0##*/}: tools/cdfplot did not build: no cdf.png" >&2
# spread draws uplinks in [rate/5, rate]: 20–100 Mbit/s at 100mbit, 5–25 at 25mbit.
case "$rate" in
*gbit) spread_min="$(( ${rate%gbit} * 1000 / 5 ))mbit" ;;
*mbit) spread_min="$(( ${rate%mbit} * 1000 / 5 ))kbit" ;;
*) echo "matrix.sh: -rate must be in mbit or gbit, got $rate" >&2; exit 2 ;;
esac
top="test/swarm/results/matrix-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$top"
echo "matrix: n=$n size=$size rate=$rate runs=$runs scenarios=($scenarios) -> $top" >&2

for r in $(seq 1 "$runs"); do
	for s in $scenarios; do
		case "$s" in
		uniform) flags=(-scenario uniform) ;;
		mixed) flags=(-scenario mixed -slow-frac 0.25 -slow-factor 10) ;;
		spread) flags=(-scenario spread -spread-min "$spread_min" -spread-max "$rate") ;;
		churn) flags=(-scenario churn -churn-frac 0.25) ;;
		seed-on-origin) flags=(-scenario uniform -seed-on-origin) ;;
		mixed-seed-on-origin) flags=(-scenario mixed -slow-frac 0.25 -slow-factor 10 -seed-on-origin) ;;
		racks) flags=(-scenario racks) ;; # two racks, router links at -rate
		*) echo "matrix.sh: unknown scenario $s" >&2; exit 2 ;;
		esac
		out="$top/$s-$r"
		echo "== run $r/$runs: $s" >&2
		if ! ./bin/swarm -bin-dir bin -n "$n" -size "$size" -rate "$rate" -origin-rate "$rate" \
			-systems damselfly,bittorrent "${flags[@]}" "${extra[@]}" -out "$out" >"$out.log" 2>&1; then
			echo "matrix.sh: run $r $s failed, see $out.log" >&2
		fi
	done
done

python3 - "$top" $scenarios <<'PY'
import json, os, statistics, sys
top, scen = sys.argv[1], sys.argv[2:]
rows = []
for s in scen:
    res = {}
    cpu = []
    for d in sorted(os.listdir(top)):
        p = os.path.join(top, d, "results.json")
        # "<scenario>-<run>": the run number after the last dash, so
        # that mixed does not take mixed-seed-on-origin's runs.
        if d.rpartition("-")[0] != s or not os.path.exists(p):
            continue
        r = json.load(open(p))
        for sy in r["systems"]:
            res.setdefault(sy["name"], []).append(sy)
            if sy["name"] == "damselfly":
                cpu.append(sy.get("cpu_busy", 0))
    def med(name, key):
        v = [x[key] for x in res.get(name, []) if x.get("completed") == x.get("completed") and x.get(key) is not None]
        return (statistics.median(v), min(v), max(v), len(v)) if v else None
    def fmt(t):
        return "–" if t is None else f"{t[0]:.2f} ({t[1]:.2f}–{t[2]:.2f}, {t[3]})"
    rows.append(f"| {s} | {fmt(med('damselfly','efficiency_median'))} | {fmt(med('damselfly','efficiency_last'))} | "
                f"{fmt(med('bittorrent','efficiency_median'))} | {fmt(med('bittorrent','efficiency_last'))} | "
                f"{fmt(med('damselfly','origin_bytes_over_f'))} | {max(cpu)*100 if cpu else 0:.0f} % |")
print("| scenario | Damselfly T*/T_median | Damselfly T*/T_last | BitTorrent T*/T_median | BitTorrent T*/T_last | Damselfly origin host / F | max CPU busy (Damselfly) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
print("\n".join(rows))
PY

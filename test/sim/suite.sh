#!/usr/bin/env bash
# Runs the simulator's regression suite: small swarms (16, 32 and 200
# peers, 64 MiB, 25 Mbit/s links, origin at 25 Mbit/s) in every scenario,
# declared and not, with peers joining at once, in a random order, or one
# after another as on the harness (-join-spacing). Each row averages
# several seeds (the spread draws and the join orders); the simulator is
# deterministic, so two binaries compare row by row without noise.
#
#   test/sim/suite.sh NEW_SIM [BASE_SIM]
#
# Prints one markdown row per configuration: the mean T*/T_median and
# T*/T_last over its runs, the lowest T*/T_last and the highest origin
# bytes / F; with BASE_SIM, base -> new in each cell. Build a base binary
# from another commit with, e.g.:
#   git worktree add /tmp/base <commit> && (cd /tmp/base && go build -o /tmp/sim-base ./test/sim/cmd/sim)
# About 3 minutes per binary on 2 cores.
set -euo pipefail

new=${1:?usage: suite.sh NEW_SIM [BASE_SIM]}
base=${2:-}

# row BIN ARGS...: one line "med last minlast maxorig" over the runs.
row() {
	local bin=$1
	shift
	local out=""
	for v in "$@"; do
		# shellcheck disable=SC2086 # v holds several flags
		out+=$("$bin" $v -size 64MiB -rate 25mbit -origin-rate 25mbit 2>/dev/null | tail -1)$'\n'
	done
	printf '%s' "$out" | python3 -c '
import json, sys
rs = [json.loads(l) for l in sys.stdin if l.strip()]
m = [d["t_star_s"] / d["t_median_s"] for d in rs]
l = [d["t_star_s"] / d["t_last_s"] for d in rs]
o = [d["origin_bytes_over_f"] for d in rs]
print("%.2f %.2f %.2f %.2f" % (sum(m) / len(m), sum(l) / len(l), min(l), max(o)))'
}

# config LABEL ARGS...: prints the markdown row for one configuration.
config() {
	local label=$1
	shift
	local a b
	a=$(row "$new" "$@")
	if [[ -z $base ]]; then
		read -r m l ml mo <<<"$a"
		echo "| $label | $# | $m | $l | $ml | $mo |"
		return
	fi
	b=$(row "$base" "$@")
	read -r m l ml mo <<<"$a"
	read -r bm bl bml bmo <<<"$b"
	echo "| $label | $# | $bm → $m | $bl → $l | $bml → $ml | $bmo → $mo |"
}

seeds() { # seeds N FLAGS...: one run per seed (join order and spread draw)
	local n=$1
	shift
	for s in $(seq 1 "$n"); do echo "$* -seed $s -spread-seed $s"; done
}

runs() { mapfile -t R < <(seeds "$@"); }

echo "| configuration | runs | T*/T_median | T*/T_last | lowest T*/T_last | highest origin / F |"
echo "| --- | --- | --- | --- | --- | --- |"
runs 5 -n 16 -scenario spread -declare; config "spread, N = 16, declared, joined at once" "${R[@]}"
runs 5 -n 32 -scenario spread -declare; config "spread, N = 32, declared, joined at once" "${R[@]}"
runs 3 -n 16 -scenario spread -declare -shuffle-joins; config "spread, N = 16, declared, random order" "${R[@]}"
runs 6 -n 16 -scenario spread -declare -shuffle-joins -join-spacing 50ms; config "spread, N = 16, declared, 50 ms apart" "${R[@]}"
runs 6 -n 32 -scenario spread -declare -shuffle-joins -join-spacing 25ms; config "spread, N = 32, declared, 25 ms apart" "${R[@]}"
runs 3 -n 16 -scenario mixed -declare -shuffle-joins; config "mixed, N = 16, declared, random order" "${R[@]}"
runs 3 -n 32 -scenario mixed -declare -shuffle-joins; config "mixed, N = 32, declared, random order" "${R[@]}"
runs 6 -n 16 -scenario mixed -declare -shuffle-joins -join-spacing 50ms; config "mixed, N = 16, declared, 50 ms apart" "${R[@]}"
runs 6 -n 32 -scenario mixed -declare -shuffle-joins -join-spacing 25ms; config "mixed, N = 32, declared, 25 ms apart" "${R[@]}"
runs 6 -n 16 -scenario mixed -declare -seed-on-origin -shuffle-joins -join-spacing 50ms; config "mixed + seed on the origin's host, N = 16, declared, 50 ms apart" "${R[@]}"
runs 3 -n 16 -scenario spread -declare -seed-on-origin -shuffle-joins; config "spread + seed on the origin's host, N = 16, declared, random order" "${R[@]}"
config "uniform, N = 16 and 32, declared" "-n 16 -scenario uniform -declare" "-n 32 -scenario uniform -declare"
config "churn, N = 16 and 32, declared" "-n 16 -scenario churn -declare" "-n 32 -scenario churn -declare"
config "racks, N = 16 (2) and 32 (4), declared" "-n 16 -scenario racks -declare" "-n 32 -scenario racks -declare -racks 4"
runs 6 -n 16 -scenario racks -declare -shuffle-joins -join-spacing 50ms; config "racks, N = 16, declared, 50 ms apart" "${R[@]}"
runs 6 -n 16 -scenario churn -declare -shuffle-joins -join-spacing 50ms; config "churn, N = 16, declared, 50 ms apart" "${R[@]}"
runs 3 -n 16 -scenario mixed -shuffle-joins; config "mixed, N = 16, nothing declared, random order" "${R[@]}"
runs 6 -n 16 -scenario mixed -shuffle-joins -join-spacing 50ms; config "mixed, N = 16, nothing declared, 50 ms apart" "${R[@]}"
runs 5 -n 16 -scenario spread; config "spread, N = 16, nothing declared, joined at once" "${R[@]}"
runs 6 -n 16 -scenario spread -shuffle-joins -join-spacing 50ms; config "spread, N = 16, nothing declared, 50 ms apart" "${R[@]}"
config "uniform, N = 16 and 32, nothing declared" "-n 16 -scenario uniform" "-n 32 -scenario uniform"
runs 6 -n 16 -scenario uniform -shuffle-joins -join-spacing 50ms; config "uniform, N = 16, nothing declared, 50 ms apart" "${R[@]}"
config "churn, N = 16 and 32, nothing declared" "-n 16 -scenario churn" "-n 32 -scenario churn"
config "mixed, N = 200, declared" "-n 200 -scenario mixed -declare"
config "spread, N = 200, declared" "-n 200 -scenario spread -declare"

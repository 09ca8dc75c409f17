#!/usr/bin/env bash
# Validation of the simulator against the netns harness: for every N and
# scenario, run the harness (Damselfly only) and then the simulator on the
# harness's own results.json (same scenario, sizes, rates and host layout,
# links at the harness's payload share), and print the table of both.
#
#   test/sim/validate.sh                      # harness + simulator (root; takes long)
#   SIM_ONLY=1 OUT=dir test/sim/validate.sh   # simulator only, on harness runs already in dir
#
# Knobs (environment): NS ("8 16 32"), SCENARIOS ("uniform mixed churn"),
# SIZE (64MiB), RATE (100mbit), OUT (test/sim/results/validate-<time>),
# HARNESS_ARGS (extra harness flags), SIM_ARGS (extra simulator flags).
# The harness runs under flock /tmp/damselfly-netns.lock.
set -euo pipefail
cd "$(dirname "$0")/../.."

NS="${NS:-8 16 32}"
SCENARIOS="${SCENARIOS:-uniform mixed churn}"
SIZE="${SIZE:-64MiB}"
RATE="${RATE:-100mbit}"
OUT="${OUT:-test/sim/results/validate-$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT" bin

go build -o bin/sim ./test/sim/cmd/sim
if [[ -z "${SIM_ONLY:-}" ]]; then
	go build -o bin/ ./cmd/damselfly ./cmd/dfget
	go build -o bin/swarm ./test/swarm/cmd/swarm
	./test/swarm/install-deps.sh
fi

files=()
for n in $NS; do
	for sc in $SCENARIOS; do
		dir="$OUT/$sc-n$n"
		if [[ -z "${SIM_ONLY:-}" ]]; then
			# shellcheck disable=SC2086
			flock /tmp/damselfly-netns.lock ./bin/swarm -bin-dir bin -systems damselfly -n "$n" -size "$SIZE" \
				-rate "$RATE" -origin-rate "$RATE" -scenario "$sc" -out "$dir" ${HARNESS_ARGS:-} ||
				echo "harness: $sc n=$n failed; see $dir" >&2
		fi
		if [[ ! -f "$dir/results.json" ]]; then
			echo "no harness results in $dir: skipped" >&2
			continue
		fi
		# shellcheck disable=SC2086
		./bin/sim -harness "$dir/results.json" ${SIM_ARGS:-} >"$dir/sim.json" || true
		files+=("$dir/sim.json")
	done
done
if [[ ${#files[@]} -eq 0 ]]; then
	echo "nothing to compare" >&2
	exit 1
fi
./bin/sim -table "${files[@]}" | tee "$OUT/table.md"

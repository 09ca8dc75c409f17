#!/usr/bin/env bash
# Runs the swarm benchmark: builds damselfly and dfget (when the damselfly
# system is among those run) and cdfplot, installs the harness's dependencies if
# missing, then runs the harness with the given arguments (`run.sh -h`,
# docs/swarm.md). `make bench-swarm ARGS="..."` calls this. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."

systems=damselfly
prev=
for a in "$@"; do
	case "$a" in
	-systems=* | --systems=*) systems="${a#*=}" ;;
	esac
	case "$prev" in
	-systems | --systems) systems="$a" ;;
	esac
	prev="$a"
done
if [[ "$systems" == *damselfly* ]]; then
	go build -o bin/ ./cmd/damselfly ./cmd/dfget
fi
./test/swarm/install-deps.sh
go build -o bin/swarm ./test/swarm/cmd/swarm
# cdf.png comes from bin/cdfplot (tools/cdfplot, its own Go module): without
# it the runs go on and only the chart is missing.
(cd tools/cdfplot && go build -o ../../bin/cdfplot .) || echo "${0##*/}: tools/cdfplot did not build: no cdf.png" >&2
exec ./bin/swarm -bin-dir bin "$@"

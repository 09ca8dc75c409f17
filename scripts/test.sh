#!/usr/bin/env bash
# The whole test suite: formatting, vet, unit tests (race detector on the
# concurrent core), integration tests with real processes, and the swarm
# smoke test in network namespaces. CI runs exactly this via `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt needed on:"; echo "$unformatted"; exit 1
fi
echo "== go vet"
go vet ./...

echo "== go test"
# -race doubles memory and slows the 200 MB transfers; the packages with the
# trickiest concurrency get it, the rest runs plain.
go test -count=1 -timeout 20m -race ./core/... ./internal/... ./scheduler/... ./daemon/... ./source/... ./client/... ./manager/...
# ./test/... includes test/mirror (docker-registry, containerd, skopeo; root
# for its network-namespace and containerd parts).
go test -count=1 -timeout 30m ./cmd/... ./test/...
# The web console in headless Chromium: its own module (chromedp stays out
# of the product's go.mod); it builds and starts the real binaries.
echo "== console (headless Chromium)"
(cd test/console && go vet ./... && go test -count=1 -timeout 10m ./...)
